"""Calibrated tag scores: a method's raw score mapped to the probability that the photo's owner uses the tag.

Fitted on validation photos: every photo's `top` best words by raw score, each a hit if the owner
tagged the photo with it, and an isotonic regression (pool-adjacent-violators, scipy's) of hit on raw
score. The map is monotone, so it never reorders a photo's tags: P@k is unchanged, and a score of 0.5
means that about half of the tags given that score were the owner's own on photos the model did not
train on. `reliability` and `expected_calibration_error` check it on other photos.

A factor per word on top of the common map (a word's validation hits over the hits the map expected,
shrunk towards 1) was tried, to give words proposed often and rarely used (place names, "me") the
lower probability they earn: fitted on one half of the validation photos and ranked by on the other,
it lowered P@5 of the combined methods by 0.003-0.006 and did not reduce the place names shown.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import NonNegativeInt, PositiveInt
from scipy.optimize import isotonic_regression

from embeddings.checks import check_type, check_values
from tagger.scoring.voting import top_ids


def candidates(table: np.ndarray, truth: Sequence[set[int]], top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, hits (0/1) and word ids of each photo's `top` best words; photos without a true tag, and
    words ruled out (score -inf, or 0 once calibrated), are left out."""
    keep = [i for i, t in enumerate(truth) if t]
    if not keep:
        return np.zeros(0, np.float64), np.zeros(0, np.float64), np.zeros(0, np.int64)
    ids = top_ids(table[keep], top)
    scores = np.take_along_axis(table[keep], ids, axis=1)
    hits = np.array([[w in truth[i] for w in row] for i, row in zip(keep, ids.tolist())], dtype=np.float64)
    scores, hits, ids = scores.ravel().astype(np.float64), hits.ravel(), ids.ravel()
    shown = np.isfinite(scores)  # words the tagger ruled out (-inf) are not among what it shows
    return scores[shown], hits[shown], ids[shown]


@dataclass
class Calibration:
    """A monotone map from raw score to probability: `knots` (increasing raw scores) to `probs`."""

    knots: np.ndarray
    probs: np.ndarray
    photos: int = 0  # validation photos it was fitted on
    top: int = 10  # words per photo it was fitted on

    def __call__(self, table: np.ndarray) -> np.ndarray:
        """Probabilities for raw scores of any shape; outside the fitted range, the end values; ruled-out words
        (-inf) get 0. Where the map is flat, the raw score still orders (by less than 1e-6), so ranking by
        the probabilities ranks as the raw scores do."""
        table = np.asarray(table, dtype=np.float64)  # the tie-break below is under float32's resolution
        p = np.interp(table, self.knots, self.probs)
        finite = np.isfinite(table)
        p = p + 1e-6 * (np.arctan(np.where(finite, table, 0)) / np.pi + 0.5)
        return np.where(finite, p, 0.0)

    @classmethod
    def fit(cls, table: np.ndarray, truth: Sequence[set[int]], top: int = 10) -> "Calibration":
        scores, hits, _ = candidates(table, truth, top)
        if len(scores) == 0:
            raise ValueError("calibration needs photos with at least one true tag")
        # Equal scores must get one probability: pool them first (the prior scores every photo alike, and a
        # sum of per-photo-normalized scores puts many top words at exactly its maximum).
        x, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
        rate = np.bincount(inverse, weights=hits) / counts
        fitted = isotonic_regression(rate, weights=counts.astype(np.float64)).x
        # Keep the ends of each constant block: the step function with linear joins between blocks.
        change = np.flatnonzero(np.diff(fitted)) + 1
        ends = np.unique(np.concatenate([[0], change - 1, change, [len(x) - 1]]))
        return cls(x[ends].astype(np.float64), np.clip(fitted[ends], 0, 1), photos=sum(1 for t in truth if t), top=top)

    def to_dict(self) -> dict:
        return {"knots": self.knots.tolist(), "probs": self.probs.tolist(), "photos": self.photos, "top": self.top}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """From `to_dict`'s values, which may come from a stranger's bundle: each checked by type, then as a map."""
        check_type(d, dict, "the calibration")
        for name in ("knots", "probs"):
            if name not in d:
                raise ValueError(f"{name} is missing")
        check_values(d, _TYPES)
        knots, probs = np.asarray(d["knots"], dtype=np.float64), np.asarray(d["probs"], dtype=np.float64)
        if knots.ndim != 1 or knots.shape != probs.shape or len(knots) == 0:
            raise ValueError("knots and probs must be two lists of the same, non-zero length")
        if not (np.all(np.isfinite(knots)) and np.all(np.isfinite(probs))) or np.any(np.diff(knots) < 0):
            raise ValueError("knots must be finite and non-decreasing, probs finite")
        if np.any(np.diff(probs) < 0) or probs.min() < 0 or probs.max() > 1:
            raise ValueError("probs must be non-decreasing and within 0..1")
        return cls(knots, probs, d.get("photos", 0), d.get("top", 10))


_TYPES = {"knots": list[float], "probs": list[float], "photos": NonNegativeInt, "top": PositiveInt}


def reliability(probs: np.ndarray, hits: np.ndarray, bins: int = 10) -> list[dict]:
    """Per equal-width bin of predicted probability: its mean prediction, the observed hit rate and the count."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "predicted": float(probs[m].mean()),
                        "observed": float(hits[m].mean()), "count": int(m.sum())})
    return out


def expected_calibration_error(probs: np.ndarray, hits: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted probability and observed hit rate over the bins."""
    if len(probs) == 0:
        return float("nan")
    return float(sum(r["count"] * abs(r["predicted"] - r["observed"]) for r in reliability(probs, hits, bins)) / len(probs))
