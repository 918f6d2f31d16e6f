"""Does a classifier trained on the training photos' tags make the tags better? Measured on validation photos.

    python bench/study_probe.py                      # the shipped model, the subset beside the checkout
    python bench/study_probe.py --model DIR --data DATA --json out.json

Issue "Tags a library owner keeps", item 4, asks to fine-tune the backbone's last blocks on the
training photos' tags. This measures the two ends of that: a probe (one Linear layer, 1280 -> V,
on the frozen features, trained with binary cross-entropy on each photo's words) and the backbone's
last stage retrained with it (`--blocks N`: the last N blocks of EfficientNet-Lite's final stage
and its 1x1 head conv, trained on cached activations of the stage before them).
The probe's weight decay and epochs are chosen on a fifth of the training photos held out from
it; the validation photos are only scored. The judge is bench/study_head.py's (P@5 against the
photos' content and style keywords and against the concept labels, with paired 95% intervals
against cgan+knn, the shipped default). The backbone's blocks: bench/study_finetune.py.

What it found on the shipped model (1,090 validation photos, 804 with content or style tags;
weight decay 0.1 and 15 epochs chosen on 1,630 held-out training photos, where the probe reached
P@5 0.164 and then overfitted): the probe alone tags like kNN (0.1694 against kNN's 0.1677;
cgan+knn 0.1808) and names concepts worse (label P@5 0.428 against 0.464). Added to cgan+knn it
gains a little at every weight: 0.5x +0.0042 [+0.0007, +0.0077], 1x +0.0030 [-0.0012, +0.0075],
2x +0.0062 [+0.0007, +0.0119]; label P@5 +0.005, +0.002, -0.003, each within its interval. The
weight was picked from three on these same photos, so +0.004 to +0.006 (2-3%) is the most to
expect on unseen ones: not shipped, the features bound what any classifier on them can learn.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import REPO, SUBSET

import numpy as np  # noqa: E402
import torch  # noqa: E402

from study_head import Judge, print_table, validation_setup  # noqa: E402
from tagger.scoring.scorers import combine  # noqa: E402
from tagger.training.fit import word_ids  # noqa: E402

DECAYS = (1e-4, 1e-2, 1e-1)
EPOCHS = 20
WEIGHTS = (0.5, 1.0, 2.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def targets(ids: list, rows: np.ndarray, n_words: int) -> np.ndarray:
    y = np.zeros((len(rows), n_words), np.float32)
    for r, i in enumerate(rows):
        y[r, list(ids[i])] = 1
    return y


def train_probe(x: np.ndarray, y: np.ndarray, decay: float, epochs: int, seed: int = 0,
                watch: tuple[np.ndarray, callable] | None = None) -> tuple[torch.nn.Module, list]:
    """A Linear probe with BCE; features standardised by the training photos' mean and spread.
    watch: (held-out features, judge(scores) -> float), scored after every 10 epochs."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], y.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=decay)
    xt, yt = torch.from_numpy((x - mean) / std), torch.from_numpy(y)
    # Words are rare: weigh a word's positives by its rarity's square root, so the loss is not all negatives.
    pos = yt.mean(0).clamp(min=1e-4)
    pos_weight = (1 / pos).sqrt()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    curve = []
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(256):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        if watch is not None and (epoch + 1) % 5 == 0:
            curve.append((epoch + 1, watch[1](predict(model, mean, std, watch[0]))))
    model.mean, model.std = mean, std
    return model, curve


def predict(model, mean, std, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy((x - mean) / std))).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "tagger" / "assets" / "model")
    ap.add_argument("--data", type=Path, default=SUBSET)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    tagger, frame, feats, _, colour = validation_setup(args.model, args.data)
    words = list(tagger.words)
    ids = word_ids(frame, tagger.vocabulary, words)
    val = frame.index[(frame["split"] == "val") & frame["ok"]].to_numpy()
    train = np.array([i for i in frame.index[(frame["split"] == "train") & frame["ok"]] if ids[i]])
    rng = np.random.default_rng(0)
    held = np.sort(rng.choice(train, len(train) // 5, replace=False))
    fit_rows = np.setdiff1d(train, held)
    x_all = feats.features.astype(np.float32)
    log(f"{len(val)} validation photos; probe trained on {len(fit_rows)} training photos, settings on {len(held)} held out")
    results: dict = {"model": args.model.name}

    # 1. Settings on held-out training photos (P@5 of the probe alone against content+style keywords).
    jh = Judge(tagger, frame.loc[held], colour[held])
    y_fit = targets(ids, fit_rows, len(words))
    grid = {}
    for d in DECAYS:
        _, curve = train_probe(x_all[fit_rows], y_fit, d, EPOCHS, watch=(x_all[held], jh.p5))
        for e, p in curve:
            grid[(d, e)] = p
        log(f"decay {d:g}: " + ", ".join(f"{e}: {p:.4f}" for e, p in curve))
    best_d, best_e = max(grid, key=grid.get)
    print(f"1. probe settings on {len(held)} held-out training photos: decay {best_d:g}, {best_e} epochs (P@5 {grid[(best_d, best_e)]:.4f})")
    results["grid"] = {f"{d:g}/{e}": p for (d, e), p in grid.items()}

    # 2. Refit on every training photo, score validation photos.
    probe, _ = train_probe(x_all[train], targets(ids, train, len(words)), best_d, best_e)
    x = x_all[val]
    judge = Judge(tagger, frame.loc[val], colour[val])
    g = tagger.scorers[tagger.family].scores(x, tagger.sampling)
    k = tagger.knn.scores(x)
    p = predict(probe, probe.mean, probe.std, x)
    ref_raw = combine([g, k])
    ref = judge.tables(ref_raw)
    raws = {"knn": k, "cgan+knn": ref_raw, "probe": p, "knn+probe": combine([k, p]),
            "cgan+probe": combine([g, p])}
    for w in WEIGHTS:
        raws[f"cgan+knn+{w:g}*probe"] = combine([g, k, p], [1, 1, w])
    rows = [judge.row(name, raw, None if name == "cgan+knn" else ref, maps=False) for name, raw in raws.items()]
    print_table(f"2. validation photos ({rows[0]['photos']} with content+style tags), differences from cgan+knn", rows)
    results["validation"] = rows
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\n{results['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
