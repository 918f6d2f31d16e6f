"""The conditional adversarial autoencoder (CAAE; Zhang, Song & Qi 2017, "Age Progression/Regression
by Conditional Adversarial Autoencoder"), conditioned on the photo's features instead of an age.

As the seed's code has it, with word vectors in place of face images:
- E(word vector) -> z in [-1, 1] (tanh);
- D_z(z): prior samples z* ~ U[-1, 1] labelled 1, encoded z labelled 0 (`loss_Dz`); E wants its z
  labelled 1 (`E_z_loss`), which pushes the codes of all words to fill the prior;
- G(z, image) -> word vector: the `WordGenerator`, trained to reconstruct the word from its code
  (`EG_loss`: L1 in the seed; here any reconstruction term, "l1" included);
- D_img(word vector, image): a real (tag, photo) pair labelled 1, (G(E(word), image), image) 0
  (`loss_Di`); G wants its output labelled 1 (`G_img_loss`); the cGAN's discriminator.
- loss_EG = EG_loss + a * G_img_loss + b * E_z_loss (the seed's total; its TV term is for images).
Tags come from decoding prior samples z ~ U[-1, 1] for the photo, as the CAAE generates faces.

As the seed writes it, nothing makes G(z, image) tag the photo when z is drawn from the prior: E
sees only the word, so its code carries the word, G learns to read the word off the code and to
ignore the image, and decoding prior samples gives words of no photo in particular (validation
P@5 0.067 on the subset, against 0.15 for the other families). `prior_weight` adds the same
reconstruction term for G(z ~ prior, image) against the photo's tag, so the image has to carry the
tag whenever the code does not; it is 0 in the seed and 1 in the preset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipelines.errors import OptionError
from tagger.generators.registry import Family, register_family
from tagger.generators.base import TrainConfig, TrainContext, Trainer, WordGenerator, make_optimizer
from tagger.generators.cgan import CGANConfig, Discriminator
from tagger.generators.losses import bce, reconstruction


@dataclass(frozen=True)
class CAAEConfig(CGANConfig):
    """The generator's sizes, D_img's (the cGAN's D fields), E's and D_z's, and the loss weights."""

    noise_dim: int = 50  # width of z (the seed's num_z_channels is 50)
    e_hidden: int = 500
    dz_hidden: int = 500
    # Weights of G_img_loss and E_z_loss in loss_EG. The seed's code has 0.000 for both, with the
    # comment "slightly increase the params"; at 0 neither discriminator shapes E or G.
    img_weight: float = 0.1  # a
    z_weight: float = 0.1  # b
    prior_weight: float = 0.0  # the reconstruction term for G(prior z, image) too (not in the seed)


class Encoder(nn.Module):
    """E(word vector) -> z in [-1, 1]."""

    def __init__(self, config: CAAEConfig):
        super().__init__()
        c = config
        self.net = nn.Sequential(nn.Linear(c.word_dim, c.e_hidden), nn.ReLU(), nn.Linear(c.e_hidden, c.noise_dim), nn.Tanh())

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return self.net(words)


class CodeDiscriminator(nn.Module):
    """D_z(z) -> logit of "drawn from the prior"."""

    def __init__(self, config: CAAEConfig):
        super().__init__()
        c = config
        self.net = nn.Sequential(nn.Linear(c.noise_dim, c.dz_hidden), nn.ReLU(), nn.Linear(c.dz_hidden, c.dz_hidden // 2), nn.ReLU(),
                                 nn.Linear(c.dz_hidden // 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


class CAAETrainer(Trainer):
    """Per batch: D_z and D_img steps on detached codes and outputs, then one E+G step on loss_EG."""

    def __init__(self, generator: WordGenerator, config: TrainConfig, context: TrainContext):
        super().__init__(generator, config, context)
        if generator.config.noise != "uniform":
            raise OptionError("the caae family's prior is U[-1, 1] (E ends in tanh): its config needs noise 'uniform'")
        if config.recon == "set":
            raise OptionError("the caae family reconstructs one word from its code: recon 'pair', 'l1' or 'softmax'")
        dev = generator.device
        self.E, self.D_z, self.D_img = Encoder(generator.config).to(dev), CodeDiscriminator(generator.config).to(dev), Discriminator(generator.config).to(dev)
        self.opt_eg = make_optimizer([*generator.parameters(), *self.E.parameters()], config)
        self.opt_dz, self.opt_di = make_optimizer(self.D_z.parameters(), config), make_optimizer(self.D_img.parameters(), config)
        self.optimizers = [self.opt_eg, self.opt_dz, self.opt_di]

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.generator, "E": self.E, "D_z": self.D_z, "D_img": self.D_img}

    def step(self, features: torch.Tensor, words: torch.Tensor, photos: torch.Tensor) -> dict[str, float]:
        G, c, ctx, a, b = self.generator, self.config, self.context, self.generator.config.img_weight, self.generator.config.z_weight
        x, w = features, ctx.targets[words]
        xn = G.normalize(x)
        real = 1.0 - c.label_smoothing

        z = self.E(w)
        heads = G.all_heads(z, x)
        out = G.pick(heads, z)
        # The discriminators learn on what E and G make now, detached.
        prior = G.sample_noise(len(x), ctx.rng)
        loss_dz = bce(self.D_z(prior), real) + bce(self.D_z(z.detach()), 0.0)
        self.opt_dz.zero_grad(set_to_none=True)
        loss_dz.backward()
        self.opt_dz.step()
        d_real = self.D_img(w, xn)
        loss_di = bce(d_real, real) + bce(self.D_img(out.detach(), xn), 0.0)
        self.opt_di.zero_grad(set_to_none=True)
        loss_di.backward()
        self.opt_di.step()

        eg = reconstruction(heads if c.recon == "softmax" else out[:, None], words, c, ctx)
        d_fake = self.D_img(out, xn)
        g_img, e_z = bce(d_fake, 1.0), bce(self.D_z(z), 1.0)
        loss_eg = c.recon_weight * eg + a * g_img + b * e_z
        if G.config.prior_weight:
            from_prior = G.all_heads(prior, x)
            loss_eg = loss_eg + G.config.prior_weight * reconstruction(
                from_prior if c.recon == "softmax" else G.pick(from_prior, prior)[:, None], words, c, ctx)
        self.opt_eg.zero_grad(set_to_none=True)
        loss_eg.backward()
        self.opt_eg.step()
        return {"loss_eg": loss_eg.item(), "recon": eg.item(), "g_img": g_img.item(), "e_z": e_z.item(),
                "loss_dz": loss_dz.item(), "loss_di": loss_di.item(),
                "d_real": torch.sigmoid(d_real).mean().item(), "d_fake": torch.sigmoid(d_fake).mean().item()}


register_family(Family("caae", CAAEConfig, CAAETrainer,
                       "conditional adversarial autoencoder (Zhang et al. 2017): E(word) -> z against a uniform prior, "
                       "G(z, image) -> word, D(word, image)"))
