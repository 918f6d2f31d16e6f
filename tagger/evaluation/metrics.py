"""Tag-ranking metrics against each photo's true tags (word ids).

Every function takes a score table (N photos, V words) or its top-k ids, and `truth`, a list of
sets of word ids per photo. Photos whose truth is empty are left out (the caller counts them).

- P@k, R@k: mean over photos of |top-k ∩ truth| / k and / |truth|.
- F1@k: harmonic mean of P@k and R@k (of the means, as in the tag-annotation literature).
- MiAP: mean over photos of the average precision of the full word ranking.
- MAP (per tag): mean over words that occur in the truth of the average precision of ranking the
  photos by that word's score.
- N+: words predicted correctly (in some photo's top k and in its truth) at least once.
- coverage: share of the vocabulary that appears in some photo's top k.

`paired_difference` says whether one method's P@k is really above another's on the same photos.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagger.scoring.voting import top_ids  # noqa: F401  (the ranking metrics are computed on)

KS = (1, 3, 5, 10)


def precision_per_photo(ranked: np.ndarray, truth: Sequence[set[int]], k: int) -> np.ndarray:
    """|top-k ∩ truth| / k for each photo with a true tag (the others are left out)."""
    return np.array([len(set(r[:k].tolist()) & t) / k for r, t in zip(ranked, truth) if t], dtype=np.float64)


def precision_at_k(ranked: np.ndarray, truth: Sequence[set[int]], k: int) -> float:
    """Mean over photos of |top-k ∩ truth| / k; photos with no true tag are left out."""
    hits = precision_per_photo(ranked, truth, k)
    return float(hits.mean()) if len(hits) else float("nan")


def paired_difference(table_a: np.ndarray, table_b: np.ndarray, truth: Sequence[set[int]], k: int = 5,
                      resamples: int = 10_000, seed: int = 0) -> dict:
    """P@k of method a minus method b, photo by photo on the same photos.

    Returns the mean difference, its standard error, a 95% paired-bootstrap interval (photos drawn
    with replacement, both methods kept together), and how many photos each method tags better.
    Differences between methods that share the photos are far less noisy than either P@k alone.
    """
    d = precision_per_photo(top_ids(table_a, k), truth, k) - precision_per_photo(top_ids(table_b, k), truth, k)
    n = len(d)
    se = low = high = float("nan")
    if n >= 2:
        rng = np.random.default_rng(seed)
        means = np.empty(resamples)
        for start in range(0, resamples, 1000):  # chunks keep the index matrix small
            stop = min(start + 1000, resamples)
            means[start:stop] = d[rng.integers(0, n, (stop - start, n))].mean(axis=1)
        se = float(d.std(ddof=1) / np.sqrt(n))
        low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    return {"k": k, "photos": n, "diff": float(d.mean()) if n else float("nan"), "se": se, "low": low, "high": high,
            "a_better": int((d > 0).sum()), "b_better": int((d < 0).sum())}


def recall_at_k(ranked: np.ndarray, truth: Sequence[set[int]], k: int) -> float:
    hits = [len(set(r[:k].tolist()) & t) / len(t) for r, t in zip(ranked, truth) if t]
    return float(np.mean(hits)) if hits else float("nan")


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of ranking items by `scores` (descending; ties in item order) for the boolean `relevant`."""
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order]
    hits = np.cumsum(rel)
    return float((hits[rel] / (np.flatnonzero(rel) + 1)).sum() / n_rel)


def image_map(table: np.ndarray, truth: Sequence[set[int]]) -> float:
    """MiAP: mean over photos of the AP of their full word ranking."""
    aps = []
    for row, t in zip(table, truth):
        if t:
            rel = np.zeros(table.shape[1], dtype=bool)
            rel[list(t)] = True
            aps.append(average_precision(row, rel))
    return float(np.mean(aps)) if aps else float("nan")


def tag_map(table: np.ndarray, truth: Sequence[set[int]]) -> float:
    """Per-tag MAP: mean over words present in the truth of the AP of ranking photos by that word."""
    keep = [i for i, t in enumerate(truth) if t]
    table = table[keep]
    rel = np.zeros(table.shape, dtype=bool)
    for row, i in enumerate(keep):
        rel[row, list(truth[i])] = True
    aps = [average_precision(table[:, w], rel[:, w]) for w in np.flatnonzero(rel.any(axis=0))]
    return float(np.mean(aps)) if aps else float("nan")


def visualness(table: np.ndarray, truth: Sequence[set[int]], min_photos: int = 5) -> dict[int, dict]:
    """Per word on at least `min_photos` photos' truth: its AP of ranking the photos by its score, the AP a
    ranking by chance would get (its prior: the share of photos with it), and their ratio. A word whose AP
    is barely above its prior is one the pixels say little about (a place, a month, `me`)."""
    keep = [i for i, t in enumerate(truth) if t]
    table = table[keep]
    rel = np.zeros(table.shape, dtype=bool)
    for row, i in enumerate(keep):
        rel[row, list(truth[i])] = True
    out = {}
    for w in np.flatnonzero(rel.sum(axis=0) >= min_photos):
        ap, prior = average_precision(np.nan_to_num(table[:, w], neginf=-1e9), rel[:, w]), float(rel[:, w].mean())
        out[int(w)] = {"photos": int(rel[:, w].sum()), "ap": ap, "prior": prior, "lift": ap / prior}
    return out


def n_plus(ranked: np.ndarray, truth: Sequence[set[int]], k: int) -> int:
    correct = set()
    for r, t in zip(ranked, truth):
        correct |= set(r[:k].tolist()) & t
    return len(correct)


def coverage(ranked: np.ndarray, vocab_size: int, k: int) -> float:
    return len(np.unique(ranked[:, :k])) / vocab_size


def report(table: np.ndarray, truth: Sequence[set[int]], ks: Sequence[int] = KS) -> dict:
    """Every metric above for one method, as a flat dict (P@k, R@k, F1@k per k; MiAP; MAP; N+; coverage)."""
    keep = [i for i, t in enumerate(truth) if t]
    table, truth = table[keep], [truth[i] for i in keep]
    ranked = top_ids(table, max(ks))
    out: dict = {"photos": len(keep)}
    for k in ks:
        p, r = precision_at_k(ranked, truth, k), recall_at_k(ranked, truth, k)
        out[f"P@{k}"], out[f"R@{k}"], out[f"F1@{k}"] = p, r, f1(p, r)
    out["MiAP"] = image_map(table, truth)
    out["MAP"] = tag_map(table, truth)
    out["N+"] = n_plus(ranked, truth, 5)
    out["coverage"] = coverage(ranked, table.shape[1], 5)
    return out
