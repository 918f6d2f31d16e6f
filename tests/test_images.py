"""Decoding every kind of photo a folder can hold into upright RGB, and every bad file into ImageError."""
import io
import os
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.images import MAX_PIXELS, ImageError, decode_image, load_image
from pipelines.scan import list_images


def gradient(w=40, h=30) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float64)
    return np.tile(x, (h, 1)).astype(np.uint8)


def check_rgb(im, size):
    assert im.mode == "RGB"
    assert im.size == size
    return np.asarray(im)


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
    f = tmp_path / "g.jpg"
    Image.fromarray(gradient()).save(f)
    a = check_rgb(load_image(f), (40, 30)).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert a[..., 0].max() - a[..., 0].min() > 200  # the gradient survived


def test_one_bit(tmp_path):
    f = tmp_path / "b.png"
    Image.fromarray(gradient() > 127).convert("1").save(f)
    a = check_rgb(load_image(f), (40, 30))
    assert set(np.unique(a)) == {0, 255}


def test_palette_without_and_with_transparency(tmp_path):
    rgb = Image.new("RGB", (20, 10), (200, 30, 40))
    p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    p.save(tmp_path / "p.png")
    assert tuple(np.asarray(load_image(tmp_path / "p.png"))[0, 0]) == (200, 30, 40)

    # Index 0 is fully transparent: it must come out white, not the palette colour (black) behind it.
    pt = Image.new("P", (20, 10), 0)
    pt.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pt.paste(1, (10, 0, 20, 10))
    pt.save(tmp_path / "pt.png", transparency=0)
    a = check_rgb(load_image(tmp_path / "pt.png"), (20, 10))
    assert tuple(a[0, 0]) == (255, 255, 255)
    assert tuple(a[0, 15]) == (10, 200, 10)


def test_palette_gif_animation_takes_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c).convert("P") for c in [(255, 0, 0), (0, 0, 255)]]
    f = tmp_path / "anim.gif"
    frames[0].save(f, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(f) as im:
        assert im.n_frames == 2
    r, g, b = np.asarray(load_image(f))[8, 8].astype(int)
    assert r > 200 and b < 50


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((10, 20, 4), np.uint8)
    a[:, :10] = (0, 0, 255, 0)  # transparent blue: invisible, so white
    a[:, 10:] = (0, 0, 255, 255)  # opaque blue
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = check_rgb(load_image(tmp_path / "a.png"), (20, 10))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 15]) == (0, 0, 255)


def test_la_composited_on_white(tmp_path):
    a = np.zeros((10, 20, 2), np.uint8)
    a[:, 10:, 1] = 255  # right half opaque black, left half transparent
    Image.fromarray(a, "LA").save(tmp_path / "la.png")
    out = np.asarray(load_image(tmp_path / "la.png"))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 15]) == (0, 0, 0)


def test_cmyk_jpeg(tmp_path):
    f = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(f, quality=95)  # pure cyan ink
    with Image.open(f) as im:
        assert im.mode == "CMYK"
    r, g, b = np.asarray(check_rgb(load_image(f), (16, 16)))[8, 8].astype(int)
    assert r < 40 and g > 215 and b > 215


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    a = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    f = tmp_path / "g16.png"
    Image.fromarray(a).save(f)
    with Image.open(f) as im:
        assert im.mode.startswith("I")
    out = np.asarray(check_rgb(load_image(f), (8, 8)))[..., 0].astype(int)
    expected = np.rint(a / 257.0).astype(int)
    assert np.abs(out - expected).max() <= 1
    # Clipping would leave almost every pixel at 255.
    assert (out == 255).sum() <= 1 and out[0, 0] == 0


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    f = tmp_path / "r.jpg"
    im.save(f, exif=exif.tobytes(), quality=95)
    out = load_image(f)
    assert out.size == (20, 40)  # width and height swapped
    o = np.asarray(out).astype(int)
    assert o[:20].mean() > 200 and o[20:].mean() < 50  # the white half is now on top


@pytest.fixture
def good_jpeg(tmp_path):
    f = tmp_path / "ok.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(f, quality=90)
    return f


def test_truncated_jpeg(good_jpeg, tmp_path):
    f = tmp_path / "trunc.jpg"
    f.write_bytes(good_jpeg.read_bytes()[: good_jpeg.stat().st_size // 2])
    with pytest.raises(ImageError) as e:
        load_image(f)
    assert e.value.path == str(f)
    assert "truncated" in e.value.reason
    assert str(e.value).startswith(f"{f}: ")


@pytest.mark.parametrize(
    "name,content,reason",
    [("zero.jpg", b"", "empty file"), ("text.jpg", b"hello, I am not a photo\n" * 10, "not an image")],
)
def test_bad_files(tmp_path, name, content, reason):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as e:
        load_image(f)
    assert e.value.path == str(f)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims a huge size (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side, reason", [
    (12_000, "decompression bomb: 144 MP image (12000x12000) is over the 128 MP limit"),  # over our limit only
    (20_000, "decompression bomb: 400 MP image is over the 128 MP limit"),  # over Pillow's error limit too: reworded
    (40_000, "decompression bomb: 1600 MP image is over the 128 MP limit"),
])
def test_decompression_bomb(tmp_path, side, reason):
    assert side * side > MAX_PIXELS
    f = tmp_path / "bomb.png"
    f.write_bytes(png_declaring(side, side))
    assert f.stat().st_size < 200
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        with pytest.raises(ImageError) as info:
            load_image(f)
    assert info.value.reason == reason and str(info.value) == f"{f}: {reason}"
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's process-wide setting is left alone


def test_between_pillows_warning_and_our_limit_is_decoded_without_a_warning():
    side = (10_000, 9_000)  # 90 MP: over Pillow's warning threshold (~89.5 MP), under MAX_PIXELS
    assert Image.MAX_IMAGE_PIXELS < side[0] * side[1] <= MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError) as info:
            decode_image(png_declaring(*side), "big.png")
    assert info.value.reason.startswith("corrupt or truncated")  # decoded, and only its missing data is wrong


def test_pillow_limit_lowered_by_the_application_is_named(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow now refuses over 2 MP, far under ours
    with pytest.raises(ImageError) as info:
        decode_image(png_declaring(2_000, 2_000), "im.png")
    assert info.value.reason == "decompression bomb: 4 MP image is over Pillow's limit of 2 MP (PIL.Image.MAX_IMAGE_PIXELS)"


def test_just_over_the_limit_does_not_read_as_the_limit():
    from pipelines.images import too_many_pixels

    assert too_many_pixels(MAX_PIXELS + 1) == "decompression bomb: 128.000001 MP image is over the 128 MP limit"


def test_bytes_input_and_pickling(good_jpeg):
    im = load_image(good_jpeg.read_bytes())
    assert im.size == (64, 64) and im.mode == "RGB"
    err = pickle.loads(pickle.dumps(ImageError("a/b.jpg", "empty file")))
    assert (err.path, err.reason, str(err)) == ("a/b.jpg", "empty file", "a/b.jpg: empty file")


def test_draft_decodes_big_jpeg_smaller_but_large_enough(tmp_path):
    f = tmp_path / "big.jpg"
    Image.fromarray(np.full((1200, 1600, 3), 90, np.uint8)).save(f)
    data = f.read_bytes()
    assert decode_image(data).size == (1600, 1200)
    small = decode_image(data, min_side=256)
    assert small.size == (400, 300)  # 1/4 scale: the smallest DCT scale keeping the short side >= 256
    assert decode_image(data, min_side=700).size == (1600, 1200)  # under 2x: full decode


def test_list_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ["z.JPG", "a/x.png", "a/b/y.jpeg", "a/notes.txt", ".hidden/h.jpg", "a/._x.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a link back to the top must not recurse forever
    found = list_images(tmp_path)
    assert found == sorted([tmp_path / "a" / "b" / "y.jpeg", tmp_path / "a" / "x.png", tmp_path / "z.JPG"])


def test_heic_photos_decode(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "IMG_0001.HEIC"
    Image.new("RGB", (64, 48), (250, 120, 10)).save(path)
    im = load_image(path)
    assert im.size == (64, 48) and im.mode == "RGB"
    assert abs(int(np.asarray(im)[24, 32, 0]) - 250) < 12  # lossy, but the colour survives


def test_huge_images_shrink_in_their_own_mode_and_ordinary_ones_do_not():
    """An 11000x11000 1-bit PNG (30 KB) once became 363 MB of RGB before the backbone's resize."""
    buf = io.BytesIO()
    Image.new("1", (11000, 11000), 1).save(buf, "PNG")
    im = decode_image(buf.getvalue(), min_side=256)
    assert im.mode == "RGB" and min(im.size) >= 512 and im.size[0] * im.size[1] < 1_000_000
    assert np.asarray(im).min() == 255  # white stays white
    ordinary = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)))
    assert decode_image(ordinary, min_side=256).size == (4000, 3000)  # 12 MP: decoded as is
    assert decode_image(buf.getvalue()).size == (11000, 11000)  # without min_side (no backbone to feed): whole


def _png(im):
    b = io.BytesIO()
    im.save(b, "PNG")
    return b.getvalue()
