"""Calibrated tag scores: a method's raw score mapped to the probability that the photo's owner uses the tag.

Fitted on validation photos: every photo's `top` best words by raw score, each a hit if the owner
tagged the photo with it, and an isotonic regression (pool-adjacent-violators, scipy's) of hit on raw
score, its constant blocks then joined by lines through their centres (smooth tails beyond the ends),
so the map rises strictly: no two tags of a photo share a probability unless their raw scores are
equal. The map is monotone, so it never reorders a photo's tags: P@k is unchanged, and a score of 0.5
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


def candidates(table: np.ndarray, truth: Sequence[set[int]], top: int, known: np.ndarray | None = None,
               photos: Sequence[bool] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, hits (0/1) and word ids of each photo's `top` best words; words ruled out (score -inf, or 0
    once calibrated) are left out, and so are photos without a true tag, unless `photos` says which photos
    to keep (the concept labels: a photo without any of the concepts is still judged). `known`: a (V,)
    mask of the words whose truth is complete; the others among the best words are left out."""
    keep = [i for i, t in enumerate(truth) if t] if photos is None else list(np.flatnonzero(photos))
    if not keep:
        return np.zeros(0, np.float64), np.zeros(0, np.float64), np.zeros(0, np.int64)
    ids = top_ids(table[keep], top)
    scores = np.take_along_axis(table[keep], ids, axis=1)
    hits = np.array([[w in truth[i] for w in row] for i, row in zip(keep, ids.tolist())], dtype=np.float64)
    scores, hits, ids = scores.ravel().astype(np.float64), hits.ravel(), ids.ravel()
    shown = np.isfinite(scores)  # words the tagger ruled out (-inf) are not among what it shows
    if known is not None:
        shown &= known[ids]
    return scores[shown], hits[shown], ids[shown]


TOP_TAIL = 0.1  # above the fitted range a score gains at most this share of the way from the last knot's probability to 1


@dataclass
class Calibration:
    """A monotone map from raw score to probability: `knots` (increasing raw scores) to `probs`."""

    knots: np.ndarray
    probs: np.ndarray
    photos: int = 0  # validation photos it was fitted on
    top: int = 10  # words per photo it was fitted on

    def __call__(self, table: np.ndarray) -> np.ndarray:
        """Probabilities for raw scores of any shape, strictly increasing in the raw score: linear between
        the knots; below the first knot a smooth decay to 0, above the last a smooth rise that continues the
        last segment's slope but gains at most a tenth of the way to 1 (validation never saw such scores:
        it orders them, it does not vouch for them); ruled-out words (-inf) get 0. Two tags of a photo with different raw scores
        so never show the same probability. (Bundles calibrated before the knots were block centres hold
        flat steps; there the raw score still orders, by less than 1e-6.)"""
        table = np.asarray(table, dtype=np.float64)  # the tie-break below is under float32's resolution
        x, y = self.knots, self.probs
        p = np.interp(table, x, y)
        finite = np.isfinite(table)
        if len(x) >= 2:
            t = np.where(finite, table, 0.0)
            low_slope, high_slope = (y[1] - y[0]) / max(x[1] - x[0], 1e-12), (y[-1] - y[-2]) / max(x[-1] - x[-2], 1e-12)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                if y[0] > 0 and low_slope > 0:
                    p = np.where(t < x[0], y[0] * np.exp(np.minimum(low_slope * (t - x[0]) / y[0], 0.0)), p)
                gain = (1 - y[-1]) * TOP_TAIL
                if gain > 0 and high_slope > 0:
                    p = np.where(t > x[-1], y[-1] + gain * (1 - np.exp(-high_slope * np.maximum(t - x[-1], 0.0) / gain)), p)
        p = p + 1e-6 * (np.arctan(np.where(finite, table, 0)) / np.pi + 0.5)
        return np.where(finite, np.clip(p, 0.0, 1.0), 0.0)

    @classmethod
    def fit(cls, table: np.ndarray, truth: Sequence[set[int]], top: int = 10, known: np.ndarray | None = None,
            photos: Sequence[bool] | None = None) -> "Calibration":
        """The map fitted on `table`'s raw scores (`candidates` says which words count as hits)."""
        scores, hits, _ = candidates(table, truth, top, known, photos)
        if len(scores) == 0:
            raise ValueError("calibration needs photos with at least one true tag")
        # Equal scores must get one probability: pool them first (the prior scores every photo alike, and a
        # sum of per-photo-normalized scores puts many top words at exactly its maximum).
        x, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
        rate = np.bincount(inverse, weights=hits) / counts
        fitted = isotonic_regression(rate, weights=counts.astype(np.float64)).x
        # One knot per constant block of the isotonic fit, at the block's count-weighted mean score: lines
        # between them rise strictly, where the step function gave every score of a block (seven tags of a
        # photo, once) the same probability.
        block = np.concatenate([[0], np.cumsum(np.diff(fitted) != 0)])
        weight = np.bincount(block, weights=counts.astype(np.float64))
        centres = np.bincount(block, weights=x * counts) / weight
        probs = np.bincount(block, weights=fitted * counts) / weight
        return cls(centres.astype(np.float64), np.clip(probs, 0, 1), photos=sum(1 for t in truth if t), top=top)

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
