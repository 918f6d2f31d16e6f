"""What tagging knows of photos, and what their pixels rule out.

`Evidence` is the input of the one tagging function (`Tagger.tag`, `Tagger.score`): each photo's
image features and its chroma, measured once on the decoded pixels by whoever decoded the photo
(`pipelines.images.chroma`: the local engine's workers, the Ray workers, the service, predict) and
kept beside the features in the feature cache, so tagging, calibration and evaluation see the same
evidence. The backbone's features barely tell a colour photo from a black-and-white one of the same
scene, but the chroma does: a colour photo never gets a black-and-white word.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.images import COLOUR_CHROMA

BW_WORDS = ("blackandwhite",)


@dataclass(frozen=True)
class Evidence:
    features: np.ndarray  # (N, F) raw image features
    chroma: np.ndarray  # (N,) mean chroma of each decoded photo; NaN: not measured (nothing is ruled out)

    def __post_init__(self):
        features = np.asarray(self.features, dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"features must be (photos, dim), got shape {features.shape}")
        chroma = np.full(len(features), np.nan, np.float32) if self.chroma is None else np.asarray(self.chroma, dtype=np.float32)
        if chroma.shape != (len(features),):
            raise ValueError(f"chroma must be one value per photo ({len(features)}), got shape {chroma.shape}")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "chroma", chroma)

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows) -> "Evidence":
        return Evidence(self.features[rows], self.chroma[rows])

    @property
    def finite(self) -> np.ndarray:
        """(N,) whether each photo's features are usable (a NaN or infinite one is an error, not a tag list)."""
        return np.isfinite(self.features).all(axis=1)

    @property
    def colour(self) -> np.ndarray:
        """(N,) whether each photo has colour (NaN chroma: not known, False)."""
        return np.nan_to_num(self.chroma, nan=-1.0) > COLOUR_CHROMA

    @staticmethod
    def join(parts: Sequence["Evidence"]) -> "Evidence":
        return Evidence(np.concatenate([p.features for p in parts]), np.concatenate([p.chroma for p in parts]))


def rule_out(table: np.ndarray, words: Sequence[str], colour: np.ndarray) -> np.ndarray:
    """Raw scores with the black-and-white words of colour photos removed (-inf)."""
    ids = [i for i, w in enumerate(words) if w in BW_WORDS]
    if not ids or not np.any(colour):
        return table
    table = table.copy()
    table[np.ix_(np.flatnonzero(colour), ids)] = -np.inf
    return table
