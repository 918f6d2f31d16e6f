"""ImageNet-1k classes -> vocabulary words, through WordNet's hypernyms.

The classifier head of an ImageNet backbone scores 1000 classes, each a WordNet 3.0 noun synset
(embeddings/data/imagenet_synsets.txt, in the order of the head's logits). A vocabulary word is
linked to a class when one of the word's noun senses is the class's synset or one of its
hypernyms, at the distance of that hypernym (0: the class itself):

    links = ClassWords.build(vocab_words)          # needs WordNet (embeddings/wordnet.py)
    links.links["cat"]                             # {281: 2, 282: 2, ...}: tabby -> domestic cat -> cat
    m = links.matrix(vocab_words, decay=0.5)       # (1000, V): decay ** distance where linked, else 0
    links.save("head.json"); ClassWords.load("head.json")    # loading needs no WordNet

A word's score for a photo is then p(class) summed over its classes, each weighted by decay **
distance (tagger.scoring.head): `cat` collects every cat breed, `animal` every animal class (less
for being further from what the classifier saw when decay < 1). A word's senses come as in embeddings.kinds (by
name, squashed multi-word name, noun base form); named things (instances) are left out.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import check_format

WNIDS_FILE = Path(__file__).parent / "data" / "imagenet_synsets.txt"
NUM_CLASSES = 1000
MIN_SHARE = 0.0  # share of SemCor's counts a noun sense needs to link (0: every sense; chosen in bench/study_head.py)
FORMAT = "tagger.imagenet_words"
VERSION = 1


def wnids() -> list[str]:
    """The 1000 ImageNet-1k class ids (`n%08d`, WordNet 3.0 noun offsets) in the order of the head's logits."""
    ids = [line.strip() for line in WNIDS_FILE.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    if len(ids) != NUM_CLASSES or ids != sorted(ids):
        raise ValueError(f"{WNIDS_FILE}: expected {NUM_CLASSES} sorted wnids, found {len(ids)}")
    return ids


def class_synsets(wn=None) -> list:
    """The WordNet synset of each ImageNet class, in logit order."""
    from .wordnet import wordnet

    wn = wn or wordnet()
    return [wn.synset_from_pos_and_offset("n", int(w[1:])) for w in wnids()]


def hypernym_distances(synset) -> dict:
    """The synset and every hypernym above it (instance hypernyms too), each at its shortest distance."""
    dist = {synset: 0}
    frontier = [synset]
    while frontier:
        nxt = []
        for s in frontier:
            for h in s.hypernyms() + s.instance_hypernyms():
                if h not in dist:
                    dist[h] = dist[s] + 1
                    nxt.append(h)
        frontier = nxt
    return dist


@dataclass(frozen=True)
class ClassWords:
    """For each linked vocabulary word, the ImageNet classes it names: class index -> hypernym distance."""

    links: dict[str, dict[int, int]]
    classes: int = NUM_CLASSES

    def __post_init__(self):
        for word, found in self.links.items():
            if not found:
                raise ValueError(f"word {word!r} has no class")
            for c, d in found.items():
                if not (isinstance(c, int) and 0 <= c < self.classes) or not (isinstance(d, int) and d >= 0):
                    raise ValueError(f"word {word!r}: class {c!r} at distance {d!r} (classes 0..{self.classes - 1}, distances 0 or more)")

    @classmethod
    def build(cls, words: Sequence[str], wn=None, min_share: float = MIN_SHARE) -> "ClassWords":
        """Links for `words`; a noun sense counts when SemCor counts it for at least `min_share` of the
        word's noun uses (every sense, when SemCor counted none): at 0.1 `wind` is only weather, not a wind
        instrument. The default, 0, links every sense: it ranked training photos best (bench/study_head.py)."""
        from .kinds import Classifier
        from .wordnet import wordnet

        wn = wn or wordnet()
        senses = Classifier(wn)._lemmas  # the word's WordNet lemmas, found as the word kinds find them
        above: dict = {}  # synset -> {class: distance}
        for c, synset in enumerate(class_synsets(wn)):
            for s, d in hypernym_distances(synset).items():
                above.setdefault(s, {})[c] = d
        links: dict[str, dict[int, int]] = {}
        for word in words:
            found: dict[int, int] = {}
            nouns = [lemma for lemma in senses(word) if lemma.synset().pos() == "n" and not lemma.synset().instance_hypernyms()]
            total = sum(lemma.count() for lemma in nouns)
            for lemma in nouns:
                if total and lemma.count() < min_share * total:
                    continue
                s = lemma.synset()
                for c, d in above.get(s, {}).items():
                    found[c] = min(d, found.get(c, d))
            if found:
                links[word] = dict(sorted(found.items()))
        return cls(links)

    def matrix(self, words: Sequence[str], decay: float) -> np.ndarray:
        """(classes, len(words)) float32: decay ** distance for each linked (class, word), else 0."""
        m = np.zeros((self.classes, len(words)), dtype=np.float32)
        for j, w in enumerate(words):
            for c, d in self.links.get(w, {}).items():
                m[c, j] = decay ** d
        return m

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "classes": self.classes,
                "links": {w: [[c, d] for c, d in found.items()] for w, found in self.links.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassWords":
        check_format(data, FORMAT, VERSION)
        links = data.get("links")
        if not isinstance(links, dict) or not all(isinstance(v, list) for v in links.values()):
            raise ValueError("links must map each word to a list of [class, distance] pairs")
        try:
            parsed = {w: {c: d for c, d in pairs} for w, pairs in links.items()}
        except (TypeError, ValueError):
            raise ValueError("links must map each word to a list of [class, distance] pairs") from None
        return cls(parsed, classes=data.get("classes", NUM_CLASSES))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ClassWords":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
