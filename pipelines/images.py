"""Robust photo decoding: any file Pillow reads becomes an upright 8-bit RGB image, or an ImageError.

Real photo folders hold grayscale scans, palette GIFs, CMYK JPEGs from print workflows, 16-bit
PNGs, rotated phone pictures, half-copied files and the odd text file named `.jpg`. `load_image`
turns all of these into one thing a CNN can take (RGB, EXIF orientation applied, transparency
flattened on white) and turns every failure into an `ImageError` that names the file and the
reason, so a batch job can report the photo and carry on.

Pillow's decompression-bomb limit is a process-wide global (`Image.MAX_IMAGE_PIXELS`); this module
leaves it alone and applies its own limit, `MAX_PIXELS`, to the size a file declares, before any
pixel is decoded. Either refusal reads the same: "decompression bomb: 400 MP image is over the
128 MP limit" (Pillow's own error, for files over twice its limit, is reworded in our terms).

Pixels do not bound a JPEG's decoding time: a progressive JPEG is read in scans, each a pass over the
coefficients of the whole image (kept at full size even when decoding at a draft scale), and a file can
repeat one scan a thousand times in a few hundred KB. `jpeg_scans` walks the marker segments in the
bytes (Pillow reads only up to the first scan) so that `decode_image` can refuse such a file first. The
same walk, and a count of a PNG's chunks, refuse files whose headers Pillow would parse for seconds in
Python (floods of empty segments or chunks).
"""
from __future__ import annotations

import enum
import functools
import io
import os
import stat
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipelines.errors import TaggerError

MAX_PIXELS = 128_000_000  # 128 megapixels: above any camera photo, far below what would exhaust memory
MAX_FILE_BYTES = 1 << 30  # 1 GB: above any photo file (a 100 MP 16-bit TIFF is 600 MB)
MAX_ASPECT = 4.0  # longer side over shorter side kept for the backbone (see cap_aspect)
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a viewer would
# Scans in one JPEG: libjpeg's progressive script writes 10 for colour (6 for gray, 18 for CMYK), mozjpeg's 11;
# a hundred leaves room for any encoder's own script and refuses repeated scans (each a pass over the whole image).
MAX_SCANS = 100
# Scans times pixels: 96 scans over 121 MP took 13.5 s of CPU, so a large image gets fewer (a 128 MP one 20,
# still more than libjpeg's CMYK script); about 3 s at most.
MAX_SCAN_PIXELS = 20 * MAX_PIXELS
# A progressive JPEG holds 2 bytes per sample of every component while its scans are read: no more than the
# largest image we decode takes (128 MP of RGBA). Every gray or 4:2:0 photo fits; full-colour 4:4:4 up to 88 MP.
MAX_COEFFICIENT_BYTES = 512 * 2**20
MAX_SEGMENTS = 10_000  # marker segments in one JPEG: a photo has tens (long XMP, in 64 KB pieces, a few hundred)
# Bytes between marker segments before the first scan (0xFF fill or junk), which Pillow steps over one at a
# time in Python (20 MB of fill: 22 s); libjpeg allows them, and encoders write none.
MAX_JUNK_BYTES = 65_536
# Chunks in one PNG, which Pillow also reads one at a time in Python (20 MB of empty ones: 11.4 s); encoders
# write tens, and the image data in pieces of 8 KB or more (1.6 GB at this limit, over MAX_FILE_BYTES).
MAX_PNG_CHUNKS = 200_000


class ImageError(TaggerError):
    """A photo that cannot be decoded; `path` names the file and `reason` says why in a few words."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        # DataLoader workers pickle exceptions back to the main process; keep both fields.
        return (type(self), (self.path, self.reason))


def load_image(source: str | Path | bytes, *, min_side: int | None = None) -> Image.Image:
    """Read a photo file (or its bytes) into an upright RGB image.

    min_side: the smallest shorter side the caller needs (e.g. the backbone's resize). A JPEG at
    least twice that size is decoded at a reduced scale (`Image.draft`), which is several times
    faster and loses nothing the later resize would have kept.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), "<bytes>", min_side=min_side)
    return decode_image(read_bytes(source), source, min_side=min_side)


def read_bytes(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes; an unreadable file is an ImageError like any other bad photo.

    Only regular files are read: a FIFO named like a photo would block forever and a link to
    /dev/zero would never end. The file is opened without blocking and checked on the open
    descriptor, so nothing can be swapped in between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageError(path, "is a directory" if stat.S_ISDIR(mode) else f"not a regular file (a {_file_kind(mode)})")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise ImageError(path, f"file is over the {limit // 2**20} MB limit for a photo")
    return data


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def decode_image(data: bytes, path: str | Path = "<bytes>", *, min_side: int | None = None) -> Image.Image:
    """Decode bytes already read from `path` (the path only names the photo in errors)."""
    if not data:
        raise ImageError(path, "empty file")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning fires at its global limit (~89 MP), at open and for some formats
            # again while decoding; ours is MAX_PIXELS, checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if is_heif(data):
                register_heif()
            jpeg = walk_container(data, path)  # before Pillow parses a segment
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(path, too_many_pixels(w * h, f"{w}x{h}"))
            if w == 0 or h == 0:
                raise ImageError(path, f"empty image ({w}x{h})")
            if jpeg is not None:
                check_jpeg_cost(jpeg, w, h, path)
            if min_side and im.format == "JPEG" and min(w, h) >= 2 * min_side:
                im.draft(None, (min_side, min_side))  # keeps both sides >= min_side
            im.load()  # decodes the first frame of an animation, and only that
        im = _upright(im)
        if min_side:
            im = _shrink_huge(cap_aspect(im), min_side)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        # Pillow refuses at open what is over twice its global limit (~179 MP) before we see the size.
        raise ImageError(path, _pillow_bomb_reason(str(e))) from None
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as e:
        # Pillow reports truncated and corrupt data through all of these, depending on the codec.
        reason = str(e).strip() or type(e).__name__
        raise ImageError(path, f"corrupt or truncated: {reason}") from None
    try:
        return to_rgb(im)
    except ValueError as e:
        raise ImageError(path, str(e)) from None


# ISO base media "ftyp" brands of HEIF stills (iPhone photos are "heic"); pillow-heif decodes them.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def is_heif(head: bytes) -> bool:
    """Whether a file starting with these bytes (12 are enough) is a HEIF still image."""
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


@functools.cache
def register_heif() -> None:
    """Teach Pillow HEIF, on the first HEIF photo rather than at import: most runs never meet one."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def declared_pixels(data: bytes, min_side: int | None = None) -> int:
    """The pixels decoding a photo will make, from its header alone (0 when Pillow does not know it).

    With min_side, a JPEG counts at the reduced scale `decode_image` decodes it at (a 12 MP phone
    photo for a 256 px backbone: 1/8 scale, 0.19 MP), but a progressive one (or any of several scans)
    at full size: libjpeg keeps the coefficients of every full-size pixel while it reads the scans.
    """
    if is_heif(data):
        register_heif()
    try:
        jpeg = walk_container(data)
    except ImageError:
        return 0  # a parsing bomb: decode_image refuses it without letting Pillow parse it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                (w, h), fmt = im.size, im.format
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for non-photos; decoding reports them properly
        return 0
    scale = 1
    if min_side and fmt == "JPEG" and not (jpeg and jpeg.buffered):
        while scale < 8 and min(w, h) >= 2 * scale * min_side:
            scale *= 2
    return -(-w // scale) * -(-h // scale)


def walk_container(data: bytes, path: str | Path = "<bytes>") -> JpegScans | None:
    """A JPEG's scans, from its marker segments; a PNG's chunks counted. Both refuse a parsing bomb (ImageError)."""
    if is_jpeg(data):
        return jpeg_scans(data, path)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        png_chunks(data, path)
    return None


def png_chunks(data: bytes, path: str | Path = "<bytes>") -> int:
    """The chunks of a PNG up to its end (IEND), each a length, a type, its data and a CRC; at most MAX_PNG_CHUNKS."""
    pos, chunks = 8, 0  # after the signature
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(path, f"more than {MAX_PNG_CHUNKS} chunks (a photo has tens, its image data in pieces of "
                                   "8 KB or more): a PNG parsing bomb")
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return chunks


def is_jpeg(head: bytes) -> bool:
    """Whether a file starting with these bytes is a JPEG (or an MPO, a JPEG followed by more pictures)."""
    return head[:3] == b"\xff\xd8\xff"


@dataclass(frozen=True)
class JpegScans:
    """What decoding a JPEG's first picture costs beyond its pixels, from its marker segments."""

    scans: int  # start-of-scan segments
    progressive: bool  # a progressive frame (SOF2, 6, 10, 14)
    blocks: int  # 8x8 blocks of all its components at full size (0 without a frame header)

    @property
    def buffered(self) -> bool:
        """Whether libjpeg keeps the coefficients of the whole image while it reads the scans."""
        return self.progressive or self.scans > 1

    @property
    def coefficient_bytes(self) -> int:
        return 64 * 2 * self.blocks if self.buffered else 0


# In scan data a 0xFF is followed by 0x00 (a stuffed 0xFF), a restart marker (0xD0-0xD7) or another 0xFF
# (fill); any other byte after one starts a marker. Between segments libjpeg skips bytes until the next
# marker too, so searching for one from the end of each segment counts the scans libjpeg reads.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_scans(data: bytes, path: str | Path = "<bytes>") -> JpegScans:
    """The scans and frame of a JPEG's first picture, from a walk over its marker segments (Pillow stops at the first scan).

    Refuses (ImageError) what Pillow's own parse up to the first scan would take a long time over, one
    segment or byte at a time in Python: more than MAX_SEGMENTS segments (20 MB of empty comments took
    12 s) or MAX_JUNK_BYTES bytes between them.
    """
    scans = segments = blocks = junk = 0
    progressive = False
    pos = 2  # after SOI
    while found := _NEXT_MARKER.search(data, pos):
        if not scans:
            junk += found.start() - pos
            if junk > MAX_JUNK_BYTES:
                raise ImageError(path, f"more than {MAX_JUNK_BYTES} bytes of padding or junk between marker segments "
                                       "(a photo has none): a JPEG parsing bomb")
        marker, pos = data[found.start() + 1], found.start() + 2
        if marker == 0xD9:  # EOI: the end of the first picture (an MPO's others follow)
            break
        segments += 1
        if segments > MAX_SEGMENTS:
            raise ImageError(path, f"more than {MAX_SEGMENTS} marker segments (a photo has tens): a JPEG parsing bomb")
        if marker in (0x01, 0xD8):  # TEM, a stray SOI: no length
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        if marker == 0xDA:
            scans += 1
        elif marker in _SOF and not blocks:
            blocks = _frame_blocks(data[pos + 2:pos + length])
            progressive = marker in (0xC2, 0xC6, 0xCA, 0xCE)
        pos += length
    return JpegScans(scans, progressive, blocks)


def _frame_blocks(frame: bytes) -> int:
    """8x8 blocks of all components of a frame header (precision, height, width, then id, sampling, table each)."""
    if len(frame) < 6:
        return 0
    height, width, n = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    sampling = [(b >> 4, b & 15) for b in frame[7:6 + 3 * n:3]]
    if not sampling or min(min(s) for s in sampling) == 0:
        return 0  # invalid: libjpeg refuses it
    hmax, vmax = max(s[0] for s in sampling), max(s[1] for s in sampling)
    return sum(-(-width * hs // (8 * hmax)) * -(-height * vs // (8 * vmax)) for hs, vs in sampling)


def check_jpeg_cost(jpeg: JpegScans, w: int, h: int, path: str | Path) -> None:
    """Refuse a JPEG whose scans or whole-image coefficients cost far more than its pixels (see MAX_SCANS)."""
    limit = min(MAX_SCANS, max(1, MAX_SCAN_PIXELS // (w * h)))
    if jpeg.scans > limit:
        size = "" if limit == MAX_SCANS else f" for its size ({w}x{h})"
        raise ImageError(path, f"{jpeg.scans} scans, over the limit of {limit}{size}: a progressive-JPEG decoding bomb")
    if jpeg.coefficient_bytes > MAX_COEFFICIENT_BYTES:
        raise ImageError(path, f"progressive JPEG of {w}x{h} needs {jpeg.coefficient_bytes / 2**20:.0f} MB of coefficients "
                               f"to decode, over the limit of {MAX_COEFFICIENT_BYTES / 2**20:.0f} MB")


HUGE_PIXELS = 32_000_000  # decoded images above this are shrunk before any conversion (see _shrink_huge)


def _shrink_huge(im: Image.Image, min_side: int) -> Image.Image:
    """A huge decoded image (not a JPEG, which `draft` already decodes small) box-reduced in its own mode.

    Converting an 11000x11000 1-bit PNG to RGB makes 363 MB; reduced first, a few MB. The reduction
    keeps the shorter side at least twice `min_side`, so the backbone's own resize still decides the
    pixels it sees; ordinary photos (up to 32 MP) are never touched.
    """
    w, h = im.size
    factor = min(w, h) // (2 * min_side)
    if w * h <= HUGE_PIXELS or factor < 2:
        return im
    if im.mode == "1":
        im = im.convert("L")  # Pillow keeps 1-bit images a byte a pixel: no larger
    elif im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")  # as to_rgb would
    if im.mode.startswith("I;16"):
        return _reduce_16bit(im, factor)
    if im.mode not in ("L", "RGB", "RGBA", "LA", "CMYK", "I", "F"):
        return im  # e.g. LAB or YCbCr TIFFs: rare, and to_rgb makes them no larger (3 bytes a pixel)
    return im.reduce(factor)


def _reduce_16bit(im: Image.Image, factor: int) -> Image.Image:
    """`im.reduce(factor)` for 16-bit gray, which Pillow reduces only as 32-bit "I": converted a strip at a
    time, so the whole image is never held at 4 bytes a pixel; the result is 16-bit again, as to_rgb expects."""
    w, h = im.size
    out = Image.new("I", (-(-w // factor), -(-h // factor)))
    rows = factor * max(1, 4_000_000 // (w * factor))  # whole boxes high, about 4 MP a strip
    for top in range(0, h, rows):
        out.paste(im.crop((0, top, w, min(top + rows, h))).convert("I").reduce(factor), (0, top // factor))
    return out.convert(im.mode)


def cap_aspect(im: Image.Image, most: float = MAX_ASPECT) -> Image.Image:
    """The centre of a very long or very tall photo, at most `most` times as long as it is wide.

    Resizing the shorter side to a backbone's 256 px would otherwise blow a thin strip up without
    bound (an 8000x1 PNG of 86 bytes becomes 2,048,000x256 pixels, 1.5 GB). Every backbone then
    centre-crops a square, which lies inside what is kept here, so the features do not change.
    """
    w, h = im.size
    if w > most * h:
        keep = max(1, round(most * h))
        return im.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
    if h > most * w:
        keep = max(1, round(most * w))
        return im.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
    return im


def too_many_pixels(pixels: int, size: str = "") -> str:
    """The reason for refusing an image over MAX_PIXELS, e.g. "... 400 MP image (20000x20000) is over the 128 MP limit"."""
    return f"decompression bomb: {_megapixels(pixels)} MP image{f' ({size})' if size else ''} is over the {_megapixels(MAX_PIXELS)} MP limit"


def _megapixels(pixels: int) -> str:
    mp = pixels / 1e6
    if pixels != MAX_PIXELS and round(mp) == round(MAX_PIXELS / 1e6):
        return f"{mp:.6f}".rstrip("0").rstrip(".")  # just over the limit: not "128 MP ... over the 128 MP limit"
    return f"{mp:.0f}"


def _pillow_bomb_reason(message: str) -> str:
    """Pillow's DecompressionBombError in our terms: its message gives the pixel count and its own limit."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", message)
    if not found:
        return f"decompression bomb: {message}"
    pixels, limit = int(found.group(1)), int(found.group(2))
    if pixels > MAX_PIXELS:
        return too_many_pixels(pixels)
    # Only when the application lowered Pillow's process-wide limit below ours.
    return f"decompression bomb: {_megapixels(pixels)} MP image is over Pillow's limit of {limit / 1e6:.0f} MP (PIL.Image.MAX_IMAGE_PIXELS)"


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: transparency flattened on white, 16/32-bit gray rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(_gray_to_uint8(im)).convert("RGB")
    try:
        # 1, L, P, CMYK (Adobe's inverted CMYK is undone by the JPEG reader), YCbCr, ...
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"unsupported mode {im.mode}: {e}") from None


def _gray_to_uint8(im: Image.Image) -> np.ndarray:
    """Scale high-bit-depth gray to 0..255 over its full range; clipping at 255 would blow it out.

    Read a strip of rows at a time, and only the strip in float64: whole-image copies of a 30 MP scan
    took over a GB.
    """
    w, h = im.size
    rows = max(1, 250_000 // max(1, w))  # strips of about 0.25 MP: 2 MB in float64
    strips = [(0, top, w, min(top + rows, h)) for top in range(0, h, rows)]
    lo = hi = None
    for box in strips:  # Pillow's getextrema does not take big-endian 16-bit
        a = np.asarray(im.crop(box))
        lo, hi = (float(a.min()), float(a.max())) if lo is None else (min(lo, float(a.min())), max(hi, float(a.max())))
    sixteen = im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and 255 < hi <= 65535)
    unit = im.mode == "F" and lo >= 0 and hi <= 1.0
    out = np.empty((h, w), np.uint8)
    for box in strips:
        x = np.asarray(im.crop(box), dtype=np.float64)
        if sixteen:
            x /= 257.0  # 16-bit: 65535 -> 255
        elif unit:
            x *= 255.0
        elif lo < 0 or hi > 255:
            x -= lo  # no known range: stretch what is there
            x /= max(hi - lo, 1e-12)
            x *= 255.0
        out[box[1]:box[3]] = np.clip(np.rint(x, out=x), 0, 255, out=x)
    return out


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored rather than losing the photo.

    In place: without an orientation Pillow would return a copy of the whole image (255 MB for an
    11300x11300 16-bit PNG).
    """
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # noqa: BLE001 - malformed EXIF comes in endless varieties
        pass
    return im


def printable_path(path: str | Path) -> str:
    """A path as text that prints and saves: the bytes of a non-UTF-8 file name as \\xNN escapes, a backslash doubled.

    Such a name decodes to lone surrogates, which no UTF-8 output (nor pandas' Arrow strings) can hold.
    Doubling the backslash keeps two paths two strings (results and sidecars are keyed by this text):
    `bad\\xff.jpg`, the byte 0xFF, is not `bad\\\\xff.jpg`, a name that holds a backslash.
    """
    return str(path).replace("\\", "\\\\").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Mean chroma (max minus min of R, G, B on 0..255) above which a photo counts as colour. Black-and-white
# photos saved as RGB (scans, toned prints, JPEG noise) stay below it; on the MIRFLICKR subset it puts
# 836 of the first 1,000 photos on the colour side, where their owners tagged 4 "blackandwhite".
COLOUR_CHROMA = 12.0


def chroma(image: Image.Image) -> float:
    """Mean chroma of a photo at about 32 px: 0 for grey, tens for an ordinary colour photo."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return 0.0
    small = image if max(image.size) <= 64 else image.resize((32, 32), Image.Resampling.BOX)
    rgb = np.asarray(small.convert("RGB"), dtype=np.int16)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


class Blank(enum.IntEnum):
    """What `blank_frame` calls a photo: a scene (NONE), or the kind of blank frame it is."""

    UNMEASURED = -1  # not measured (a feature-cache shard from before it was): tagged as a scene
    NONE = 0  # a real scene
    NEAR_BLACK = 1  # lens cap on, a shot in the dark that shows nothing
    NEAR_WHITE = 2  # a fully blown-out frame, a blank page lit flat
    UNIFORM = 3  # one colour all over: a grey card, a wall filling the frame out of focus
    FEATURELESS = 4  # a smooth shading and nothing else: a blank scan, a vignetted blank frame


BLANK_REASONS = {Blank.NEAR_BLACK: "near-black frame", Blank.NEAR_WHITE: "near-white frame",
                 Blank.UNIFORM: "uniform frame", Blank.FEATURELESS: "featureless frame"}

# Thresholds on a 64x64 draft (luminance and channels on 0..255). Measured on the 10,710 photos of the
# MIRFLICKR subset, its 88 full-size originals and scikit-image's sample photos, none of which is blank:
# their darkest photo (a night sky with the moon and a skyline) has a 99th-percentile luminance of 18,
# the brightest (a face in white light) a 1st percentile of 191; the least varied (the same night sky)
# spans 17 levels in its most varied channel, and the only one spanning fewer than 32 has a mean gradient
# of 0.87. A lens cap, a blown-out frame, a grey card and a blank scan are far on the other side.
BLACK_P99 = 12.0  # near-black: 99% of the frame is darker than this (a few hot pixels do not count)
WHITE_P1 = 240.0  # near-white: 99% of the frame is brighter than this
UNIFORM_SPREAD = 12.0  # uniform: no channel spans more than this between its 1st and 99th percentiles
FEATURELESS_SPREAD = 32.0  # featureless: a spread under this ...
FEATURELESS_GRADIENT = 0.5  # ... and a mean luminance step between neighbouring draft pixels under this
_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's "L"


def blank_frame(image: Image.Image) -> Blank:
    """Whether a decoded photo is a blank frame, and which kind, from a 64 px draft of its pixels.

    The draft averages away sensor and JPEG noise (a camera frame decoded for the backbone is reduced
    several times over), so a frame of one level with noise is still one level; percentiles rather than
    extremes keep a few hot pixels or a speck of dust from making a blank frame a scene.
    """
    small = image if max(image.size) <= 64 else image.resize((64, 64), Image.Resampling.BOX)
    rgb = np.asarray(small.convert("RGB"), dtype=np.float32)
    lum = rgb @ _LUMINANCE
    p1, p99 = np.percentile(lum, [1, 99])
    if p99 < BLACK_P99:
        return Blank.NEAR_BLACK
    if p1 > WHITE_P1:
        return Blank.NEAR_WHITE
    lo, hi = np.percentile(rgb.reshape(-1, 3), [1, 99], axis=0)
    spread = float((hi - lo).max())
    if spread < UNIFORM_SPREAD:
        return Blank.UNIFORM
    steps = [np.abs(np.diff(lum, axis=a)).mean() for a in (0, 1) if lum.shape[a] > 1]
    if spread < FEATURELESS_SPREAD and float(np.mean(steps)) < FEATURELESS_GRADIENT:
        return Blank.FEATURELESS
    return Blank.NONE


def is_colour(image: Image.Image | str | Path) -> bool:
    """Whether a photo (an image or a file) has colour; a file that cannot be read counts as not colour."""
    if not isinstance(image, Image.Image):
        try:
            data = read_bytes(image)
            jpeg = walk_container(data, image)
            with Image.open(io.BytesIO(data)) as im:
                if jpeg is not None:
                    check_jpeg_cost(jpeg, *im.size, image)  # a scan bomb would take minutes even at 1/8 scale
                im.draft("RGB", (32, 32))  # a JPEG decodes at 1/8 scale at most: a millisecond for a camera photo
                return chroma(im) > COLOUR_CHROMA
        except (ImageError, OSError, ValueError, Image.DecompressionBombError):
            return False
    return chroma(image) > COLOUR_CHROMA
