"""Scaling: tagging time per photo at batch sizes 1, 8, 32 and 128, in process on photos already decoded.

    python bench/bench_scaling.py --n 128 --batch-sizes 1,8,32,128 --repeats 3

`Tagger.predict` on PIL images already in memory, --n photos in batches of each size: the
backbone's forward pass (`Tagger.read`) and the GAN sampling, look-up and votes
(`Tagger.tag`) are timed apart. Decoding is left out (see the tagging row for whole
runs). Batch sizes are interleaved within each repeat; median of --repeats. How the code batches
inside: on CPU the backbone runs chunks of 16 photos (pipelines/backbones.py CPU_CHUNK), features
are computed in batches of 64 (pipelines/features.py extract_images) and the generator samples
64 photos at a time (tagger/scoring/sampling.py CHUNK), so 128 runs as two batches of 64.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import IMAGES, emit, machine, median, print_rows, rel, row, subset_photos

import torch  # noqa: E402

from pipelines.images import load_image  # noqa: E402
from tagger.bundle import load  # noqa: E402
from tagger.model import Tagger  # noqa: E402
from tagger.shipped import default_model_path  # noqa: E402


def time_batches(tagger: Tagger, images: list, batch_size: int) -> tuple[float, float]:
    """Seconds spent in the backbone and in sampling + votes, over all images in batches of batch_size."""
    feat_s = score_s = 0.0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        t0 = time.perf_counter()
        evidence = tagger.read(chunk)
        t1 = time.perf_counter()
        tagger.tag(evidence)
        t2 = time.perf_counter()
        feat_s += t1 - t0
        score_s += t2 - t1
    return feat_s, score_s


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--n", type=int, default=128, help="photos tagged at each batch size")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    tagger = load(args.model or default_model_path())
    min_side = tagger.backbone.preprocessing.resize
    paths = subset_photos(args.n, args.photos)
    images = [load_image(p, min_side=min_side) for p in paths]
    time_batches(tagger, images[: max(sizes)], max(sizes))  # warm-up: kernels for the shapes used
    time_batches(tagger, images[:1], 1)

    runs: dict[int, list[tuple[float, float]]] = {b: [] for b in sizes}
    for i in range(args.repeats):
        for b in (sizes if i % 2 == 0 else sizes[::-1]):
            runs[b].append(time_batches(tagger, images, b))
    n = len(images)
    table = {}
    for b in sizes:
        total = median(f + s for f, s in runs[b]) / n * 1e3
        table[b] = {"ms_per_photo": round(total, 2), "backbone_ms": round(median(f for f, _ in runs[b]) / n * 1e3, 2),
                    "sampling_votes_ms": round(median(s for _, s in runs[b]) / n * 1e3, 2),
                    "runs_s": [round(f + s, 3) for f, s in runs[b]]}
    base = table[sizes[0]]["ms_per_photo"]
    threads = torch.get_num_threads()
    print(f"tagging {n} decoded photos per batch size, {threads} torch threads, median of {args.repeats}")
    print(f"  {'batch':>5}  {'ms/photo':>9}  {'backbone':>9}  {'sampling+votes':>14}  {'vs batch ' + str(sizes[0]):>11}")
    rows = []
    for b in sizes:
        t = table[b]
        print(f"  {b:5d}  {t['ms_per_photo']:9.2f}  {t['backbone_ms']:9.2f}  {t['sampling_votes_ms']:14.2f}  {t['ms_per_photo'] / base:11.3f}")
        if b != sizes[0]:
            rows.append(row(f"scaling: batch {b}", f"{t['ms_per_photo']:.1f} ms/photo",
                            f"{base:.1f} ms/photo at batch {sizes[0]}", t["ms_per_photo"] / base, None,
                            f"backbone {t['backbone_ms']:.1f} + sampling/votes {t['sampling_votes_ms']:.1f} ms/photo; "
                            f"{n} decoded photos, {threads} torch threads, median of {args.repeats}"))
    result = {"bench": "scaling", "n": n, "photos": rel(args.photos), "torch_threads": threads, "repeats": args.repeats,
              "batch_sizes": {str(b): table[b] for b in sizes}, "machine": machine(), "rows": rows}
    print_rows(rows)
    return emit(result, args.json)


if __name__ == "__main__":
    main()
