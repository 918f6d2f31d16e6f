"""`TagOptions`: what one tagging call may choose, validated once, the same for every entry point.

predict, `tag` (either engine), the service and evaluate all build one of these and hand it to
`Tagger.tag` or `Tagger.score`; None means the bundle's own default (its method, its sampling
settings), so a bundle's defaults are never copied into the options.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from embeddings.kinds import Kind
from pipelines.errors import OptionError
from tagger.scoring.voting import MAX_COUNT

MAX_EXCLUDE, MAX_TAG_CHARS = 100, 100
# What a photo library wants back by default: what is in the photo and how it was taken. Places come
# from where the photo was taken, not from its pixels; `me`, camera makers, Flickr groups and dates
# are not in a photo at all (`--kinds all` shows every word, as the Flickr owners typed them).
DEFAULT_KINDS = ("content", "style")
ALL_KINDS = "all"  # most tags one call may exclude, and the longest (the service's limits too)


@dataclass(frozen=True)
class TagOptions:
    method: str | None = None  # tagging method (Tagger.methods); None: the bundle's default
    top_k: int | None = None  # most tags per photo; None: the bundle's
    min_score: float | None = None  # drop tags scored below this (0..1); None: the bundle's
    exclude: tuple[str, ...] = ()  # tags never returned, as users type them (normalized like training tags)
    seed: int | None = None  # noise seed: the same seed gives the same tags; None: the bundle's
    kinds: tuple[str, ...] | None = None  # kinds of words shown (embeddings.kinds.Kind; "all": every word); None: DEFAULT_KINDS

    def __post_init__(self):
        if isinstance(self.exclude, (list, set, frozenset)):
            object.__setattr__(self, "exclude", tuple(self.exclude))
        if isinstance(self.kinds, (list, set, frozenset)):
            object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.kinds is not None:
            known = {k.value for k in Kind} | {ALL_KINDS}
            bad = [k for k in self.kinds if k not in known] if isinstance(self.kinds, tuple) else [self.kinds]
            if bad or not self.kinds:
                raise OptionError(f"kinds must be some of {', '.join(sorted(known))}, got {bad[0] if bad else 'none'!r}")
        if self.method is not None and (not isinstance(self.method, str) or not self.method):
            raise OptionError(f"method must be a method name, got {self.method!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= MAX_COUNT):
            raise OptionError(f"top_k must be a whole number from 1 to {MAX_COUNT}, got {self.top_k!r}")
        # Written so that NaN fails: NaN compares false with everything.
        if self.min_score is not None and not (isinstance(self.min_score, (int, float)) and not isinstance(self.min_score, bool)
                                               and 0 <= self.min_score <= 1 and math.isfinite(self.min_score)):
            raise OptionError(f"min_score must be within 0..1, got {self.min_score!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise OptionError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        if not isinstance(self.exclude, tuple) or not all(isinstance(t, str) for t in self.exclude):
            raise OptionError(f"exclude must be a list of tags, got {self.exclude!r}")
        if len(self.exclude) > MAX_EXCLUDE or any(len(t) > MAX_TAG_CHARS for t in self.exclude):
            raise OptionError(f"exclude takes at most {MAX_EXCLUDE} tags of at most {MAX_TAG_CHARS} characters")
