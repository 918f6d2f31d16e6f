"""The conditional GAN of Mirza & Osindero (2014), "Multimodal" section: G(noise, image) -> word vector.

Generator: `WordGenerator` (noise -> 500 ReLU; image -> 2000 ReLU; joined -> word vector).
Discriminator: word vector -> 500 ReLU; image -> 1200 ReLU; a joint maxout layer of 1000 units with
3 pieces -> 1 logit (the sigmoid lives in the loss, where it is numerically safe).
Losses, as in the seed: loss_D = -log D(x, y) - log(1 - D(G(z, y), y)); loss_G = -log D(G(z, y), y),
plus the configured reconstruction term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tagger.generators.registry import Family, register_family
from tagger.generators.base import GeneratorConfig, TrainConfig, TrainContext, Trainer, WordGenerator, branch, make_optimizer
from tagger.generators.losses import bce, mode_seeking_loss, reconstruction, set_loss


@dataclass(frozen=True)
class CGANConfig(GeneratorConfig):
    d_word_hidden: int = 500
    d_image_hidden: int = 1200
    d_maxout_units: int = 1000
    d_maxout_pieces: int = 3


class Maxout(nn.Module):
    def __init__(self, d_in: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(d_in, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.shape[0], self.units, self.pieces).max(dim=2).values


class Discriminator(nn.Module):
    """D(word vector, image) -> logit of "a real tag of this photo"; the CAAE's D_img too."""

    def __init__(self, config: CGANConfig):
        super().__init__()
        c = config
        self.word_branch = branch(c.word_dim, c.d_word_hidden, c.dropout)
        self.image_branch = branch(c.feature_dim, c.d_image_hidden, c.dropout)
        self.joint = nn.Sequential(
            Maxout(c.d_word_hidden + c.d_image_hidden, c.d_maxout_units, c.d_maxout_pieces), nn.Dropout(c.dropout)
        )
        self.out = nn.Linear(c.d_maxout_units, 1)

    def forward(self, words: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """words: (N, word_dim); features: image features already normalized by the generator. Returns logits (N,)."""
        h = torch.cat([self.word_branch(words), self.image_branch(features)], dim=1)
        return self.out(self.joint(h)).squeeze(1)


class CGANTrainer(Trainer):
    """k D steps then one G step per batch, with the non-saturating G loss and a reconstruction term."""

    generator: WordGenerator

    def __init__(self, generator: WordGenerator, config: TrainConfig, context: TrainContext):
        super().__init__(generator, config, context)
        self.D = Discriminator(generator.config).to(generator.device)
        self.opt_g, self.opt_d = make_optimizer(generator.parameters(), config), make_optimizer(self.D.parameters(), config)
        self.optimizers = [self.opt_g, self.opt_d]

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.generator, "D": self.D}

    def step(self, features: torch.Tensor, words: torch.Tensor, photos: torch.Tensor) -> dict[str, float]:
        G, D, c, ctx = self.generator, self.D, self.config, self.context
        x, w = features, ctx.targets[words]
        xn = G.normalize(x)
        for _ in range(c.d_steps):
            with torch.no_grad():
                fake = G(G.sample_noise(len(x), ctx.rng), x)
            d_real, d_fake = D(w, xn), D(fake, xn)
            loss_d = bce(d_real, 1.0 - c.label_smoothing) + bce(d_fake, 0.0)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()

        use_set = c.recon_weight and c.recon == "set"
        if use_set:  # the first of each photo's samples is also the one D judges
            noise = G.sample_noise(len(x) * c.set_samples, ctx.rng).view(len(x), c.set_samples, -1)
            samples = G.generate(noise, x)
            fake = samples[:, 0]
        else:
            noise = G.sample_noise(len(x), ctx.rng)
            heads = G.all_heads(noise, x)  # every head, for the mixture; D judges the noise's own
            fake = G.pick(heads, noise)
        loss_g = bce(D(fake, xn), 1.0)  # non-saturating: -log D(G(z))
        if use_set:
            loss_g = loss_g + c.recon_weight * set_loss(samples, ctx.tags[photos], ctx.targets)
            if c.diversity:
                loss_g = loss_g + c.diversity * mode_seeking_loss(samples, noise)
        elif c.recon_weight:
            # "pair" and "l1" compare the sample D judged; "softmax" every head's output
            own = heads if c.recon == "softmax" else fake[:, None]
            loss_g = loss_g + c.recon_weight * reconstruction(own, words, c, ctx)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(),
                "d_real": torch.sigmoid(d_real).mean().item(), "d_fake": torch.sigmoid(d_fake).mean().item()}



register_family(Family("cgan", CGANConfig, CGANTrainer,
                       "conditional GAN (Mirza & Osindero 2014): G(z, image) against D(word, image)"))
