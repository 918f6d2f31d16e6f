"""The conditional VAE (Kingma et al. 2014; Sohn et al. 2015) on the word space, conditioned on the photo.

Encoder q(z | word vector, image): word -> `e_word_hidden` ReLU; image -> `e_image_hidden` ReLU;
joined -> the mean and log-variance of a Gaussian over z. Decoder p(word | z, image): the
`WordGenerator`, whose output's likelihood is the configured reconstruction term (with "softmax",
the categorical likelihood of the tag among all vocabulary words). Loss: reconstruction + `kl_weight`
x KL(q(z | word, image) || N(0, I)), the negative ELBO at weight 1. Tags come from decoding
z ~ N(0, I) for the photo, as the seed's "sample from the prior, decode" says.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipelines.errors import OptionError
from tagger.generators.registry import Family, register_family
from tagger.generators.base import GeneratorConfig, TrainConfig, TrainContext, Trainer, WordGenerator, branch, make_optimizer
from tagger.generators.losses import reconstruction


@dataclass(frozen=True)
class CVAEConfig(GeneratorConfig):
    noise: str = "normal"  # the prior N(0, I) that decoding samples from
    noise_dim: int = 32  # width of z
    e_word_hidden: int = 500
    e_image_hidden: int = 1200
    kl_weight: float = 1.0  # 1: the ELBO; below 1 a beta-VAE that lets z carry more of the word


class Encoder(nn.Module):
    """q(z | word, image) -> (mean, log-variance), each (N, noise_dim)."""

    def __init__(self, config: CVAEConfig):
        super().__init__()
        c = config
        self.word_branch = branch(c.word_dim, c.e_word_hidden, c.dropout)
        self.image_branch = branch(c.feature_dim, c.e_image_hidden, c.dropout)
        self.out = nn.Linear(c.e_word_hidden + c.e_image_hidden, 2 * c.noise_dim)

    def forward(self, words: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.word_branch(words), self.image_branch(features)], dim=1)
        mean, logvar = self.out(h).chunk(2, dim=1)
        return mean, logvar.clamp(-10, 10)  # keeps exp(logvar) finite early in training


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over z's dimensions, averaged over rows."""
    return (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1)).mean()


class CVAETrainer(Trainer):
    def __init__(self, generator: WordGenerator, config: TrainConfig, context: TrainContext):
        super().__init__(generator, config, context)
        if not config.recon_weight or config.recon == "set":
            raise OptionError("the cvae family needs a reconstruction term: recon 'pair', 'l1' or 'softmax' with recon_weight > 0")
        if generator.config.noise != "normal":
            raise OptionError("the cvae family's prior is N(0, I): its config needs noise 'normal'")
        self.E = Encoder(generator.config).to(generator.device)
        self.opt = make_optimizer([*generator.parameters(), *self.E.parameters()], config)
        self.optimizers = [self.opt]

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.generator, "E": self.E}

    def step(self, features: torch.Tensor, words: torch.Tensor, photos: torch.Tensor) -> dict[str, float]:
        G, c, ctx = self.generator, self.config, self.context
        mean, logvar = self.E(ctx.targets[words], G.normalize(features))
        eps = torch.randn(mean.shape, generator=ctx.rng, device=mean.device)
        z = mean + (0.5 * logvar).exp() * eps  # the reparameterization trick
        recon = reconstruction(G.all_heads(z, features), words, c, ctx)
        kl = kl_to_standard_normal(mean, logvar)
        loss = c.recon_weight * recon + G.config.kl_weight * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "recon": recon.item(), "kl": kl.item()}


register_family(Family("cvae", CVAEConfig, CVAETrainer,
                       "conditional VAE: q(z | word, image), decoder p(word | z, image), KL to N(0, I)"))
