"""Tag normalization and the tag vocabulary.

Raw user tags are noisy: the same idea is written `bw`, `blackandwhite` and `biancoenero`, as `cloud`
and `clouds`, and many tags say nothing about the picture (`nikon`, `explore`, `2007`). This module
turns them into one canonical form per idea and keeps the frequent ones:

    raw tag --normalize_tag--> normalized form --synonyms--> --plural merge--> canonical word
                                    (stoplist drops a form at any of these steps)

`Vocabulary.build` learns the mapping from a corpus (one tag list per photo); `Vocabulary.normalize`
applies it to the tags of one photo. Every tag the product outputs is a word of a Vocabulary.
"""
from __future__ import annotations

import fnmatch
import json
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .checks import check_fields, check_values, read_format, short
from .files import atomic_write

DATA_DIR = Path(__file__).resolve().parent / "data"
STOPLIST_FILE = DATA_DIR / "stoplist.txt"
SYNONYMS_FILE = DATA_DIR / "synonyms.tsv"
FORMAT = "tagger.vocabulary"
VERSION = 1

# Both forms of a plural pair must be at least this long, so that `bus`/`bu`, `ss`/`s` or
# `las`/`la` never merge while `dogs`/`dog` and `cats`/`cat` do.
PLURAL_MIN_STEM = 3

# A vocabulary's bounds: a longer tag is a sentence or junk, and a bundle of a stranger's may not make
# tagger hold more (its words are a fixed-width array in word_vectors.npz: one long word widens them all).
# The paper's skip-gram vocabulary had 247,465 words.
MAX_WORD_LENGTH = 100
MAX_WORDS = 1_000_000
MAX_FILE_BYTES = 64 << 20  # vocabulary.json, its words and every form seen in the corpus (the shipped one: 1 MB)

# Flickr machine tags (`geo:lat=51.5`, `upcoming:event=616375`) are metadata, not words.
_MACHINE_TAG = re.compile(r"^\w+:\w+=")
# Pure numbers, including years, dates and decimals: "2", "365", "1.5", "2007", "05.05.2007".
_NUMBER = re.compile(r"^[+-]?\d+(?:[.,:/-]\d+)*$")


def normalize_tag(raw: str) -> str | None:
    """One raw tag -> its normalized form, or None when nothing usable is left.

    NFKC (full-width letters and digits become ASCII), casefold, then every whitespace, format
    (zero-width, BOM, bidi marks) and control character is removed anywhere in the tag, and so is
    punctuation, because Flickr's "clean" tags join the words of a tag with nothing in between
    ("black and white" -> "blackandwhite", "18-55mm" -> "1855mm"). Numbers and years, machine
    tags and empty results give None.
    """
    # NFKC again after casefold and after each removal: both can leave text that NFKC would
    # still change, and the result must be a fixed point (normalize_tag(t) == t for every output).
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    text = "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc"))
    if not text or _NUMBER.match(text) or _MACHINE_TAG.match(text):
        return None
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    text = unicodedata.normalize("NFKC", text)
    if not text or _NUMBER.match(text):
        return None
    return text


@dataclass(frozen=True)
class TagConfig:
    # Keep a canonical word only if at least this many photos carry it (after merging variants);
    # the paper kept words seen 200 times in YFCC100M, far larger than MIRFLICKR.
    min_count: int = 10
    # File of tags that say nothing about the picture (camera models, Flickr award groups);
    # None means the file shipped in embeddings/data. A user file replaces it, it does not add.
    stoplist: str | None = None
    # `variant<TAB>canonical` file; None means the shipped one. A user file replaces it.
    synonyms: str | None = None
    # Merge English plurals with their singular when both occur (`clouds`/`cloud`).
    merge_plurals: bool = True

    def __post_init__(self):
        # Paths are kept as text so the config saves to JSON as it is.
        for name in ("stoplist", "synonyms"):
            if isinstance(getattr(self, name), Path):
                object.__setattr__(self, name, str(getattr(self, name)))
        check_fields(self)


class Stoplist:
    """Tags to drop: exact tags, plus shell-style patterns (`nikond*`) for model-number families."""

    def __init__(self, entries: Iterable[str]):
        self.entries = sorted(set(entries))
        self.exact = {e for e in self.entries if not _is_pattern(e)}
        patterns = [e for e in self.entries if _is_pattern(e)]
        # One compiled regex: fnmatch per pattern per tag would dominate Vocabulary.build.
        self._regex = re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None

    def __contains__(self, tag: str) -> bool:
        return tag in self.exact or (self._regex is not None and self._regex.match(tag) is not None)

    @classmethod
    def read(cls, path: str | Path) -> Stoplist:
        entries = []
        for line in _data_lines(path):
            # Patterns are kept as written (normalizing would strip their `*`); tags are normalized
            # so the file may be written the way users type ("Black and White").
            tag = line.casefold() if _is_pattern(line) else normalize_tag(line)
            if tag:
                entries.append(tag)
        return cls(entries)


def read_synonyms(path: str | Path) -> dict[str, str]:
    """`variant<TAB>canonical` lines -> {variant: canonical}, both sides normalized.

    A line that maps a word to itself pins it: it is then never merged as a plural (`glasses`).
    """
    synonyms: dict[str, str] = {}
    for n, line in enumerate(_data_lines(path), 1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}: line {n} {line!r}: expected `variant<TAB>canonical`")
        variant, canonical = normalize_tag(parts[0]), normalize_tag(parts[1])
        if variant is None or canonical is None:
            raise ValueError(f"{path}: line {n} {line!r}: a side is empty or a number after normalization")
        if synonyms.get(variant, canonical) != canonical:
            raise ValueError(f"{path}: {variant!r} is mapped to both {synonyms[variant]!r} and {canonical!r}")
        synonyms[variant] = canonical
    # Resolve chains (a -> b, b -> c) so one lookup is enough.
    for variant in synonyms:
        seen, target = {variant}, synonyms[variant]
        while target in synonyms and synonyms[target] != target:
            if target in seen:
                raise ValueError(f"{path}: synonym cycle through {target!r}")
            seen.add(target)
            target = synonyms[target]
        synonyms[variant] = target
    return synonyms


def singular_candidates(word: str) -> list[str]:
    """Possible singulars of `word` by simple English rules, in the order they are tried.

    -ies -> -y (cities); -ves -> -f/-fe after l, i or two vowels (wolves, knives, leaves, but not
    waves or graves); -s (clouds, roses); -es after s/x/z/ch/sh (beaches, buses). Words ending in
    -ss (glass, dress) are singular already.
    """
    out = []
    if word.endswith("ies"):
        out.append(word[:-3] + "y")
    if word.endswith("ves") and (word[-4:-3] in ("l", "i") or _is_vowel_pair(word[-5:-3])):
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("s") and not word.endswith("ss"):
        out.append(word[:-1])
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        out.append(word[:-2])
    return [s for s in out if len(s) >= PLURAL_MIN_STEM]


def _is_vowel_pair(s: str) -> bool:
    return len(s) == 2 and all(ch in "aeiou" for ch in s)


class Vocabulary:
    """The canonical tag words kept from a corpus, their photo counts and the raw-form mapping.

    words      canonical words, most frequent first (ties alphabetical)
    counts     photos carrying each word, after merging (a photo counts once per word)
    canonical  every normalized form seen in the corpus (and every synonym variant of one) ->
               its canonical word, including words under min_count; stoplisted forms are absent
    config     the TagConfig it was built with
    """

    def __init__(self, words: list[str], counts: np.ndarray, canonical: dict[str, str], config: TagConfig,
                 stoplist: Stoplist):
        self.words = list(words)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.canonical = dict(canonical)
        self.config = config
        self.stoplist = stoplist
        self._index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, tag_lists: Iterable[list[str]], config: TagConfig = TagConfig()) -> Vocabulary:
        """Learn the vocabulary from raw tag lists, one list per photo."""
        stoplist = Stoplist.read(config.stoplist or STOPLIST_FILE)
        synonyms = read_synonyms(config.synonyms or SYNONYMS_FILE)

        # Pass 1: the normalized forms of each photo, and each form after the synonyms.
        form_of: dict[str, str] = {}  # normalized raw form -> form after synonyms
        photos: list[frozenset[str]] = []
        form_counts: Counter[str] = Counter()
        for tags in tag_lists:
            _check_tag_list(tags)
            norms = frozenset(n for n in map(normalize_tag, tags) if n is not None and len(n) <= MAX_WORD_LENGTH)
            for norm in norms:
                if norm not in form_of:
                    form_of[norm] = synonyms.get(norm, norm)
            photos.append(norms)
            form_counts.update({form_of[n] for n in norms})

        # Plural groups, then one canonical word per group. Stoplisted forms take part, so a
        # whole group goes when one member is stoplisted.
        pinned = {v for v, c in synonyms.items() if v == c}
        merged = _merge_plurals(form_counts, pinned) if config.merge_plurals else {}
        stopped = {f for f in form_counts if _is_stopped(f, stoplist, config.merge_plurals)}
        stopped |= {n for n in form_of if n in stoplist}
        stopped_groups = {merged.get(f, f) for f in stopped}

        canonical: dict[str, str] = {}
        for norm, form in form_of.items():
            word = merged.get(form, form)
            if form in stopped or word in stopped_groups:
                continue
            if norm not in stopped:
                canonical[norm] = word
            canonical.setdefault(form, word)
        # Synonym variants absent from the corpus still map, so new photos normalize the same way.
        for variant, target in synonyms.items():
            if variant not in canonical and target in canonical and variant not in stoplist:
                canonical[variant] = canonical[target]

        # Pass 2 over the kept per-photo sets: photo counts after all merging.
        word_counts: Counter[str] = Counter()
        for norms in photos:
            word_counts.update({canonical[n] for n in norms if n in canonical})
        kept = sorted((w for w, n in word_counts.items() if n >= config.min_count and len(w) <= MAX_WORD_LENGTH),
                      key=lambda w: (-word_counts[w], w))
        if len(kept) > MAX_WORDS:
            raise ValueError(f"{len(kept)} words are seen at least {config.min_count} times, over the limit of {MAX_WORDS} "
                             "words a vocabulary may have: raise min_count")
        counts = np.array([word_counts[w] for w in kept], dtype=np.int64)
        return cls(kept, counts, canonical, config, stoplist)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, min_count={self.config.min_count}, {len(self.canonical)} forms)"

    def index(self, word: str) -> int:
        try:
            return self._index[word]
        except KeyError:
            raise KeyError(f"{word!r} is not in the vocabulary") from None

    def lookup(self, raw: str) -> str | None:
        """One raw tag -> its canonical word (in the vocabulary or not), or None if dropped."""
        norm = normalize_tag(raw)
        if norm is None:
            return None
        if norm in self.canonical:
            return self.canonical[norm]
        if _is_stopped(norm, self.stoplist, self.config.merge_plurals):
            return None
        if self.config.merge_plurals:
            # A plural never seen in the corpus still finds its seen singular.
            for stem in singular_candidates(norm):
                if stem in self.canonical:
                    return self.canonical[stem]
        return norm

    def canonicalize(self, raw_tags: Iterable[str]) -> list[str]:
        """Raw tags of one photo -> unique canonical tags in first-seen order, out-of-vocabulary ones kept."""
        _check_tag_list(raw_tags)
        return list(dict.fromkeys(w for w in map(self.lookup, raw_tags) if w is not None))

    def normalize(self, raw_tags: Iterable[str]) -> list[str]:
        """Raw tags of one photo -> unique vocabulary words in first-seen order; others dropped."""
        return [w for w in self.canonicalize(raw_tags) if w in self._index]

    def save(self, path: str | Path) -> None:
        """Write one JSON file, atomically (a crash leaves the old file or none, never half a file)."""
        data = {
            "format": FORMAT,
            "version": VERSION,
            "config": asdict(self.config),
            "words": self.words,
            "counts": self.counts.tolist(),
            "stoplist": self.stoplist.entries,
            "canonical": self.canonical,
        }
        atomic_write(path, json.dumps(data, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a saved vocabulary; a file that is not one, or breaks its bounds, is a ValueError naming it."""
        path = Path(path)
        try:
            data = read_format(path, FORMAT, VERSION, MAX_FILE_BYTES)
            missing = [k for k in _FILE_TYPES if k not in data]
            if missing:
                raise ValueError(f"{', '.join(missing)} missing")
            if isinstance(data["words"], list) and len(data["words"]) > MAX_WORDS:
                raise ValueError(f"words: {len(data['words'])} words, over the limit of {MAX_WORDS}")
            check_values(data, _FILE_TYPES)
            words, counts = data["words"], data["counts"]
            for i, word in enumerate(words):
                if not 0 < len(word) <= MAX_WORD_LENGTH:
                    raise ValueError(f"words[{i}] is empty" if not word else
                                     f"words[{i}] is {len(word)} characters, over the limit of {MAX_WORD_LENGTH}")
            if len(set(words)) != len(words):
                twice = next(w for w, n in Counter(words).items() if n > 1)
                raise ValueError(f"words: {short(twice)} is there twice")
            if len(counts) != len(words):
                raise ValueError(f"{len(counts)} counts for {len(words)} words")
            if counts and min(counts) < 0:
                raise ValueError(f"counts: {min(counts)} is negative")
            try:
                config = TagConfig(**data["config"])
            except TypeError as e:  # a setting TagConfig does not have
                raise ValueError(f"config: {e}") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return cls(words, np.array(counts, dtype=np.int64), data["canonical"], config, Stoplist(data["stoplist"]))


# What a saved vocabulary holds, by type (`Vocabulary.load` checks them before it uses any).
_FILE_TYPES = {"config": dict, "words": list[str], "counts": list[int], "stoplist": list[str], "canonical": dict[str, str]}


def _merge_plurals(counts: Counter[str], pinned: set[str]) -> dict[str, str]:
    """{form: canonical} for every form in a plural group of two or more forms.

    The canonical form of a group is its most frequent member (ties: the shorter, then
    alphabetical), so the output tag is the one users write most (`clouds`, but `flower`).
    """
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for form in counts:
        if form in pinned:
            continue
        for stem in singular_candidates(form):
            if stem in counts and stem not in pinned:
                parent[root(form)] = root(stem)
                break
    groups: dict[str, list[str]] = {}
    for form in parent:
        groups.setdefault(root(form), []).append(form)
    merged = {}
    for r, members in groups.items():
        members.append(r)
        best = min(members, key=lambda f: (-counts[f], len(f), f))
        merged.update({f: best for f in members})
    return merged


def _check_tag_list(tags) -> None:
    # A string is iterable too, and would silently become a list of one-letter tags.
    if isinstance(tags, str):
        raise TypeError(f"expected a list of tags, got the string {tags[:50]!r}")


def _is_stopped(form: str, stoplist: Stoplist, plurals: bool) -> bool:
    """In the stoplist, or (with plural merging) the plural of a stoplisted word (`photos`)."""
    return form in stoplist or (plurals and any(s in stoplist for s in singular_candidates(form)))


def _is_pattern(entry: str) -> bool:
    return any(ch in entry for ch in "*?[")


def _data_lines(path: str | Path) -> Iterator[str]:
    """Non-empty lines of a data file, `#` comments removed."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip("\r\n ")
            if line.strip():
                yield line

