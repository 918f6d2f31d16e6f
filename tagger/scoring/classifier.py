"""`ClassifierScorer`: a linear layer from the image features to the vocabulary's words, trained with the
backbone's retrained last blocks (tagger/training/tune.py), read as each word's probability.

The retrained tail gives the features every method works on; this layer is the tail's own reading of
them, one logistic output per word trained with binary cross-entropy on the training photos' tags.
Summed with the generator and kNN (`cgan+knn+classifier`) it is the best method measured on
validation photos (bench/study_finetune.py). Its weights are a bundle file of their own,
classifier.safetensors: `weight` (V, D) and `bias` (V,).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tagger.scoring.scorers import Scorer
from tagger.scoring.voting import SamplingConfig


class WordClassifier:
    """The layer's weights: (V, D) and (V,) float32; a word's score is sigmoid(weight @ features + bias)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        weight, bias = np.asarray(weight, dtype=np.float32), np.asarray(bias, dtype=np.float32)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"a classifier needs weight (V, D) and bias (V,), got {weight.shape} and {bias.shape}")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ValueError("the classifier holds NaN or infinite values")
        self.weight, self.bias = weight, bias

    @property
    def words(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        return (1.0 / (1.0 + np.exp(-(x @ self.weight.T + self.bias)))).astype(np.float32)

    def save(self, path: str | Path, half: bool = False) -> None:
        """half: store float16 (half the size; read back as float32)."""
        dtype = torch.float16 if half else torch.float32
        save_file({"weight": torch.from_numpy(self.weight).to(dtype), "bias": torch.from_numpy(self.bias).to(dtype)}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "WordClassifier":
        state = load_file(str(path))
        missing = {"weight", "bias"} - set(state)
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))} tensor")
        return cls(state["weight"].float().numpy(), state["bias"].float().numpy())


class ClassifierScorer(Scorer):
    name = "classifier"

    def __init__(self, classifier: WordClassifier):
        self.classifier = classifier

    def scores(self, features: np.ndarray, config: SamplingConfig | None = None) -> np.ndarray:
        return self.classifier.probabilities(features)
