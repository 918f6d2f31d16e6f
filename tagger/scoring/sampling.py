"""Sampling the generator for a batch of photos and scoring every vocabulary word by votes.

All samples of all photos in a batch go through one FAISS search. Every photo gets the same
`samples` noise vectors, drawn once from the seed, so a photo's tags depend on the photo and the
seed only, never on which other photos share its batch. A generator with several output heads gets
its samples spread evenly over the heads.
"""
from __future__ import annotations

import numpy as np
import torch

from embeddings.index import TagIndex
from tagger.generators import WordGenerator
from tagger.scoring.voting import SamplingConfig, vote

# Photos per generator pass: bounds memory at samples x chunk rows.
CHUNK = 64


@torch.inference_mode()
def score_words(generator: WordGenerator, features: np.ndarray, index: TagIndex, config: SamplingConfig,
                prior: np.ndarray | None = None) -> np.ndarray:
    """(N, V) scores of every vocabulary word for each photo's raw image features (N, F)."""
    was_training = generator.training
    generator.eval()
    device = generator.device
    rng = torch.Generator(device=device).manual_seed(config.seed)
    noise = generator.sample_noise(config.samples, rng, stratified=True)
    out = np.zeros((len(features), len(index)), dtype=np.float32)
    for start in range(0, len(features), CHUNK):
        x = torch.as_tensor(np.asarray(features[start : start + CHUNK], dtype=np.float32), device=device)
        n = x.shape[0]
        generated = generator.generate(noise, x).reshape(n * config.samples, -1).float().cpu().numpy()
        scores, ids = index.search_ids(generated, config.neighbours)
        out[start : start + n] = vote(scores, ids, n, len(index), config, prior)
    generator.train(was_training)
    return out
