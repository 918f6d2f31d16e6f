"""Turning generated word vectors into ranked tags: nearest vocabulary words of each sample, then votes.

The paper's procedure: 100 samples per photo, the 20 nearest words (cosine) of each sample, the 10
most common words over all samples are the tags. A word's score is its vote share: the fraction of
the photo's samples that had it among their nearest words (1.0 = every sample agreed).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    samples: int = 100  # generated vectors per photo
    neighbours: int = 20  # nearest vocabulary words looked up per sample
    top_k: int = 10  # tags returned per photo
    min_score: float = 0.0  # drop tags whose score is below this
    scoring: str = "votes"  # "votes": vote share (the paper); "similarity": votes weighted by cosine
    exclude: tuple[str, ...] = field(default_factory=tuple)  # tags never returned
    seed: int = 0  # noise seed: the same seed gives the same tags

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        if self.scoring not in ("votes", "similarity"):
            raise ValueError(f"scoring must be 'votes' or 'similarity', got {self.scoring!r}")
        for name in ("samples", "neighbours", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def vote(scores: np.ndarray, ids: np.ndarray, n_photos: int, vocab_size: int, config: SamplingConfig) -> np.ndarray:
    """Per-photo word scores (n_photos, vocab_size) from one batched nearest-neighbour search.

    scores, ids: (n_photos * samples, neighbours) as returned by the index, photo-major.
    """
    ids = ids.reshape(n_photos, -1)
    weights = np.ones_like(ids, dtype=np.float32) if config.scoring == "votes" else np.clip(scores.reshape(n_photos, -1), 0, None)
    valid = ids >= 0  # faiss marks missing neighbours with -1
    flat = (ids + np.arange(n_photos)[:, None] * vocab_size)[valid]
    table = np.bincount(flat, weights=weights[valid], minlength=n_photos * vocab_size)
    return (table.reshape(n_photos, vocab_size) / config.samples).astype(np.float32)


def rank(table: np.ndarray, words: list[str], config: SamplingConfig, excluded_ids: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
    """Top-k (tag, score) per photo, best first, ties broken by vocabulary order (frequent words first)."""
    table = table.copy()
    if excluded_ids is not None and len(excluded_ids):
        table[:, excluded_ids] = -np.inf
    k = min(config.top_k, table.shape[1])
    top = np.argsort(-table, axis=1, kind="stable")[:, :k]
    out = []
    for row, idx in zip(table, top):
        out.append([(words[i], float(row[i])) for i in idx if row[i] > 0 and row[i] >= config.min_score])
    return out
