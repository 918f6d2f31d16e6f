"""The one place the compute device is decided; everything else takes a `torch.device` argument."""
from __future__ import annotations

import re

import torch

_NAME = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def choose_device(name: str | torch.device | None = None) -> torch.device:
    """An explicit `name` ("cpu", "cuda", "cuda:N", "mps") if available, else cuda, then mps, then cpu.

    An explicit name that is unknown or unavailable is a ValueError rather than a quiet fallback:
    a user who asked for the GPU wants to know they are not getting it.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name.strip().lower() in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    name = name.strip().lower()
    if not _NAME.match(name):
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here (use cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not _mps_available():
        raise ValueError("device 'mps' asked for, but Apple MPS is not available here (use cpu)")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())
