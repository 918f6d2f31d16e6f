"""Does feature extraction keep the backbone busy? Photos/s of the whole pipeline vs the bare forward pass.

    python bench/bench_features.py --backbone efficientnet_lite0 --batch-size 64 --n 512

The pipeline figure is `extract_features` end to end with no cache: reading files, decoding in
DataLoader workers, resizing, batching, the forward pass. The bare figure is the same backbone,
batch size and photos, already decoded into one tensor in memory, so only the forward pass is
timed. Both are measured alternately in one run (median of --repeats), so a machine that gets
busier or quieter affects both alike. A ratio near 1 means decoding is hidden behind the forward
pass; the target is >= 0.9.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from harness import IMAGES, emit, print_rows, rel, row, subset_photos  # puts the checkout on sys.path

from pipelines.backbones import DEFAULT_BACKBONE, create_backbone  # noqa: E402
from pipelines.features import FeatureConfig, extract_features  # noqa: E402
from pipelines.images import load_image  # noqa: E402


def bare_forward(backbone, batches: list[torch.Tensor]) -> float:
    """Seconds for the forward pass alone over pre-decoded batches."""
    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            backbone.forward_features(x)
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def pipeline(backbone, paths: list[Path], config: FeatureConfig) -> float:
    start = time.perf_counter()
    result = extract_features(paths, config, progress=False, backbone=backbone)
    elapsed = time.perf_counter() - start
    assert result.ok.all(), f"{len(result.errors)} photos failed: {list(result.errors.values())[:3]}"
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=512, help="number of photos")
    parser.add_argument("--data", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: FeatureConfig's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--runtime", default=None, help="torch, onnx or onnx-int8 (default: onnx on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both measurements (default: torch's, one per core)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = subset_photos(args.n, args.data)
    if not paths:
        parser.error(f"no photos under {rel(args.data)}")
    backbone = create_backbone(args.backbone, device=args.device, runtime=args.runtime)
    config = FeatureConfig(backbone=args.backbone, batch_size=args.batch_size, device=args.device, runtime=backbone.runtime, cache_dir=None)
    if args.workers is not None:
        config = FeatureConfig(**{**config.__dict__, "num_workers": args.workers})

    # The bare pass gets the very tensors the pipeline would build (uint8 pixels, normalized inside).
    pixels = torch.stack([backbone.pixels_transform(load_image(p, min_side=backbone.preprocessing.resize)) for p in paths])
    batches = list(pixels.split(args.batch_size))
    bare_forward(backbone, batches[:1])  # warm-up: the first call builds the oneDNN/cuDNN kernels

    bare_times, pipe_times = [], []
    for _ in range(args.repeats):
        pipe_times.append(pipeline(backbone, paths, config))
        bare_times.append(bare_forward(backbone, batches))
    n = len(paths)
    bare = n / statistics.median(bare_times)
    pipe = n / statistics.median(pipe_times)
    # On a shared machine the load drifts between repeats; the ratio within each back-to-back
    # pair is steadier than the ratio of the two medians.
    pair_ratio = statistics.median(b / p for b, p in zip(bare_times, pipe_times))
    figures = {
        "bench": "features",
        "photos": rel(args.data),
        "backbone": args.backbone,
        "device": str(backbone.device),
        "runtime": backbone.runtime,
        "n": n,
        "batch_size": args.batch_size,
        "num_workers": config.num_workers,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "bare_photos_per_s": round(bare, 2),
        "pipeline_photos_per_s": round(pipe, 2),
        "ratio": round(pipe / bare, 3),
        "ratio_median_of_pairs": round(pair_ratio, 3),
        "bare_runs_s": [round(t, 2) for t in bare_times],
        "pipeline_runs_s": [round(t, 2) for t in pipe_times],
    }
    print(f"{args.backbone} on {backbone.device} ({backbone.runtime}), {n} photos, batch {args.batch_size}, {config.num_workers} workers, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")
    print(f"  bare forward pass : {bare:8.1f} photos/s")
    print(f"  whole pipeline    : {pipe:8.1f} photos/s")
    print(f"  ratio             : {pipe / bare:8.3f}  (target >= 0.9)")
    print(f"  ratio, per pair   : {pair_ratio:8.3f}  (median over repeats of bare time / pipeline time)")
    figures["rows"] = [row("features: whole pipeline", f"{pipe:.1f} photos/s", f"{bare:.1f} photos/s bare forward pass",
                           pipe / bare, "ratio >= 0.9",
                           f"{n} shared photos, {args.backbone} ({backbone.runtime}), batch {args.batch_size}, {config.num_workers} decoding workers, "
                           f"{torch.get_num_threads()} torch threads, median of {args.repeats}; per-pair ratio {pair_ratio:.3f}")]
    print_rows(figures["rows"])
    return emit(figures, args.json)


if __name__ == "__main__":
    main()
