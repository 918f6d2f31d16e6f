"""Hand the memory a long job has freed back to the operating system (glibc's malloc_trim; elsewhere a no-op).

A forward pass at batch 64 allocates ~150 MB of temporary tensors. Freed, they stay in glibc's heap,
and once its threshold for mapping big blocks directly has risen they are carved from that heap
again and again: tagging 2,048 shared photos, the resident size crept from 890 to 1,115 MB and the
peak to 1,340 MB. Trimming after every chunk kept them at 783 and about 1,100 MB, at no cost in
speed (a fixed low threshold instead, MALLOC_MMAP_THRESHOLD_, cost 40% of the speed).
"""
from __future__ import annotations

import ctypes
import ctypes.util


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # musl and macOS have no malloc_trim


_LIBC = _libc()


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where the C library cannot (nothing is done)."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True
