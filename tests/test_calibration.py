"""Calibrated scores: a monotone map fitted on validation photos, probabilities that hold on other photos."""
import numpy as np
import pytest

from conftest import build_tiny_tagger
from tagger.scoring.calibration import Calibration, candidates, expected_calibration_error, reliability
from tagger.evaluation.metrics import top_ids
from tagger.scoring.options import TagOptions
from tagger.scoring.evidence import Evidence


def scored_photos(n, seed):
    """Raw scores whose true chance of being a user tag is score ** 2 / 2 (miscalibrated as they are)."""
    rng = np.random.default_rng(seed)
    table = rng.random((n, 40))
    truth = [set(np.flatnonzero(rng.random(40) < row ** 2 / 2).tolist()) | {0} for row in table]
    return table, truth


def test_the_fitted_map_is_monotone_keeps_the_ranking_and_holds_on_new_photos():
    table, truth = scored_photos(3000, 0)
    cal = Calibration.fit(table, truth, top=10)
    assert np.all(np.diff(cal.knots) >= 0) and np.all(np.diff(cal.probs) >= 0) and 0 <= cal.probs.min() <= cal.probs.max() <= 1
    new, new_truth = scored_photos(3000, 1)
    scores, hits, _ = candidates(new, new_truth, 10)
    assert expected_calibration_error(scores, hits) > 0.2  # raw scores are not probabilities
    probs, hits, _ = candidates(cal(new), new_truth, 10)
    assert expected_calibration_error(probs, hits) < 0.03  # the calibrated ones are, on photos it never saw
    # Monotone, with the raw score breaking the map's ties: a photo's tags keep their order.
    assert np.array_equal(top_ids(cal(new), 10), top_ids(new, 10))
    # Beyond the fitted range: still rising, towards 0 below, and above by at most a tenth of the way to 1.
    ends = cal(np.array([-5.0, -1.0, cal.knots[0], cal.knots[-1], 5.0, 50.0]))
    assert np.all(np.diff(ends) > 0) and ends[0] >= 0
    assert ends[-1] <= cal.probs[-1] + (1 - cal.probs[-1]) / 10 + 1e-6
    assert cal(np.array([[-np.inf, 0.5]]))[0, 0] == 0.0  # a ruled-out word is never shown
    assert Calibration.from_dict(cal.to_dict()).knots.tolist() == cal.knots.tolist()


def test_no_two_tags_of_a_photo_share_a_probability():
    # The isotonic fit is a step function; a step map gives every raw score of a step one probability.
    table, truth = scored_photos(3000, 2)
    cal = Calibration.fit(table, truth, top=10)
    assert np.all(np.diff(cal.probs) > 0) and np.all(np.diff(cal.knots) > 0)
    new = scored_photos(500, 3)[0]
    raw = np.take_along_axis(new, top_ids(new, 5), axis=1)
    shown = np.take_along_axis(cal(new), top_ids(new, 5), axis=1)
    apart = np.diff(raw, axis=1) < -0.002  # tags whose raw scores differ visibly
    # Strictly falling down each photo's list by more than the raw-score tie-break (1e-6): no ties.
    assert apart.sum() > 1000 and np.all(np.diff(shown, axis=1)[apart] < -1e-6)


def test_reliability_bins_count_every_prediction():
    probs, hits = np.array([0.05, 0.15, 0.12, 0.95]), np.array([0.0, 1.0, 0.0, 1.0])
    bins = reliability(probs, hits)
    assert [b["count"] for b in bins] == [1, 2, 1] and bins[1]["observed"] == 0.5
    assert expected_calibration_error(probs, hits) == pytest.approx((0.05 + 2 * abs(0.135 - 0.5) + 0.05) / 4)
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration.from_dict({"knots": [0, 1], "probs": [0.5, 0.1]})


def test_a_calibrated_tagger_shows_probabilities_and_min_score_means_one(tmp_path):
    from conftest import make_photo_files

    photos = make_photo_files(tmp_path, 4)
    tagger = build_tiny_tagger(unit=True, scoring="softmax")
    raw = tagger.predict(photos)
    table = tagger.score(Evidence(tagger.read(photos).features, None), TagOptions(), calibrated=False).order
    # A map that gives the photo's best raw score 0.9 and everything at or below the median 0.1.
    knots = np.array([np.median(table), table.max()])
    tagger = tagger.replace(calibration={"cgan": Calibration(knots, np.array([0.1, 0.9]))})
    shown = tagger.predict(photos)
    assert [[t for t, _ in r] for r in shown] == [[t for t, _ in r] for r in raw]  # the same tags, in the same order
    assert max(s for r in shown for _, s in r) == pytest.approx(0.9, abs=1e-5)
    assert all(s >= 0.5 for r in tagger.predict(photos, TagOptions(min_score=0.5)) for _, s in r)
    assert sum(map(len, tagger.predict(photos, TagOptions(min_score=0.5)))) < sum(map(len, shown))


def test_equal_scores_get_one_probability():
    # Every photo scores word 0 at 1.0 and word 1 at 0.5 (as the prior does); word 0 is right on 30% of them.
    table = np.tile([1.0, 0.5, 0.1], (100, 1))
    truth = [{0} if i % 10 < 3 else {2} for i in range(100)]
    cal = Calibration.fit(table, truth, top=2)
    assert cal(np.array([1.0]))[0] == pytest.approx(0.3, abs=1e-6) and cal(np.array([0.5]))[0] == pytest.approx(0.0, abs=1e-6)
