"""One scorer per tagging method: each turns photos' raw image features into (N, V) word scores.

- `GeneratorScorer`: samples a generator family for each photo and votes over the nearest words
  of every sample (`tagger.scoring.sampling`); named after its family (cgan, cvae, caae).
- `KNNScorer`: TagVote over the training photos' tags (`tagger.scoring.knn`).
- `PriorScorer`: the training frequency of each word, the same for every photo.
- `SumScorer`: several methods together, each scaled to a best of 1 per photo (probabilities, the
  head's, as they are), then summed (each times its weight, 1 unless given), so words that the
  methods agree on win (e.g. "cgan+knn").
- `HeadScorer` (tagger.scoring.head): the backbone's ImageNet classifier, read as words.

A `Tagger` holds its bundle's scorers by name and never branches on a method's name.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from embeddings.index import TagIndex
from embeddings.tags import Vocabulary
from tagger.scoring.knn import KNNTagger
from tagger.generators import WordGenerator
from tagger.scoring.sampling import score_words
from tagger.scoring.voting import SamplingConfig


def word_prior(vocab: Vocabulary, words: Sequence[str], n_photos: int) -> np.ndarray:
    """Share of training photos carrying each word."""
    return np.array([vocab.counts[vocab.index(w)] for w in words], dtype=np.float32) / max(n_photos, 1)


class Scorer:
    name: str
    baseline = False  # a method that does not use the bundle's generator (knn, prior): the same for bundles that share it
    absolute = False  # scores are probabilities, comparable across photos: a SumScorer adds them unscaled (the head)

    def shares(self, config: SamplingConfig) -> bool:
        """Whether raw scores are already shares in 0..1 (the paper's plain votes); other scores are shown
        relative to the photo's best, unless a calibration maps them to probabilities."""
        return False

    def scores(self, features: np.ndarray, config: SamplingConfig) -> np.ndarray:
        raise NotImplementedError


class GeneratorScorer(Scorer):
    def __init__(self, name: str, generator: WordGenerator, index: TagIndex, prior: np.ndarray,
                 condition: Callable[[np.ndarray], np.ndarray] | None = None):
        self.name, self.generator, self.index, self.prior = name, generator.eval(), index, prior
        self.condition = condition  # raw image features -> what the generator is conditioned on

    def shares(self, config: SamplingConfig) -> bool:
        return config.scoring == "votes" and not config.prior_power

    def scores(self, features: np.ndarray, config: SamplingConfig) -> np.ndarray:
        y = self.condition(features) if self.condition is not None else features
        return score_words(self.generator, y, self.index, config, self.prior)


class KNNScorer(Scorer):
    name = "knn"
    baseline = True

    def __init__(self, knn: KNNTagger):
        self.knn = knn

    def scores(self, features: np.ndarray, config: SamplingConfig) -> np.ndarray:
        return self.knn.scores(features)


class PriorScorer(Scorer):
    name = "prior"
    baseline = True

    def __init__(self, prior: np.ndarray):
        self.prior = np.asarray(prior, dtype=np.float32)

    def scores(self, features: np.ndarray, config: SamplingConfig) -> np.ndarray:
        return np.broadcast_to(self.prior, (len(features), len(self.prior))).copy()


class SumScorer(Scorer):
    def __init__(self, parts: Sequence[Scorer], weights: Sequence[float] | None = None):
        self.parts = list(parts)
        self.weights = [1.0] * len(self.parts) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.parts):
            raise ValueError(f"{len(self.weights)} weights for {len(self.parts)} parts")
        self.name = "+".join(p.name for p in self.parts)
        self.baseline = all(p.baseline for p in self.parts)

    def scores(self, features: np.ndarray, config: SamplingConfig) -> np.ndarray:
        return combine([p.scores(features, config) for p in self.parts], self.weights, [p.absolute for p in self.parts])


def combine(tables: Sequence[np.ndarray], weights: Sequence[float] | None = None, absolute: Sequence[bool] | None = None) -> np.ndarray:
    """SumScorer's sum: each table scaled to a best of 1 per photo (negative scores as 0), times its weight.

    A table of probabilities (`absolute`) is added as it is: scaled to its best, a photo the head is unsure
    of would get a full point for its likeliest class as well as a photo it is sure of.
    """
    weights = [1.0] * len(tables) if weights is None else weights
    absolute = [False] * len(tables) if absolute is None else absolute
    return sum(w * (np.clip(t, 0, None) if a else np.clip(t, 0, None) / np.maximum(t.max(axis=1, keepdims=True), 1e-12))
               for w, t, a in zip(weights, tables, absolute))
