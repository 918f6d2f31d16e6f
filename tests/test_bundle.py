"""The bundle across generator families: round trips with the neighbour-vote condition and calibration,
bundles of the first format, and the checks of the parts this format added."""
import json

import numpy as np
import pytest

from conftest import REPO, build_tiny_tagger, make_photo_files
from tagger.bundle import BundleError, config_dict
from tagger.scoring.calibration import Calibration
from tagger.model import Tagger
from tagger.scoring.options import TagOptions
from tagger.scoring.evidence import Evidence
from tagger.bundle import save
from tagger.bundle import load

OLD = REPO / "tests" / "data" / "bundle_v1"


@pytest.fixture
def photos(tmp_path):
    return make_photo_files(tmp_path / "photos", 6)


def test_a_first_format_bundle_loads_as_cgan_and_tags_as_it_did():
    """tests/data/bundle_v1 was saved by the tagger before the generator families (format 1, "gan" in its config)."""
    assert json.loads((OLD / "config.json").read_text())["format_version"] == 1
    tagger = load(OLD)
    assert tagger.family == "cgan" and tagger.methods == ("cgan", "knn", "cgan+knn", "prior")
    features = np.load(REPO / "tests" / "data" / "bundle_v1_features.npy")
    expected = json.loads((REPO / "tests" / "data" / "bundle_v1_expected.json").read_text())
    for method, tags in expected.items():
        got = [r.tags for r in tagger.tag(Evidence(features, None), TagOptions(method=method))]
        assert [[t for t, _ in row] for row in got] == [[t for t, _ in row] for row in tags], method
        assert np.allclose([s for row in got for _, s in row], [s for row in tags for _, s in row], atol=1e-5), method


@pytest.mark.parametrize("family", ["cgan", "cvae", "caae"])
def test_round_trip_of_every_family_with_condition_and_calibration(tmp_path, photos, family):
    tagger = build_tiny_tagger(family=family, unit=True, scoring="softmax", knn_photos=40, neighbour_votes=5)
    feats = tagger.read(photos).features
    rng = np.random.default_rng(0)
    truth = [set(rng.choice(len(tagger.words), 3, replace=False).tolist()) for _ in photos]
    tagger = tagger.replace(calibration={m: Calibration.fit(tagger.score(Evidence(feats, None), TagOptions(method=m), calibrated=False).order, truth, top=5) for m in tagger.methods})
    before = tagger.predict(photos, TagOptions(seed=3))
    save(tagger, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "calibration.json", "config.json", "generator.safetensors", "knn.npz", "vocabulary.json", "word_vectors.npz"]
    loaded = load(tmp_path / "m")
    assert loaded.family == family and loaded.methods == (family, "knn", f"{family}+knn", "prior")
    assert loaded.predict(photos, TagOptions(seed=3)) == before
    assert config_dict(loaded) == config_dict(tagger)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["generator"]["family"] == family and cfg["condition"] == {"neighbour_votes": 5} and cfg["method"] == family
    assert cfg["backbone"]["feature_dim"] == 32 and cfg["generator"]["config"]["feature_dim"] == 32 + len(tagger.words)
    # Calibrated scores are probabilities: within 0..1, in the raw ranking's order.
    scores = [s for row in before for _, s in row]
    assert all(0 < s <= 1 for s in scores)


def test_the_condition_carries_the_neighbours_votes(photos):
    tagger = build_tiny_tagger(knn_photos=40, neighbour_votes=5)
    feats = tagger.read(photos).features
    cond = tagger.conditions(feats)
    assert cond.shape == (len(photos), 32 + len(tagger.words))
    assert np.array_equal(cond[:, :32], feats)
    assert np.allclose(cond[:, 32:], tagger.knn.votes(feats, 5) / 5) and np.allclose(cond[:, 32:].sum(1), 2.0)  # 2 tags each
    with pytest.raises(ValueError, match="no kNN tagger"):
        Tagger(tagger.generator, tagger.vocabulary, tagger.word_vectors, "tiny", condition=tagger.condition)


@pytest.mark.parametrize("change, message", [
    (lambda p: (p / "knn.npz").unlink(), "knn.npz: missing from the bundle (the generator is conditioned on neighbour votes)"),
    (lambda p: (p / "calibration.json").write_text(json.dumps({"cgan": {"knots": [0, 1], "probs": [0.6, 0.2]}})),
     "calibration.json: cannot load the calibration (cgan: probs must be non-decreasing and within 0..1)"),
    (lambda p: (p / "calibration.json").write_text(json.dumps({"cvae": {"knots": [0, 1], "probs": [0.1, 0.2]}})),
     "calibration.json: calibrates cvae, which this bundle does not have"),
    (lambda p: (p / "calibration.json").write_text("{"), "calibration.json: cannot load the calibration"),
    (lambda p: _edit(p, lambda c: {**c, "condition": {"neighbour_votes": -1}}),
     "config.json: missing, unknown or out-of-range setting (neighbour_votes must be 0 or more, got -1)"),
    (lambda p: _edit(p, lambda c: {**c, "method": "clip"}),
     "config.json: default method 'clip' is not one of the bundle's (cgan, knn, cgan+knn, prior)"),
])
def test_damaged_condition_or_calibration_is_one_line_at_load(tmp_path, change, message):
    tagger = build_tiny_tagger(knn_photos=20, neighbour_votes=3)
    tagger = tagger.replace(calibration={"cgan": Calibration(np.array([0.0, 1.0]), np.array([0.1, 0.5]))})
    path = save(tagger, tmp_path / "m")
    change(path)
    with pytest.raises(BundleError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}/") and message in str(info.value), str(info.value)


def _edit(path, change):
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(change(cfg)))
