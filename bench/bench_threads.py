"""Torch intra-op threads: photos/s of predict and tag, and GAN updates/s, with 1 thread vs torch's default.

    python bench/bench_threads.py --n-predict 32 --n-tag 128 --repeats 3

Nothing in tagger sets the thread count, so torch uses one intra-op thread per core. On a machine
busy with other work that default has been measured many times slower than a single thread; this
row measures both in one process, switching with `torch.set_num_threads` and alternating which goes
first (median of --repeats):
- predict: `Tagger.predict` on one photo file per call, as `tagger predict` does;
- tag: `tagger.library.local.tag_paths` over --n-tag photo files (decoding in DataLoader workers, batch 64), as
  `tagger tag` does;
- train: GAN updates of the adam preset on random features (batch 100), as `tagger train` does.
The ratio is the 1-thread rate over the default's: above 1, one thread is faster.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from harness import IMAGES, emit, machine, median, print_rows, rel, row, subset_photos

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tagger.bundle import load  # noqa: E402
from tagger.model import Tagger  # noqa: E402
from tagger.library.local import tag_paths  # noqa: E402
from tagger.shipped import default_model_path  # noqa: E402
from tagger.training.presets import get_preset  # noqa: E402


def predict_rate(tagger: Tagger, paths: list[Path]) -> float:
    start = time.perf_counter()
    for p in paths:
        tagger.predict([p])
    return len(paths) / (time.perf_counter() - start)


def tag_rate(tagger: Tagger, paths: list[Path]) -> float:
    start = time.perf_counter()
    done = sum(1 for _, result in tag_paths(tagger, paths, batch_size=64) if result.tags is not None)
    assert done == len(paths)
    return len(paths) / (time.perf_counter() - start)


def make_train_rate(steps: int, feature_dim: int):
    from bench_training import bare_steps, make_trainer

    preset = get_preset("cgan", "adam")
    gan = replace(preset.generator, feature_dim=feature_dim)
    rng = np.random.default_rng(0)
    targets = torch.as_tensor(rng.standard_normal((1000, gan.word_dim), dtype=np.float32))
    batches = [(torch.as_tensor(rng.random((100, feature_dim), dtype=np.float32) * 2),
                torch.as_tensor(rng.integers(0, len(targets), 100))) for _ in range(steps)]

    def rate() -> float:
        torch.manual_seed(0)
        trainer = make_trainer(gan, preset.train, targets)
        start = time.perf_counter()
        bare_steps(trainer, batches)
        return steps / (time.perf_counter() - start)

    return rate


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=IMAGES, help="folder of photos (default: the shared subset)")
    parser.add_argument("--n-predict", type=int, default=32, help="photos for predict, one per call")
    parser.add_argument("--n-tag", type=int, default=128, help="photos for tag")
    parser.add_argument("--train-steps", type=int, default=10, help="GAN updates (0 skips training)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    default = torch.get_num_threads()
    tagger = load(args.model or default_model_path())
    paths = subset_photos(max(args.n_predict, args.n_tag), args.photos)
    tagger.predict(paths[:2])  # warm-up: builds the backbone
    tasks = {"predict": lambda: predict_rate(tagger, paths[: args.n_predict]),
             "tag": lambda: tag_rate(tagger, paths[: args.n_tag])}
    if args.train_steps:
        tasks["train"] = make_train_rate(args.train_steps, tagger.generator.config.feature_dim)
    units = {"predict": "photos/s", "tag": "photos/s", "train": "updates/s"}
    rates = {name: {1: [], default: []} for name in tasks}
    for name, fn in tasks.items():
        for i in range(args.repeats):
            for threads in ((1, default) if i % 2 == 0 else (default, 1)):
                torch.set_num_threads(threads)
                rates[name][threads].append(fn())
    torch.set_num_threads(default)

    rows, figures = [], {}
    what = {"predict": f"{args.n_predict} photos, one per call", "tag": f"{args.n_tag} photos, batch 64",
            "train": f"{args.train_steps} updates of 100 pairs, adam preset, random features"}
    print(f"torch threads: 1 vs the default {default} ({machine()['cpus']} cores), median of {args.repeats}")
    for name in tasks:
        one, many = median(rates[name][1]), median(rates[name][default])
        figures[name] = {"threads_1": round(one, 2), f"threads_{default}": round(many, 2), "ratio": round(one / many, 3),
                         "runs_1": [round(r, 2) for r in rates[name][1]], f"runs_{default}": [round(r, 2) for r in rates[name][default]]}
        print(f"  {name:8s}: 1 thread {one:8.2f} {units[name]}, {default} threads {many:8.2f} {units[name]}, ratio {one / many:.2f}")
        rows.append(row(f"threads: {name}, 1 vs {default} torch threads", f"{one:.1f} {units[name]} with 1",
                        f"{many:.1f} {units[name]} with {default} (torch's default)", one / many, None,
                        f"{what[name]}; ratio above 1: one thread is faster; median of {args.repeats}"))
    result = {"bench": "threads", "default_threads": default, "photos": rel(args.photos), "repeats": args.repeats, **figures,
              "machine": machine(), "rows": rows}
    print_rows(rows)
    return emit(result, args.json)


if __name__ == "__main__":
    main()
