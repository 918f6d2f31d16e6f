"""What the generator is conditioned on: the photo's image features, and optionally its neighbours' tags.

Mirza & Osindero's condition y is the image's CNN features; the seed adds that "y could be any kind
of auxiliary information ... or data from other modalities". With `neighbour_votes` = K the
condition also carries, for every vocabulary word, the share of the photo's K visually nearest
training photos whose owners used it (the kNN baseline's votes, from the bundle's `knn.npz`). The
generator then learns when to follow the neighbours and when the image says otherwise.

A training photo's own tags must never vote for it: its votes leave it out of its neighbours
(`self_rows`), or G would learn to copy a column that held-out photos do not have.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from embeddings.checks import check_fields
from pipelines.errors import OptionError
from tagger.scoring.knn import MAX_K, KNNTagger


@dataclass(frozen=True)
class ConditionConfig:
    neighbour_votes: int = 0  # K > 0: append the vote shares of the photo's K nearest training photos

    def __post_init__(self):
        check_fields(self, OptionError)
        if self.neighbour_votes < 0:
            raise OptionError(f"neighbour_votes must be 0 or more, got {self.neighbour_votes}")
        if self.neighbour_votes > MAX_K:  # each share is divided by it: 10**12 would load and give other tags
            raise OptionError(f"neighbour_votes must be at most {MAX_K}, got {self.neighbour_votes}")

    def to_dict(self) -> dict:
        return asdict(self)

    def width(self, feature_dim: int, vocab_size: int) -> int:
        return feature_dim + (vocab_size if self.neighbour_votes else 0)


def build_condition(features: np.ndarray, config: ConditionConfig, knn: KNNTagger | None = None,
                    self_rows: np.ndarray | None = None) -> np.ndarray:
    """(N, width) conditions for raw image features (N, F); `self_rows`: each photo's row among the kNN's
    training photos (-1 if it is not one of them)."""
    features = np.asarray(features, dtype=np.float32)
    if not config.neighbour_votes:
        return features
    if knn is None:
        raise ValueError("a condition with neighbour votes needs the kNN tagger (knn.npz in the bundle)")
    votes = knn.votes(features, config.neighbour_votes, self_rows) / config.neighbour_votes
    return np.concatenate([features, votes], axis=1)
