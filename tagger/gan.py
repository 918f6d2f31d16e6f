"""The conditional GAN of Mirza & Osindero (2014), "Multimodal" section: G(noise, image) -> word vector.

Generator: noise -> 500 ReLU; image -> 2000 ReLU; both joined -> word-vector-sized linear output.
In that join the noise can only add the same offset to every photo's output; `g_joint_hidden` puts a
ReLU layer between the join and the output so the spread of a photo's samples can depend on the photo.
Discriminator: word vector -> 500 ReLU; image -> 1200 ReLU; a joint maxout layer of 1000 units with
3 pieces -> 1 logit (the sigmoid lives in the loss, where it is numerically safe).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GANConfig:
    feature_dim: int = 1280  # width of the image features; taken from the backbone
    word_dim: int = 200  # width of the word vectors G generates
    noise_dim: int = 100  # the paper's noise size
    noise: str = "uniform"  # "uniform" in [-1, 1) as in the paper's code base, or "normal"
    g_noise_hidden: int = 500
    g_image_hidden: int = 2000
    g_joint_hidden: int = 0  # 0: the paper's linear join; else a joint ReLU layer of this width
    d_word_hidden: int = 500
    d_image_hidden: int = 1200
    d_maxout_units: int = 1000
    d_maxout_pieces: int = 3
    dropout: float = 0.5  # in both networks, as in the paper

    def to_dict(self) -> dict:
        return asdict(self)


class Generator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        c = config
        self.noise_branch = nn.Sequential(nn.Linear(c.noise_dim, c.g_noise_hidden), nn.ReLU(), nn.Dropout(c.dropout))
        self.image_branch = nn.Sequential(nn.Linear(c.feature_dim, c.g_image_hidden), nn.ReLU(), nn.Dropout(c.dropout))
        joined = c.g_noise_hidden + c.g_image_hidden
        if c.g_joint_hidden:
            self.joint = nn.Sequential(nn.Linear(joined, c.g_joint_hidden), nn.ReLU(), nn.Dropout(c.dropout))
        self.out = nn.Linear(c.g_joint_hidden or joined, c.word_dim)
        # Feature standardization travels with the weights, so a saved generator needs no side data.
        self.register_buffer("feature_mean", torch.zeros(c.feature_dim))
        self.register_buffer("feature_scale", torch.ones(c.feature_dim))

    def set_feature_stats(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_scale

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape, dev = (n, self.config.noise_dim), self.feature_mean.device
        if self.config.noise == "normal":
            return torch.randn(shape, generator=generator, device=dev)
        return torch.rand(shape, generator=generator, device=dev) * 2 - 1

    def forward(self, noise: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """features: raw image features (N, feature_dim); noise: (N, noise_dim)."""
        h = torch.cat([self.noise_branch(noise), self.image_branch(self.normalize(features))], dim=1)
        if self.config.g_joint_hidden:
            h = self.joint(h)
        return self.out(h)

    def generate(self, noise: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(N, M, word_dim): M samples for each of N photos, the same as `forward` on repeated rows.

        noise: (M, noise_dim) shared by every photo, or (N, M, noise_dim). The image branch runs once
        per photo rather than once per sample: the layer after the join is split into its noise and
        image columns, so M samples cost little more than one.
        """
        layer = self.joint[0] if self.config.g_joint_hidden else self.out
        hn, w = self.config.g_noise_hidden, layer.weight
        image = self.image_branch(self.normalize(features)) @ w[:, hn:].T  # (N, width)
        noise_part = self.noise_branch(noise) @ w[:, :hn].T  # (M, width) or (N, M, width)
        h = image[:, None, :] + noise_part + layer.bias
        if self.config.g_joint_hidden:
            h = self.out(self.joint[2](self.joint[1](h)))
        return h


class Maxout(nn.Module):
    def __init__(self, d_in: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(d_in, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.shape[0], self.units, self.pieces).max(dim=2).values


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        c = config
        self.word_branch = nn.Sequential(nn.Linear(c.word_dim, c.d_word_hidden), nn.ReLU(), nn.Dropout(c.dropout))
        self.image_branch = nn.Sequential(nn.Linear(c.feature_dim, c.d_image_hidden), nn.ReLU(), nn.Dropout(c.dropout))
        self.joint = nn.Sequential(
            Maxout(c.d_word_hidden + c.d_image_hidden, c.d_maxout_units, c.d_maxout_pieces), nn.Dropout(c.dropout)
        )
        self.out = nn.Linear(c.d_maxout_units, 1)

    def forward(self, words: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """words: (N, word_dim); features: image features already normalized by the generator. Returns logits (N,)."""
        h = torch.cat([self.word_branch(words), self.image_branch(features)], dim=1)
        return self.out(self.joint(h)).squeeze(1)
