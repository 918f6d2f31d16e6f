"""The Ray engine on one machine: photos/s against the local engine, start-up, reruns, output files, the plan's memory.

    python bench/bench_ray.py --n 1000 --workers 1,2 --plan-rows 2000000

Both tag the same photos with the shipped model and batch size into fresh outputs, in this
process: the local engine with the model already loaded (`tag_folder` + `tagger.library.local.tag_paths`, as
`tagger tag`), the Ray engine on a local Ray started once beforehand (`ray_engine.tag_source`, as
`tagger tag --engine ray`), its actors' start (loading torch and the model) included, since every
run pays it. Ray gets one CPU per worker, so 1 worker uses one core of this machine and 2 workers
both; the local engine uses every core (torch threads plus decoding workers). Each run's tags are
compared with the local engine's: the figures count only if they are the same. Needs the ray
extra (`pip install "tagger[ray]"`).

On the same Ray, in the same run: the start-up cost (a run of one photo), a rerun of the n photos
already tagged (nothing to do: no photo read, as their size and mtime match their rows) against the
same rerun with --rehash (every photo read and hashed, what every rerun did before), and the number
of output files. Then, in a fresh process, the driver's peak memory planning a synthetic manifest of
--plan-rows photos, a first run and a rerun over an output that holds them all, and a 3-photo folder
run into that output (rows of another folder's photos, kept) against one into an output of half of
its files (linked, not copied) and one into an empty output. The README's
arithmetic for 100 million photos is worked out from these figures (`archive` in the JSON).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from harness import IMAGES, emit, link_folder, machine, print_rows, rel, row, subset_photos

import torch  # noqa: E402  (after harness, which puts the checkout on sys.path)

from tagger.library.local import tag_paths  # noqa: E402
from tagger.library.batch import tag_folder  # noqa: E402
from tagger.library.results import read_results  # noqa: E402
from tagger.bundle import load  # noqa: E402
from tagger.library.ray_engine import Output, RayOptions, read_output, tag_source  # noqa: E402
from tagger.shipped import default_model_path  # noqa: E402

# The driver of `tagger tag MANIFEST --out OUT --engine ray` up to its plan, as the command runs it: the bundle checked
# in a child process (its settings line), then tag_source joining the running Ray. A first run is stopped once planned
# (its photos do not exist); a rerun has nothing to do and runs to its end (the rows found, no file rewritten).
PLAN_CHILD = """
import re, sys
from tagger.library.bundle_check import checked_settings
from tagger.library.ray_engine import RayOptions, tag_source

class Planned(Exception):
    pass

def stop(plan):
    if plan.todo:
        raise Planned(plan.todo)

manifest, out, model, address = sys.argv[1:5]
try:
    tag_source(manifest, out, model, RayOptions(address=address, workers=1), settings=checked_settings(model), on_plan=stop)
    todo = 0
except Planned as e:
    todo = e.args[0]
# This process's own peak (VmHWM): its ru_maxrss would count the peak of the process it was started from, kept
# across exec, here the benchmark's own (torch, the model, a run's rows): a gigabyte more or less from run to run.
status = open("/proc/self/status").read()
print(todo, *(int(re.search(name + r":\\s+(\\d+)", status).group(1)) / 1024 for name in ("VmHWM", "VmRSS")), "torch" in sys.modules)
"""


def plan_memory(rows: int, tmp: Path, model: Path, address: str, settings: str) -> dict:
    """Peak RSS (MB) of a fresh driver process planning a `rows`-photo manifest: first (empty output) and rerun (all done)."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness import child_env
    from tagger.library.ray_engine import SCHEMA

    tmp.mkdir(parents=True, exist_ok=True)
    names = pa.array([f"2019/{i // 1000:05d}/IMG_{i:08d}.jpg" for i in range(rows)])
    size, mtime = pa.array(np.arange(rows, dtype=np.int64)), pa.array(np.full(rows, 10**18, dtype=np.int64))
    pq.write_table(pa.table({"path": names, "size": size, "mtime": mtime}), tmp / "manifest.parquet")
    done = tmp / "done.parquet"
    done.mkdir()
    # The rows a finished run leaves: paths as the manifest resolves them, this model's settings, 3 tags each.
    paths = pa.array([f"{tmp}/2019/{i // 1000:05d}/IMG_{i:08d}.jpg" for i in range(rows)])
    for start in range(0, rows, 100_000):
        k = min(100_000, rows - start)
        pq.write_table(pa.table({
            "path": paths.slice(start, k), "tags": pa.array([["sky", "sea", "beach"]] * k, pa.list_(pa.string())),
            "scores": pa.array([[0.9, 0.5, 0.3]] * k, pa.list_(pa.float64())), "error": pa.array([""] * k),
            "hash": pa.array([f"{i:064x}" for i in range(start, start + k)]), "settings": pa.array([settings] * k), "note": pa.array([""] * k),
            "size": size.slice(start, k), "mtime": mtime.slice(start, k)}, schema=SCHEMA), done / f"part-20260101T000000000000-{start // 100_000:06d}.parquet")
    del names, paths
    result = {}
    for case, out in (("first", tmp / "empty.parquet"), ("rerun", done)):
        run = subprocess.run([sys.executable, "-c", PLAN_CHILD, str(tmp / "manifest.parquet"), str(out), str(model), address],
                             capture_output=True, text=True, env=child_env(), check=True)
        todo, peak, end, torch_loaded = run.stdout.split()
        result[case] = {"todo": int(todo), "peak_mb": round(float(peak)), "rss_at_end_mb": round(float(end)),
                        "torch_in_driver": torch_loaded == "True"}
    return result


# A small folder run, as `tagger tag FOLDER --out OUT --engine ray` runs it, into an output that may hold the rows of
# other folders' photos (an archive tagged as several runs into one output): they are kept, and should cost nothing.
OTHER_CHILD = """
import re, sys
from tagger.library.bundle_check import checked_settings
from tagger.library.ray_engine import RayOptions, tag_source

folder, out, model, address = sys.argv[1:5]
summary = tag_source(folder, out, model, RayOptions(address=address, workers=1), settings=checked_settings(model))
status = open("/proc/self/status").read()
print(summary.tagged + summary.kept, int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024)
"""


def other_rows_memory(photos: Path, others: Path, tmp: Path, model: Path, address: str) -> dict:
    """Peak RSS (MB) of a fresh driver tagging `photos` into an output holding half of `others`' files (rows of another
    folder's photos) and into one holding them all, a first run and a rerun of each: the same peak says the other
    rows are never held. Into an empty output too, for reference."""
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from harness import child_env

    files = sorted(others.glob("part-*.parquet"))
    half = tmp / "half.parquet"
    half.mkdir()
    for f in files[: len(files) // 2]:
        os.link(f, half / f.name)  # the same files, not copies
    result = {}
    for case, out in (("none", tmp / "alone.parquet"), ("half", half), ("all", others)):
        result[f"{case}_rows"] = sum(pq.read_metadata(f).num_rows for f in out.glob("part-*.parquet")) if out.exists() else 0
        for run_no in ("first", "rerun"):
            run = subprocess.run([sys.executable, "-c", OTHER_CHILD, str(photos), str(out), str(model), address],
                                 capture_output=True, text=True, env=child_env(), check=True)
            result[f"{case}_{run_no}_mb"] = round(float(run.stdout.split()[1]))
    return result


def same_rows(a, b) -> bool:
    a, b = a.sort_values("path").reset_index(drop=True), b.sort_values("path").reset_index(drop=True)
    return (list(a["path"]) == list(b["path"]) and [list(t) for t in a["tags"]] == [list(t) for t in b["tags"]]
            and [list(s) for s in a["scores"]] == [list(s) for s in b["scores"]])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--n", type=int, default=1000, help="number of photos")
    parser.add_argument("--batch-size", type=int, default=64, help="as `tagger tag --batch-size` (its default)")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to measure, comma-separated")
    parser.add_argument("--plan-rows", type=int, default=2_000_000, help="photos of the synthetic manifest whose plan's memory is measured")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)
    import ray

    model = args.model or default_model_path()
    paths = subset_photos(args.n, args.photos)
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        folder = link_folder(paths, tmp / "photos")
        tagger = load(model)
        tag_folder(link_folder(paths[: args.batch_size], tmp / "warm"), tmp / "warm.parquet",
                   lambda p: tag_paths(tagger, p, batch_size=args.batch_size))  # builds the backbone's kernels, forks workers once
        start = time.perf_counter()
        tag_folder(folder, tmp / "local.parquet", lambda p: tag_paths(tagger, p, batch_size=args.batch_size))
        local_s = time.perf_counter() - start
        local = read_results(tmp / "local.parquet")

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - start
        ray_s, same = {}, {}
        n = len(paths)
        try:
            for w in counts:
                out = tmp / f"ray{w}.parquet"
                start = time.perf_counter()
                summary = tag_source(folder, out, model, RayOptions(workers=w, batch_size=args.batch_size))
                ray_s[w] = time.perf_counter() - start
                assert summary.tagged == len(paths), summary.failures[:3]
                same[w] = same_rows(read_output(out), local)
            files = len(Output(tmp / f"ray{counts[0]}.parquet").files())
            # A run of one photo on the running Ray: what every run pays before its first photo (the actors' start).
            start = time.perf_counter()
            tag_source(link_folder(paths[:1], tmp / "one"), tmp / "one.parquet", model, RayOptions(workers=1, batch_size=args.batch_size))
            startup_s = time.perf_counter() - start
            out = tmp / f"ray{counts[0]}.parquet"
            rerun_s, rehash_s = {}, {}
            for rehash, seconds in ((False, rerun_s), (True, rehash_s), (False, rerun_s), (True, rehash_s)):  # alternated, best of 2
                start = time.perf_counter()
                again = tag_source(folder, out, model, RayOptions(workers=counts[0], batch_size=args.batch_size), rehash=rehash)
                seconds[len(seconds)] = time.perf_counter() - start
                assert (again.tagged, again.kept, again.hashed) == (0, len(paths), len(paths) if rehash else 0), again
            rerun_s, rehash_s = min(rerun_s.values()), min(rehash_s.values())
            # Past start-up: the n-photo run less the one-photo run, which pays the same start (the output holds one file).
            steady = {w: (n - 1) / (ray_s[w] - startup_s) if ray_s[w] > startup_s else None for w in counts}
            address = ray.get_runtime_context().gcs_address
            memory = plan_memory(args.plan_rows, tmp / "plan", model, address, tagger.settings()) if args.plan_rows else None
            beside = other_rows_memory(link_folder(paths[:3], tmp / "other"), tmp / "plan" / "done.parquet", tmp, model,
                                       address) if args.plan_rows else None
        finally:
            ray.shutdown()

    n = len(paths)
    local_rate = n / local_s
    threads = torch.get_num_threads()
    rows = [row(f"ray engine: tagger tag --engine ray, {w} worker{'s' if w > 1 else ''}", f"{n / ray_s[w]:.1f} photos/s",
                f"{local_rate:.1f} photos/s --engine local", (n / ray_s[w]) / local_rate, None,
                f"{n} shared photos, batch {args.batch_size}, shipped model, on this {os.cpu_count()}-CPU machine; {w} actor(s) of 1 CPU; "
                f"actor start-up (torch, model) included, Ray's own start ({init_s:.0f} s) not; "
                f"tags and scores {'identical to' if same[w] else 'DIFFERENT from'} --engine local on all {n} photos"
                + (f"; past start-up {steady[w]:.1f} photos/s (this run less the one-photo run)" if steady.get(w) else ""))
            for w in counts]
    n_per_s = steady[counts[0]] or n / ray_s[counts[0]]  # per worker: the first count is 1 in `make bench`
    rows.append(row("ray engine: rerun of photos already tagged (nothing to do)", f"{rerun_s:.2f} s for {n}",
                    f"{rehash_s:.2f} s with --rehash (every photo read and hashed)", rerun_s / rehash_s, "ratio <= 0.1",
                    f"{rerun_s / n * 1000:.2f} s per 1,000 photos already done; the listing's size and mtime match each row, so no "
                    "photo is read; best of two of each, alternated"))
    rows.append(row("ray engine: start-up, a run of one photo on a running Ray", f"{startup_s:.1f} s",
                    f"{n / n_per_s:.1f} s for {n} photos past start-up (1 worker)", None, None,
                    "the actor's start (torch, ONNX Runtime, the model) and Ray Data's; Ray's own start not counted"))
    rows.append(row("ray engine: output files of a run", f"{files} file(s) for {n} photos", "default 100,000 rows a file (or 64 MB, or 10 min)",
                    None, None, f"10,000 photos: 1 file at the measured rate ({10_000 / n_per_s / 60:.1f} min of work at one worker, "
                    "under the 10 minutes after which a file is written anyway)"))
    if memory:
        for case, m in memory.items():
            what = ("stopped once planned" if case == "first" else "run to its end: nothing to do, no photo read")
            rows.append(row(f"ray engine: planning a {args.plan_rows:,}-row manifest, {case} run", f"{m['peak_mb']} MB peak RSS",
                            "1,024 MB", m["peak_mb"] / 1024, "ratio <= 1.0",
                            f"the driver of tagger tag --engine ray in a fresh process, joined to the running Ray, {what}; "
                            f"its own peak (VmHWM), not ru_maxrss (which counts the starting process's); torch "
                            f"{'loaded' if m['torch_in_driver'] else 'not loaded'} in it (the bundle is checked in a child); "
                            f"{m['todo']:,} photos to tag"))
    if beside:
        for run_no in ("first", "rerun"):
            rows.append(row(f"ray engine: a 3-photo folder run into an output of {beside['all_rows']:,} other photos' rows, {run_no} run",
                            f"{beside[f'all_{run_no}_mb']} MB peak RSS", f"{beside[f'half_{run_no}_mb']} MB beside {beside['half_rows']:,}",
                            beside[f"all_{run_no}_mb"] / beside[f"half_{run_no}_mb"], "ratio <= 1.05",
                            f"{beside[f'none_{run_no}_mb']} MB into an empty output; the other rows are kept and never held (read "
                            "batch by batch, dropped on their path's start), so twice as many cost nothing more: an archive tagged "
                            "as several runs into one output; the driver in a fresh process, joined to the running Ray"))
    # The README's arithmetic for 100 million photos, from this run's figures.
    archive = {"photos": 100_000_000, "photos_per_s_per_worker": round(n_per_s, 2), "startup_s": round(startup_s, 1),
               "rerun_s_per_1000": round(rerun_s / n * 1000, 3)}
    archive["worker_hours"] = round(archive["photos"] / n_per_s / 3600)
    archive["hours_on_256_workers"] = round(archive["photos"] / n_per_s / 256 / 3600 + startup_s / 3600, 2)
    archive["rerun_hours_nothing_to_do"] = round(archive["photos"] / 1000 * archive["rerun_s_per_1000"] / 3600, 1)
    result = {"bench": "ray", "n": n, "photos": rel(args.photos), "batch_size": args.batch_size, "torch_threads": threads,
              "local_photos_per_s": round(local_rate, 2), "local_s": round(local_s, 2), "ray_init_s": round(init_s, 2),
              "ray": {str(w): {"seconds": round(ray_s[w], 2), "photos_per_s": round(n / ray_s[w], 2), "identical_to_local": same[w],
                               "steady_photos_per_s": None if steady[w] is None else round(steady[w], 2)}
                      for w in counts},
              "startup_s": round(startup_s, 2), "rerun_s": round(rerun_s, 3), "rehash_s": round(rehash_s, 3), "files": files,
              "plan_memory": memory, "other_rows_memory": beside, "archive": archive, "machine": machine(), "rows": rows}
    print(f"tagging {n} photos, batch {args.batch_size}; local engine {threads} torch threads")
    print(f"  --engine local            : {local_rate:8.1f} photos/s  ({local_s:.1f} s)")
    for w in counts:
        print(f"  --engine ray, {w} worker(s) : {n / ray_s[w]:8.1f} photos/s  ({ray_s[w]:.1f} s; identical tags: {same[w]})"
              + (f"; {steady[w]:.1f} photos/s past its start" if steady[w] else ""))
    print(f"  (Ray's own start: {init_s:.1f} s)")
    print(f"  start-up {startup_s:.1f} s; rerun {rerun_s:.2f} s, with --rehash {rehash_s:.2f} s; {files} output file(s)")
    print(f"  plan memory: {memory}")
    print(f"  beside other rows: {beside}")
    print(f"  100M photos: {archive}")
    print_rows(rows)
    if not all(same.values()):
        raise SystemExit("the Ray engine's tags differ from the local engine's")
    return emit(result, args.json)


if __name__ == "__main__":
    main()
