"""What tagging knows of photos, and what their pixels rule out.

`Evidence` is the input of the one tagging function (`Tagger.tag`, `Tagger.score`): each photo's
image features and what was measured once on its decoded pixels and file (`pipelines.measures`) by
whoever decoded it (the local engine's workers, the Ray workers, the service, predict), kept beside
the features in the feature cache, so tagging, calibration and evaluation see the same evidence:

- its chroma: the backbone's features barely tell a colour photo from a black-and-white one of the
  same scene, but the chroma does: a colour photo never gets a black-and-white word;
- whether it is a blank frame (`pipelines.images.blank_frame`): a lens-cap shot or a blank scan gets
  no tags and the reason, where the features alone would still find "the nearest" words;
- the places of its GPS EXIF (`pipelines.places`): the city and the country it was taken in.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.images import BLANK_REASONS, COLOUR_CHROMA, Blank
from pipelines.measures import Measures, columns

BW_WORDS = ("blackandwhite",)


@dataclass(frozen=True)
class Evidence:
    features: np.ndarray  # (N, F) raw image features
    chroma: np.ndarray | None  # (N,) mean chroma of each decoded photo; NaN (or None for all): not measured (nothing is ruled out)
    blank: np.ndarray | None = None  # (N,) int8 pipelines.images.Blank of each photo; None: none measured (tagged as scenes)
    places: Sequence[tuple[str, ...] | None] | None = None  # (N,) place names from each photo's GPS EXIF; None: none known

    def __post_init__(self):
        features = np.asarray(self.features, dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"features must be (photos, dim), got shape {features.shape}")
        n = len(features)
        chroma = np.full(n, np.nan, np.float32) if self.chroma is None else np.asarray(self.chroma, dtype=np.float32)
        if chroma.shape != (n,):
            raise ValueError(f"chroma must be one value per photo ({n}), got shape {chroma.shape}")
        blank = np.full(n, Blank.UNMEASURED, np.int8) if self.blank is None else np.asarray(self.blank, dtype=np.int8)
        if blank.shape != (n,):
            raise ValueError(f"blank must be one value per photo ({n}), got shape {blank.shape}")
        places = (None,) * n if self.places is None else tuple(None if p is None else tuple(p) for p in self.places)
        if len(places) != n:
            raise ValueError(f"places must be one entry per photo ({n}), got {len(places)}")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "chroma", chroma)
        object.__setattr__(self, "blank", blank)
        object.__setattr__(self, "places", places)

    @classmethod
    def of(cls, features: np.ndarray, measures: Sequence[Measures]) -> "Evidence":
        """The evidence of photos from their features and what decoding measured of each (`pipelines.measures.measure`)."""
        return cls(features, *columns(measures))

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows) -> "Evidence":
        idx = np.arange(len(self))[rows]
        return Evidence(self.features[idx], self.chroma[idx], self.blank[idx], [self.places[i] for i in idx.tolist()])

    @property
    def finite(self) -> np.ndarray:
        """(N,) whether each photo's features are usable (a NaN or infinite one is an error, not a tag list)."""
        return np.isfinite(self.features).all(axis=1)

    @property
    def colour(self) -> np.ndarray:
        """(N,) whether each photo has colour (NaN chroma: not known, False)."""
        return np.nan_to_num(self.chroma, nan=-1.0) > COLOUR_CHROMA

    @property
    def blank_reasons(self) -> list[str]:
        """Why each photo is a blank frame ("near-black frame", ...), "" for a scene or a photo not measured."""
        return [BLANK_REASONS.get(Blank(int(b)), "") for b in self.blank]

    @staticmethod
    def join(parts: Sequence["Evidence"]) -> "Evidence":
        return Evidence(np.concatenate([p.features for p in parts]), np.concatenate([p.chroma for p in parts]),
                        np.concatenate([p.blank for p in parts]), [pl for p in parts for pl in p.places])


def rule_out(table: np.ndarray, words: Sequence[str], colour: np.ndarray) -> np.ndarray:
    """Raw scores with the black-and-white words of colour photos removed (-inf)."""
    ids = [i for i, w in enumerate(words) if w in BW_WORDS]
    if not ids or not np.any(colour):
        return table
    table = table.copy()
    table[np.ix_(np.flatnonzero(colour), ids)] = -np.inf
    return table
