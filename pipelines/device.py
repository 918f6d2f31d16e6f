"""The one place the compute device and the backbone's runtime are decided; everything else takes them as arguments.

torch is imported by the functions that need it, not with the module: the Ray driver checks a runtime
for a device by name (`choose_runtime(name, "cpu")`) without loading torch, which only its workers use.
"""
from __future__ import annotations

import importlib.util
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from pipelines.errors import OptionError

_NAME = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def choose_device(name: str | torch.device | None = None) -> torch.device:
    """An explicit `name` ("cpu", "cuda", "cuda:N", "mps") if available, else cuda, then mps, then cpu.

    An explicit name that is unknown or unavailable is a ValueError rather than a quiet fallback:
    a user who asked for the GPU wants to know they are not getting it.
    """
    import torch

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
        raise OptionError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"device {name!r} asked for, but CUDA is not available here (use cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise OptionError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not _mps_available():
        raise OptionError("device 'mps' asked for, but Apple MPS is not available here (use cpu)")
    return torch.device(name)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


RUNTIMES = ("torch", "onnx", "onnx-int8")  # what runs the backbone; the generator and the look-up stay in torch and FAISS


def choose_runtime(name: str | None, device: torch.device | str) -> str:
    """An explicit runtime ("torch", "onnx", "onnx-int8") if it can run on `device`, else the fastest that can.

    None or "auto": ONNX Runtime on a CPU where onnxruntime is installed (2-2.5x torch's speed for the
    same network, with the same features), torch anywhere else. ONNX Runtime runs on the CPU only here:
    asking for it with a GPU device is a ValueError, as asking for an unavailable device is. `device`
    may be a name ("cpu", "cuda:1"): only its type is looked at.
    """
    kind = device.split(":")[0].strip().lower() if isinstance(device, str) else device.type
    if name is None or name.strip().lower() in ("", "auto"):
        return "onnx" if kind == "cpu" and onnxruntime_available() else "torch"
    name = name.strip().lower()
    if name not in RUNTIMES:
        raise OptionError(f"unknown runtime {name!r}: use {', '.join(RUNTIMES)}")
    if name != "torch":
        if kind != "cpu":
            raise OptionError(f"runtime {name!r} runs on the CPU, not on {device}: use --runtime torch there, or --device cpu")
        if not onnxruntime_available():
            raise OptionError(f"runtime {name!r} asked for, but onnxruntime is not installed (pip install onnxruntime), or use --runtime torch")
    return name


def onnxruntime_available() -> bool:
    # find_spec, not import: importing onnxruntime costs a few hundred ms that a GPU run never needs.
    return importlib.util.find_spec("onnxruntime") is not None
