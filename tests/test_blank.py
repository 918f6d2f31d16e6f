"""Blank frames (lens cap on, a blown-out frame, a grey card, a blank scan) are told from real scenes by their pixels."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.images import BLANK_REASONS, Blank, blank_frame, decode_image, load_image, read_bytes


def camera_frame(pixels: np.ndarray, tmp_path: Path, name: str = "frame.jpg") -> Image.Image:
    """A frame as a camera or scanner saves it (JPEG) and as the engines decode it (for a 256 px backbone)."""
    path = tmp_path / name
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
    return load_image(path, min_side=256)


def noisy(level, shape=(900, 1200), sigma=3.0, seed=0) -> np.ndarray:
    """A frame of one level (or levels per pixel) with sensor noise, in RGB."""
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.asarray(level, dtype=np.float64), shape)
    return np.repeat(base[..., None], 3, axis=2) + rng.normal(0, sigma, (*shape, 3))


def test_a_lens_cap_frame_is_near_black(tmp_path):
    frame = noisy(3.0)
    hot = np.random.default_rng(1).integers(0, 900 * 1200, 40)  # hot pixels, as a long exposure in the dark has
    frame.reshape(-1, 3)[hot] = 255
    assert blank_frame(camera_frame(frame, tmp_path)) is Blank.NEAR_BLACK


def test_a_blown_out_frame_is_near_white(tmp_path):
    assert blank_frame(camera_frame(noisy(252.0), tmp_path)) is Blank.NEAR_WHITE


@pytest.mark.parametrize("level", [40, 128, 200])
def test_a_grey_card_is_uniform(tmp_path, level):
    assert blank_frame(camera_frame(noisy(float(level)), tmp_path)) is Blank.UNIFORM


def test_a_flat_colour_is_uniform_but_two_colours_of_one_grey_are_not(tmp_path):
    red = np.zeros((600, 800, 3))
    red[..., 0] = 200
    assert blank_frame(camera_frame(red, tmp_path)) is Blank.UNIFORM
    halves = red.copy()
    halves[:, 400:] = (0, 102, 0)  # about the luminance of the red: only the colours tell the halves apart
    assert blank_frame(camera_frame(halves, tmp_path)) is Blank.NONE


def test_a_blank_scan_with_vignetting_is_featureless(tmp_path):
    y, x = np.mgrid[-1:1:1100j, -1:1:850j]
    paper = 232.0 - 14.0 * (x ** 2 + y ** 2) / 2  # darker towards the corners, as a scanner's lamp lights it
    assert blank_frame(camera_frame(noisy(paper, shape=paper.shape, sigma=2.0), tmp_path)) is Blank.FEATURELESS


def test_a_clear_sky_is_a_scene(tmp_path):
    """A smooth gradient from deep blue to pale is a photo of the sky, not a blank frame."""
    t = np.linspace(0, 1, 900)[:, None, None]
    sky = (1 - t) * np.array([40, 90, 200]) + t * np.array([190, 215, 240])
    assert blank_frame(camera_frame(np.broadcast_to(sky, (900, 1200, 3)).copy(), tmp_path)) is Blank.NONE


def test_every_blank_kind_says_why():
    assert set(BLANK_REASONS) == {b for b in Blank if b not in (Blank.NONE, Blank.UNMEASURED)}
    assert all(reason.endswith("frame") for reason in BLANK_REASONS.values())


def test_small_and_grey_images_are_measured_too():
    assert blank_frame(Image.new("L", (3, 2), 0)) is Blank.NEAR_BLACK
    assert blank_frame(Image.new("RGB", (1, 1), (128, 128, 128))) is Blank.UNIFORM


SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
                  "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "clock", "microaneurysms", "cell",
                  "stereo_motorcycle")


def skimage_photos() -> dict[str, Image.Image]:
    data = pytest.importorskip("skimage.data", reason="scikit-image's sample photos (the dev extra)")
    found = {}
    for name in SKIMAGE_PHOTOS:
        try:
            a = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a few need pooch to fetch them: those are left out
            continue
        a = np.asarray(a[0] if isinstance(a, tuple) else a)
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a[..., :3] if a.ndim == 3 else a).save(buf, "PNG")
        found[name] = decode_image(buf.getvalue(), name, min_side=256)
    assert len(found) >= 10
    return found


def test_none_of_scikit_images_photos_is_blank():
    """Among them a dark star field (hubble_deep_field), a low-contrast moon and a scanned page."""
    called = {name: blank_frame(im) for name, im in skimage_photos().items()}
    assert {n: b for n, b in called.items() if b is not Blank.NONE} == {}


@pytest.mark.slow
@pytest.mark.data
def test_none_of_the_subsets_photos_is_blank(subset_dir):
    """Every photo of the subset is a real scene: night shots, concerts, snow fields, macro shots on a smooth background."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted((subset_dir / "images").glob("*.jpg")) + sorted((subset_dir / "images_fullres").glob("*.jpg"))
    assert len(paths) > 10_000

    def one(path):
        return path.name, blank_frame(decode_image(read_bytes(path), path, min_side=256))

    with ThreadPoolExecutor(2) as pool:
        called = dict(pool.map(one, paths, chunksize=256))
    assert {n: b for n, b in called.items() if b is not Blank.NONE} == {}
