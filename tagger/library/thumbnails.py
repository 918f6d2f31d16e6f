"""Thumbnails of a library's photos for the review page: small JPEGs made on the server, kept in memory.

The page never gets a photo's original: a 24 MP JPEG is 8 MB, its thumbnail 15 KB. A JPEG is decoded
at a reduced scale (`Image.draft`, through `pipelines.images.load_image`), turned upright by its EXIF
orientation and scaled to fit a square. The last ones made are kept (`Thumbnails`), keyed by the file's
size and modification time, so scrolling back costs nothing and a photo edited meanwhile is made again.
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from pipelines.images import load_image

SIZES = (64, 512)  # the smallest and largest side a thumbnail may be asked for


def thumbnail(path: str | Path, size: int = 256) -> bytes:
    """The photo as a JPEG that fits in size x size; an unreadable photo is an ImageError naming it."""
    if not SIZES[0] <= size <= SIZES[1]:
        raise ValueError(f"thumbnail size {size} is out of {SIZES[0]}..{SIZES[1]}")
    im = load_image(path, min_side=size)
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue()


class Thumbnails:
    """The last `capacity` thumbnails made, by (file, size); safe to use from several threads."""

    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self._kept: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, size: int = 256) -> bytes:
        st = os.stat(path)
        key = (str(path), size, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        data = thumbnail(path, size)  # outside the lock: photos are decoded side by side
        with self._lock:
            self._kept[key] = data
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
        return data
