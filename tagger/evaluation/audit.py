"""The tags users notice first when they are wrong: place names, `me`/self-portrait words, and
`blackandwhite` on a colour photo, counted against how often the photos' owners used them.

A tagger that sees only pixels can rarely know where a photo was taken or who took it, and a
colour photo is not black and white whatever its neighbours were. For each kind, `audit` counts
the photos whose top-k tags have a word of that kind, the photos whose owners used one, and the
photos where a word of that kind in the top k is one the owner used (the tag was right).
Which words are places and self words is the bundle's own word kinds (`embeddings.kinds`, from
the GeoNames gazetteer and WordNet); a bundle made before kinds has no place row, and its self row
counts the common self words.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embeddings.kinds import Kind

from tagger.evaluation.metrics import top_ids
from tagger.scoring.evidence import BW_WORDS

SELF_WORDS = ("me", "self", "selfportrait", "myself", "ofme")


def audit(table: np.ndarray, truth: Sequence[set[int]], words: Sequence[str], colour: np.ndarray, k: int = 5,
          word_kinds: Sequence[str] | None = None) -> dict[str, dict]:
    """For each kind: photos tagged with it in the top k ("tagged"), photos whose owners used it ("owners"),
    and photos where one of the top k of that kind is the owner's ("right"). `blackandwhite` counts colour
    photos only. Every photo is counted, those without an in-vocabulary user tag too.
    word_kinds: each word's Kind value (the bundle's kinds); None or empty strings: not known."""
    pos = {w: i for i, w in enumerate(words)}
    known = word_kinds is not None and all(word_kinds)
    kinds = {}
    if known:
        kinds["place"] = [w for w, kind in zip(words, word_kinds) if kind == Kind.PLACE]
        kinds["self"] = [w for w, kind in zip(words, word_kinds) if kind == Kind.SELF]
    else:
        kinds["self"] = SELF_WORDS
    kinds["blackandwhite on colour"] = BW_WORDS
    ranked = top_ids(table, k)
    out = {}
    for kind, names in kinds.items():
        ids = {pos[w] for w in names if w in pos}
        rows = np.flatnonzero(colour) if kind.startswith("blackandwhite") else np.arange(len(table))
        given = [ids & set(ranked[i].tolist()) for i in rows]
        out[kind] = {"photos": int(len(rows)), "tagged": sum(1 for g in given if g),
                     "owners": sum(1 for i in rows if ids & truth[i]), "right": sum(1 for g, i in zip(given, rows) if g & truth[i])}
    return out
