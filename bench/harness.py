"""What the benchmark scripts in bench/ share: where the data is, table rows, JSON output, child processes.

Every script prints its own result and, with `--json FILE`, writes one JSON object holding its
figures and a "rows" list; `bench/run.py` runs the scripts one after another and joins their rows
into one table. A row is a dict:

    name       what is measured
    figure     the measured figure, as text with its unit
    reference  what it is compared with in the same run, as text
    ratio      figure / reference as a number (None where no ratio makes sense)
    target     "ratio >= 0.9", "ratio <= 2.5" or None
    met        True / False against the target, None without one
    note       what the figure depends on (sizes, threads, data slice)

Paths written to JSON are relative to the repository (or just file names), never absolute.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(os.path.abspath(__file__)).parents[1]  # not resolve(): see rel()
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

# The shared subset lives beside the checkout and is never copied into it; TAGGER_SUBSET overrides (as in tests/).
SUBSET = Path(os.environ.get("TAGGER_SUBSET", REPO.parent / "shared" / "datasets" / "mirflickr25k_subset"))
IMAGES = SUBSET / "images"


def rel(path: str | Path) -> str:
    """A path for printing and JSON: relative to the repository (../shared/... for the subset)."""
    try:
        # abspath, not resolve: a symlinked shared folder stays ../shared/..., not wherever the link points.
        return os.path.relpath(os.path.abspath(path), REPO)
    except ValueError:
        return Path(path).name


def subset_photos(n: int | None = None, folder: Path = IMAGES) -> list[Path]:
    """The first n photos of the shared subset (sorted like `tagger tag` lists them); exits with the reason where absent."""
    from pipelines.scan import list_images

    if not folder.is_dir():
        sys.exit(f"photos not found at {rel(folder)} (set TAGGER_SUBSET to the subset folder, or pass a folder of photos)")
    paths = list_images(folder)
    return paths[:n] if n else paths


def link_folder(paths: list[Path], dest: Path) -> Path:
    """A folder of symlinks to `paths` (the photos are not copied)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (dest / p.name).symlink_to(Path(p).resolve())
    return dest


def median(xs) -> float:
    return statistics.median(list(xs))


def row(name: str, figure: str, reference: str, ratio: float | None = None, target: str | None = None, note: str = "") -> dict:
    """One table row; `met` is worked out from `target` ("ratio >= X" or "ratio <= X")."""
    met = None
    if target is not None and ratio is not None:
        op, value = target.split()[1], float(target.split()[2])
        met = ratio >= value if op == ">=" else ratio <= value
    return {"name": name, "figure": figure, "reference": reference,
            "ratio": None if ratio is None else round(ratio, 3), "target": target, "met": met, "note": note}


def machine() -> dict:
    """What the figures depend on, without naming the machine."""
    import torch

    return {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def emit(result: dict, json_path: str | Path | None) -> dict:
    """Write the script's result (figures and rows) as one JSON object when asked."""
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        ratio = "" if r["ratio"] is None else f"ratio {r['ratio']:.3f}"
        target = "" if r["target"] is None else f"(target {r['target'].removeprefix('ratio ')}: {'met' if r['met'] else 'NOT met'})"
        print(f"  {r['name']}: {r['figure']} vs {r['reference']} {ratio} {target}".rstrip(), flush=True)


def child_env(**extra: str) -> dict:
    """Environment for a child Python that imports this checkout (not whatever copy is installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


def tagger_cli(*args: str) -> list[str]:
    """The `tagger` command of this checkout (the console script does the same `from tagger.cli import app; app()`)."""
    return [sys.executable, "-m", "tagger.cli", *map(str, args)]


# Started between this process and the measured command: a child's peak RSS on Linux includes the
# memory of the process it was forked from (kept across exec), so a small starter keeps a benchmark
# that has torch loaded from lending its own size to the figure. Writes "pid", then "seconds maxrss_kb".
_STARTER = r"""
import os, sys, time
report = sys.argv[1]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
with open(report, "w") as f:
    f.write(f"{pid}\n")
_, status, usage = os.wait4(pid, 0)
with open(report, "a") as f:
    f.write(f"{time.perf_counter() - start} {usage.ru_maxrss}\n")
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | Path | None = None, capture: bool = True,
                 sample_every: float | None = None) -> dict:
    """Run a command in a fresh process: wall seconds, peak resident memory (MB) and output.

    The peak is the maximum resident set size from wait4 for that process alone (Linux counts the
    largest of it and the children it waited for, such as DataLoader workers), so runs never mix
    as they would in getrusage(RUSAGE_CHILDREN). With `sample_every` seconds, the process's own
    resident memory (VmRSS in /proc) is also sampled over time: `rss_samples` [(seconds, MB)].
    """
    import tempfile
    import threading

    out = subprocess.PIPE if capture else None
    fd, report = tempfile.mkstemp(prefix="bench-rusage-")
    os.close(fd)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _STARTER, report, *map(str, cmd)], env=env, cwd=cwd,
                                stdout=out, stderr=out, text=True)
        samples: list[tuple[float, float]] = []
        done = threading.Event()
        if sample_every:
            def sample():
                pid = None
                while not done.wait(sample_every):
                    pid = pid or _read_pid(report)
                    rss = _vm_rss_mb(pid) if pid else None
                    if rss is not None:
                        samples.append((round(time.perf_counter() - start, 2), round(rss, 1)))
            threading.Thread(target=sample, daemon=True).start()
        stdout, stderr = proc.communicate()
        done.set()
        lines = Path(report).read_text().split()
    finally:
        os.unlink(report)
    if len(lines) < 3:
        raise RuntimeError(f"could not start {cmd[0]}: {stderr or ''}")
    seconds, maxrss_kb = float(lines[1]), int(lines[2])
    return {"returncode": proc.returncode, "seconds": seconds, "peak_rss_mb": maxrss_kb / 1024,
            "stdout": stdout or "", "stderr": stderr or "", "rss_samples": samples}


def _read_pid(report: str) -> int | None:
    try:
        first = Path(report).read_text().split("\n", 1)[0]
        return int(first) if first else None
    except (OSError, ValueError):
        return None


def _vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
