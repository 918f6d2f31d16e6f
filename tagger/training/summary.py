"""What a training run did: stored in the bundle (config.json's "info") and read back by tagging and evaluation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainingSummary:
    data: str = ""  # the dataset's folder or file name only: a bundle may travel
    generator: str = "cgan"
    preset: str = ""
    preset_description: str = ""
    photos: int = 0
    photos_failed: int = 0
    photos_untagged: int = 0
    split: dict[str, int] = field(default_factory=dict)  # photos per split
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 0
    min_count: int = 10
    corpus: str | None = None
    corpus_lists: int = 0
    train_photos: int = 0
    pairs: int = 0
    epochs: int = 0
    steps: int = 0
    best_epoch: int = 0
    val_p5: float = math.nan  # NaN without validation photos
    knn_k: int = 0
    knn_val_p5: float = math.nan
    train: dict = field(default_factory=dict)  # the TrainConfig, as a dict
    tune: dict = field(default_factory=dict)  # the backbone's retrained tail: its TuneConfig, best epoch, held-out curve ({}: none)
    method: str | None = None  # the default method chosen on validation photos (None: none were calibrated)
    method_val_p5: dict[str, float] = field(default_factory=dict)  # P@5 against the owners' tags of the kinds shown
    accepted_photos: int = 0  # concept-labelled validation photos the acceptance maps were fitted on (0: none fitted)
    threshold: float = math.nan  # the default min_score, chosen on those photos (NaN: none chosen)
    threshold_precision: float = math.nan  # share of validation concept tags at or above it that were right
    threshold_tags: float = math.nan  # tags per validation photo it shows (at most the bundle's top_k)
    warnings: list[str] = field(default_factory=list)  # what the run said loudly (small vocabulary, collapse, ...)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, info: dict | None) -> "TrainingSummary":
        """From a bundle's info; older bundles lack some fields (their defaults) and may have others (ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (info or {}).items() if k in known})
