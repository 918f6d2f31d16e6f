"""Decoding cost bounded in time as well as in pixels: JPEG scan and segment bombs, huge 16-bit and float images.

The hostile files are made by the small generators at the top (bench/ makes the same at full size: an
11000x11000 scan bomb of 660 KB, an 11300x11300 16-bit PNG of 270 KB).
"""
import io
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines import images
from pipelines.images import (MAX_COEFFICIENT_BYTES, MAX_JUNK_BYTES, MAX_PIXELS, MAX_PNG_CHUNKS, MAX_SCAN_PIXELS,
                              MAX_SCANS, MAX_SEGMENTS, ImageError, declared_pixels, decode_image, is_colour, jpeg_scans,
                              load_image)


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def scan_bomb_jpeg(side: int = 256, repeats: int = 1000, colour: tuple | int = 128) -> bytes:
    """A flat progressive JPEG (grey, or RGB for a colour) whose last scan (a refinement of every AC coefficient) is repeated.

    Each copy is a few hundred bytes and costs libjpeg a pass over every block of the full image, whatever
    the draft scale: at 11000x11000, 1,000 copies (660 KB) took 141 s of CPU.
    """
    data = jpeg_bytes(Image.new("RGB" if isinstance(colour, tuple) else "L", (side, side), colour), progressive=True)
    last = data.rfind(b"\xff\xda")  # Pillow writes no metadata here: every FF DA is a scan
    scan = data[data.rfind(b"\xff\xc4", 0, last):-2]  # its Huffman tables and the scan, up to the EOI
    return data[:-2] + scan * repeats + data[-2:]


def scans_written(data: bytes) -> int:
    """The scans of a JPEG Pillow wrote without metadata (only its scans hold FF DA)."""
    return data.count(b"\xff\xda")


def refuses_before_decoding(monkeypatch):
    """From here on, decoding any pixel fails the test."""
    def load(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# -- item 5: progressive JPEG scans ----------------------------------------------------------------


def test_a_scan_bomb_is_refused_naming_the_file_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    data = scan_bomb_jpeg(repeats=1000)
    n = scans_written(data)
    assert n > 1000 and len(data) < 300_000
    path = tmp_path / "scans.jpg"
    path.write_bytes(data)
    refuses_before_decoding(monkeypatch)
    for min_side in (None, 64):
        with pytest.raises(ImageError) as info:
            load_image(path, min_side=min_side)
        assert info.value.reason == f"{n} scans, over the limit of {MAX_SCANS}: a progressive-JPEG decoding bomb"
        assert str(info.value) == f"{path}: {info.value.reason}"


def test_real_progressive_jpegs_decode_and_the_limit_is_exact():
    for mode in ("L", "RGB", "CMYK"):
        data = jpeg_bytes(Image.new(mode, (96, 64), 100), progressive=True)
        # libjpeg's script: 2 + 4 a component for gray (6) and CMYK (18), 10 for YCbCr colour
        assert jpeg_scans(data).scans == scans_written(data) == {"L": 6, "RGB": 10, "CMYK": 18}[mode]
        assert decode_image(data).size == (96, 64)
    base = scans_written(scan_bomb_jpeg(repeats=0))
    at_limit = scan_bomb_jpeg(repeats=MAX_SCANS - base)
    assert jpeg_scans(at_limit).scans == MAX_SCANS
    assert decode_image(at_limit).size == (256, 256)
    with pytest.raises(ImageError, match=f"^a.jpg: {MAX_SCANS + 1} scans, over the limit of {MAX_SCANS}: "):
        decode_image(scan_bomb_jpeg(repeats=MAX_SCANS - base + 1), "a.jpg")


def declaring(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header claims width x height: what a large image's headers say, without its data."""
    sof = next(i for i in range(len(data)) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    return data[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


def test_a_large_image_may_have_fewer_scans(monkeypatch):
    """Each scan is a pass over the whole image: 100 of them over 121 MP took 13.7 s, so big images get fewer."""
    side = 6000
    allowed = MAX_SCAN_PIXELS // (side * side)
    assert 18 <= MAX_SCAN_PIXELS // MAX_PIXELS and allowed < MAX_SCANS  # a 128 MP photo keeps room for libjpeg's 18 (CMYK)
    small = scan_bomb_jpeg(64, repeats=allowed + 1 - scans_written(scan_bomb_jpeg(64, 0)))
    data = declaring(small, side, side)
    assert Image.open(io.BytesIO(data)).size == (side, side)
    refuses_before_decoding(monkeypatch)
    with pytest.raises(AssertionError, match="pixels were decoded"):  # its 6 scans pass the checks
        decode_image(declaring(scan_bomb_jpeg(64, 0), side, side), min_side=256)
    with pytest.raises(ImageError) as info:
        decode_image(data, "big.jpg", min_side=256)
    assert info.value.reason == (f"{allowed + 1} scans, over the limit of {allowed} for its size ({side}x{side}): "
                                 "a progressive-JPEG decoding bomb")


def test_a_progressive_jpeg_too_large_to_hold_is_refused(monkeypatch):
    """An 11000x11000 full-colour progressive JPEG (1.4 MB) took `predict` to 1.6 GB: 726 MB of coefficients."""
    refuses_before_decoding(monkeypatch)
    colour = jpeg_bytes(Image.new("RGB", (64, 64), (10, 200, 30)), progressive=True, subsampling=0)  # 4:4:4
    with pytest.raises(ImageError) as info:
        decode_image(declaring(colour, 10000, 10000), "big.jpg", min_side=256)
    need = 3 * 1250 * 1250 * 64 * 2  # three components of 1250x1250 blocks, 2 bytes a coefficient
    assert need > MAX_COEFFICIENT_BYTES
    assert info.value.reason == (f"progressive JPEG of 10000x10000 needs {need / 2**20:.0f} MB of coefficients to decode, "
                                 f"over the limit of {MAX_COEFFICIENT_BYTES / 2**20:.0f} MB")
    # Gray and 4:2:0 colour fit at any size we decode, as does a baseline JPEG (decoded a strip at a time).
    for im, kw in ((Image.new("L", (64, 64), 9), {"progressive": True}), (Image.new("RGB", (64, 64)), {"progressive": True}),
                   (Image.new("RGB", (64, 64)), {"subsampling": 0})):
        with pytest.raises(AssertionError, match="pixels were decoded"):
            decode_image(declaring(jpeg_bytes(im, **kw), 11300, 11300), min_side=256)


def test_scan_markers_inside_metadata_and_junk_between_segments():
    # FF DA bytes inside a comment are not scans; a baseline JPEG has one.
    data = jpeg_bytes(Image.new("RGB", (32, 32), (10, 200, 30)), comment=b"\xff\xda" * 500)
    assert data.count(b"\xff\xda") > 500 and jpeg_scans(data).scans == 1
    assert decode_image(data).size == (32, 32)
    # libjpeg skips bytes that are not a marker between segments (with a warning) and reads the scans after
    # them: so does the count, or junk would hide a bomb.
    bomb = scan_bomb_jpeg(repeats=200)
    first = bomb.find(b"\xff\xda", bomb.find(b"\xff\xda") + 2)
    hidden = bomb[:first] + b"\x00junk\x00" + bomb[first:]
    assert jpeg_scans(hidden).scans == scans_written(bomb)
    with pytest.raises(ImageError, match="scans, over the limit"):
        decode_image(hidden)


def test_a_scan_bomb_as_the_first_picture_of_an_mpo_is_refused(monkeypatch):
    """Pillow names a JPEG with a multi-picture index (as cameras write) "MPO"; its first picture is decoded alike."""
    buf = io.BytesIO()
    Image.new("L", (256, 256), 128).save(buf, "MPO", save_all=True, append_images=[Image.new("L", (256, 256), 60)],
                                         progressive=True)
    data = buf.getvalue()
    end = data.find(b"\xff\xd9")  # the end of the first picture; the second follows
    scan = data[data.rfind(b"\xff\xc4", 0, data.rfind(b"\xff\xda", 0, end)):end]
    bomb = data[:end] + scan * 200 + data[end:]
    assert Image.open(io.BytesIO(bomb)).format == "MPO"
    refuses_before_decoding(monkeypatch)
    with pytest.raises(ImageError, match="scans, over the limit"):
        decode_image(bomb, "pair.jpg")


def test_measuring_a_scan_bombs_colour_from_its_file_does_not_decode_it(tmp_path, monkeypatch):
    """Training and evaluation measure each photo's colour from its file (`is_colour`), which decodes it too."""
    colour = jpeg_bytes(Image.new("RGB", (256, 256), (200, 30, 30)), progressive=True)
    (tmp_path / "ok.jpg").write_bytes(colour)
    (tmp_path / "bomb.jpg").write_bytes(scan_bomb_jpeg(repeats=1000, colour=(200, 30, 30)))
    assert is_colour(tmp_path / "ok.jpg")
    refuses_before_decoding(monkeypatch)
    assert not is_colour(tmp_path / "bomb.jpg")  # a file that cannot be read counts as not colour


def test_a_flood_of_marker_segments_is_refused_before_pillow_parses_them(monkeypatch):
    """Pillow reads the segments before the first scan one by one in Python: 20 MB of empty comments took 12 s."""
    data = jpeg_bytes(Image.new("L", (16, 16), 128))
    flood = data[:2] + b"\xff\xfe\x00\x02" * (MAX_SEGMENTS + 1) + data[2:]

    def open_(*args, **kwargs):
        raise AssertionError("Pillow parsed it")
    monkeypatch.setattr(Image, "open", open_)
    with pytest.raises(ImageError) as info:
        decode_image(flood, "flood.jpg")
    assert info.value.reason == f"more than {MAX_SEGMENTS} marker segments (a photo has tens): a JPEG parsing bomb"
    monkeypatch.undo()
    assert declared_pixels(flood) == 0  # not sized (Pillow would say 16x16): left to decode_image to refuse
    ok = data[:2] + b"\xff\xfe\x00\x02" * 1000 + data[2:]  # many, but within the limit
    assert decode_image(ok).size == (16, 16)


def png_with_chunks(n: int) -> bytes:
    """A 16x16 PNG with n empty private chunks after its header (a chunk is 12 bytes: length, type, CRC)."""
    data = io.BytesIO()
    Image.new("L", (16, 16), 9).save(data, "PNG")
    data = data.getvalue()
    empty = b"\x00\x00\x00\x00zzZz" + zlib.crc32(b"zzZz").to_bytes(4, "big")
    return data[:33] + empty * n + data[33:]  # after the signature (8) and IHDR (25)


def test_a_flood_of_png_chunks_is_refused_before_pillow_parses_them(monkeypatch):
    """Pillow reads a PNG's chunks one at a time in Python: 20 MB of empty ones took 11.4 s."""
    flood = png_with_chunks(MAX_PNG_CHUNKS)  # with IHDR, IDAT and IEND: over the limit

    def open_(*args, **kwargs):
        raise AssertionError("Pillow parsed it")
    monkeypatch.setattr(Image, "open", open_)
    with pytest.raises(ImageError) as info:
        decode_image(flood, "flood.png")
    assert info.value.reason == (f"more than {MAX_PNG_CHUNKS} chunks (a photo has tens, its image data in pieces of "
                                 "8 KB or more): a PNG parsing bomb")
    assert declared_pixels(flood) == 0
    monkeypatch.undo()
    assert decode_image(png_with_chunks(1000)).size == (16, 16)


def test_junk_before_the_first_scan_is_refused_before_pillow_parses_it(monkeypatch):
    """Pillow steps over bytes between segments one at a time in Python: 20 MB of 0xFF fill took 22 s."""
    data = jpeg_bytes(Image.new("L", (16, 16), 128))
    app0 = 4 + int.from_bytes(data[4:6], "big")  # the end of the JFIF segment Pillow writes first
    fill = data[:app0] + b"\xff" * (MAX_JUNK_BYTES + 1) + data[app0:]
    zeros = data[:app0] + b"\x00" * (MAX_JUNK_BYTES + 1) + data[app0:]

    def open_(*args, **kwargs):
        raise AssertionError("Pillow parsed it")
    monkeypatch.setattr(Image, "open", open_)
    for bomb in (fill, zeros):
        with pytest.raises(ImageError) as info:
            decode_image(bomb, "fill.jpg")
        assert info.value.reason == (f"more than {MAX_JUNK_BYTES} bytes of padding or junk between marker segments "
                                     "(a photo has none): a JPEG parsing bomb")
        assert declared_pixels(bomb) == 0
    monkeypatch.undo()
    assert decode_image(data[:app0] + b"\xff" * 1000 + b"\x00junk" + data[app0:]).size == (16, 16)  # libjpeg skips a little
    # After the first scan libjpeg, not Pillow, reads what lies between segments, in C: not limited.
    progressive = jpeg_bytes(Image.new("L", (16, 16), 128), progressive=True)
    second = progressive.find(b"\xff\xc4", progressive.find(b"\xff\xda"))
    late = progressive[:second] + b"\x00" * (MAX_JUNK_BYTES + 1) + progressive[second:]
    assert jpeg_scans(late).scans == 6 and decode_image(late).size == (16, 16)


def test_declared_pixels_counts_a_progressive_jpeg_at_full_size():
    """At a draft scale libjpeg still keeps every coefficient of the full image for a progressive JPEG."""
    im = Image.new("L", (4096, 3072), 90)
    baseline, progressive = jpeg_bytes(im), jpeg_bytes(im, progressive=True)
    assert declared_pixels(baseline, 256) == 512 * 384 == np.prod(decode_image(baseline, min_side=256).size)  # at 1/8
    assert declared_pixels(progressive, 256) == 4096 * 3072
    assert declared_pixels(progressive) == declared_pixels(baseline) == 4096 * 3072
    assert declared_pixels(scan_bomb_jpeg(repeats=300), 64) == 256 * 256


# -- item 6: 16-bit, 32-bit and float images -----------------------------------------------------------


def ramp(w: int, h: int, top: float, dtype) -> np.ndarray:
    """Columns rising from 0 to `top` (rows alike, so that a huge one compresses to little)."""
    return np.broadcast_to(np.linspace(0, top, w).astype(dtype), (h, w)).copy()


def encoded(a: np.ndarray, mode: str, fmt: str) -> bytes:
    """`a` in a file that Pillow opens in `mode` (a deflated big-endian TIFF comes back little-endian: left raw)."""
    buf = io.BytesIO()
    im = Image.fromarray(a) if mode != "I;16B" else Image.fromarray(a).convert("I").convert("I;16B")
    im.save(buf, fmt, **({"compression": "tiff_adobe_deflate"} if fmt == "TIFF" and mode != "I;16B" else {}))
    with Image.open(buf) as back:
        assert back.mode == mode
    return buf.getvalue()


DEEP = [("I;16", "PNG", 65535, np.uint16), ("I;16", "TIFF", 65535, np.uint16), ("I;16B", "TIFF", 65535, np.uint16),
        ("I", "TIFF", 65535, np.int32), ("I", "TIFF", 3_000_000, np.int32), ("F", "TIFF", 1.0, np.float32),
        ("F", "TIFF", 5000.0, np.float32)]


@pytest.mark.parametrize("mode, fmt, top, dtype", DEEP)
def test_a_huge_deep_image_is_reduced_in_its_own_mode(mode, fmt, top, dtype, monkeypatch):
    """An 11300x11300 16-bit PNG (270 KB) took `predict` to 4.3 GB: it reached the float conversion whole.

    "Huge" (32 MP) is lowered to 1 MP here, so that a 1.2 MP image takes the same path quickly.
    """
    monkeypatch.setattr(images, "HUGE_PIXELS", 1_000_000)
    side, min_side = 1100, 64
    data = encoded(ramp(side, side, top, dtype), mode, fmt)
    tracemalloc.start()
    try:
        out = decode_image(data, min_side=min_side)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    factor = side // (2 * min_side)
    assert out.mode == "RGB" and out.size == (-(-side // factor),) * 2 and min(out.size) >= 2 * min_side
    assert peak < side * side  # under a byte a pixel; a full-size float64 copy is 8
    a = np.asarray(out).astype(int)
    assert (a[..., 0] == a[..., 2]).all() and a[:, 0].max() <= 2 and a[:, -1].min() >= 253  # full range kept
    assert (np.diff(a[..., 0].mean(axis=0)) >= -0.5).all()  # still a ramp


@pytest.mark.slow
def test_a_reduced_16_bit_image_matches_pillows_own_reduction():
    side = 5800  # 33.6 MP, just over the 32 MP above which decoded images are reduced
    a = ramp(side, side, 65535, np.uint16)
    data = encoded(a, "I;16", "PNG")
    factor = side // 512
    expected = np.asarray(Image.fromarray(a).convert("I").reduce(factor)) / 257.0  # in 32-bit, the whole at once
    tracemalloc.start()
    try:
        got = np.asarray(decode_image(data, min_side=256))[..., 0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.shape == expected.shape == (-(-side // factor),) * 2 and np.abs(got - expected).max() <= 1
    assert peak < 16e6  # a full-size float64 copy alone would be 269 MB


OLD_PHOTO = (480, 640)


def old_gray_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """The conversion as it was, in float64 over the whole image: what ordinary photos must still get."""
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        a = a * 255.0
    elif lo < 0 or hi > 255:
        a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode, fmt, lo, hi, dtype", [
    ("I;16", "PNG", 0, 65535, np.uint16), ("I;16", "PNG", 0, 200, np.uint16), ("I;16B", "TIFF", 0, 65535, np.uint16),
    ("I", "TIFF", 0, 65535, np.int32), ("I", "TIFF", 0, 200, np.int32), ("I", "TIFF", -5000, 3_000_000, np.int32),
    ("F", "TIFF", 0, 1, np.float32), ("F", "TIFF", -0.5, 200, np.float32), ("F", "TIFF", 0, 5000, np.float32)])
def test_an_ordinary_deep_photo_converts_as_before(mode, fmt, lo, hi, dtype):
    """Scaled by its mode (16-bit: / 257; float 0..1: x 255), else stretched over the range found, else as is."""
    a = np.random.default_rng(1).uniform(lo, hi, OLD_PHOTO).astype(dtype)
    data = encoded(a, mode, fmt)
    with Image.open(io.BytesIO(data)) as im:
        before = old_gray_to_uint8(np.asarray(im), im.mode)
    for min_side in (None, 256):
        after = np.asarray(decode_image(data, min_side=min_side))
        assert after.shape == (*OLD_PHOTO, 3)
        assert np.abs(after[..., 0].astype(int) - before).max() <= 1 and (after[..., 0] == after[..., 1]).all()


@pytest.mark.parametrize("mode, dtype, top", [("I;16", np.uint16, 65535), ("F", np.float32, 1.0), ("I", np.int32, 10**6)])
def test_converting_a_deep_image_makes_no_full_size_float_copy(mode, dtype, top):
    """A 30 MP 16-bit scan is not reduced (under 32 MP), and float64 copies of it took over a GB."""
    im = Image.fromarray(ramp(3000, 3000, top, dtype))
    assert im.mode == mode
    pixels = 3000 * 3000
    from pipelines.images import to_rgb

    tracemalloc.start()
    try:
        out = to_rgb(im)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.mode == "RGB" and out.size == (3000, 3000)
    # The 8-bit result and a strip at a time: no copy of the whole image in its own type, let alone in float64.
    assert peak < pixels + 16e6


def test_decoding_makes_no_copy_of_the_whole_image(monkeypatch):
    """Applying an absent EXIF orientation copied every decoded image: 255 MB more for an 11300x11300 16-bit PNG."""
    copy, copied = Image.Image.copy, []

    def counted(self):
        copied.append(self.size)
        return copy(self)
    monkeypatch.setattr(Image.Image, "copy", counted)
    for data in (encoded(ramp(1200, 1000, 65535, np.uint16), "I;16", "PNG"), jpeg_bytes(Image.new("RGB", (1200, 1000), 99))):
        for min_side in (None, 64):
            assert decode_image(data, min_side=min_side).size[0] >= 128
    assert copied == []
    # A photo with an orientation is still turned upright.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise: shown 400 wide, 600 high
    rotated = io.BytesIO()
    Image.new("RGB", (600, 400), (9, 99, 199)).save(rotated, "JPEG", exif=exif)
    assert decode_image(rotated.getvalue()).size == (400, 600)
