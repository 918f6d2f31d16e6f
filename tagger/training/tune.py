"""Retrain the backbone's last blocks, with a word layer, on the training photos' tags (`tagger train --tune-blocks N`).

The backbone's ImageNet features were never trained on what Flickr owners tag; its last blocks can
be, on a CPU: the photos go through the frozen network once (the 7x7 maps entering the last blocks
are kept, and cached by the photos' features and the weights), then the last blocks, the head conv
and a Linear layer to the vocabulary's words are trained with binary cross-entropy on each photo's
words (positives weighted up by the square root of their rarity), the rest frozen. A fifth of the
training photos is held out to pick the epoch: the one whose retrained features and word layer tag
them best (P@5 of kNN on the new features plus the word layer, as the bundle will use them).

What it gives: the retrained tail (an overlay on the backbone's weights, the bundle's
backbone.safetensors), the word layer (the `classifier` method) and every photo's new features, on
which kNN and the generator are then trained as before. bench/study_finetune.py measured it first:
the word layer helps, the features alone tag with kNN as the old ones did.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embeddings.checks import check_fields
from embeddings.files import content_hash
from pipelines.backbones import create_backbone
from pipelines.backbones.tail import Tail, save_overlay, tail_features
from pipelines.features import trunk_activations
from tagger.evaluation.metrics import precision_at_k, top_ids
from tagger.scoring.classifier import WordClassifier
from tagger.scoring.knn import KNNTagger
from tagger.scoring.scorers import combine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig:
    blocks: int = 2  # the last blocks retrained (Lite0: 2 are its last 192-channel block and the 320-channel one)
    epochs: int = 6  # at most; the best on held-out training photos is kept
    lr: float = 3e-4  # the retrained blocks'
    classifier_lr: float = 1e-3  # the word layer's
    weight_decay: float = 1e-4
    dropout: float = 0.2  # on the features, before the word layer
    batch_size: int = 64
    held_share: float = 0.2  # of the tagged training photos, held out to choose the epoch

    def __post_init__(self):
        check_fields(self)
        if self.blocks < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"blocks, epochs and batch_size must be at least 1 (got {self.blocks}, {self.epochs}, {self.batch_size})")
        if not (self.lr > 0 and self.classifier_lr > 0 and self.weight_decay >= 0):
            raise ValueError("the learning rates must be above 0 and the weight decay at least 0")
        if not (0 <= self.dropout < 1 and 0 < self.held_share < 1):
            raise ValueError(f"dropout must be in [0, 1) and held_share in (0, 1) (got {self.dropout}, {self.held_share})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Tuned:
    overlay: Path  # the retrained tail's tensors, an overlay on the backbone's weights (pipelines/backbones/tail.py)
    classifier: WordClassifier
    features: np.ndarray  # (N, D) every photo's features through the retrained tail; NaN rows for photos that did not decode
    curve: list[tuple[int, float]]  # (epoch, held-out P@5 of kNN + word layer)
    best_epoch: int

    def summary(self, config: TuneConfig) -> dict:
        return {**config.to_dict(), "best_epoch": self.best_epoch, "held_p5": [[e, round(p, 4)] for e, p in self.curve]}


class _WithWords(torch.nn.Module):
    def __init__(self, tail: Tail, words: int, dropout: float):
        super().__init__()
        self.tail, self.drop = tail, torch.nn.Dropout(dropout)
        self.words = torch.nn.Linear(tail.conv_head.out_channels, words)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.words(self.drop(self.tail(x)))


def tune(paths: list, ids: list[list[int]], train_rows: np.ndarray, features: np.ndarray, n_words: int, backbone: str,
         weights: str | None, config: TuneConfig, cache: Path, device: torch.device, seed: int = 0,
         num_workers: int | None = None, half: bool = False) -> Tuned:
    """Retrain `backbone`'s last blocks and a word layer on the tagged `train_rows`; `features` are the photos'
    features under the weights as they are (they key the activation cache: the same photos give the same).

    half: round the retrained tensors to float16, as the bundle will store them, before the features are
    computed: what the rest of training sees is exactly what tagging will run.
    """
    t0 = time.perf_counter()
    net = create_backbone(backbone, weights=weights, device=device, runtime="torch")
    cache.mkdir(parents=True, exist_ok=True)
    acts_key = _key(content_hash(np.ascontiguousarray(features).tobytes()), net.weights_id, config.blocks)
    acts, ok = _activations(net, paths, config.blocks, cache / f"acts-{acts_key}.npz", num_workers)
    log.info("tune: %s activations %s in %.0f s", f"{int(ok.sum()):,}", acts.shape[1:], time.perf_counter() - t0)
    changed = np.flatnonzero(np.isfinite(features).all(axis=1) & ~ok)
    if len(changed):
        raise ValueError(f"{paths[changed[0]]}: decoded for its features but not now (changed while training?); "
                         f"{len(changed)} such photos: train again")

    rows = np.array([i for i in train_rows if ids[i] and ok[i]], dtype=np.int64)
    if len(rows) < 10:
        raise ValueError(f"only {len(rows)} training photos with tags: too few to retrain the backbone's last blocks on")
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(rows, max(1, int(len(rows) * config.held_share)), replace=False))
    fit_rows = np.setdiff1d(rows, held)
    run_key = _key(acts_key, content_hash(json.dumps([ids[i] for i in rows]).encode()), n_words, config.to_dict(), seed)
    overlay, layer, meta = cache / f"tail-{run_key}.safetensors", cache / f"words-{run_key}.safetensors", cache / f"run-{run_key}.json"
    tail = Tail(net.model, config.blocks).to(device)
    if not (overlay.is_file() and layer.is_file() and meta.is_file()):
        model, curve, best = _train(tail, acts, ids, fit_rows, held, n_words, config, device, seed)
        save_overlay(model.tail.overlay(), overlay, backbone)
        WordClassifier(model.words.weight.detach().cpu().numpy(), model.words.bias.detach().cpu().numpy()).save(layer)
        meta.write_text(json.dumps({"curve": curve, "best_epoch": best}))
    from safetensors.torch import load_file

    state = load_file(str(overlay))
    words = WordClassifier.load(layer)
    if half:
        state = {k: v.half() for k, v in state.items()}
        overlay = save_overlay(state, cache / f"tail-{run_key}-half.safetensors", backbone)
        words = WordClassifier(words.weight.astype(np.float16).astype(np.float32), words.bias.astype(np.float16).astype(np.float32))
        state = {k: v.float() for k, v in state.items()}
    tail.blocks.load_state_dict(_block_state(state, tail.first))
    tail.conv_head.load_state_dict({k.removeprefix("_conv_head."): v for k, v in state.items() if k.startswith("_conv_head.")})
    done = json.loads(meta.read_text())
    out = np.full((len(paths), tail.conv_head.out_channels), np.nan, dtype=np.float32)
    out[ok] = tail_features(tail, acts[ok], device=device)
    log.info("tune: best epoch %d of %d (held-out P@5 %s), %.0f s in all", done["best_epoch"], config.epochs,
             ", ".join(f"{p:.4f}" for _, p in done["curve"]), time.perf_counter() - t0)
    return Tuned(overlay, words, out, [tuple(c) for c in done["curve"]], done["best_epoch"])


def _block_state(state: dict, first: int) -> dict:
    """An overlay's block tensors (`_blocks.15.x`) under the tail's own names (`1.x` when its first block is 14)."""
    out = {}
    for k, v in state.items():
        if k.startswith("_blocks."):
            _, index, rest = k.split(".", 2)
            out[f"{int(index) - first}.{rest}"] = v
    return out


def _activations(net, paths, blocks: int, file: Path, num_workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    if file.is_file():
        with np.load(file) as z:
            return z["acts"], z["ok"]
    acts, _, ok = trunk_activations(net, paths, blocks, num_workers=num_workers)
    tmp = file.with_name(file.name + ".tmp.npz")
    np.savez(tmp, acts=acts, ok=ok)  # uncompressed: read back whole in seconds
    tmp.replace(file)
    return acts, ok


def _train(tail: Tail, acts: np.ndarray, ids, fit_rows, held, n_words: int, config: TuneConfig, device, seed: int):
    torch.manual_seed(seed)
    model = _WithWords(tail, n_words, config.dropout).to(device)
    y = torch.zeros((len(fit_rows), n_words))
    for r, i in enumerate(fit_rows):
        y[r, ids[i]] = 1
    pos_weight = (1 / y.mean(0).clamp(min=1e-4)).sqrt().to(device)  # rare words count more, not as much as their rarity
    opt = torch.optim.AdamW([{"params": model.tail.parameters(), "lr": config.lr},
                             {"params": model.words.parameters(), "lr": config.classifier_lr}], weight_decay=config.weight_decay)
    x_fit = torch.from_numpy(acts[fit_rows])
    truth = [set(ids[i]) for i in held]
    curve, best = [], (-1.0, 0, None)
    for epoch in range(1, config.epochs + 1):
        t = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(fit_rows)).split(config.batch_size):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(model(x_fit[idx].to(device).float()), y[idx].to(device), pos_weight=pos_weight).backward()
            opt.step()
        model.eval()
        f_fit, f_held = tail_features(model.tail, acts[fit_rows], device=device), tail_features(model.tail, acts[held], device=device)
        knn = KNNTagger.fit(f_fit, [ids[i] for i in fit_rows], n_words, seed=seed)
        with torch.no_grad():
            words = torch.sigmoid(model.words(torch.from_numpy(f_held).to(device))).cpu().numpy()
        p5 = precision_at_k(top_ids(combine([knn.scores(f_held), words]), 5), truth, 5)
        curve.append((epoch, float(p5)))
        log.info("tune: epoch %d: held-out P@5 %.4f (%.0f s)", epoch, p5, time.perf_counter() - t)
        if p5 > best[0]:
            best = (p5, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return model, curve, best[1]


def _key(*parts) -> str:
    return content_hash(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=10)
