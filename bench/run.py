"""Run every benchmark in bench/ and print one table: each figure, what it is compared with, the ratio, the target.

    python bench/run.py                      # what `make bench` runs; writes bench/results.json
    python bench/run.py --only lookup,coldstart --out /tmp/results.json
    python bench/run.py --quick              # tiny sizes: proves the scripts run, the figures mean little

Each benchmark is a script of its own (bench/bench_*.py; run one with --help) and runs here in a
fresh process, one after another, so no benchmark inherits another's threads, memory or caches.
Its own output is shown as it runs, then its rows; at the end the whole table, the total wall time,
and a JSON file with every figure (--out). The memory row runs `tagger tag` over all 10,710 shared
photos when that fits the time left of --budget (20 min; judged from its 1,000-photo run), and over
3,000 otherwise, which the row says; --full runs all 10,710 whatever the time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from harness import REPO, child_env, machine, print_rows

HERE = Path(__file__).resolve().parent

# name -> (script, arguments for `make bench`, arguments for --quick)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "features": ("bench_features.py", ["--n", "256", "--repeats", "5"], ["--n", "32", "--repeats", "1"]),
    "runtime": ("bench_runtime.py", ["--n", "256", "--repeats", "3"], ["--n", "16", "--repeats", "1"]),
    "tagging": ("bench_tagging.py", ["--n", "256", "--repeats", "3"], ["--n", "16", "--repeats", "1"]),
    "lookup": ("bench_lookup.py", ["--vocab", "250000", "--queries", "1000"],
               ["--photos", "4", "--samples", "10", "--repeats", "2", "--vocab", "2000", "--queries", "50", "--big-repeats", "1"]),
    "training": ("bench_training.py", ["--n", "1500", "--steps", "20", "--repeats", "3"], ["--n", "300", "--steps", "2", "--repeats", "1"]),
    "coldstart": ("bench_coldstart.py", ["--repeats", "5"], ["--repeats", "1"]),
    "scaling": ("bench_scaling.py", ["--n", "64", "--batch-sizes", "1,8,32,128", "--repeats", "3"],
                ["--n", "8", "--batch-sizes", "1,8", "--repeats", "1"]),
    "threads": ("bench_threads.py", ["--n-predict", "16", "--n-tag", "64", "--train-steps", "5", "--repeats", "3"],
                ["--n-predict", "2", "--n-tag", "8", "--train-steps", "1", "--repeats", "1"]),
    "ray": ("bench_ray.py", ["--n", "1000", "--workers", "1,2", "--plan-rows", "2000000"],
            ["--n", "16", "--workers", "1", "--batch-size", "8", "--plan-rows", "20000"]),
    "memory": ("bench_memory.py", ["--sizes", "1000,all"], ["--sizes", "8,16"]),
    "hostile": ("bench_hostile.py", [], ["--clients", "20", "--upload-mb", "64"]),
}
BUDGET = 20 * 60  # seconds `make bench` may take on the 2-core development machine


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (readable as text too), then their notes, numbered."""
    lines = ["| # | row | figure | reference (same run) | ratio | target |", "|---|---|---|---|---|---|"]
    notes = []
    for i, r in enumerate(rows, 1):
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        target = "" if r["target"] is None else f"{r['target'].removeprefix('ratio ')} ({'met' if r['met'] else 'NOT met'})"
        lines.append(f"| {i} | {r['name']} | {r['figure']} | {r['reference']} | {ratio} | {target} |")
        if r.get("note"):
            notes.append(f"{i}. {r['note']}")
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="JSON file with every figure (default: bench/results.json)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the scripts run")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole run; decides whether the memory row "
                        "can tag all 10,710 photos")
    parser.add_argument("--full", action="store_true", help="the memory row tags all 10,710 photos whatever the time")
    args = parser.parse_args(argv)
    names = list(BENCHES) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")

    start = time.monotonic()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"bench: {', '.join(names)}{' (quick sizes)' if args.quick else ''}; {machine()}", flush=True)
    rows, results, failed = [], {}, []
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        for name in names:
            script, normal, quick = BENCHES[name]
            extra = quick if args.quick else normal
            if name == "memory" and not args.quick and not args.full:
                # Leave the end of the budget for the memory row's own fallback decision; it knows the rate once it has run 1,000.
                extra = extra + ["--budget", f"{max(args.budget - (time.monotonic() - start) - 15, 0):.0f}"]
            json_file = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / script), *extra, "--json", str(json_file)]
            print(f"\n== {name}: python bench/{script} {' '.join(extra)}", flush=True)
            t0 = time.monotonic()
            code = subprocess.run(cmd, env=child_env(), cwd=REPO).returncode
            seconds = time.monotonic() - t0
            if code != 0 or not json_file.is_file():
                failed.append(name)
                rows.append({"bench": name, "name": f"{name}: FAILED (exit code {code})", "figure": "", "reference": "",
                             "ratio": None, "target": None, "met": None, "note": f"python bench/{script} {' '.join(extra)}"})
                print(f"== {name}: failed with exit code {code} after {seconds:.0f} s", flush=True)
                continue
            result = json.loads(json_file.read_text())
            result["seconds"] = round(seconds, 1)
            results[name] = result
            for r in result["rows"]:
                rows.append({"bench": name, **r})
            print(f"== {name}: done in {seconds:.0f} s (total so far {time.monotonic() - start:.0f} s)", flush=True)
            print_rows(result["rows"])

    total = time.monotonic() - start
    print("\n" + format_table(rows))
    met = [r for r in rows if r["met"] is True]
    missed = [r for r in rows if r["met"] is False]
    print(f"\ntargets met: {len(met)} of {len(met) + len(missed)}" + (f"; not met: {', '.join(r['name'] for r in missed)}" if missed else ""))
    summary = {"command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]), "started_utc": started,
               "total_seconds": round(total, 1), "machine": machine(), "quick": args.quick, "rows": rows, "benches": results,
               "failed": failed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    try:
        shown = args.out.resolve().relative_to(REPO)
    except ValueError:
        shown = args.out
    print(f"results: {shown}")
    print(f"total wall time: {total:.0f} s ({total / 60:.1f} min)")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
    return summary


if __name__ == "__main__":
    main()
