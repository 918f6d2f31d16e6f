"""The word space: how word2vec vectors are prepared before the generator learns to make them and the index holds them."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from embeddings.checks import check_fields
from pipelines.errors import OptionError


@dataclass(frozen=True)
class WordSpaceConfig:
    """How word2vec vectors are prepared before G learns to generate them (and the index holds them)."""

    center: bool = False  # subtract the vocabulary mean: pulls "hub" words away from every query
    normalize: bool = False  # scale every word vector to unit length

    def __post_init__(self):
        check_fields(self, OptionError)

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_word_vectors(vectors: np.ndarray, config: WordSpaceConfig) -> np.ndarray:
    out = np.asarray(vectors, dtype=np.float32).copy()
    if config.center:
        out -= out.mean(axis=0, keepdims=True)
    if config.normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
