"""The FAISS tag index: vectors -> nearest vocabulary words by cosine similarity.

Cosine similarity is the inner product of L2-normalized float32 vectors, so the index stores unit
vectors and normalizes every query. Up to `hnsw_threshold` words an exact `IndexFlatIP` is both
fast and exact; above it an `IndexHNSWFlat` keeps search sub-linear.

    index = TagIndex(vectors.words, vectors.vectors)
    scores, tags = index.search(generated, k=20)    # (N, 20) cosines and N lists of 20 tags
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .files import atomic_dir

FORMAT = "tagger.tag_index"
VERSION = 1
KINDS = ("flat", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    # Above this many words use HNSW (approximate); at or below it, exact flat search.
    hnsw_threshold: int = 100_000
    # HNSW graph degree: more links, better recall, more memory.
    hnsw_m: int = 32
    # Candidate list size while building the HNSW graph.
    ef_construction: int = 200
    # Candidate list size while searching; must be >= k. 128 gives recall@20 >= 0.99 on 100k
    # clustered 200-d vectors (tests/test_index.py).
    ef_search: int = 128


class TagIndex:
    """Nearest-word search over a fixed vocabulary of word vectors."""

    def __init__(self, words: list[str], vectors: np.ndarray, config: IndexConfig = IndexConfig(),
                 kind: str | None = None):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError(f"{len(words)} words but vectors of shape {vectors.shape}")
        if kind is None:
            kind = "hnsw" if len(words) > config.hnsw_threshold else "flat"
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r} (use one of {KINDS})")
        self.words = list(words)
        self.config = config
        self.kind = kind
        self.index = self._new_index(vectors.shape[1])
        self.index.add(unit_rows(vectors))

    def _new_index(self, dim: int) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(dim)
        index = faiss.IndexHNSWFlat(dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        index.hnsw.efSearch = self.config.ef_search
        return index

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return f"TagIndex({len(self)} words, dim={self.dim}, kind={self.kind!r})"

    @property
    def dim(self) -> int:
        return self.index.d

    def search_ids(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores (N, k) float32 and word ids (N, k) int64, best first.

        k is capped at the number of words. HNSW may return fewer than k hits for a query; the
        missing ones have id -1 and score -inf.
        """
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (N, {self.dim}), got {queries.shape}")
        k = min(k, len(self))
        if k <= 0 or len(queries) == 0:
            return np.zeros((len(queries), max(k, 0)), np.float32), np.zeros((len(queries), max(k, 0)), np.int64)
        if self.kind == "hnsw":
            # Search-time parameter, and it must cover k to return k hits.
            self.index.hnsw.efSearch = max(self.config.ef_search, k)
        scores, ids = self.index.search(unit_rows(queries), k)
        scores[ids < 0] = -np.inf
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine scores (N, k) and, per query, its k nearest words (best first)."""
        scores, ids = self.search_ids(queries, k)
        return scores, [[self.words[i] for i in row if i >= 0] for row in ids]

    def save(self, path: str | Path) -> None:
        """A folder: index.faiss, words.json, config.json; written whole or not at all."""
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            (tmp / "words.json").write_text(json.dumps(self.words, ensure_ascii=False), encoding="utf-8")
            meta = {"format": FORMAT, "version": VERSION, "kind": self.kind, "dim": self.dim,
                    "size": len(self), "config": asdict(self.config)}
            (tmp / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TagIndex:
        path = Path(path)
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} folder")
        words = json.loads((path / "words.json").read_text(encoding="utf-8"))
        index = faiss.read_index(str(path / "index.faiss"))
        if index.ntotal != len(words) or index.d != meta["dim"]:
            raise ValueError(f"{path}: index holds {index.ntotal}x{index.d} vectors for {len(words)} words")
        self = cls.__new__(cls)
        self.words, self.config, self.kind, self.index = words, IndexConfig(**meta["config"]), meta["kind"], index
        return self


def unit_rows(x: np.ndarray) -> np.ndarray:
    """A float32 copy with unit-length rows; zero rows stay zero (score 0, never NaN)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, np.finfo(np.float32).tiny)
    return x
