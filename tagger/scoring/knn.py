"""Baseline tagging methods on the same features and vocabulary as the cGAN.

- prior: every photo gets the training tags by frequency. Any method should beat it.
- knn: TagVote (Li, Snoek & Worring 2009, "Learning social tag relevance by neighbor voting"):
  a word's score for a photo is the number of its K visual neighbours among the training photos
  that carry the word, minus the number expected by chance, K * prior(word). Neighbours by cosine
  on centred features, reduced by PCA so the training set fits in the bundle.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from embeddings.checks import check_fields, expect, npz_headers
from embeddings.index import unit_rows
from embeddings.tags import MAX_WORDS
from pipelines.errors import OptionError

MAX_K = 10_000  # most neighbours that may vote (as many as a photo's samples may be)
MAX_DIM = 1 << 16  # widest PCA a config may ask for (as wide as any generator layer)


@dataclass(frozen=True)
class KNNConfig:
    k: int = 50  # neighbours that vote (chosen on the validation split by `fit_knn`)
    dim: int = 256  # PCA width of the stored training features
    subtract_prior: bool = True  # TagVote: votes minus K * prior

    def __post_init__(self):
        check_fields(self, OptionError)
        if not 1 <= self.k <= MAX_K:
            raise OptionError(f"k must be a whole number from 1 to {MAX_K}, got {self.k}")
        if not 1 <= self.dim <= MAX_DIM:
            raise OptionError(f"dim must be a whole number from 1 to {MAX_DIM}, got {self.dim}")


class KNNTagger:
    """TagVote over a PCA-reduced copy of the training photos' features and their tag ids."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, features: np.ndarray, tags: Sequence[Sequence[int]],
                 vocab_size: int, config: KNNConfig = KNNConfig()):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.asarray(components, dtype=np.float32)  # (D, dim)
        self.features = unit_rows(np.asarray(features, dtype=np.float32))  # (N, dim)
        self.tags = [np.asarray(t, dtype=np.int64) for t in tags]
        self.vocab_size = vocab_size
        self.config = config
        counts = np.bincount(np.concatenate(self.tags) if self.tags else np.zeros(0, np.int64), minlength=vocab_size)
        self.prior = counts.astype(np.float32) / max(len(self.tags), 1)
        self.index = faiss.IndexFlatIP(self.features.shape[1])
        self.index.add(self.features)
        # Tag matrix as CSR, so a batch's votes are one sparse gather.
        self.indptr = np.concatenate([[0], np.cumsum([len(t) for t in self.tags])]).astype(np.int64)
        self.indices = np.concatenate(self.tags) if self.tags else np.zeros(0, np.int64)

    @classmethod
    def fit(cls, features: np.ndarray, tags: Sequence[Sequence[int]], vocab_size: int, config: KNNConfig = KNNConfig(), seed: int = 0) -> "KNNTagger":
        features = np.asarray(features, dtype=np.float32)
        mean = features.mean(axis=0)
        dim = min(config.dim, features.shape[1], len(features))
        pca = faiss.PCAMatrix(features.shape[1], dim)
        pca.train(features - mean)
        # faiss stores the projection row-major as (dim, D); we keep (D, dim) for x @ components.
        components = faiss.vector_to_array(pca.A).reshape(dim, features.shape[1]).T.copy()
        return cls(mean, components, (features - mean) @ components, tags, vocab_size, config)

    def project(self, features: np.ndarray) -> np.ndarray:
        return unit_rows((np.asarray(features, dtype=np.float32) - self.mean) @ self.components)

    def neighbours(self, features: np.ndarray, k: int, self_rows: np.ndarray | None = None) -> np.ndarray:
        """(N, k) rows of the k training photos nearest each photo (-1: none).

        self_rows: for photos that are themselves in the training set, their own row (-1 for others),
        left out of their neighbours, so a training photo's votes never include its own tags.
        """
        k = min(k, len(self.tags))
        extra = 1 if self_rows is not None and len(self.tags) > k else 0
        _, nbrs = self.index.search(self.project(features), k + extra)
        if self_rows is None:
            return nbrs
        own = nbrs == np.asarray(self_rows)[:, None]
        # Drop the photo's own row where it was found, else the farthest neighbour: k are left either way.
        drop = np.where(own.any(axis=1), own.argmax(axis=1), nbrs.shape[1] - 1) if extra else np.full(len(nbrs), -1)
        keep = np.ones(nbrs.shape, dtype=bool)
        if extra:
            keep[np.arange(len(nbrs)), drop] = False
        else:
            nbrs = np.where(own, -1, nbrs)
        return nbrs[keep].reshape(len(nbrs), -1)

    def votes(self, features: np.ndarray, k: int | None = None, self_rows: np.ndarray | None = None) -> np.ndarray:
        """(N, V) how many of each photo's k nearest training photos carry each word."""
        nbrs = self.neighbours(features, k or self.config.k, self_rows)
        rows = np.repeat(np.arange(len(nbrs)), nbrs.shape[1])[nbrs.ravel() >= 0]
        found = nbrs.ravel()[nbrs.ravel() >= 0]
        # Every neighbour's tag ids, gathered from the CSR arrays at once: their positions in `indices`.
        starts, lengths = self.indptr[found], self.indptr[found + 1] - self.indptr[found]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        words = self.indices[np.repeat(starts, lengths) + offsets]
        flat = np.repeat(rows, lengths) * self.vocab_size + words
        return np.bincount(flat, minlength=len(nbrs) * self.vocab_size).reshape(len(nbrs), self.vocab_size).astype(np.float32)

    def scores(self, features: np.ndarray, k: int | None = None) -> np.ndarray:
        """(N, V) TagVote scores for raw image features (N, D)."""
        k = min(k or self.config.k, len(self.tags))
        table = self.votes(features, k)
        if self.config.subtract_prior:
            table -= k * self.prior
        return table

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            mean=self.mean,
            components=self.components.astype(np.float16),
            features=self.features.astype(np.float16),
            indptr=self.indptr,
            indices=self.indices,
            vocab_size=np.array(self.vocab_size),
            config=np.array(list(asdict(self.config).values())),
        )

    @classmethod
    def load(cls, path: str | Path) -> "KNNTagger":
        """Read a saved baseline, every array checked against the others (from their headers, before any is read)
        and its values before use: out-of-range tag ids or a shuffled indptr would give other votes, silently."""
        headers = npz_headers(path)
        (width,), _ = expect(headers, "mean", "f", 1)
        components, _ = expect(headers, "components", "f", 2)
        features, _ = expect(headers, "features", "f", 2)
        indptr_shape, _ = expect(headers, "indptr", "iu", 1)
        expect(headers, "indices", "iu", 1)
        expect(headers, "vocab_size", "iu", 0)
        if expect(headers, "config", "iu", 1)[0] != (3,):
            raise ValueError(f"array config is {headers['config'][0]}, expected 3 values (k, dim, subtract_prior)")
        if components[0] != width:
            raise ValueError(f"array mean is {(width,)}, but components is {components}")
        if features[1] != components[1] or features[0] < 1:
            raise ValueError(f"array features is {features}, but components is {components}: expected one photo or more of {components[1]}")
        if indptr_shape != (features[0] + 1,):
            raise ValueError(f"array indptr has {indptr_shape[0]} entries for {features[0]} photos, expected {features[0] + 1}")
        with np.load(path, allow_pickle=False) as d:
            vocab_size, (k, dim, subtract) = d["vocab_size"].item(), d["config"].tolist()
            if not 1 <= vocab_size <= MAX_WORDS:
                raise ValueError(f"array vocab_size: {vocab_size} words, expected 1 or more, within the limit of {MAX_WORDS}")
            if subtract not in (0, 1):
                raise ValueError(f"array config: subtract_prior must be 0 or 1, got {subtract}")
            try:
                config = KNNConfig(k=k, dim=dim, subtract_prior=bool(subtract))
            except OptionError as e:
                raise ValueError(f"array config: {e}") from None
            # fit keeps min(dim, input width, photos) components: any other width is not a baseline it made.
            if components[1] != min(dim, width, features[0]):
                raise ValueError(f"array config: dim {dim} does not give the {components[1]} components stored")
            indptr, indices = d["indptr"].astype(np.int64), d["indices"].astype(np.int64)
            if indptr[0] != 0:
                raise ValueError(f"array indptr must start at 0, starts at {indptr[0]}")
            if np.any(np.diff(indptr) < 0):
                raise ValueError(f"array indptr decreases at entry {int(np.argmax(np.diff(indptr) < 0)) + 1}")
            if indptr[-1] != len(indices):
                raise ValueError(f"array indptr ends at {indptr[-1]}, but there are {len(indices)} indices")
            outside = (indices < 0) | (indices >= vocab_size)
            if outside.any():
                raise ValueError(f"array indices: {int(outside.sum())} word ids outside 0..{vocab_size - 1} (e.g. {indices[outside][0]})")
            # As float32, which the baseline computes in: 1e300 in a float64 array is finite until then.
            with np.errstate(over="ignore"):  # such a value becomes inf here, and is refused below
                arrays = {name: d[name].astype(np.float32) for name in ("mean", "components", "features")}
            for name, a in arrays.items():
                if not np.isfinite(a).all():
                    raise ValueError(f"array {name} holds NaN or infinite values (as float32)")
            tags = [indices[indptr[i] : indptr[i + 1]] for i in range(len(indptr) - 1)]
            return cls(arrays["mean"], arrays["components"], arrays["features"], tags, vocab_size, config)
