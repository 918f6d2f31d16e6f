"""What is measured once on a decoded photo besides its features: its chroma, whether it is a blank frame, its places.

Whoever decodes a photo (the local engine's workers, the Ray workers, the service, predict) calls
`measure` on the decoded image, and the feature cache keeps the result beside the features, so a photo
is tagged from the same evidence however it reached the tagging function. A value that was not measured
(a cache shard from before it was kept) is NaN chroma, `Blank.UNMEASURED` and places None.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.images import Blank, blank_frame, chroma
from pipelines.places import photo_places

PLACE_SEPARATOR = " "  # between the place names of a photo where they are kept as one string (a tag has no space)


@dataclass(frozen=True)
class Measures:
    chroma: float = float("nan")  # mean chroma (pipelines.images.chroma); NaN: not measured
    blank: Blank = Blank.UNMEASURED  # pipelines.images.blank_frame's verdict
    places: tuple[str, ...] | None = None  # city and country from the GPS EXIF (() without); None: not measured

    @property
    def complete(self) -> bool:
        """Whether everything tagging uses was measured (else the photo is decoded again to measure it)."""
        return bool(np.isfinite(self.chroma)) and self.blank is not Blank.UNMEASURED and self.places is not None


NOT_MEASURED = Measures()


def measure(image: Image.Image) -> Measures:
    """The measures of a decoded photo (as `pipelines.images.decode_image` gives it, or a PIL image a caller decoded)."""
    return Measures(chroma(image), blank_frame(image), photo_places(image))


def columns(measures: Sequence[Measures]) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...] | None]]:
    """(chroma (n,) float32, blank (n,) int8, places) of a list of measures: the arrays Evidence and the cache hold."""
    return (np.array([m.chroma for m in measures], dtype=np.float32), np.array([int(m.blank) for m in measures], dtype=np.int8),
            [m.places for m in measures])


def join_places(places: tuple[str, ...]) -> str:
    return PLACE_SEPARATOR.join(places)


def split_places(text: str) -> tuple[str, ...]:
    return tuple(text.split(PLACE_SEPARATOR)) if text else ()
