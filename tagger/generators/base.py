"""What every generator family gives: a conditional generator of word vectors, and its training step.

Tagging needs only `WordGenerator`, the one network every family trains: noise from
`sample_noise`, then `generate(noise, features)`, M word vectors for each of N photos. Training
needs a family's `Trainer`: it builds the networks the family trains beside the generator
(discriminators, encoders), owns their losses and optimizers, takes one step on a batch of
(photo, tag) pairs and saves and restores its state for checkpoints. The loop around it (`tagger.training.loop`) is the same for every family: schedule, weight
averaging, validation, checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.checks import check_fields
from pipelines.errors import OptionError

# Reconstruction terms a family may offer beside its adversarial or KL terms (TrainConfig.recon).
RECONS = ("pair", "l1", "set", "softmax")


MAX_WIDTH = 1 << 16  # widest layer or vector any config may ask for
OPTIONAL_WIDTHS = {"g_joint_hidden"}  # 0 turns the layer off


@dataclass(frozen=True)
class GeneratorConfig:
    """Fields every family's config has (each family's own config adds its sizes and loss weights)."""

    feature_dim: int = 1280  # width of the condition: the image features (and what is appended to them)
    word_dim: int = 200  # width of the word vectors generated
    noise_dim: int = 100  # width of the noise (the latent code, for the autoencoder families)
    noise: str = "uniform"  # "uniform" in [-1, 1) or "normal"
    g_noise_hidden: int = 500
    g_image_hidden: int = 2000
    g_joint_hidden: int = 0  # 0: the paper's linear join; else a joint ReLU layer of this width
    dropout: float = 0.5  # in every network, as in the paper
    # Scale the output to unit length, for word spaces of unit vectors: a discriminator can then judge
    # only where a generated vector points, not how long it is.
    unit_output: bool = False
    # Output heads: with more than one, the last layer has this many and each sample's noise picks one
    # (by its first coordinate), so one photo's samples can land on several different words.
    heads: int = 1

    def __post_init__(self):
        # Every family's config comes through here, its own fields too: a bundle's config.json is checked
        # before a network is built from it, so a tampered size fails in one line, not in a 20 GB allocation.
        if self.noise not in ("uniform", "normal"):
            raise OptionError(f"noise must be 'uniform' or 'normal', got {self.noise!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                least = 0 if f.name in OPTIONAL_WIDTHS else 1
                if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_WIDTH:
                    raise OptionError(f"{f.name} must be a whole number from {least} to {MAX_WIDTH}, got {value!r}")
            elif f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise OptionError(f"{f.name} must be a finite number, 0 or more, got {value!r}")
        if not self.dropout < 1:
            raise OptionError(f"dropout must be below 1, got {self.dropout}")
        if self.heads > 256:
            raise OptionError(f"heads must be at most 256, got {self.heads}")
        check_fields(self, OptionError)  # the rest by their declared types: unit_output "no" is not true

    def to_dict(self) -> dict:
        return asdict(self)


def branch(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> dropout: every hidden layer of the paper's networks, and of the families' own."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout))


class WordGenerator(nn.Module):
    """G(noise, condition) -> word vector, the network every family trains (the paper's generator).

    noise -> `g_noise_hidden` ReLU; condition -> `g_image_hidden` ReLU; both joined -> word vector
    (through a `g_joint_hidden` ReLU layer if set). In the paper's linear join the noise can only
    add the same offset to every photo's output; the joint layer lets the spread of a photo's
    samples depend on the photo, and output heads picked by the noise let them land on several words.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = c = config
        # Feature standardization travels with the weights, so a saved generator needs no side data.
        self.register_buffer("feature_mean", torch.zeros(c.feature_dim))
        self.register_buffer("feature_scale", torch.ones(c.feature_dim))
        self.noise_branch = branch(c.noise_dim, c.g_noise_hidden, c.dropout)
        self.image_branch = branch(c.feature_dim, c.g_image_hidden, c.dropout)
        joined = c.g_noise_hidden + c.g_image_hidden
        if c.g_joint_hidden:
            self.joint = branch(joined, c.g_joint_hidden, c.dropout)
        self.out = nn.Linear(c.g_joint_hidden or joined, c.word_dim * c.heads)

    @property
    def device(self) -> torch.device:
        return self.feature_mean.device

    def set_feature_stats(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_scale

    def sample_noise(self, n: int, generator: torch.Generator | None = None, stratified: bool = False) -> torch.Tensor:
        """(n, noise_dim) noise from the prior. `stratified` (with several heads): the first coordinate, which
        picks the head, is spread evenly over its range instead of drawn, so n samples visit every head equally."""
        shape, dev = (n, self.config.noise_dim), self.device
        if self.config.noise == "normal":
            z = torch.randn(shape, generator=generator, device=dev)
        else:
            z = torch.rand(shape, generator=generator, device=dev) * 2 - 1
        if stratified and self.config.heads > 1:
            q = (torch.arange(n, device=dev, dtype=z.dtype) + 0.5) / n
            z[:, 0] = torch.special.ndtri(q) if self.config.noise == "normal" else q * 2 - 1
        return z

    def forward(self, noise: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """features: raw image features (N, feature_dim); noise: (N, noise_dim). Returns (N, word_dim)."""
        return self.pick(self.all_heads(noise, features), noise)

    def all_heads(self, noise: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(N, heads, word_dim): every head's output for each (noise, photo) row."""
        h = torch.cat([self.noise_branch(noise), self.image_branch(self.normalize(features))], dim=1)
        if self.config.g_joint_hidden:
            h = self.joint(h)
        return self._finish(self.out(h))

    def head_of(self, noise: torch.Tensor) -> torch.Tensor:
        """The head each noise vector picks: its first coordinate's quantile, cut into `heads` equal bins."""
        u = noise[..., 0]
        u = torch.special.ndtr(u) if self.config.noise == "normal" else (u + 1) / 2
        return (u * self.config.heads).long().clamp(0, self.config.heads - 1)

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        """(..., heads * word_dim) -> (..., heads, word_dim), scaled to unit length if so configured."""
        out = out.unflatten(-1, (self.config.heads, self.config.word_dim))
        return F.normalize(out, dim=-1) if self.config.unit_output else out

    def pick(self, out: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(..., heads, word_dim) -> (..., word_dim): the head of each row's noise."""
        if self.config.heads == 1:
            return out.squeeze(-2)
        k = self.head_of(noise).expand(out.shape[:-2])
        return out.gather(-2, k[..., None, None].expand(*out.shape[:-2], 1, out.shape[-1])).squeeze(-2)

    def generate(self, noise: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(N, M, word_dim): M samples for each of N photos, the same as `forward` on repeated rows.

        The image branch runs once per photo rather than once per sample: the layer after the join is
        split into its noise and image columns, so M samples cost little more than one.
        """
        c = self.config
        layer = self.joint[0] if c.g_joint_hidden else self.out
        hn, w = c.g_noise_hidden, layer.weight
        image = self.image_branch(self.normalize(features)) @ w[:, hn:].T  # (N, width)
        noise_part = self.noise_branch(noise) @ w[:, :hn].T  # (M, width) or (N, M, width)
        if c.heads > 1 and not c.g_joint_hidden and noise.dim() == 2:
            # Noise shared by every photo picks one head per sample: add up only that head's columns.
            k = self.head_of(noise)  # (M,)
            cols = (k[:, None] * c.word_dim + torch.arange(c.word_dim, device=k.device)).flatten()  # (M * word_dim,)
            m = len(noise)
            picked = (image[:, cols].view(-1, m, c.word_dim) + noise_part.gather(1, cols.view(m, c.word_dim))
                      + layer.bias[cols].view(m, c.word_dim))
            return F.normalize(picked, dim=-1) if c.unit_output else picked
        h = image[:, None, :] + noise_part + layer.bias
        if c.g_joint_hidden:
            h = self.out(self.joint[2](self.joint[1](h)))
        return self.pick(self._finish(h), noise)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings every family shares; a family's own loss weights live in its config."""

    optimizer: str = "sgd"  # "sgd" (the paper) or "adam"
    lr: float = 0.1
    lr_decay: float = 1.00004  # the learning rate is divided by this after every update
    lr_min: float = 1e-6
    momentum: float = 0.5  # SGD momentum at the start ...
    momentum_final: float = 0.7  # ... rising linearly to this ...
    momentum_epochs: int = 10  # ... over this many epochs
    adam_betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 100
    epochs: int = 10
    max_steps: int = 0  # stop after this many updates in all (0: no limit)
    d_steps: int = 1  # discriminator updates per generator update
    label_smoothing: float = 0.0  # real targets for discriminators are 1 - this (one-sided smoothing)
    recon_weight: float = 0.0  # weight of the reconstruction term beside the family's other losses
    # "pair": 1 - cos(output, the pair's word); "l1": mean |output - word| (the CAAE's); "set": `set_samples`
    # samples of the photo against all its tags, each tag reached by its closest sample and each sample
    # close to some tag (Chamfer); "softmax": cross-entropy of the pair's word among all vocabulary words,
    # each scored by its cosine to the output / `recon_temperature` plus `recon_prior` x log(word
    # frequency); with several output heads, under the mean of the heads' softmaxes. Unlike "pair" it
    # also pushes the output away from the words the photo does not have, which is what the look-up ranks.
    recon: str = "pair"
    recon_temperature: float = 0.1
    # The frequency term (logit adjustment, Menon et al. 2021) lets the cosine model how much more likely
    # a tag is for this photo than in general: the scoring's prior ** prior_power adds it back when tagging.
    recon_prior: float = 1.0
    set_samples: int = 8
    # With recon "set": weight of a mode-seeking term (Mao et al. 2019) that rewards a photo's samples for
    # being as far apart as their noise vectors, against G ignoring its noise; 0 = off.
    diversity: float = 0.0
    ema: float = 0.0  # G's weights averaged with this decay after every update; 0 = off
    seed: int = 0
    val_photos: int = 1000  # validation P@5 on at most this many held-out photos per epoch

    def __post_init__(self):
        check_fields(self, OptionError)
        if self.optimizer not in ("sgd", "adam"):
            raise OptionError(f"unknown optimizer {self.optimizer!r} (use 'sgd' or 'adam')")
        if self.recon not in RECONS:
            raise OptionError(f"recon must be one of {', '.join(map(repr, RECONS))}, got {self.recon!r}")
        if self.diversity and not (self.recon == "set" and self.recon_weight):
            raise OptionError("diversity needs recon 'set' and a recon_weight: it compares a photo's set of samples")

    def to_dict(self) -> dict:
        return asdict(self)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(params, lr=config.lr, betas=config.adam_betas)


def learning_rate(config: TrainConfig, step: int) -> float:
    if config.optimizer != "sgd":
        return config.lr
    # In log space: 1.00004**step overflows a float long after the floor is reached.
    return max(config.lr * math.exp(-step * math.log(config.lr_decay)), config.lr_min)


def momentum(config: TrainConfig, epoch_float: float) -> float:
    t = min(epoch_float / max(config.momentum_epochs, 1), 1.0)
    return config.momentum + t * (config.momentum_final - config.momentum)


@dataclass
class TrainContext:
    """What a training step needs beyond its batch, fixed for a run."""

    targets: torch.Tensor  # (V, D) the prepared word vectors the index holds
    log_prior: torch.Tensor  # (V,) log share of training photos carrying each word
    rng: torch.Generator  # noise draws (dropout uses torch's global generator)
    tags: torch.Tensor | None = None  # (photos, T) each photo's word ids padded with -1, for set losses


class Trainer:
    """One family's training: the generator, its companion networks, losses and optimizers.

    `step(features, words, photos)` takes raw features (B, feature_dim) and word ids (B,) of a batch of
    (photo, tag) pairs (`photos` (B,) their rows, for losses over a photo's whole tag set) and
    returns the step's losses as floats. `optimizers` is every optimizer, for the learning-rate
    schedule the loop applies. `state_dict` holds everything but the generator's averaged copy.
    """

    generator: WordGenerator
    optimizers: list[torch.optim.Optimizer]

    def __init__(self, generator: WordGenerator, config: TrainConfig, context: TrainContext):
        self.generator, self.config, self.context = generator, config, context

    def modules(self) -> dict[str, nn.Module]:
        """Every network the family trains, by name (the generator as "G")."""
        raise NotImplementedError

    def step(self, features: torch.Tensor, words: torch.Tensor, photos: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    def state_dict(self) -> dict:
        out = {name: m.state_dict() for name, m in self.modules().items()}
        out["optimizers"] = [o.state_dict() for o in self.optimizers]
        return out

    def load_state_dict(self, state: dict) -> None:
        for name, m in self.modules().items():
            m.load_state_dict(state[name])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
