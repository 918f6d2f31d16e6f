"""A backbone's last blocks, to retrain: the `Tail` of an EfficientNet-Lite, the activations that enter
it, and the weights overlay that ships a retrained tail.

Retraining only the last blocks is what a CPU can do: the photos go through the frozen network once
(`pipelines.features.trunk_activations` keeps the 7x7 maps entering the tail), and every epoch after that runs the tail
alone. The retrained tensors are saved as an overlay, a safetensors file holding only them, with
metadata naming the backbone it overlays; `create_backbone(name, weights=OVERLAY)` builds the network
with its own weights and the overlay on top, so the ONNX export, the feature cache (keyed by the
overlay's hash) and every engine see the retrained network as one more set of weights.

The tensors are those of the inference network, BatchNorm folded into the convolutions (as
`create_backbone` builds it): what is trained is what runs.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pipelines.backbones.efficientnet_lite import EfficientNetLite
from pipelines.backbones.spec import BackboneWeightsError

OVERLAY_KEY = "tagger.overlay_of"  # the safetensors metadata entry naming the backbone an overlay belongs to


class Tail(nn.Module):
    """The last `blocks` blocks of an EfficientNet-Lite and its 1x1 head conv: 7x7 maps -> pooled features."""

    def __init__(self, model: nn.Module, blocks: int):
        super().__init__()
        if not isinstance(model, EfficientNetLite):
            raise ValueError(f"only EfficientNet-Lite backbones can have their last blocks retrained, not {type(model).__name__}")
        if not 1 <= blocks <= len(model._blocks):
            raise ValueError(f"blocks must be 1..{len(model._blocks)}, got {blocks}")
        self.first = len(model._blocks) - blocks  # index of the first retrained block in the model
        self.blocks = nn.ModuleList(copy.deepcopy(model._blocks[self.first:]))
        self.conv_head = copy.deepcopy(model._conv_head)
        self.requires_grad_(True)  # the backbone's copy arrives frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return F.relu6(self.conv_head(x)).mean(dim=(2, 3))  # the head's BatchNorm is folded into conv_head

    def overlay(self) -> dict[str, torch.Tensor]:
        """The tail's tensors under the names they have in the whole network."""
        out = {f"_blocks.{self.first + i}.{k}": v for i, b in enumerate(self.blocks) for k, v in b.state_dict().items()}
        out.update({f"_conv_head.{k}": v for k, v in self.conv_head.state_dict().items()})
        return {k: v.detach().cpu().float().contiguous() for k, v in out.items()}


def tail_features(tail: Tail, acts: np.ndarray, batch: int = 256, device: torch.device | str = "cpu") -> np.ndarray:
    """(N, D) float32 features of the tail for (N, C, h, w) maps, in eval mode."""
    tail.eval()
    with torch.no_grad():
        return np.concatenate([tail(torch.from_numpy(acts[s:s + batch]).to(device).float()).cpu().numpy()
                               for s in range(0, len(acts), batch)])


def save_overlay(tensors: dict[str, torch.Tensor], path: str | Path, backbone: str) -> Path:
    path = Path(path)
    save_file(tensors, str(path), metadata={OVERLAY_KEY: backbone})
    return path


def overlay_of(path: Path) -> str | None:
    """The backbone a weights file overlays, or None for a whole state dict (any non-safetensors file)."""
    if path.suffix != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(OVERLAY_KEY)
    except Exception as e:  # safetensors raises several types for a damaged header
        raise BackboneWeightsError(f"{path}: cannot read weights: {e}") from None


def apply_overlay(model: nn.Module, path: Path, name: str) -> nn.Module:
    """Load the overlay's tensors over the built network's; every tensor must be one the network has, of its shape."""
    from safetensors.torch import load_file

    if overlay_of(path) != name:
        raise BackboneWeightsError(f"{path}: an overlay for backbone {overlay_of(path)!r}, not {name}")
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise BackboneWeightsError(f"{path}: cannot read weights: {e}") from None
    own = model.state_dict()
    wrong = [k for k, v in tensors.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if wrong:
        raise BackboneWeightsError(f"{path}: {len(wrong)} tensors are not {name}'s (e.g. {wrong[0]})")
    broken = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if broken:
        raise BackboneWeightsError(f"{path}: {len(broken)} tensors hold NaN or infinite values (e.g. {broken[0]})")
    model.load_state_dict(tensors, strict=False)
    return model
