"""Turning generated word vectors into ranked tags: nearest vocabulary words of each sample, then votes.

The paper's procedure: 100 samples per photo, the 20 nearest words (cosine) of each sample, the 10
most common words over all samples are the tags. A word's score is its vote share: the fraction of
the photo's samples that had it among their nearest words (1.0 = every sample agreed).

Other scorings, for the presets that improve on the paper:
- "similarity": each vote weighted by the cosine of sample and word;
- "density": each vote weighted by exp((cosine - 1) / temperature), a soft count of the generated
  samples lying close around the word, so a word that many samples hit squarely beats one that
  many samples graze;
- "softmax": each sample's votes are a softmax of cosine / temperature over its nearest words, so
  every sample casts one vote in all: the tagging-time twin of the "softmax" reconstruction term.
Then, as with any scoring, times prior ** prior_power, which damps rare words (user names, site
names) that sit near the middle of the space and collect stray votes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from embeddings.checks import check_fields
from pipelines.errors import OptionError


SCORINGS = ("votes", "similarity", "density", "softmax")


MAX_COUNT = 10_000  # most samples, neighbours or tags per photo any config may ask for


@dataclass(frozen=True)
class SamplingConfig:
    samples: int = 100  # generated vectors per photo
    neighbours: int = 20  # nearest vocabulary words looked up per sample
    top_k: int = 10  # tags returned per photo
    min_score: float = 0.0  # drop tags whose score is below this
    scoring: str = "votes"  # "votes": vote share (the paper); "similarity", "density" or "softmax": weighted votes
    temperature: float = 0.1  # width of the "density" and "softmax" kernels, in cosine units
    prior_power: float = 0.0  # scores times (training frequency of the word) ** this; 0 = off (the paper)
    exclude: tuple[str, ...] = field(default_factory=tuple)  # tags never returned
    seed: int = 0  # noise seed: the same seed gives the same tags

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise OptionError(f"scoring must be one of {', '.join(map(repr, SCORINGS))}, got {self.scoring!r}")
        for name in ("samples", "neighbours", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
                raise OptionError(f"{name} must be a whole number from 1 to {MAX_COUNT}, got {value!r}")
        # NaN compares false with everything: these checks are written so that NaN fails them.
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise OptionError(f"temperature must be a finite number above 0, got {self.temperature!r}")
        if not (isinstance(self.min_score, (int, float)) and 0 <= self.min_score <= 1):
            raise OptionError(f"min_score must be within 0..1, got {self.min_score!r}")
        if not (isinstance(self.prior_power, (int, float)) and 0 <= self.prior_power < math.inf):
            raise OptionError(f"prior_power must be a finite number, 0 or more, got {self.prior_power!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise OptionError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        check_fields(self, OptionError)  # the rest by their declared types: exclude a tuple of tags


def vote(scores: np.ndarray, ids: np.ndarray, n_photos: int, vocab_size: int, config: SamplingConfig,
         prior: np.ndarray | None = None) -> np.ndarray:
    """Per-photo word scores (n_photos, vocab_size) from one batched nearest-neighbour search.

    scores, ids: (n_photos * samples, neighbours) as returned by the index, photo-major.
    prior: (vocab_size,) training frequency of each word, used when config.prior_power > 0.
    """
    valid = ids >= 0  # faiss marks missing neighbours with -1
    cos = np.nan_to_num(scores, neginf=-1.0)
    if config.scoring == "votes":
        weights = np.ones_like(cos, dtype=np.float32)
    elif config.scoring == "similarity":
        weights = np.clip(cos, 0, None)
    elif config.scoring == "density":
        weights = np.exp((cos - 1.0) / config.temperature)
    else:  # "softmax": each sample's weights sum to 1 over its neighbours
        logits = np.where(valid, cos / config.temperature, -np.inf)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
    ids, weights, valid = ids.reshape(n_photos, -1), weights.reshape(n_photos, -1), valid.reshape(n_photos, -1)
    flat = (ids + np.arange(n_photos)[:, None] * vocab_size)[valid]
    table = np.bincount(flat, weights=weights[valid], minlength=n_photos * vocab_size)
    table = table.reshape(n_photos, vocab_size) / config.samples
    if config.prior_power and prior is not None:
        table = table * np.power(np.maximum(prior, 1e-12), config.prior_power)
    return table.astype(np.float32)


def top_ids(table: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """The k best word ids per photo from an (N, V) score table, best first (ties: lower id first)."""
    if exclude is not None and len(exclude):
        table = table.copy()
        table[:, exclude] = -np.inf
    k = min(k, table.shape[1])
    return np.argsort(-table, axis=1, kind="stable")[:, :k]


def rank(table: np.ndarray, words: list[str], config: SamplingConfig, excluded_ids: np.ndarray | None = None,
         order: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
    """Top-k (tag, score) per photo, best first, ties broken by vocabulary order (frequent words first).

    order: the raw scores to rank by when `table` holds them mapped for display (e.g. calibrated: a
    monotone map that can tie words the raw scores tell apart).
    """
    order = (table if order is None else order).copy()
    if excluded_ids is not None and len(excluded_ids):
        order[:, excluded_ids] = -np.inf
    k = min(config.top_k, table.shape[1])
    top = np.argsort(-order, axis=1, kind="stable")[:, :k]
    out = []
    for row, raw, idx in zip(table, order, top):
        out.append([(words[i], float(row[i])) for i in idx if row[i] > 0 and row[i] >= config.min_score and np.isfinite(raw[i])])
    return out
