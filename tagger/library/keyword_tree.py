"""The keyword tree: where tagger files its machine keywords in a photo manager's hierarchy.

Photo managers show `lr:hierarchicalSubject` (`tagger|animal|cat`) and digiKam's
`digiKam:TagsList` (`tagger/animal/cat`) as a tree. tagger's keywords sit under one root
(`tagger`), so a re-run knows which entries are its own, and under the root each keyword goes
under its category (`embeddings.kinds`: animal, food, place, style, ...), so the branch can be
browsed: `tagger|place|paris`, `tagger|food|pizza`, `tagger|style|blackandwhite`. `flat` writes
the form of earlier versions, `tagger|cat`; so does a keyword whose category is not known (a model
bundle made before categories, or before kinds). Either way everything under the root is
tagger's: whatever its depth, a later run replaces it (`is_machine`), so switching between the
two forms leaves one form only.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.errors import OptionError
from pipelines.keywords import DEFAULT_ROOT, clean_keyword, under_root

SEPARATORS = ("|", "/")  # lr:hierarchicalSubject's and digiKam:TagsList's


@dataclass(frozen=True)
class KeywordTree:
    root: str = DEFAULT_ROOT  # the machine keywords' branch: tagger|...
    flat: bool = False  # True: tagger|cat; False: tagger|animal|cat
    categories: Mapping[str, str] = field(default_factory=dict)  # keyword -> category (WordKinds.keyword_categories)

    def __post_init__(self):
        if not isinstance(self.root, str) or not self.root or any(s in self.root for s in SEPARATORS) \
                or self.root != clean_keyword(self.root):
            raise OptionError(f"keyword root must be one non-empty word without '|' or '/', not {self.root!r}")
        # A category is one level of the tree: a separator in it would make two, and a later reading could not tell.
        bad = next((c for c in self.categories.values()
                    if not isinstance(c, str) or not c or c != clean_keyword(c) or any(s in c for s in SEPARATORS)), None)
        if bad is not None:
            raise OptionError(f"keyword category must be one non-empty word without '|' or '/', not {bad!r}")

    def path(self, keyword: str, sep: str = "|") -> str:
        """The keyword's entry: `tagger|animal|cat` (sep "/": digiKam's `tagger/animal/cat`), or flat `tagger|cat`."""
        category = None if self.flat else self.categories.get(keyword)
        return sep.join((self.root, category, keyword) if category else (self.root, keyword))

    def is_machine(self, entry: str, sep: str = "|") -> bool:
        """Whether a hierarchical entry is tagger's: the root or anything under it, at any depth, either form."""
        return under_root(entry, self.root, sep)
