"""Losses the generator families share: adversarial targets and the reconstruction terms.

Every reconstruction compares generated word vectors with the photo's tags in the word space the
look-up ranks in; the families differ in where their outputs come from, not in how they are scored.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipelines.errors import OptionError
from tagger.generators.base import TrainConfig, TrainContext


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Sigmoid cross-entropy of logits against one target for all (the seed's sigmoid_cross_entropy_with_logits)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def reconstruction(heads: torch.Tensor, words: torch.Tensor, config: TrainConfig, context: TrainContext) -> torch.Tensor:
    """The configured reconstruction term ("pair", "l1" or "softmax") of outputs (B, K, D), K heads, for word ids (B,).

    "pair" and "l1" score the first head; "softmax" scores the mixture of all heads.
    """
    if config.recon == "softmax":
        bias = config.recon_prior * context.log_prior if config.recon_prior else None
        return mixture_loss(heads, words, context.targets, config.recon_temperature, bias)
    target = context.targets[words]
    if config.recon == "l1":
        return (heads[:, 0] - target).abs().mean()
    if config.recon == "pair":
        return (1 - F.cosine_similarity(heads[:, 0], target, dim=1)).mean()
    raise OptionError(f"reconstruction {config.recon!r} needs a photo's samples together (only the cgan family has it)")


def set_loss(samples: torch.Tensor, tags: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Chamfer distance in cosine between each photo's samples (N, M, D) and its tag ids (N, T; -1 = none)."""
    mask = tags >= 0
    words = F.normalize(targets[tags.clamp(min=0)], dim=-1)  # (N, T, D)
    cos = F.normalize(samples, dim=-1) @ words.transpose(1, 2)  # (N, M, T)
    cos = cos.masked_fill(~mask[:, None, :], -2.0)
    cover = ((1 - cos.max(dim=1).values) * mask).sum() / mask.sum()  # every tag has a sample near it
    precise = (1 - cos.max(dim=2).values).mean()  # every sample is near one of the tags
    return (cover + precise) / 2


def mixture_loss(heads: torch.Tensor, words: torch.Tensor, targets: torch.Tensor, temperature: float,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each row's word under the mean of its heads' softmaxes over the vocabulary.

    heads (N, K, D); each head scores every word by cosine / temperature (+ bias, e.g. log frequency).
    With one head this is the plain softmax; with several, a mixture of softmaxes (Yang et al. 2018),
    which can put its mass on words that no single point of the word space ranks first together.
    """
    logits = F.normalize(heads, dim=-1) @ F.normalize(targets, dim=-1).T / temperature  # (N, K, V)
    if bias is not None:
        logits = logits + bias
    mixed = torch.logsumexp(F.log_softmax(logits, dim=-1), dim=1) - math.log(heads.shape[1])  # (N, V)
    return F.nll_loss(mixed, words)


def mode_seeking_loss(samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """1 / (mean over pairs of one photo's samples of |G(z1) - G(z2)| / |z1 - z2|): small when G follows its noise.

    samples (N, M, D) in cosine terms (unit rows), noise (N, M, nz), as in Mao et al. (2019), "Mode seeking GANs".
    """
    u = F.normalize(samples, dim=-1)
    i, j = torch.triu_indices(samples.shape[1], samples.shape[1], offset=1, device=samples.device)
    # sqrt of a clamped square, not cdist: its gradient is finite when two samples coincide.
    out = ((u[:, i] - u[:, j]).pow(2).sum(-1).clamp(min=1e-12)).sqrt()
    gap = (noise[:, i] - noise[:, j]).norm(dim=-1)
    ratio = (out / gap.clamp(min=1e-6)).mean()
    return 1 / (ratio + 1e-5)


def unlikelihood_loss(heads: torch.Tensor, words: torch.Tensor, targets: torch.Tensor, temperature: float,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """-log(1 - p(word)) of each row's word under the mixture `mixture_loss` scores: pushes down a word the photo
    must not get (Welleck et al. 2020, "Neural text generation with unlikelihood training"), e.g. a tag its owner rejected."""
    logits = F.normalize(heads, dim=-1) @ F.normalize(targets, dim=-1).T / temperature  # (N, K, V)
    if bias is not None:
        logits = logits + bias
    mixed = torch.logsumexp(F.log_softmax(logits, dim=-1), dim=1) - math.log(heads.shape[1])  # (N, V)
    p = mixed.gather(1, words[:, None]).squeeze(1).exp()
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()
