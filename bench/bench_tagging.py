"""Tagging overhead: photos/s of `tagger tag` vs feature extraction alone on the same photos.

    python bench/bench_tagging.py --n 256 --repeats 3

The tag figure is what `tagger tag DIR --out FILE` does once the model is loaded, run in this
process: list and hash the photos, extract features (decoding in DataLoader workers), sample the
generator, look up and vote the nearest tags, journal every result and write the CSV. The
reference is `extract_features` on the same photos with the same backbone object, batch size and
workers, and no feature cache. Both are run alternately (median of --repeats), after one warm-up
of each. Interpreter start and model loading are left out here; the cold-start row measures them.
The backbone runs on the default runtime (ONNX Runtime on a CPU; --runtime torch for the other).
The target is a ratio >= 0.9.

The second row is `tagger tag` again with `--top-k 3` after a first run, with the feature cache
(`tag`'s default): the first run into an empty cache, then the same photos into a fresh output;
the figure is the first run's time over the second's (median of --repeats), the target >= 5.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from harness import IMAGES, emit, link_folder, machine, median, print_rows, rel, row, subset_photos

import torch  # noqa: E402  (after harness, which puts the checkout on sys.path)

from pipelines.features import FeatureConfig, extract_features  # noqa: E402
from pipelines.scan import list_images  # noqa: E402
from tagger.library.local import tag_paths  # noqa: E402
from tagger.library.batch import tag_folder  # noqa: E402
from tagger.bundle import load  # noqa: E402
from tagger.model import Tagger  # noqa: E402
from tagger.scoring.evidence import Evidence  # noqa: E402
from tagger.scoring.options import TagOptions  # noqa: E402
from tagger.shipped import default_model_path  # noqa: E402


def time_tag(tagger: Tagger, folder: Path, out: Path, batch_size: int) -> float:
    out.unlink(missing_ok=True)  # a fresh output: every photo is tagged again
    start = time.perf_counter()
    summary = tag_folder(folder, out, lambda paths: tag_paths(tagger, paths, batch_size=batch_size))
    elapsed = time.perf_counter() - start
    assert summary.failed == 0 and summary.tagged > 0, summary.failures[:3]
    return elapsed


def time_cached(tagger: Tagger, folder: Path, tmp: Path, batch_size: int, i: int) -> tuple[float, float]:
    """(first run into an empty feature cache, a second run with --top-k 3 on the same photos) in seconds."""
    cache = tmp / f"features-{i}"
    times = []
    for name, options in (("first", TagOptions()), ("again", TagOptions(top_k=3))):
        out = tmp / f"cached-{i}-{name}.csv"
        start = time.perf_counter()
        summary = tag_folder(folder, out, lambda paths: tag_paths(tagger, paths, options, batch_size=batch_size, cache_dir=cache),
                             settings=tagger.settings(options))
        times.append(time.perf_counter() - start)
        assert summary.failed == 0 and summary.tagged > 0, summary.failures[:3]
    return times[0], times[1]


def time_features(tagger: Tagger, paths: list[Path], batch_size: int) -> float:
    config = FeatureConfig(backbone=tagger.backbone_name, weights=tagger.backbone_weights, batch_size=batch_size,
                           device=str(tagger.device), cache_dir=None)
    start = time.perf_counter()
    result = extract_features(paths, config, progress=False, backbone=tagger.backbone)
    elapsed = time.perf_counter() - start
    assert result.ok.all(), list(result.errors.values())[:3]
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--n", type=int, default=256, help="number of photos")
    parser.add_argument("--batch-size", type=int, default=64, help="as `tagger tag --batch-size` (its default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, as the CLI)")
    parser.add_argument("--runtime", default=None, help="the backbone's runtime: torch, onnx, onnx-int8 (default: as the CLI's)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = subset_photos(args.n, args.photos)
    tagger = load(args.model or default_model_path(), runtime=args.runtime)
    with tempfile.TemporaryDirectory(prefix="bench-tagging-") as tmp:
        tmp = Path(tmp)
        os.environ["TAGGER_CACHE"] = str(tmp / "cache")  # neither side may find cached features
        folder = link_folder(paths, tmp / "photos")
        links = list_images(folder)
        warm = links[: min(len(links), args.batch_size)]
        time_features(tagger, warm, args.batch_size)  # builds the backbone's kernels, forks workers once
        time_tag(tagger, link_folder(paths[: len(warm)], tmp / "warm"), tmp / "warm.csv", args.batch_size)

        tag_s, feat_s = [], []
        for i in range(args.repeats):
            # Alternate which goes first, so neither always follows the other's cache state.
            if i % 2 == 0:
                feat_s.append(time_features(tagger, links, args.batch_size))
                tag_s.append(time_tag(tagger, folder, tmp / "tags.csv", args.batch_size))
            else:
                tag_s.append(time_tag(tagger, folder, tmp / "tags.csv", args.batch_size))
                feat_s.append(time_features(tagger, links, args.batch_size))
        cached = [time_cached(tagger, folder, tmp, args.batch_size, i) for i in range(args.repeats)]
        # Where the rest of the tag time goes: the generator, look-up and votes on features already extracted.
        feats = extract_features(links, FeatureConfig(backbone=tagger.backbone_name, batch_size=args.batch_size, cache_dir=None),
                                 progress=False, backbone=tagger.backbone).features
        start = time.perf_counter()
        tagger.tag(Evidence(feats, None))
        score_s = time.perf_counter() - start

    n = len(paths)
    tag_rate, feat_rate = n / median(tag_s), n / median(feat_s)
    pair = median(f / t for f, t in zip(feat_s, tag_s))
    threads = torch.get_num_threads()
    rows = [row("tagging: tagger tag", f"{tag_rate:.1f} photos/s", f"{feat_rate:.1f} photos/s feature extraction alone",
                tag_rate / feat_rate, "ratio >= 0.9",
                f"{n} shared photos, batch {args.batch_size}, runtime {tagger.backbone.runtime}, {threads} threads, in process (model loaded), median of {args.repeats}; "
                f"per-pair ratio {pair:.3f}; GAN sampling + look-up + votes alone {n / score_s:.0f} photos/s")]
    speedup = median(a / b for a, b in cached)
    rows.append(row("tagging: tagger tag --top-k 3 after a first run (feature cache)", f"{median(b for _, b in cached):.2f} s",
                    f"{median(a for a, _ in cached):.2f} s for the first run", speedup, "ratio >= 5",
                    f"{n} shared photos; ratio = first run / second run (cached features and colour: no decoding, no network), "
                    f"median of {args.repeats}"))
    result = {"bench": "tagging", "runtime": tagger.backbone.runtime, "n": n, "photos": rel(args.photos), "batch_size": args.batch_size, "torch_threads": threads,
              "repeats": args.repeats, "tag_photos_per_s": round(tag_rate, 2), "features_photos_per_s": round(feat_rate, 2),
              "ratio": round(tag_rate / feat_rate, 3), "ratio_median_of_pairs": round(pair, 3),
              "sampling_votes_photos_per_s": round(n / score_s, 1),
              "cached_runs_s": [[round(a, 2), round(b, 2)] for a, b in cached], "cached_speedup": round(speedup, 2),
              "tag_runs_s": [round(t, 2) for t in tag_s], "features_runs_s": [round(t, 2) for t in feat_s],
              "machine": machine(), "rows": rows}
    print(f"tagging {n} photos, batch {args.batch_size}, {threads} torch threads, median of {args.repeats}")
    print(f"  feature extraction alone : {feat_rate:8.1f} photos/s  (runs {', '.join(f'{t:.1f}' for t in feat_s)} s)")
    print(f"  tagger tag (in process)  : {tag_rate:8.1f} photos/s  (runs {', '.join(f'{t:.1f}' for t in tag_s)} s)")
    print(f"  sampling + votes alone   : {n / score_s:8.1f} photos/s")
    print(f"  ratio                    : {tag_rate / feat_rate:8.3f}  (per pair {pair:.3f}; target >= 0.9)")
    print_rows(rows)
    return emit(result, args.json)


if __name__ == "__main__":
    main()
