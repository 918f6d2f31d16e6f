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
import torch.nn.functional as F
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
    # Scale G's output to unit length, for word spaces of unit vectors: D can then judge only where
    # a generated vector points, not how long it is.
    unit_output: bool = False
    # Output heads: with more than one, G's last layer has this many and each sample's noise picks one
    # (by its first coordinate), so one photo's samples can land on several different words.
    heads: int = 1

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
        self.out = nn.Linear(c.g_joint_hidden or joined, c.word_dim * c.heads)
        # Feature standardization travels with the weights, so a saved generator needs no side data.
        self.register_buffer("feature_mean", torch.zeros(c.feature_dim))
        self.register_buffer("feature_scale", torch.ones(c.feature_dim))

    def set_feature_stats(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_scale

    def sample_noise(self, n: int, generator: torch.Generator | None = None, stratified: bool = False) -> torch.Tensor:
        """(n, noise_dim) noise. `stratified` (with several heads): the first coordinate, which picks the
        head, is spread evenly over its range instead of drawn, so n samples visit every head equally."""
        shape, dev = (n, self.config.noise_dim), self.feature_mean.device
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
        return self.pick(self._finish(h), noise)


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
