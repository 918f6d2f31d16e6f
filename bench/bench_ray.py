"""The Ray engine's overhead on one machine: photos/s of `tagger tag --engine ray` against the local engine.

    python bench/bench_ray.py --n 1000 --workers 1,2

Both tag the same photos with the shipped model and batch size into fresh outputs, in this
process: the local engine with the model already loaded (`tag_folder` + `tagger.library.local.tag_paths`, as
`tagger tag`), the Ray engine on a local Ray started once beforehand (`ray_engine.tag_source`, as
`tagger tag --engine ray`), its actors' start (loading torch and the model) included, since every
run pays it. Ray gets one CPU per worker, so 1 worker uses one core of this machine and 2 workers
both; the local engine uses every core (torch threads plus decoding workers). Each run's tags are
compared with the local engine's: the figures count only if they are the same. Needs the ray
extra (`pip install "tagger[ray]"`).
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


def same_rows(a, b) -> bool:
    a, b = a.sort_values("path").reset_index(drop=True), b.sort_values("path").reset_index(drop=True)
    return (list(a["path"]) == list(b["path"]) and [list(t) for t in a["tags"]] == [list(t) for t in b["tags"]]
            and [list(s) for s in a["scores"]] == [list(s) for s in b["scores"]])


def steady_rate(out: Path) -> float | None:
    """Photos/s of one worker past its start: the last unit's photos over the time since the unit before it was written
    (with one worker, units run one after another; None with fewer than two units)."""
    import pyarrow.parquet as pq

    files = sorted(Output(out).files(), key=os.path.getmtime)
    if len(files) < 2:
        return None
    return pq.read_metadata(files[-1]).num_rows / (os.path.getmtime(files[-1]) - os.path.getmtime(files[-2]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--n", type=int, default=1000, help="number of photos")
    parser.add_argument("--batch-size", type=int, default=64, help="as `tagger tag --batch-size` (its default)")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to measure, comma-separated")
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
        ray_s, same, steady = {}, {}, {}
        try:
            for w in counts:
                out = tmp / f"ray{w}.parquet"
                start = time.perf_counter()
                summary = tag_source(folder, out, model, RayOptions(workers=w, batch_size=args.batch_size))
                ray_s[w] = time.perf_counter() - start
                assert summary.tagged == len(paths), summary.failures[:3]
                same[w] = same_rows(read_output(out), local)
                steady[w] = steady_rate(out) if w == 1 else None
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
                + (f"; past its start the worker ran {steady[w]:.1f} photos/s (its last unit)" if steady.get(w) else ""))
            for w in counts]
    result = {"bench": "ray", "n": n, "photos": rel(args.photos), "batch_size": args.batch_size, "torch_threads": threads,
              "local_photos_per_s": round(local_rate, 2), "local_s": round(local_s, 2), "ray_init_s": round(init_s, 2),
              "ray": {str(w): {"seconds": round(ray_s[w], 2), "photos_per_s": round(n / ray_s[w], 2), "identical_to_local": same[w],
                               "steady_photos_per_s": None if steady[w] is None else round(steady[w], 2)}
                      for w in counts},
              "machine": machine(), "rows": rows}
    print(f"tagging {n} photos, batch {args.batch_size}; local engine {threads} torch threads")
    print(f"  --engine local            : {local_rate:8.1f} photos/s  ({local_s:.1f} s)")
    for w in counts:
        print(f"  --engine ray, {w} worker(s) : {n / ray_s[w]:8.1f} photos/s  ({ray_s[w]:.1f} s; identical tags: {same[w]})"
              + (f"; {steady[w]:.1f} photos/s past its start" if steady[w] else ""))
    print(f"  (Ray's own start: {init_s:.1f} s)")
    print_rows(rows)
    if not all(same.values()):
        raise SystemExit("the Ray engine's tags differ from the local engine's")
    return emit(result, args.json)


if __name__ == "__main__":
    main()
