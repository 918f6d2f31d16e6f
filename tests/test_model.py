"""The model bundle: round trip, determinism, options, atomic writes and clear load errors."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import build_tiny_tagger, make_photo_files
from tagger.model import BundleError, Tagger


@pytest.fixture
def photos(tmp_path):
    return make_photo_files(tmp_path / "photos", 6)


def test_round_trip_gives_the_same_tags(tmp_path, photos):
    tagger = build_tiny_tagger()
    before = tagger.predict(photos, seed=3)
    tagger.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "generator.safetensors", "vocabulary.json", "word_vectors.npz"]
    loaded = Tagger.load(tmp_path / "m")
    assert loaded.predict(photos, seed=3) == before
    assert loaded.words == tagger.words
    assert loaded.config_dict() == tagger.config_dict()
    assert all(len(tags) == 3 for tags in before)


def test_half_precision_bundle_is_smaller_and_loads(tmp_path, photos):
    tagger = build_tiny_tagger()
    full = tagger.save(tmp_path / "full")
    half = tagger.save(tmp_path / "half", half=True)
    assert (half / "generator.safetensors").stat().st_size < 0.75 * (full / "generator.safetensors").stat().st_size
    loaded = Tagger.load(half)
    assert loaded.generator.out.weight.dtype.is_floating_point and len(loaded.predict(photos)) == len(photos)


def test_seeded_and_independent_of_the_batch(photos):
    tagger = build_tiny_tagger()
    both = tagger.predict(photos[:2], seed=1)
    assert tagger.predict(photos[:2], seed=1) == both
    assert tagger.predict(photos[1:2], seed=1)[0] == both[1]
    table = tagger.score_features(tagger.features(photos), tagger.options(seed=1))
    other = tagger.score_features(tagger.features(photos), tagger.options(seed=2))
    assert not np.array_equal(table, other)


def test_options_top_k_min_score_and_exclude(photos):
    tagger = build_tiny_tagger()
    tags = tagger.predict(photos[:1], top_k=5)[0]
    assert len(tags) == 5 and [s for _, s in tags] == sorted((s for _, s in tags), reverse=True)
    best = tags[0][0]
    # Excluded tags are given as users type them and normalized like the vocabulary.
    assert best not in [t for t, _ in tagger.predict(photos[:1], top_k=5, exclude=[best.upper()])[0]]
    cut = tags[2][1]
    assert all(s >= cut for _, s in tagger.predict(photos[:1], top_k=5, min_score=cut)[0])


def test_tag_paths_reports_bad_files_and_tags_the_rest(tmp_path, photos):
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    tagger = build_tiny_tagger()
    rows = list(tagger.tag_paths(photos[:3] + [bad], chunk=2, num_workers=0, seed=0))
    assert [r[0] for r in rows] == photos[:3] + [bad]
    assert [t for t, _ in rows[0][1]] == [t for t, _ in tagger.predict([photos[0]], seed=0)[0]]
    assert rows[3][1] is None and rows[3][2] and str(bad) not in rows[3][2]


def test_save_over_a_bundle_is_atomic(tmp_path, monkeypatch):
    tagger = build_tiny_tagger()
    path = tagger.save(tmp_path / "m")
    import tagger.model as model

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        tagger.save(path)
    assert Tagger.load(path).words == tagger.words  # the old bundle is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # and no temporary folder is left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(BundleError, match="not a model bundle; refusing"):
        tagger.save(tmp_path / "notes")


def test_load_errors_say_what_is_wrong(tmp_path):
    path = build_tiny_tagger().save(tmp_path / "m")
    with pytest.raises(BundleError, match="no config.json"):
        Tagger.load(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(BundleError, match="bundle format 99"):
        Tagger.load(path)
    (path / "config.json").write_text(json.dumps(cfg))
    weights = (path / "generator.safetensors").read_bytes()
    (path / "generator.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(BundleError, match="generator.safetensors: cannot load"):
        Tagger.load(path)
    (path / "generator.safetensors").write_bytes(weights)
    (path / "config.json").write_text(json.dumps({**cfg, "backbone": {**cfg["backbone"], "name": "efficientnet_lite0"}}))
    with pytest.raises(BundleError, match="trained on"):
        Tagger.load(path).features([Image.new("RGB", (8, 8))])
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "vocabulary.json").unlink()
    with pytest.raises(BundleError, match="vocabulary.json: missing"):
        Tagger.load(path)
