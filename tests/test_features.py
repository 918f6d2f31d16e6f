"""Feature extraction: alignment with the paths, bad photos reported and skipped, the content-keyed cache."""
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from pipelines.backbones import create_backbone
from pipelines.cache import FeatureCache
from pipelines.features import FeatureConfig, extract_features, extract_images
from pipelines.images import load_image
from pipelines.scan import list_images

TINY = dict(backbone="tiny", num_workers=0, device="cpu")


@pytest.fixture
def photos(tmp_path):
    """Twelve distinct small photos (a few grayscale), in a folder of their own."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        a = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
        im = Image.fromarray(a).convert("L") if i % 5 == 0 else Image.fromarray(a)
        path = folder / f"im{i}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def test_shape_dtype_and_alignment(photos):
    paths = [photos[0], photos[1], photos[0], photos[2]]
    result = extract_features(paths, FeatureConfig(**TINY), progress=False)
    assert result.features.shape == (4, 32) and result.features.dtype == np.float32
    assert result.ok.all() and result.errors == {} and result.n_extracted == 4
    assert np.allclose(result.features[0], result.features[2], atol=1e-6)
    assert not np.allclose(result.features[0], result.features[1])
    # Row i is photo i: the same numbers as extracting each photo alone.
    backbone = create_backbone("tiny", device="cpu")
    for row, path in enumerate(paths):
        alone = extract_images([load_image(path)], backbone)
        assert np.allclose(result.features[row], alone[0], atol=1e-5)


def test_worker_processes_give_the_same_features(photos):
    config = FeatureConfig(**{**TINY, "num_workers": 2, "batch_size": 5})
    with_workers = extract_features(photos, config, progress=False)
    in_process = extract_features(photos, FeatureConfig(**TINY), progress=False)
    assert np.allclose(with_workers.features, in_process.features, atol=1e-6)


def test_bad_photos_are_reported_and_skipped(photos, tmp_path, caplog):
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(photos[3].read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    missing = tmp_path / "gone.jpg"
    paths = [photos[0], truncated, photos[1], text, missing, photos[2]]
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        result = extract_features(paths, FeatureConfig(**TINY, batch_size=4), progress=False)
    assert result.ok.tolist() == [True, False, True, False, False, True]
    assert sorted(result.errors) == [1, 3, 4]
    assert result.errors[1].startswith(f"{truncated}: ") and "truncated" in result.errors[1]
    assert result.errors[3].startswith(f"{text}: ") and result.errors[4] == f"{missing}: no such file"
    assert np.isnan(result.features[~result.ok]).all()
    assert np.isfinite(result.features[result.ok]).all()
    assert str(truncated) in caplog.text and str(text) in caplog.text

    caplog.clear()  # a caller that reports the errors itself asks for no warnings; the errors are the same
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        quiet = extract_features(paths, FeatureConfig(**TINY, batch_size=4), progress=False, report=False)
    assert quiet.errors == result.errors and caplog.text == ""


def count_forwards(monkeypatch, backbone, fail_on: int | None = None) -> list:
    """Record the batch sizes the backbone sees; optionally crash on the `fail_on`-th batch."""
    calls = []
    original = backbone.forward_features

    def spy(x):
        calls.append(len(x))
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt  # what a user's Ctrl-C looks like mid-run
        return original(x)

    monkeypatch.setattr(backbone, "forward_features", spy)
    return calls


def test_cache_hits_renames_and_misses_changes(photos, tmp_path, monkeypatch):
    config = FeatureConfig(**TINY, batch_size=4, cache_dir=tmp_path / "cache")
    backbone = create_backbone("tiny", device="cpu")
    first = extract_features(photos, config, progress=False, backbone=backbone)
    assert (first.n_extracted, first.n_cached) == (12, 0)

    calls = count_forwards(monkeypatch, backbone)
    second = extract_features(photos, config, progress=False, backbone=backbone)
    assert calls == [] and (second.n_extracted, second.n_cached) == (0, 12)
    assert np.array_equal(second.features, first.features)

    # Renamed and copied photos are the same content: still no forward pass.
    renamed = photos[0].with_name("renamed.jpg")
    photos[0].rename(renamed)
    shutil.copy(photos[1], photos[1].with_name("copy.jpg"))
    moved = [renamed, *photos[1:], photos[1].with_name("copy.jpg")]
    third = extract_features(moved, config, progress=False, backbone=backbone)
    assert calls == [] and third.n_cached == 13
    assert np.array_equal(third.features[0], first.features[0])
    assert np.array_equal(third.features[-1], first.features[1])

    # A changed photo (same name, new pixels) is extracted again; nothing else is.
    Image.new("RGB", (48, 40), (250, 10, 10)).save(photos[5])
    fourth = extract_features(moved, config, progress=False, backbone=backbone)
    assert calls == [1] and (fourth.n_extracted, fourth.n_cached) == (1, 12)
    assert not np.allclose(fourth.features[5], first.features[5])


def test_duplicates_in_one_run_are_extracted_once(photos, tmp_path, monkeypatch):
    backbone = create_backbone("tiny", device="cpu")
    calls = count_forwards(monkeypatch, backbone)
    paths = [photos[0], photos[1], photos[0]]
    result = extract_features(paths, FeatureConfig(**TINY, cache_dir=tmp_path / "c"), progress=False, backbone=backbone)
    assert calls == [2] and result.n_extracted == 2
    assert np.array_equal(result.features[0], result.features[2])


def test_interrupted_run_resumes(photos, tmp_path, monkeypatch):
    config = FeatureConfig(**TINY, batch_size=4, cache_dir=tmp_path / "cache")
    clean = extract_features(photos, FeatureConfig(**TINY, batch_size=4), progress=False)

    backbone = create_backbone("tiny", device="cpu")
    calls = count_forwards(monkeypatch, backbone, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        extract_features(photos, config, progress=False, backbone=backbone)
    assert calls == [4, 4]  # the first batch finished, the second was cut off

    resumed = extract_features(photos, config, progress=False)
    assert (resumed.n_cached, resumed.n_extracted) == (4, 8)
    assert np.allclose(resumed.features, clean.features, atol=1e-6)
    # The completed run merged its batch shards (the interrupted run's one shard stays).
    (cache_dir,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # beside it: the backbone's ONNX file
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == 12 and sum(n.endswith("-all.sum") for n in names) == 1  # two shards of 6 files (with the measures)
    assert not any(n.endswith(".tmp") for n in names)


def test_damaged_shard_costs_a_reextraction_not_an_error(photos, tmp_path, caplog):
    config = FeatureConfig(**TINY, cache_dir=tmp_path / "cache")
    first = extract_features(photos[:3], config, progress=False)
    (hashes_file,) = (tmp_path / "cache").glob("*/*.hashes.npy")
    hashes_file.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        again = extract_features(photos[:3], config, progress=False)
    assert again.n_extracted == 3 and "ignoring shard" in caplog.text
    assert np.allclose(again.features, first.features)


def _shard(tmp_path):
    (hashes_file,) = (tmp_path / "cache").glob("*/*.hashes.npy")
    return hashes_file, hashes_file.with_name(hashes_file.name.replace(".hashes.npy", ".features.npy"))


@pytest.mark.parametrize("damage", ["plausible floats", "rows swapped", "random bytes", "empty", "colour edited", "colour removed"])
def test_a_shard_that_does_not_match_its_checksum_is_reextracted(photos, tmp_path, caplog, damage):
    """Damage once gave silently wrong features (plausible floats, swapped rows), lasting failures, or `Aborted.`."""
    config = FeatureConfig(**TINY, cache_dir=tmp_path / "cache")
    first = extract_features(photos[:3], config, progress=False)
    hashes_file, feats_file = _shard(tmp_path)
    feats = np.load(feats_file)
    if damage == "plausible floats":
        np.save(feats_file, feats + np.float32(0.01))
    elif damage == "rows swapped":
        np.save(feats_file, feats[[1, 0, 2]])
    elif damage == "random bytes":
        feats_file.write_bytes(np.random.default_rng(0).bytes(feats_file.stat().st_size))
    elif damage.startswith("colour"):
        # A grey photo made colourful would lose its blackandwhite tag: the chroma is under the checksum too.
        chroma_file = hashes_file.with_name(hashes_file.name.replace(".hashes.npy", ".chroma.npy"))
        if damage == "colour edited":
            np.save(chroma_file, np.load(chroma_file) + np.float32(50))
        else:
            chroma_file.unlink()
    else:
        feats_file.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        again = extract_features(photos[:3], config, progress=False)
    assert again.ok.all() and again.n_extracted == 3 and "ignoring shard" in caplog.text
    assert np.allclose(again.features, first.features, atol=1e-6)


def test_temporaries_of_killed_cache_writers_are_removed(photos, tmp_path):
    config = FeatureConfig(**TINY, cache_dir=tmp_path / "cache")
    extract_features(photos[:2], config, progress=False)
    folder = _shard(tmp_path)[0].parent
    dead, alive = folder / ".x.features.npy.99999999.abcd.tmp", folder / f".y.features.npy.{os.getppid()}.abcd.tmp"
    for f in (dead, alive):
        f.write_bytes(b"half")
    extract_features(photos[:2], config, progress=False)
    assert not dead.exists() and alive.exists()


def test_a_cache_that_cannot_be_written_is_a_warning(photos, tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        result = extract_features(photos[:2], FeatureConfig(**TINY, cache_dir=blocked / "cache"), progress=False)
    assert result.ok.all() and "cannot be used" in caplog.text


def test_cache_is_per_backbone_and_weights(photos, tmp_path):
    tiny = create_backbone("tiny", device="cpu")
    key_a = FeatureCache(tmp_path, tiny).dir
    assert key_a.name.startswith("tiny-") and key_a == FeatureCache(tmp_path, tiny).dir
    lite = create_backbone("efficientnet_lite0", device="cpu")
    assert FeatureCache(tmp_path, lite).dir != key_a


def test_config_defaults():
    c = FeatureConfig()
    assert c.backbone == "efficientnet_lite0" and c.batch_size == 64 and c.cache_dir is None
    assert c.num_workers == min(4, os.cpu_count() or 1)


@pytest.mark.slow
def test_efficientnet_lite0_on_real_photos(subset_dir):
    paths = list_images(subset_dir / "images")[:16]
    result = extract_features(paths, FeatureConfig(batch_size=8, num_workers=2, device="cpu"), progress=False)
    assert result.features.shape == (16, 1280) and result.ok.all()
    assert np.isfinite(result.features).all() and (result.features >= 0).all()
    assert result.features.std(axis=0).mean() > 0.01  # different photos, different features
    backbone = create_backbone(device="cpu")
    alone = extract_images([load_image(p) for p in paths[:2]], backbone)
    assert np.allclose(alone, result.features[:2], atol=1e-4)
