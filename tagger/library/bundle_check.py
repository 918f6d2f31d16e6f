"""The model bundle checked for a Ray run, in a child process: the Ray driver itself never imports torch.

    settings = checked_settings(model_path, TagOptions())

Loading a bundle builds the model, and so imports torch: about 800 MB of the driver's memory for the
whole run, though only the workers tag. So the driver loads it once in a child process (spawned, not
forked, beside Ray's threads) that checks it as the local engine would (a damaged bundle, an unknown
method) and hands back `Tagger.settings`, the line the plan compares
each row's with; then the child exits and its memory is returned before the listing is read.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

from pipelines.errors import TaggerError
from tagger.library.results import BatchError
from tagger.scoring.options import TagOptions

# A fresh interpreter (not multiprocessing's spawn, which re-runs the caller's main module) with the caller's sys.path.
CHILD = "from tagger.library.bundle_check import child; child()"


def settings_of(model_path: str, options: TagOptions) -> str:
    """In the child: load the bundle on the CPU, check the method, and return the settings line."""
    from tagger.bundle import load

    tagger = load(model_path, device="cpu")
    tagger.method_of(options)  # an unknown method fails here, in one line, before Ray starts
    return tagger.settings(options)


def child() -> None:
    """The child's main: (sys.path, model path, options) pickled on stdin, ("ok", settings) or ("error", TaggerError) out."""
    path, model_path, options = pickle.load(sys.stdin.buffer)
    sys.path[:] = path
    out = sys.stdout.buffer
    try:
        with redirect_stdout(sys.stderr):  # stdout carries the answer only
            answer = ("ok", settings_of(model_path, options))
    except TaggerError as e:
        answer = ("error", e)
    pickle.dump(answer, out)
    out.flush()


def checked_settings(model_path: str | Path, options: TagOptions = TagOptions()) -> str:
    """`Tagger.settings(options)` of the bundle at `model_path`, loaded and checked in a child process; its errors
    (a BundleError, an OptionError: one line) are raised here as they were there."""
    done = subprocess.run([sys.executable, "-c", CHILD], input=pickle.dumps((sys.path, str(model_path), options)),
                          capture_output=True)
    try:
        kind, value = pickle.loads(done.stdout)
    except Exception:  # noqa: BLE001 - the child died before answering: its last line says why
        last = (done.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise BatchError(f"{model_path}: the process checking the model bundle failed ({last})") from None
    if kind == "error":
        raise value
    return value
