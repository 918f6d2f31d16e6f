"""Training: (photo, tag) pairs per second of GAN training, and the wall time of `tagger train` by stage.

    python bench/bench_training.py --n 1500 --steps 40 --repeats 3

A full `tagger train` on the 10,710 shared photos takes about 11 min plus 7 min of feature
extraction with a cold cache, so this runs a slice: the first --n photos of the shared subset
(annotations.jsonl order) written as a CSV manifest to a temp folder, trained with
`tagger train MANIFEST --preset adam --epochs 1` in a fresh process with an empty feature cache
(a temp TAGGER_CACHE), so every stage does its real work. Its "stages:" line splits the wall time;
what the stages do not cover is interpreter start, imports and writing the output.

Then, in this process on the slice's features (now cached), `tagger.training.loop.train()` runs --steps
updates of the adam preset (one D and one G step each, batch 100) and is compared with a bare loop
doing the same D and G updates on batches gathered beforehand, without the training loop's
bookkeeping (learning-rate setting, logging, progress): the ratio says what that bookkeeping costs.
Both are run alternately, median of --repeats.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from harness import SUBSET, child_env, emit, machine, median, print_rows, rel, row, run_measured, tagger_cli

import torch  # noqa: E402

from embeddings.index import TagIndex  # noqa: E402
from tagger.training.fit import FitConfig, prepare, word_ids  # noqa: E402
from tagger.generators import TrainContext, WordGenerator, family_for, get_family  # noqa: E402
from tagger.training.presets import get_preset  # noqa: E402
from tagger.training.loop import make_pairs, train  # noqa: E402
from tagger.scoring.words import prepare_word_vectors


def write_manifest(subset: Path, n: int, out: Path) -> int:
    """A CSV manifest (path, tags as a JSON list) of the first n photos of the subset."""
    with open(subset / "annotations.jsonl", encoding="utf-8") as f, open(out, "w", newline="", encoding="utf-8") as g:
        writer = csv.writer(g)
        writer.writerow(["path", "tags"])
        count = 0
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            writer.writerow([str(subset / rec["file"]), json.dumps(rec.get("tags") or [], ensure_ascii=False)])
            count += 1
            if count == n:
                break
    return count


def make_trainer(gen_cfg, tcfg, targets: torch.Tensor):
    """The family's trainer on a fresh generator, with a flat word prior: what train() steps, without train()."""
    G = WordGenerator(gen_cfg).train()
    ctx = TrainContext(targets=targets, log_prior=torch.full((len(targets),), -np.log(len(targets))),
                       rng=torch.Generator().manual_seed(0))
    return get_family(family_for(gen_cfg)).trainer(G, tcfg, ctx)


def bare_steps(trainer, batches) -> None:
    """The family's updates on ready batches of (features, word ids), nothing else."""
    for x, words in batches:
        trainer.step(x, words, torch.zeros_like(words))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SUBSET, help="the shared subset folder (annotations.jsonl)")
    parser.add_argument("--n", type=int, default=1500, help="photos in the slice")
    parser.add_argument("--preset", default="adam")
    parser.add_argument("--steps", type=int, default=40, help="GAN updates per in-process measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cli", action="store_true", help="only the in-process pairs/s (features extracted here)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)
    if not (args.data / "annotations.jsonl").is_file():
        sys.exit(f"shared subset not found at {rel(args.data)} (set TAGGER_SUBSET, or pass --data)")

    rows, result = [], {"bench": "training", "slice": f"first {args.n} photos of {rel(args.data)}/annotations.jsonl", "preset": args.preset}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "slice.csv"
        n = write_manifest(args.data, args.n, manifest)
        cache = tmp / "cache"

        if not args.skip_cli:
            cmd = tagger_cli("train", manifest, "--out", tmp / "model", "--preset", args.preset, "--epochs", "1")
            run = run_measured(cmd, child_env(TAGGER_CACHE=str(cache)))
            if run["returncode"] != 0:
                sys.exit(f"tagger train failed:\n{run['stderr'][-3000:]}")
            stages_line = next(line for line in run["stdout"].splitlines() if line.startswith("stages:"))
            stages = {k: float(v) for k, v in re.findall(r"(\w+) (\d+(?:\.\d+)?) s", stages_line)}
            gan_line = next((line for line in run["stdout"].splitlines() if line.startswith("GAN:")), "")
            other = run["seconds"] - sum(stages.values())
            log = list(csv.DictReader(open(tmp / "model" / "train_log.csv")))
            info = json.loads((tmp / "model" / "config.json").read_text())["info"]
            epoch_rate = info["pairs"] / float(log[0]["seconds"])
            breakdown = ", ".join(f"{k} {v:.0f}" for k, v in stages.items()) + f", start-up and other {other:.0f}"
            print(f"tagger train on the first {n} photos, --preset {args.preset} --epochs 1, cold feature cache:")
            print(f"  {gan_line}")
            print(f"  wall {run['seconds']:.0f} s; {stages_line}; start-up and other {other:.0f} s")
            rows.append(row(f"training: tagger train --epochs 1, {n:,} photos", f"{run['seconds']:.0f} s wall",
                            f"stages (s): {breakdown}", None, None,
                            f"first {n:,} photos of the shared subset as a CSV manifest, --preset {args.preset}, empty feature cache; "
                            f"{info['pairs']:,} pairs; its epoch (with validation) ran {epoch_rate:.0f} pairs/s"))
            result.update(cli_wall_s=round(run["seconds"], 1), stage_seconds=stages, other_s=round(other, 1), pairs=info["pairs"],
                          train_photos=info["train_photos"], epoch_seconds=round(float(log[0]["seconds"]), 1),
                          epoch_pairs_per_s=round(epoch_rate, 1), peak_rss_mb=round(run["peak_rss_mb"]))

        # In process: train() against the bare updates, on the slice's features from the cache.
        preset = get_preset("cgan", args.preset)
        prep = prepare(manifest, FitConfig(preset=args.preset, cache_dir=cache), progress=False)
    frame, features, vocab, wv = prep.frame, prep.features, prep.vocabulary, prep.word_vectors
    targets = prepare_word_vectors(wv.vectors, preset.words)
    index = TagIndex(list(wv.words), targets)
    ids = word_ids(frame, vocab, list(wv.words))
    train_rows = np.flatnonzero(((frame["split"] == "train") & frame["ok"]).to_numpy())
    pairs = make_pairs([ids[i] for i in train_rows])
    pairs[:, 0] = train_rows[pairs[:, 0]]
    gan_cfg = replace(preset.generator, feature_dim=features.shape[1], word_dim=targets.shape[1])
    batch = preset.train.batch_size
    steps = min(args.steps, len(pairs) // batch)  # full batches within one epoch, so steps x batch pairs are trained
    if steps < 1:
        sys.exit(f"only {len(pairs)} pairs in the slice: use a larger --n")
    tcfg = replace(preset.train, epochs=1, max_steps=steps)
    n_pairs = steps * batch

    def run_train() -> float:
        start = time.perf_counter()
        _, state = train(features, pairs, targets, index, gan_cfg, tcfg, sampling=preset.sampling,
                         standardize_features=preset.standardize_features, device=torch.device("cpu"), progress=False)
        assert state.step == steps
        return time.perf_counter() - start

    x_all, t_all = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(targets)
    rng = np.random.default_rng(0)
    pick = torch.as_tensor(pairs[rng.integers(0, len(pairs), n_pairs)])
    batches = [(x_all[b[:, 0]], b[:, 1]) for b in pick.split(batch)]

    def run_bare() -> float:
        torch.manual_seed(0)
        start = time.perf_counter()
        bare_steps(make_trainer(gan_cfg, tcfg, t_all), batches)
        return time.perf_counter() - start

    run_bare()  # warm-up
    train_s, bare_s = [], []
    for i in range(args.repeats):
        first, second = (run_train, run_bare) if i % 2 == 0 else (run_bare, run_train)
        a, b = first(), second()
        train_s.append(a if first is run_train else b)
        bare_s.append(b if first is run_train else a)
    tr, br = n_pairs / median(train_s), n_pairs / median(bare_s)
    threads = torch.get_num_threads()
    print(f"GAN updates in process: {steps} steps of {batch} pairs, preset {args.preset}, {threads} torch threads, median of {args.repeats}")
    print(f"  tagger.training.loop.train(): {tr:8.0f} pairs/s  (runs {', '.join(f'{t:.1f}' for t in train_s)} s)")
    print(f"  bare D+G updates    : {br:8.0f} pairs/s  (runs {', '.join(f'{t:.1f}' for t in bare_s)} s)")
    rows.insert(0, row("training: GAN pairs/s, train()", f"{tr:.0f} pairs/s", f"{br:.0f} pairs/s bare D+G updates", tr / br, None,
                       f"{steps} updates of {batch} pairs, preset {args.preset}, {threads} torch threads, features of the slice, "
                       f"median of {args.repeats}"))
    result.update(steps=steps, batch_size=batch, train_pairs_per_s=round(tr, 1), bare_pairs_per_s=round(br, 1),
                  ratio=round(tr / br, 3), train_runs_s=[round(t, 2) for t in train_s], bare_runs_s=[round(t, 2) for t in bare_s],
                  photos=n, machine=machine(), rows=rows)
    print_rows(rows)
    return emit(result, args.json)


if __name__ == "__main__":
    main()
