"""What users see: the probability that a person looking at the photo agrees with a tag (fitted on the
concept-labelled photos, the only complete truth there is), and the default threshold chosen with it."""
import numpy as np
import pytest

from conftest import build_tiny_tagger
from tagger.bundle import load, save
from tagger.model import Scores
from tagger.scoring.calibration import Calibration
from tagger.scoring.concepts import concept_truth
from tagger.scoring.evidence import Evidence
from tagger.scoring.options import TagOptions
from tagger.training.fit import choose_threshold


def test_concept_truth_knows_only_the_words_that_name_a_concept():
    words = ["sky", "ocean", "beach", "sea", "dogs", "party"]
    known, truth = concept_truth(words, [["sea", "sky"], None, [], ["dog"]])
    # `beach` points to the sea but is not right whenever the sea is in the photo; `party` names no concept.
    assert [w for w, k in zip(words, known) if k] == ["sky", "ocean", "sea", "dogs"]
    assert truth == [{0, 1, 3}, set(), set(), {4}]


def table_with_known_precision(n=2000, seed=0):
    """Shown probabilities of 8 words per photo, each right with exactly its probability (calibrated)."""
    rng = np.random.default_rng(seed)
    shown = rng.random((n, 8))
    truth = [set(np.flatnonzero(rng.random(8) < row).tolist()) for row in shown]
    return Scores(shown, shown, np.ones(n, dtype=bool)), truth


def test_the_threshold_is_the_lowest_that_reaches_the_precision():
    scores, truth = table_with_known_precision()
    known = np.ones(8, dtype=bool)
    threshold, reached, per_photo = choose_threshold(scores, known, truth, top_k=8, precision=0.8)
    # Tags above t are right (1 + t) / 2 of the time: 0.8 is reached at t = 0.6.
    assert threshold == pytest.approx(0.6, abs=0.05) and reached >= 0.8
    assert per_photo == pytest.approx((scores.shown >= threshold).sum(axis=1).mean())
    lower, lower_reached, more = choose_threshold(scores, known, truth, top_k=8, precision=0.7)
    assert lower < threshold and 0.7 <= lower_reached < reached and more > per_photo
    # Only the words whose truth is complete count: with the right words unknown, the precision falls.
    half = np.array([True] * 4 + [False] * 4)
    _, half_reached, _ = choose_threshold(scores, half, [t & {0, 1, 2, 3} for t in truth], top_k=8, precision=0.8)
    assert half_reached >= 0.8


def test_users_see_the_acceptance_probability_and_it_survives_a_round_trip(tmp_path):
    from conftest import make_photo_files

    photos = make_photo_files(tmp_path, 4)
    tagger = build_tiny_tagger(unit=True, scoring="softmax")
    ev = Evidence(tagger.read(photos).features, None)
    raw = tagger.score(ev, TagOptions(), calibrated=False).order
    lo, hi = float(np.median(raw)), float(raw.max())
    owner = Calibration(np.array([lo, hi]), np.array([0.05, 0.3]))
    agree = Calibration(np.array([lo, hi]), np.array([0.4, 0.9]))
    tagger = tagger.replace(calibration={"cgan": owner}, acceptance={"cgan": agree})
    best = max(s for row in tagger.predict(photos) for _, s in row)
    assert best == pytest.approx(0.9, abs=1e-5)  # the acceptance map, not the owners' 0.3
    save(tagger, tmp_path / "m")
    assert (tmp_path / "m" / "acceptance.json").is_file()
    loaded = load(tmp_path / "m")
    assert loaded.acceptance["cgan"].probs.tolist() == agree.probs.tolist()
    assert loaded.predict(photos) == tagger.predict(photos)
    with pytest.raises(ValueError, match="calibrates cvae"):
        tagger.replace(acceptance={"cvae": agree})
