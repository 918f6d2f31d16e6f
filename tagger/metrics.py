"""Tag-ranking metrics against each photo's true tags (word ids)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top_ids(table: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """The k best word ids per photo from an (N, V) score table, best first."""
    if exclude is not None and len(exclude):
        table = table.copy()
        table[:, exclude] = -np.inf
    k = min(k, table.shape[1])
    part = np.argpartition(-table, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(table, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def precision_at_k(ranked: np.ndarray, truth: Sequence[set[int]], k: int) -> float:
    """Mean over photos of |top-k ∩ truth| / k; photos with no true tag are left out."""
    hits = [len(set(r[:k].tolist()) & t) / k for r, t in zip(ranked, truth) if t]
    return float(np.mean(hits)) if hits else float("nan")
