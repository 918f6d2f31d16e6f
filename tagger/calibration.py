"""Calibrated tag scores: a method's raw score mapped to the probability that the photo's owner uses the tag.

Fitted on validation photos: every photo's `top` best words by raw score, each a hit if the owner
tagged the photo with it. First an isotonic regression (pool-adjacent-violators, scipy's) of hit on
raw score, the same for every word; then a factor per word, the word's hits over the hits that map
predicted for it, shrunk towards 1 by `shrink` hits on either side, so that a word the method
proposes often and owners rarely use (a place name, "me") gets the lower probability it has earned
and a word with few validation photos keeps the common map. A score of 0.5 means that about half of
the tags given that score were the owner's own on photos the model did not train on; photos are
ranked by it. `reliability` and `expected_calibration_error` check it on other photos.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import isotonic_regression

from tagger.metrics import top_ids


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
    """A monotone map from raw score to probability (`knots`, increasing raw scores, to `probs`), times a
    factor per word (`word_factor`, (V,); None: 1 for every word)."""

    knots: np.ndarray
    probs: np.ndarray
    word_factor: np.ndarray | None = None
    photos: int = 0  # validation photos it was fitted on
    top: int = 10  # words per photo it was fitted on

    def __call__(self, table: np.ndarray) -> np.ndarray:
        """Probabilities for raw scores (N, V); outside the fitted range, the end values. Ruled-out words
        (-inf) get 0. Within a word, a higher raw score never gets a lower probability, and ties of the
        map are broken by the raw score (by less than 1e-6), so the ranking keeps what the map pools."""
        p = np.interp(table, self.knots, self.probs)
        if self.word_factor is not None:
            p = np.clip(p * self.word_factor, 0, 1)
        finite = np.isfinite(table)
        p = p + 1e-6 * (np.arctan(np.where(finite, table, 0)) / np.pi + 0.5)
        return np.where(finite, p, 0.0).astype(np.float32)

    def mapped(self, scores: np.ndarray) -> np.ndarray:
        """The common map alone, for raw scores of any shape (before the word factors)."""
        return np.interp(scores, self.knots, self.probs)

    @classmethod
    def fit(cls, table: np.ndarray, truth: Sequence[set[int]], top: int = 10, shrink: float = 5.0) -> "Calibration":
        scores, hits, words = candidates(table, truth, top)
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
        common = cls(x[ends].astype(np.float64), np.clip(fitted[ends], 0, 1), photos=sum(1 for t in truth if t), top=top)
        # Per word: its hits against the hits the common map expected, each side given `shrink` more.
        vocab = table.shape[1]
        expected = np.bincount(words, weights=common.mapped(scores), minlength=vocab)
        found = np.bincount(words, weights=hits, minlength=vocab)
        common.word_factor = (found + shrink) / (expected + shrink)
        return common

    def to_dict(self) -> dict:
        return {"knots": self.knots.tolist(), "probs": self.probs.tolist(), "photos": self.photos, "top": self.top,
                "word_factor": None if self.word_factor is None else self.word_factor.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        knots, probs = np.asarray(d["knots"], dtype=np.float64), np.asarray(d["probs"], dtype=np.float64)
        if knots.ndim != 1 or knots.shape != probs.shape or len(knots) == 0:
            raise ValueError("knots and probs must be two lists of the same, non-zero length")
        if not (np.all(np.isfinite(knots)) and np.all(np.isfinite(probs))) or np.any(np.diff(knots) < 0):
            raise ValueError("knots must be finite and non-decreasing, probs finite")
        if np.any(np.diff(probs) < 0) or probs.min() < 0 or probs.max() > 1:
            raise ValueError("probs must be non-decreasing and within 0..1")
        factor = d.get("word_factor")
        if factor is not None:
            factor = np.asarray(factor, dtype=np.float64)
            if factor.ndim != 1 or not np.all(np.isfinite(factor)) or np.any(factor < 0):
                raise ValueError("word_factor must be a list of finite numbers of 0 or more")
        return cls(knots, probs, factor, int(d.get("photos", 0)), int(d.get("top", 10)))


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
