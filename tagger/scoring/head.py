"""`HeadScorer`: the backbone's own ImageNet classifier, read as vocabulary words.

The image features the tagger works on are the input of the backbone's ImageNet head (a Linear
1280 -> 1000 on EfficientNet-Lite). The head's softmax gives p(class) for the 1000 classes, and
a word's score is the sum of p(class) over the classes it names (embeddings.imagenet), each
weighted by `decay ** distance`, the distance from the class up WordNet's hypernyms to the word's
sense (with DECAY 1, every class a word names counts in full: `cat` and `animal` both get a tabby's
probability). Words that name no class score 0.

What it is good for (bench/study_head.py, the shipped model's validation photos): ranking photos
for the words that name ImageNet classes (dog, bird, car, flower, ...; per-tag MAP), not the five
tags of a photo: cgan+knn+head has a higher per-tag MAP than cgan+knn but a lower P@5, so it is a
method to ask for, not the default. It needs no training: the head and WordNet say everything, and the bundle keeps only the
word links (head.json), so loading needs no WordNet.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from embeddings.imagenet import ClassWords
from tagger.scoring.scorers import Scorer
from tagger.scoring.voting import SamplingConfig

DECAY = 1.0  # weight per hypernym step: none (chosen by per-tag MAP on training photos, bench/study_head.py)
HEAD_WEIGHT = 2.0  # the head's weight in cgan+knn+head, beside the generator's and knn's 1 (chosen as DECAY)


class HeadScorer(Scorer):
    name = "head"
    baseline = True  # uses no generator: the same for every bundle of this vocabulary and backbone
    absolute = True  # sums of p(class), at most 1: in cgan+knn+head a sure head counts more than an unsure one

    def __init__(self, load_head: Callable[[], torch.nn.Module], links: ClassWords, words: Sequence[str], decay: float = DECAY):
        """load_head: makes the classifier (features -> logits), on first use: reading the weights is the slow part."""
        self._load_head, self._head = load_head, None
        self.links, self.decay = links, decay
        self.matrix = torch.from_numpy(links.matrix(words, decay))  # (classes, V)

    @property
    def head(self) -> torch.nn.Module:
        if self._head is None:
            self._head = self._load_head()
        return self._head

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, classes) the head's softmax for raw image features (N, D)."""
        with torch.no_grad():
            return torch.softmax(self.head(torch.as_tensor(np.asarray(features, dtype=np.float32))), dim=1).numpy()

    def scores(self, features: np.ndarray, config: SamplingConfig | None = None) -> np.ndarray:
        with torch.no_grad():
            return (torch.from_numpy(self.probabilities(features)) @ self.matrix).numpy()
