"""Memory: peak resident memory of `tagger tag` over 1,000 photos vs over more (all 10,710 with --sizes 1000,all).

    python bench/bench_memory.py --sizes 1000,all

Each size is a fresh `tagger tag FOLDER --out tags.csv` process (the shipped model) on a temp
folder of symlinks to the first N shared photos, with a TAGGER_CACHE that holds only the backbone's
ONNX export (made once beforehand by `tagger predict` on one photo: the export is a one-time
start-up cost that would otherwise be every run's peak, whatever the photo count). The peak is the
child's maximum resident set size from wait4 (the largest of the process and its DataLoader
workers); its VmRSS is also sampled over the run to show whether memory grows with the photos
tagged. The target: the peak over more photos at most 1.1 times the peak over the fewest.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import IMAGES, child_env, emit, link_folder, machine, print_rows, rel, row, run_measured, subset_photos, tagger_cli


SAFETY = 1.5  # a size is run within --budget only if 1.5 x its estimated time fits


def timeline(samples: list, points: int = 10) -> list:
    """About `points` (seconds, MB) samples spread over the run, for the JSON."""
    if len(samples) <= points:
        return samples
    step = (len(samples) - 1) / (points - 1)
    return [samples[round(i * step)] for i in range(points)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,3000", help="photo counts, comma separated; 'all' for every photo")
    parser.add_argument("--photos", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--budget", type=float, default=None, help="seconds this script may take: a size whose run would not "
                        "fit (1.5 x the time estimated from the previous run's rate) is replaced by --fallback, and the row says so")
    parser.add_argument("--fallback", type=int, default=3000, help="photo count run instead of a size that does not fit --budget")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    start = time.monotonic()
    everything = subset_photos(None, args.photos)
    sizes = [len(everything) if s == "all" else min(int(s), len(everything)) for s in args.sizes.split(",")]
    runs, skipped = [], []
    warm = Path(tempfile.mkdtemp(prefix="bench-memory-warm-"))
    model = ["--model", args.model] if args.model else []
    done = run_measured(tagger_cli("predict", everything[0], *model), child_env(TAGGER_CACHE=str(warm)))
    if done["returncode"] != 0:
        sys.exit(f"tagger predict (to export the backbone once) failed:\n{done['stderr'][-3000:]}")
    exports = sorted(warm.rglob("*.onnx*"))
    for n in sizes:
        if args.budget is not None and runs:
            # From the rate just measured, with room for the load of a shared machine to rise.
            estimate = SAFETY * runs[-1]["seconds"] * n / runs[-1]["photos"]
            left = args.budget - (time.monotonic() - start)
            if estimate > left:
                print(f"{n:,} photos: 1.5 x the time estimated from the rate just measured is {estimate:.0f} s; {left:.0f} s of the budget left: "
                      f"running {args.fallback:,} photos instead", flush=True)
                skipped.append({"photos": n, "estimated_s": round(estimate), "budget_left_s": round(left)})
                n = min(args.fallback, n)
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            tmp = Path(tmp)
            folder = link_folder(everything[:n], tmp / "photos")
            out = tmp / "tags.csv"
            cmd = tagger_cli("tag", folder, "--out", out, *model)
            for f in exports:  # the export only: no features of an earlier size
                (tmp / "cache" / f.relative_to(warm)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, tmp / "cache" / f.relative_to(warm))
            print(f"tagger tag on {n:,} photos ...", flush=True)
            run = run_measured(cmd, child_env(TAGGER_CACHE=str(tmp / "cache")), sample_every=1.0)
            if run["returncode"] != 0:
                sys.exit(f"tagger tag failed on {n} photos:\n{run['stderr'][-3000:]}")
            with open(out, newline="", encoding="utf-8") as f:
                tagged = sum(1 for r in csv.DictReader(f) if r["tags"] and not r["error"])
            assert tagged == n, f"{tagged} of {n} photos tagged"
            samples = run["rss_samples"]
            end = samples[-1][1] if samples else float("nan")
            runs.append({"photos": n, "peak_rss_mb": round(run["peak_rss_mb"], 1), "seconds": round(run["seconds"], 1),
                         "photos_per_s": round(n / run["seconds"], 2), "last_sampled_rss_mb": end,
                         "rss_timeline": timeline(samples)})
            print(f"  peak {run['peak_rss_mb']:.0f} MB, {run['seconds']:.0f} s ({n / run['seconds']:.1f} photos/s including start-up)",
                  flush=True)

    shutil.rmtree(warm, ignore_errors=True)
    small, large = runs[0], runs[-1]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    rows = [row(f"memory: tagger tag, {large['photos']:,} photos", f"{large['peak_rss_mb']:.0f} MB peak RSS",
                f"{small['peak_rss_mb']:.0f} MB over {small['photos']:,} photos", ratio, "ratio <= 1.1",
                "fresh processes, shipped model, batch 64, the backbone's ONNX export made beforehand; end to end (start-up included) "
                + ", ".join(f"{r['photos']:,} photos in {r['seconds']:.0f} s ({r['photos_per_s']:.1f} photos/s)" for r in runs)
                + "".join(f"; the {s['photos']:,}-photo run did not fit the time left ({s['budget_left_s']} s; 1.5 x its estimate "
                          f"{s['estimated_s']} s): run it with `python bench/run.py --full` or `python bench/bench_memory.py --sizes 1000,all`"
                          for s in skipped))]
    result = {"bench": "memory", "photos": rel(args.photos), "runs": runs, "skipped": skipped, "ratio": round(ratio, 3), "machine": machine(), "rows": rows}
    print_rows(rows)
    return emit(result, args.json)


if __name__ == "__main__":
    main()
