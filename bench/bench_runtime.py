"""The backbone's runtime: ONNX Runtime against torch on the same photos, bare and end to end, and int8.

    python bench/bench_runtime.py --n 256 --repeats 3 [--eval-model BUNDLE]   # or TAGGER_EVAL_MODEL=BUNDLE make bench

Three comparisons, each measured alternately in this one process (median of --repeats, after a warm-up):

- the bare forward pass over photos already decoded into uint8 pixels: ONNX Runtime (float) vs torch,
  target >= 2.0;
- `tagger tag` end to end with the model loaded (as bench_tagging.py times it), `--runtime onnx` vs
  `--runtime torch`, target >= 1.7;
- the bare forward pass of `onnx-int8` vs float ONNX Runtime; with --eval-model (a bundle trained with a
  test split), also the test split's P@5 of the bundle's default method with int8 and with float features,
  which must stay within 0.003 for int8 to be worth offering.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from harness import IMAGES, emit, link_folder, machine, median, print_rows, rel, row, subset_photos

import torch  # noqa: E402  (after harness, which puts the checkout on sys.path)

from pipelines.backbones import create_backbone  # noqa: E402
from pipelines.backbones.onnx_backbone import OnnxExportError  # noqa: E402
from pipelines.images import load_image  # noqa: E402
from tagger.library.local import tag_paths  # noqa: E402
from tagger.library.batch import tag_folder  # noqa: E402
from tagger.bundle import load  # noqa: E402
from tagger.model import Tagger  # noqa: E402
from tagger.shipped import default_model_path  # noqa: E402

P5_BOUND = 0.003  # the most P@5 int8 may lose against float


def time_bare(backbone, pixels: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        backbone.forward_features(pixels)
    return time.perf_counter() - start


def time_tag(tagger: Tagger, folder: Path, out: Path, batch_size: int) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    summary = tag_folder(folder, out, lambda paths: tag_paths(tagger, paths, batch_size=batch_size))
    elapsed = time.perf_counter() - start
    assert summary.failed == 0 and summary.tagged > 0, summary.failures[:3]
    return elapsed


def p_at_5(model: Path, data: Path, runtime: str, cache: Path) -> tuple[str, float]:
    from tagger.evaluation.evaluate import evaluate

    tagger = load(model, device="cpu", runtime=runtime)
    ev = evaluate(tagger, data, "test", (tagger.default_method,), cache_dir=cache, progress=False)
    return tagger.default_method, ev.tags[tagger.default_method]["P@5"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="number of photos")
    parser.add_argument("--photos", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="bundle for the tag rows (default: the shipped one)")
    parser.add_argument("--eval-model", type=Path, default=os.environ.get("TAGGER_EVAL_MODEL") or None,
                        help="a bundle trained with a test split, for int8's P@5 (default: $TAGGER_EVAL_MODEL)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    paths = subset_photos(args.n, args.photos)
    n = len(paths)
    threads = torch.get_num_threads()
    rows, figures = [], {"bench": "runtime", "n": n, "photos": rel(args.photos), "torch_threads": threads, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        tmp = Path(tmp)
        os.environ["TAGGER_CACHE"] = str(tmp / "cache")  # exports included in no timing; no feature cache reused
        backbones = {r: create_backbone(runtime=r, device="cpu") for r in ("torch", "onnx")}
        try:
            backbones["onnx-int8"] = create_backbone(runtime="onnx-int8", device="cpu")
            refused = ""
        except OnnxExportError as e:
            # int8 is refused where its features drift from float ones (seen on a CPU without VNNI, where u8s8
            # products can saturate): the row says so and the other rows still run.
            refused = str(e)
        pixels = torch.stack([backbones["torch"].pixels_transform(load_image(p, min_side=256)) for p in paths])
        for b in backbones.values():
            time_bare(b, pixels[: args.batch_size])  # warm-up
        bare = {r: [] for r in backbones}
        for _ in range(args.repeats):
            for r, b in backbones.items():
                bare[r].append(time_bare(b, pixels))
        rate = {r: n / median(t) for r, t in bare.items()}
        pair = median(t / o for t, o in zip(bare["torch"], bare["onnx"]))
        rows.append(row("runtime: bare forward pass, ONNX Runtime vs torch", f"{rate['onnx']:.1f} photos/s",
                        f"{rate['torch']:.1f} photos/s torch", rate["onnx"] / rate["torch"], "ratio >= 2.0",
                        f"efficientnet_lite0, {n} decoded photos, {threads} threads each, chunks of 16, median of {args.repeats}; "
                        f"per-pair ratio {pair:.3f}"))

        tagger = {r: load(args.model or default_model_path(), device="cpu", runtime=r) for r in ("torch", "onnx")}
        folder = link_folder(paths, tmp / "photos")
        warm = link_folder(paths[: args.batch_size], tmp / "warm")
        for t in tagger.values():
            time_tag(t, warm, tmp / "warm.csv", args.batch_size)
        tag = {"torch": [], "onnx": []}
        for i in range(args.repeats):
            order = ("torch", "onnx") if i % 2 == 0 else ("onnx", "torch")
            for r in order:
                tag[r].append(time_tag(tagger[r], folder, tmp / "tags.csv", args.batch_size))
        tag_rate = {r: n / median(t) for r, t in tag.items()}
        tag_pair = median(t / o for t, o in zip(tag["torch"], tag["onnx"]))
        rows.append(row("runtime: tagger tag, --runtime onnx vs torch", f"{tag_rate['onnx']:.1f} photos/s",
                        f"{tag_rate['torch']:.1f} photos/s --runtime torch", tag_rate["onnx"] / tag_rate["torch"], "ratio >= 1.7",
                        f"{n} shared photos, shipped model, batch {args.batch_size}, in process (model loaded), median of "
                        f"{args.repeats}; per-pair ratio {tag_pair:.3f}"))

        note = f"same photos and threads, median of {args.repeats}"
        figures["int8"] = {"refused": refused} if refused else {}
        if args.eval_model and not refused:
            data = args.photos.parent
            method, p_float = p_at_5(args.eval_model, data, "onnx", tmp / "cache" / "features")
            _, p_int8 = p_at_5(args.eval_model, data, "onnx-int8", tmp / "cache" / "features")
            verdict = "within" if p_float - p_int8 <= P5_BOUND else "NOT within"
            note += (f"; test-split P@5 ({method}) int8 {p_int8:.4f} vs float {p_float:.4f}: {p_int8 - p_float:+.4f}, "
                     f"{verdict} the {P5_BOUND} allowed")
            figures["int8"] = {"method": method, "p5_int8": round(p_int8, 4), "p5_float": round(p_float, 4)}
        if refused:
            rows.append(row("runtime: bare forward pass, onnx-int8 vs float ONNX Runtime", "refused",
                            f"{rate['onnx']:.1f} photos/s float", None, None, refused))
        else:
            rows.append(row("runtime: bare forward pass, onnx-int8 vs float ONNX Runtime", f"{rate['onnx-int8']:.1f} photos/s",
                            f"{rate['onnx']:.1f} photos/s float", rate["onnx-int8"] / rate["onnx"], None, note))

    figures.update({"bare_photos_per_s": {r: round(v, 2) for r, v in rate.items()},
                    "bare_runs_s": {r: [round(x, 3) for x in t] for r, t in bare.items()},
                    "tag_photos_per_s": {r: round(v, 2) for r, v in tag_rate.items()},
                    "tag_runs_s": {r: [round(x, 2) for x in t] for r, t in tag.items()},
                    "machine": machine(), "rows": rows})
    print(f"runtime: {n} photos, {threads} threads, median of {args.repeats}")
    for r, v in rate.items():
        print(f"  bare forward pass, {r:9s}: {v:8.1f} photos/s")
    for r, v in tag_rate.items():
        print(f"  tagger tag, {r:9s}       : {v:8.1f} photos/s")
    print_rows(rows)
    return emit(figures, args.json)


if __name__ == "__main__":
    main()
