"""Skip-gram word vectors for tags (gensim), and the standard word2vec text and binary files.

The paper's words are 200-d skip-gram vectors trained on user tags and frozen while the GAN
trains. `WordVectors.train` learns them from canonical tag lists, one per photo;
`WordVectors.load_word2vec_format` reads vectors trained elsewhere.

    vecs = WordVectors.train((vocab.normalize(tags) for tags in tag_lists), Word2VecConfig())
    vecs = vecs.subset(vocab.words)          # exactly the vocabulary, in its order
    vecs.save("tag_vectors.npz")

Train on `vocab.normalize` (vocabulary words only), not `vocab.canonicalize`: on MIRFLICKR the
~45k tags seen fewer than 10 times make training 6x slower (67 s against 11 s on 2 cores) and
crowd the neighbour lists with one-off tags, while only vocabulary words ever need a vector.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .checks import check_fields, check_values, expect, npz_headers, short
from .files import atomic_write
from .index import unit_rows
from .tags import MAX_WORD_LENGTH, MAX_WORDS

FORMAT = "tagger.word_vectors"
VERSION = 1
MAX_META_LENGTH = 1 << 16  # characters of the training config's JSON


@dataclass(frozen=True)
class Word2VecConfig:
    # Vector size; the paper's 200.
    dim: int = 200
    # A photo's tags are an unordered bag, so every tag should be the context of every other tag
    # of the photo: the window covers nearly all tag lists (p95 is 24 tags) and is never shrunk.
    window: int = 50
    # Words seen fewer times are ignored. 1 because the Vocabulary has already cut rare tags, and
    # every vocabulary word must get a vector.
    min_count: int = 1
    # Passes over the corpus. MIRFLICKR has ~20k tag lists, so many passes are cheap (~12 s on
    # 2 cores for 17k lists) and give stable neighbours; 50 was no better.
    epochs: int = 30
    # Negative samples per positive pair.
    negative: int = 10
    # Down-sampling threshold for very frequent tags (gensim's `sample`).
    sample: float = 1e-3
    # Initial learning rate; gensim decays it linearly over the epochs.
    alpha: float = 0.025
    # Seeds the initial vectors, negative sampling and the per-photo tag shuffle. Training is
    # bit-for-bit repeatable only with workers=1: with more threads gensim's updates interleave.
    seed: int = 0
    # Training threads.
    workers: int = 2
    # Skip-gram (1), as in the paper; CBOW (0) is not offered.
    sg: int = 1

    def __post_init__(self):
        check_fields(self)
        if self.sg != 1:
            raise ValueError("only skip-gram (sg=1) is supported, as in the paper")


class WordVectors:
    """Words and their vectors (V, dim) float32, row i belonging to words[i]."""

    def __init__(self, words: list[str], vectors: np.ndarray, config: Word2VecConfig | None = None):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError(f"{len(words)} words but vectors of shape {vectors.shape}")
        if len(set(words)) != len(words):
            raise ValueError("duplicate words")
        self.words = list(words)
        self.vectors = vectors
        self.config = config  # how they were trained; None when loaded from a word2vec file
        self._index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @classmethod
    def train(cls, sentences: Iterable[list[str]], config: Word2VecConfig = Word2VecConfig()) -> WordVectors:
        """Train skip-gram vectors on tag lists (one list of canonical tags per photo)."""
        from gensim.models import Word2Vec  # gensim is slow to import; only training needs it

        # Shuffle each tag list (deterministic in the seed): users type related tags together,
        # which would otherwise matter for the rare lists longer than the window.
        rng = np.random.default_rng(config.seed)
        corpus = []
        for tags in sentences:
            tags = list(tags)
            # A lone tag teaches nothing, but keeping it gives the word a vector all the same.
            if tags:
                corpus.append([tags[i] for i in rng.permutation(len(tags))])
        if not any(len(tags) > 1 for tags in corpus):
            raise ValueError("no tag list with two or more tags to train on")
        model = Word2Vec(
            sentences=corpus, vector_size=config.dim, window=config.window, min_count=config.min_count,
            sg=1, hs=0, negative=config.negative, sample=config.sample, alpha=config.alpha,
            seed=config.seed, workers=config.workers, epochs=config.epochs,
            shrink_windows=False,  # gensim draws a smaller window per word by default; a bag has no near/far
        )
        return cls(list(model.wv.index_to_key), model.wv.vectors, config)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index(word)]

    def __repr__(self) -> str:
        return f"WordVectors({len(self)} words, dim={self.dim})"

    def index(self, word: str) -> int:
        try:
            return self._index[word]
        except KeyError:
            raise KeyError(f"{word!r} has no vector") from None

    def subset(self, words: Iterable[str]) -> WordVectors:
        """The vectors of `words`, in that order; every word must have a vector."""
        words = list(words)
        missing = [w for w in words if w not in self._index]
        if missing:
            shown = ", ".join(repr(w) for w in missing[:10])
            raise KeyError(f"{len(missing)} words have no vector: {shown}{' ...' if len(missing) > 10 else ''}")
        return WordVectors(words, self.vectors[[self._index[w] for w in words]], self.config)

    def most_similar(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The k words nearest to `word` by cosine similarity, the word itself left out."""
        unit = unit_rows(self.vectors)
        scores = unit @ unit[self.index(word)]
        scores[self.index(word)] = -np.inf
        k = min(k, len(self) - 1)
        top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.array([], dtype=int)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.words[i], float(scores[i])) for i in top]

    def save(self, path: str | Path) -> None:
        """One .npz file (words, vectors, training config), written atomically; no pickle."""
        meta = {"format": FORMAT, "version": VERSION, "config": asdict(self.config) if self.config else None}
        def write(f):
            np.savez(f, words=np.array(self.words, dtype=np.str_), vectors=self.vectors,
                     meta=np.array(json.dumps(meta)))
        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> WordVectors:
        """Read a saved .npz; every array is checked from its header before it is read, so a file that is
        not one, or breaks the vocabulary's bounds, is a ValueError naming it and the array."""
        try:
            headers = npz_headers(path)
            (n,), words_dtype = expect(headers, "words", "U", 1)
            shape, _ = expect(headers, "vectors", "f", 2)
            _, meta_dtype = expect(headers, "meta", "U", 0)
            # Numpy's text arrays are fixed-width, 4 bytes a character: the longest word sets the width of all.
            if words_dtype.itemsize // 4 > MAX_WORD_LENGTH:
                raise ValueError(f"array words holds words of {words_dtype.itemsize // 4} characters, "
                                 f"over the limit of {MAX_WORD_LENGTH}")
            if n > MAX_WORDS:
                raise ValueError(f"array words holds {n} words, over the limit of {MAX_WORDS}")
            if shape[0] != n:
                raise ValueError(f"{n} words but vectors of shape {shape}")
            if meta_dtype.itemsize // 4 > MAX_META_LENGTH:
                raise ValueError(f"array meta is {meta_dtype.itemsize // 4} characters, over the limit of {MAX_META_LENGTH}")
            with np.load(path, allow_pickle=False) as data:
                words, vectors, text = data["words"].tolist(), data["vectors"].astype(np.float32), str(data["meta"])
            if not np.isfinite(vectors).all():
                raise ValueError("array vectors holds NaN or infinite values (as float32)")
            try:
                meta = json.loads(text)
            except ValueError:
                meta = None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} file (array meta holds {short(text)})")
            check_values(meta, {"config": dict | None})
            try:
                config = Word2VecConfig(**meta["config"]) if meta.get("config") else None
            except TypeError as e:  # a setting Word2VecConfig does not have
                raise ValueError(f"array meta: config: {e}") from None
            if config is not None and config.dim != shape[1]:
                raise ValueError(f"{shape[1]}-d vectors, but array meta says {config.dim}")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return cls(words, vectors, config)

    @classmethod
    def load_word2vec_format(cls, path: str | Path, binary: bool | None = None) -> WordVectors:
        """Read a standard word2vec text or binary file (as written by the C tool or gensim).

        `binary=None` decides from the name (`.bin`, also under `.gz`) or else from the content.
        """
        from gensim.models import KeyedVectors

        path = Path(path)
        if binary is None:
            binary = _looks_binary(path)
        kv = KeyedVectors.load_word2vec_format(str(path), binary=binary)
        return cls(list(kv.index_to_key), kv.vectors)

    def save_word2vec_format(self, path: str | Path, binary: bool = False) -> None:
        """Write the C word2vec layout: a `count dim` header, then one word and its vector per row."""
        def write(f):
            f.write(f"{len(self)} {self.dim}\n".encode("utf-8"))
            for word, vec in zip(self.words, self.vectors):
                if binary:
                    f.write(word.encode("utf-8") + b" " + vec.astype("<f4").tobytes() + b"\n")
                else:
                    # str of a numpy float32 is the shortest text that reads back to the same float32.
                    f.write((word + " " + " ".join(str(x) for x in vec) + "\n").encode("utf-8"))
        atomic_write(path, write)


def _looks_binary(path: Path) -> bool:
    """True for a binary word2vec file: by name, else by whether the first row parses as text."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".bin"):
        return True
    if name.endswith((".txt", ".vec")):
        return False
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.readline().split()
        if len(header) != 2:
            raise ValueError(f"{path}: not a word2vec file (first line should be `count dim`)")
        dim = int(header[1])
        row = f.readline(1 << 16)
    try:
        fields = row.decode("utf-8").rstrip("\n").rstrip().split(" ")
        [float(x) for x in fields[1:]]
        return len(fields) != dim + 1
    except (UnicodeDecodeError, ValueError):
        return True

