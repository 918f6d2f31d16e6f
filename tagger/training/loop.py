"""Training a generator family on (photo features, word vector of one of its tags) pairs.

The loop is the same for every family (`tagger.generators`): shuffled pairs in mini-batches, the
learning-rate and momentum schedule, the family's own step (its losses and optimizers), optional
weight averaging of the generator. After every epoch the generator tags held-out photos with the
real tagging procedure and P@5 is logged; the best generator so far is kept. A checkpoint after
every epoch lets an interrupted run resume at the next epoch with nothing lost; it holds tensors
and plain values only and is read with `weights_only=True`, so a planted pickle cannot run code.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from embeddings.files import atomic_write
from embeddings.index import TagIndex
from pipelines.errors import TaggerError
from tagger.generators import GeneratorConfig, TrainConfig, TrainContext, Trainer, WordGenerator, family_for, get_family
from tagger.generators.base import learning_rate, momentum
from tagger.evaluation.metrics import precision_at_k, top_ids
from tagger.scoring.sampling import score_words
from tagger.scoring.voting import SamplingConfig


log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 2: the EMA generator as torch's AveragedModel; part of a run's cache key


@dataclass
class TrainState:
    """Everything a resumed run needs; saved after every epoch."""

    epoch: int = 0
    step: int = 0
    best_p5: float = -1.0
    best_epoch: int = 0
    log: list[dict] = field(default_factory=list)


def make_pairs(word_ids: list[list[int]]) -> np.ndarray:
    """(P, 2) array of (photo row, word id): each photo repeated once per tag, as in the paper."""
    rows = [(i, w) for i, ws in enumerate(word_ids) for w in ws]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def tag_table(pairs: np.ndarray, n_photos: int) -> np.ndarray:
    """(n_photos, T) word ids of each photo's tags, padded with -1, from its (photo row, word id) pairs."""
    counts = np.bincount(pairs[:, 0], minlength=n_photos)
    table = np.full((n_photos, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    order = np.argsort(pairs[:, 0], kind="stable")
    rows, words = pairs[order, 0], pairs[order, 1]
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    table[rows, slot] = words
    return table


def train_one_epoch(trainer: Trainer, features: torch.Tensor, pairs: torch.Tensor, config: TrainConfig, state: TrainState, *,
                    progress: bool = True, G_ema: AveragedModel | None = None) -> dict:
    """One pass over the shuffled pairs; returns the epoch's mean of every loss the family's step reports."""
    trainer.train()
    order = pairs[torch.randperm(len(pairs), generator=trainer.context.rng, device=pairs.device)]
    steps_per_epoch = math.ceil(len(order) / config.batch_size)
    sums: dict[str, float] = {}
    n = 0
    # mininterval: a log file gets a line every few seconds, not one per step.
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {state.epoch + 1}", unit="step", disable=not progress, leave=False, mininterval=5)
    for b in bar:
        if config.max_steps and state.step >= config.max_steps:
            break
        batch = order[b * config.batch_size : (b + 1) * config.batch_size]
        lr = learning_rate(config, state.step)
        mom = momentum(config, state.epoch + b / steps_per_epoch)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
                if "momentum" in group:
                    group["momentum"] = mom
        losses = trainer.step(features[batch[:, 0]], batch[:, 1], batch[:, 0])
        if G_ema is not None:
            G_ema.update_parameters(trainer.generator)
        state.step += 1
        n += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        if b % 20 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if not k.startswith("d_")} | {"lr": f"{lr:.2g}"})
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out.update(steps=n, lr=learning_rate(config, state.step), momentum=momentum(config, state.epoch + 1))
    return out


def validate(G: WordGenerator, features: np.ndarray, truth: list[set[int]], index: TagIndex, sampling: SamplingConfig, k: int = 5,
             prior: np.ndarray | None = None) -> float:
    """P@k of the real tagging procedure on held-out photos."""
    table = score_words(G, features, index, sampling, prior)
    return precision_at_k(top_ids(table, k), truth, k)


def train(
    features: np.ndarray,
    pairs: np.ndarray,
    targets: np.ndarray,
    index: TagIndex,
    generator_config: GeneratorConfig,
    config: TrainConfig,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    val: tuple[np.ndarray, list[set[int]]] | None = None,
    standardize_features: bool = False,
    work_dir: Path | None = None,
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
    prior: np.ndarray | None = None,
) -> tuple[WordGenerator, TrainState]:
    """Train a generator of the family whose config `generator_config` is; return the best generator (by
    validation P@5, else the last) and the run's state.

    features: (N, F) raw image features; pairs: (P, 2) rows of (photo row, word id); targets: (V, D)
    prepared word vectors that the index also holds. With `work_dir`, a checkpoint is written after
    every epoch and an existing one is resumed. `prior`: each word's share of the training photos, for the
    softmax term and the scorings that use it (default: counted from `pairs`).
    """
    torch.manual_seed(config.seed)
    family = get_family(family_for(generator_config))
    G = WordGenerator(generator_config).to(device)
    if standardize_features:
        # Statistics of the photos G trains on, never of held-out ones.
        used = features[np.unique(pairs[:, 0])]
        mean, std = used.mean(axis=0), used.std(axis=0)
        # The floor keeps a column that never varies in training (a rare word's neighbour votes) from
        # turning a held-out photo's first non-zero value into a huge input.
        G.set_feature_stats(torch.as_tensor(mean), torch.as_tensor(np.maximum(std, 1e-3)))
    if prior is None:  # the share of training photos that carry each word
        prior = np.bincount(pairs[:, 1], minlength=len(targets)) / max(len(np.unique(pairs[:, 0])), 1)
    rng = torch.Generator(device=device).manual_seed(config.seed)
    context = TrainContext(
        targets=torch.as_tensor(targets, dtype=torch.float32, device=device),
        log_prior=torch.as_tensor(np.log(np.maximum(prior, 1e-12)), dtype=torch.float32, device=device),
        rng=rng,
        tags=torch.as_tensor(tag_table(pairs, len(features)), device=device) if config.recon == "set" else None,
    )
    trainer = family.trainer(G, config, context)
    # The averaged generator is the one validated and kept; G itself keeps training.
    # torch's EMA; use_buffers: the feature standardization (set before training) travels with it.
    G_ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema else None
    state = TrainState()
    best_g = copy.deepcopy(G.state_dict())

    ckpt_path = work_dir / "checkpoint.pt" if work_dir else None
    if ckpt_path and ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
            trainer.load_state_dict(ckpt["trainer"])
            if G_ema is not None:
                G_ema.load_state_dict(ckpt["G_ema"])
        except Exception as e:  # a pickle with code in it, a truncated or foreign file: each fails its own way
            first = " ".join(str(e).split())[:200]
            raise TaggerError(f"{ckpt_path}: not a checkpoint this tagger wrote, not loaded ({first}); delete it to start over") from e
        rng.set_state(ckpt["rng"].cpu())
        torch.set_rng_state(ckpt["torch_rng"].cpu())  # dropout draws from the global generator
        state = TrainState(**ckpt["state"])
        best_g = ckpt["best_G"]
        log.info("resuming from %s after epoch %d (step %d)", ckpt_path, state.epoch, state.step)

    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    p = torch.as_tensor(pairs, dtype=torch.int64, device=device)
    kept = G_ema.module if G_ema is not None else G
    val_sampling = replace(sampling, seed=config.seed)
    if val is not None and len(val[0]) > config.val_photos:
        pick = np.random.default_rng(config.seed).choice(len(val[0]), config.val_photos, replace=False)
        val = (val[0][pick], [val[1][i] for i in pick])

    while state.epoch < config.epochs and not (config.max_steps and state.step >= config.max_steps):
        start = time.perf_counter()
        row = {"epoch": state.epoch + 1}
        row.update(train_one_epoch(trainer, x, p, config, state, progress=progress, G_ema=G_ema))
        row["val_p5"] = validate(kept, val[0], val[1], index, val_sampling, prior=prior) if val is not None else float("nan")
        row["seconds"] = time.perf_counter() - start
        state.epoch += 1
        state.log.append(row)
        score = row["val_p5"] if val is not None else state.epoch
        if score > state.best_p5:
            state.best_p5, state.best_epoch = float(score), state.epoch
            best_g = copy.deepcopy(kept.state_dict())
        p5 = "" if math.isnan(row["val_p5"]) else f" val P@5 {row['val_p5']:.4f}"  # nan: no validation photos
        losses = " ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in _BOOKKEEPING)
        log.info("epoch %d: %s%s (%.0f s)", state.epoch, losses, p5, row["seconds"])
        if ckpt_path:
            checkpoint = {"trainer": trainer.state_dict(), "G_ema": G_ema.state_dict() if G_ema is not None else None,
                          "rng": rng.get_state(), "torch_rng": torch.get_rng_state(), "state": asdict(state), "best_G": best_g}
            atomic_write(ckpt_path, lambda f: torch.save(checkpoint, f))
    G.load_state_dict(best_g)
    G.eval()
    if val is None:
        state.best_p5 = float("nan")
    return G, state


# Columns of the training log that are not a family's losses.
_BOOKKEEPING = ("epoch", "steps", "lr", "momentum", "val_p5", "seconds")


def write_log(log: list[dict], csv_path: Path, png_path: Path | None = None) -> None:
    """The per-epoch log as CSV and, optionally, a PNG of the losses, discriminator outputs and validation P@5."""
    if not log:
        return
    keys = list(log[0])
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(log)
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    losses = [k for k in keys if k not in _BOOKKEEPING and not k.startswith("d_")]
    outputs = [k for k in keys if k.startswith("d_")]  # discriminator outputs, 0..1
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for k in losses:
        axes[0].plot(epochs, [r[k] for r in log], label=k)
    axes[0].set_title("losses")
    for k in outputs:
        axes[1].plot(epochs, [r[k] for r in log], label=k)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("discriminator outputs" if outputs else "(no discriminator)")
    axes[2].plot(epochs, [r["val_p5"] for r in log], marker="o", label="val P@5")
    axes[2].set_title("validation P@5")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
