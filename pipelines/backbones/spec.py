"""What names a backbone: its spec (network builder, weights, preprocessing, feature width), the registry
of specs, the preprocessing transforms and the weights' id used in cache keys. Nothing here builds a network.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torchvision import transforms as T

from embeddings.files import content_hash
from pipelines.errors import OptionError, TaggerError

if TYPE_CHECKING:
    from torch import nn

DEFAULT_BACKBONE = "efficientnet_lite0"
CPU_CHUNK = 16  # photos per forward call on CPU; see Backbone._run


class BackboneWeightsError(TaggerError):
    """The weights for a backbone cannot be found or loaded; the message says how to get them."""


@dataclass(frozen=True)
class Preprocessing:
    """PIL RGB photo -> normalized float tensor: resize the shorter side, centre crop, normalize."""

    resize: int  # shorter side after resizing, in pixels
    crop: int  # side of the square centre crop
    mean: tuple[float, float, float]  # per channel, on the 0..1 scale of ToTensor
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # "bilinear" or "bicubic"


def make_pixels_transform(p: Preprocessing) -> Callable:
    """PIL RGB photo -> resized, cropped uint8 tensor (3, crop, crop); `Backbone` normalizes it.

    DataLoader workers use this half: uint8 crosses the process boundary (and the PCIe bus) at a
    quarter of float32's size, and normalizing a whole batch at once costs far less than per photo.
    A plain Compose, so workers can pickle it.
    """
    return T.Compose(
        [
            T.Resize(p.resize, interpolation=T.InterpolationMode(p.interpolation)),
            T.CenterCrop(p.crop),
            T.PILToTensor(),
        ]
    )


def make_transform(p: Preprocessing) -> Callable:
    """PIL RGB photo -> normalized float tensor (3, crop, crop), as the weights expect."""
    return T.Compose([make_pixels_transform(p), T.ConvertImageDtype(torch.float32), T.Normalize(p.mean, p.std)])


@dataclass
class BackboneSpec:
    """Everything `create_backbone` needs to know about one named backbone."""

    name: str
    dim: int  # width of forward_features
    build: Callable[[dict | None], nn.Module]  # state dict (or None: random init) -> module with forward_features/forward
    preprocessing: Preprocessing
    weights: str  # where the weights come from, in words (shown by `list_backbones` users)
    weights_file: Callable[[], Path] | None = None  # a local default weights file (offline)
    weights_url: str | None = None  # else downloaded into the torch hub cache
    num_classes: int | None = None  # None: no classification head


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OptionError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


@functools.lru_cache(maxsize=16)
def _hash_file(path: Path, size: int, mtime_ns: int) -> str:
    return content_hash(path, digest_size=8)  # 8 bytes: the names of feature caches and ONNX files carry it


def weights_id(path: Path | None) -> str:
    """Names the exact weights, for cache keys: a hash of the weights file (or 'random' without one)."""
    if path is None:
        return "random"
    st = Path(path).stat()  # size and mtime in the memo's key: a file replaced in place is hashed again
    return _hash_file(Path(path), st.st_size, st.st_mtime_ns)


