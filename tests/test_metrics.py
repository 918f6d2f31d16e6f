"""Ranking metrics on cases worked out by hand."""
import numpy as np
import pytest

from tagger.evaluation.metrics import (average_precision, coverage, image_map, n_plus, paired_difference, precision_at_k, recall_at_k,
                            report, tag_map, top_ids)


def test_top_ids_orders_and_excludes():
    table = np.array([[0.1, 0.9, 0.5, 0.5]])
    assert top_ids(table, 3).tolist() == [[1, 2, 3]]  # ties: lower id first
    assert top_ids(table, 2, exclude=np.array([1])).tolist() == [[2, 3]]


def test_precision_and_recall():
    ranked = np.array([[0, 1, 2], [3, 4, 5], [0, 1, 2]])
    truth = [{0, 2, 9}, {7}, set()]  # the third photo has no truth: left out
    assert precision_at_k(ranked, truth, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert precision_at_k(ranked, truth, 1) == pytest.approx(0.5)
    assert recall_at_k(ranked, truth, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert n_plus(ranked, truth, 3) == 2
    assert coverage(ranked, 10, 3) == pytest.approx(0.6)


def test_average_precision_by_hand():
    # Relevant items ranked 1st and 3rd: AP = (1/1 + 2/3) / 2.
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, False, True, False])) == pytest.approx(5 / 6)
    assert np.isnan(average_precision(np.array([0.3]), np.array([False])))


def test_image_and_tag_map():
    table = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1]])
    truth = [{2}, {1}]
    assert image_map(table, truth) == pytest.approx((1 / 2 + 1) / 2)
    # Tag 1: photos ranked [1, 0], relevant photo 1 first -> 1. Tag 2: ranked [0, 1], relevant 0 first -> 1.
    assert tag_map(table, truth) == pytest.approx(1.0)
    assert tag_map(np.array([[0.1, 0.9], [0.9, 0.1]]), [{0}, {1}]) == pytest.approx(0.5)


def test_report_has_every_metric():
    rng = np.random.default_rng(0)
    table = rng.random((20, 30))
    truth = [set(rng.choice(30, 3, replace=False).tolist()) for _ in range(20)]
    r = report(table, truth)
    for k in (1, 3, 5, 10):
        assert 0 <= r[f"P@{k}"] <= 1 and 0 <= r[f"R@{k}"] <= 1
    assert {"MiAP", "MAP", "N+", "coverage"} <= set(r) and r["photos"] == 20
    perfect = np.zeros((20, 30))
    for i, t in enumerate(truth):
        perfect[i, list(t)] = 1
    assert report(perfect, truth)["MiAP"] == pytest.approx(1.0) and report(perfect, truth)["P@3"] == pytest.approx(1.0)


def test_paired_difference_by_hand():
    # Three photos, one true word each; a ranks it first on photos 0 and 1, b only on photo 2.
    truth = [{0}, {1}, {2}, set()]
    a = np.eye(4, 3)[[0, 1, 0, 0]]
    b = np.eye(4, 3)[[1, 0, 2, 2]]
    d = paired_difference(a, b, truth, k=1, resamples=2000)
    assert d["photos"] == 3 and d["a_better"] == 2 and d["b_better"] == 1
    assert d["diff"] == pytest.approx(1 / 3)
    assert d["se"] == pytest.approx(np.std([1, 1, -1], ddof=1) / np.sqrt(3))
    assert -1 <= d["low"] <= d["diff"] <= d["high"] <= 1 and d["low"] < d["high"]


def test_paired_difference_interval_shrinks_with_photos_and_finds_a_real_gap():
    rng = np.random.default_rng(1)
    n, v = 2000, 20
    truth = [{int(w)} for w in rng.integers(0, v, n)]
    right = np.zeros((n, v))
    right[np.arange(n), [next(iter(t)) for t in truth]] = 1.0
    noise = rng.random((n, v))
    # a finds the true word 60% of the time, b 50%: a real gap of about 0.1 at k = 1.
    a = np.where(rng.random((n, 1)) < 0.6, right + noise * 0.1, noise)
    b = np.where(rng.random((n, 1)) < 0.5, right + noise * 0.1, noise)
    small = paired_difference(a[:100], b[:100], truth[:100], k=1, resamples=2000)
    big = paired_difference(a, b, truth, k=1, resamples=2000)
    assert big["high"] - big["low"] < small["high"] - small["low"]
    assert big["low"] > 0 and 0.05 < big["diff"] < 0.15
    same = paired_difference(a, a, truth, k=1, resamples=200)
    assert same["diff"] == 0 and same["a_better"] == same["b_better"] == 0


def test_visualness_tells_a_word_the_pixels_know_from_one_they_do_not():
    from tagger.evaluation.metrics import visualness

    rng = np.random.default_rng(0)
    truth = [({0} if i % 4 == 0 else set()) | ({1} if rng.random() < 0.25 else set()) | {2} for i in range(400)]
    table = rng.random((400, 3))
    table[:, 0] += [1.0 if 0 in t else 0.0 for t in truth]  # word 0 is seen; word 1's score is noise
    v = visualness(table, truth)
    assert v[0]["ap"] == pytest.approx(1.0) and v[0]["lift"] == pytest.approx(1 / v[0]["prior"])
    assert 0.7 < v[1]["lift"] < 1.5 and v[0]["lift"] > 3
    assert v[2]["prior"] == 1.0 and v[2]["lift"] == pytest.approx(1.0)  # on every photo: nothing to rank
