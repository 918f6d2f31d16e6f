"""Training the cGAN on (image features, word vector of one of its tags) pairs.

The default preset is the paper's schedule: SGD, mini-batches of 100, learning rate 0.1 divided by
1.00004 every update down to 1e-6, momentum rising linearly from 0.5 to 0.7, dropout 0.5, one D
update then one G update with the non-saturating loss -log D(G(z, x)). Other presets change what
the paper left open (optimizer, normalization, smoothing, a reconstruction term); each is named
and reported, never silently mixed into "paper".

After every epoch the generator tags held-out photos with the real tagging procedure and P@5 is
logged; the best generator so far is kept. A checkpoint after every epoch lets an interrupted run
resume at the next epoch with nothing lost.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from embeddings.index import TagIndex
from tagger.gan import Discriminator, GANConfig, Generator
from tagger.metrics import precision_at_k, top_ids
from tagger.sampling import score_words
from tagger.voting import SamplingConfig

# Reconstruction terms beside the adversarial loss (TrainConfig.recon).
RECONS = ("pair", "set", "softmax")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "sgd"  # "sgd" (the paper) or "adam"
    lr: float = 0.1
    lr_decay: float = 1.00004  # the learning rate is divided by this after every update
    lr_min: float = 1e-6
    momentum: float = 0.5  # SGD momentum at the start ...
    momentum_final: float = 0.7  # ... rising linearly to this ...
    momentum_epochs: int = 10  # ... over this many epochs
    adam_betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 100
    epochs: int = 10
    max_steps: int = 0  # stop after this many updates in all (0: no limit)
    d_steps: int = 1  # discriminator updates per generator update
    label_smoothing: float = 0.0  # real targets for D are 1 - this (one-sided smoothing)
    recon_weight: float = 0.0  # weight of the reconstruction term beside the adversarial loss of G
    # "pair": 1 - cos(G(z, x), the pair's word); "set": `set_samples` samples of the photo against all
    # its tags, each tag reached by its closest sample and each sample close to some tag (Chamfer);
    # "softmax": cross-entropy of the pair's word among all vocabulary words, each scored by its cosine
    # to G(z, x) / `recon_temperature` plus `recon_prior` x log(word frequency); with several output
    # heads (GANConfig.heads), under the mean of the heads' softmaxes. Unlike "pair" it also pushes G
    # away from the words the photo does not have, which is what the look-up ranks.
    recon: str = "pair"
    recon_temperature: float = 0.1
    # The frequency term (logit adjustment, Menon et al. 2021) lets the cosine model how much more
    # likely a tag is for this photo than in general: the scoring's prior ** prior_power adds the
    # frequency back when tagging.
    recon_prior: float = 1.0
    set_samples: int = 8
    # With recon "set": weight of a mode-seeking term (Mao et al. 2019) that rewards a photo's samples for
    # being as far apart as their noise vectors, against G ignoring its noise; 0 = off.
    diversity: float = 0.0
    ema: float = 0.0  # G's weights averaged with this decay after every update; 0 = off
    seed: int = 0
    val_photos: int = 1000  # validation P@5 on at most this many held-out photos per epoch

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WordSpaceConfig:
    """How word2vec vectors are prepared before G learns to generate them (and the index holds them)."""

    center: bool = False  # subtract the vocabulary mean: pulls "hub" words away from every query
    normalize: bool = False  # scale every word vector to unit length

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    gan: GANConfig = field(default_factory=GANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    words: WordSpaceConfig = field(default_factory=WordSpaceConfig)
    standardize_features: bool = False  # scale image features to zero mean, unit variance per dimension
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how the bundle tags by default
    description: str = ""


PRESETS: dict[str, Preset] = {
    "paper": Preset(description="Mirza & Osindero 2014 as written: SGD 0.1, momentum 0.5->0.7, dropout 0.5"),
    "adam": Preset(
        gan=GANConfig(unit_output=True, heads=5),
        train=TrainConfig(optimizer="adam", lr=2e-4, lr_decay=1.0, label_smoothing=0.1, recon="softmax", recon_weight=1.0,
                          epochs=4),
        words=WordSpaceConfig(center=True, normalize=True),
        standardize_features=True,
        # Each sample's nearest words share one vote by a softmax of cosine / 0.1, as in training; the
        # prior to the power 1 puts back the word frequency that the training loss took out. 20 samples
        # visit each of the 5 heads 4 times. 5 heads, not the 10 tried first, keep the half-precision
        # bundle under 20 MB (the last layer grows by 1 MB per head).
        sampling=SamplingConfig(scoring="softmax", temperature=0.1, prior_power=1.0, neighbours=100, samples=20),
        description="Adam 2e-4, standardized features, centred unit word vectors, smoothing 0.1; G with unit-length "
        "output and 5 heads picked by the noise, a mixture-of-softmaxes reconstruction term (x1); 20 samples, "
        "100 nearest words each, each sample's softmax votes times prior",
    ),
}


@dataclass
class TrainState:
    """Everything a resumed run needs; saved after every epoch."""

    epoch: int = 0
    step: int = 0
    best_p5: float = -1.0
    best_epoch: int = 0
    log: list[dict] = field(default_factory=list)


def prepare_word_vectors(vectors: np.ndarray, config: WordSpaceConfig) -> np.ndarray:
    out = np.asarray(vectors, dtype=np.float32).copy()
    if config.center:
        out -= out.mean(axis=0, keepdims=True)
    if config.normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def make_pairs(word_ids: list[list[int]]) -> np.ndarray:
    """(P, 2) array of (photo row, word id): each photo repeated once per tag, as in the paper."""
    rows = [(i, w) for i, ws in enumerate(word_ids) for w in ws]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def learning_rate(config: TrainConfig, step: int) -> float:
    if config.optimizer != "sgd":
        return config.lr
    # In log space: 1.00004**step overflows a float long after the floor is reached.
    return max(config.lr * math.exp(-step * math.log(config.lr_decay)), config.lr_min)


def momentum(config: TrainConfig, epoch_float: float) -> float:
    t = min(epoch_float / max(config.momentum_epochs, 1), 1.0)
    return config.momentum + t * (config.momentum_final - config.momentum)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.adam_betas)
    raise ValueError(f"unknown optimizer {config.optimizer!r} (use 'sgd' or 'adam')")


def tag_table(pairs: np.ndarray, n_photos: int) -> np.ndarray:
    """(n_photos, T) word ids of each photo's tags, padded with -1, from its (photo row, word id) pairs."""
    counts = np.bincount(pairs[:, 0], minlength=n_photos)
    table = np.full((n_photos, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    order = np.argsort(pairs[:, 0], kind="stable")
    rows, words = pairs[order, 0], pairs[order, 1]
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    table[rows, slot] = words
    return table


def set_loss(samples: torch.Tensor, tags: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Chamfer distance in cosine between each photo's samples (N, M, D) and its tag ids (N, T; -1 = none)."""
    mask = tags >= 0
    words = F.normalize(targets[tags.clamp(min=0)], dim=-1)  # (N, T, D)
    cos = F.normalize(samples, dim=-1) @ words.transpose(1, 2)  # (N, M, T)
    cos = cos.masked_fill(~mask[:, None, :], -2.0)
    cover = ((1 - cos.max(dim=1).values) * mask).sum() / mask.sum()  # every tag has a sample near it
    precise = (1 - cos.max(dim=2).values).mean()  # every sample is near one of the tags
    return (cover + precise) / 2


def mixture_loss(heads: torch.Tensor, words: torch.Tensor, targets: torch.Tensor, temperature: float,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each row's word under the mean of its heads' softmaxes over the vocabulary.

    heads (N, K, D); each head scores every word by cosine / temperature (+ bias, e.g. log frequency).
    With one head this is the plain softmax; with several, a mixture of softmaxes (Yang et al. 2018),
    which can put its mass on words that no single point of the word space ranks first together.
    """
    logits = F.normalize(heads, dim=-1) @ F.normalize(targets, dim=-1).T / temperature  # (N, K, V)
    if bias is not None:
        logits = logits + bias
    mixed = torch.logsumexp(F.log_softmax(logits, dim=-1), dim=1) - math.log(heads.shape[1])  # (N, V)
    return F.nll_loss(mixed, words)


def mode_seeking_loss(samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """1 / (mean over pairs of one photo's samples of |G(z1) - G(z2)| / |z1 - z2|): small when G follows its noise.

    samples (N, M, D) in cosine terms (unit rows), noise (N, M, nz), as in Mao et al. (2019), "Mode seeking GANs".
    """
    u = F.normalize(samples, dim=-1)
    i, j = torch.triu_indices(samples.shape[1], samples.shape[1], offset=1, device=samples.device)
    # sqrt of a clamped square, not cdist: its gradient is finite when two samples coincide.
    out = ((u[:, i] - u[:, j]).pow(2).sum(-1).clamp(min=1e-12)).sqrt()
    gap = (noise[:, i] - noise[:, j]).norm(dim=-1)
    ratio = (out / gap.clamp(min=1e-6)).mean()
    return 1 / (ratio + 1e-5)


def train_one_epoch(
    G: Generator,
    D: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    features: torch.Tensor,
    targets: torch.Tensor,
    pairs: torch.Tensor,
    config: TrainConfig,
    state: TrainState,
    rng: torch.Generator,
    progress: bool = True,
    tags: torch.Tensor | None = None,
    G_ema: Generator | None = None,
    log_prior: torch.Tensor | None = None,
) -> dict:
    """One pass over the shuffled pairs; returns the epoch's mean losses and D outputs."""
    G.train()
    D.train()
    order = pairs[torch.randperm(len(pairs), generator=rng)]
    steps_per_epoch = math.ceil(len(order) / config.batch_size)
    sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0}
    n = 0
    real_target = 1.0 - config.label_smoothing
    # mininterval: a log file gets a line every few seconds, not one per step.
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {state.epoch + 1}", unit="step", disable=not progress, leave=False, mininterval=5)
    for b in bar:
        if config.max_steps and state.step >= config.max_steps:
            break
        batch = order[b * config.batch_size : (b + 1) * config.batch_size]
        x = features[batch[:, 0]]
        w = targets[batch[:, 1]]
        xn = G.normalize(x)
        lr = learning_rate(config, state.step)
        mom = momentum(config, state.epoch + b / steps_per_epoch)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
                if "momentum" in group:
                    group["momentum"] = mom

        for _ in range(config.d_steps):
            with torch.no_grad():
                fake = G(G.sample_noise(len(x), rng), x)
            d_real, d_fake = D(w, xn), D(fake, xn)
            loss_d = F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, real_target)) + F.binary_cross_entropy_with_logits(
                d_fake, torch.zeros_like(d_fake)
            )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

        use_set = config.recon_weight and config.recon == "set"
        if use_set:  # the first of each photo's samples is also the one D judges
            noise = G.sample_noise(len(x) * config.set_samples, rng).view(len(x), config.set_samples, -1)
            samples = G.generate(noise, x)
            fake = samples[:, 0]
        elif config.recon == "softmax":
            noise = G.sample_noise(len(x), rng)
            heads = G.all_heads(noise, x)  # every head, for the mixture; D judges the noise's own
            fake = G.pick(heads, noise)
        else:
            fake = G(G.sample_noise(len(x), rng), x)
        d_gen = D(fake, xn)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))  # non-saturating: -log D(G(z))
        if use_set:
            loss_g = loss_g + config.recon_weight * set_loss(samples, tags[batch[:, 0]], targets)
            if config.diversity:
                loss_g = loss_g + config.diversity * mode_seeking_loss(samples, noise)
        elif config.recon_weight and config.recon == "softmax":
            loss_g = loss_g + config.recon_weight * mixture_loss(heads, batch[:, 1], targets, config.recon_temperature,
                                                                 config.recon_prior * log_prior if config.recon_prior else None)
        elif config.recon_weight:
            loss_g = loss_g + config.recon_weight * (1 - F.cosine_similarity(fake, w, dim=1)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if G_ema is not None:
            with torch.no_grad():
                for avg, p in zip(G_ema.parameters(), G.parameters()):
                    avg.lerp_(p, 1 - config.ema)

        state.step += 1
        n += 1
        sums["loss_d"] += loss_d.item()
        sums["loss_g"] += loss_g.item()
        sums["d_real"] += torch.sigmoid(d_real).mean().item()
        sums["d_fake"] += torch.sigmoid(d_fake).mean().item()
        if b % 20 == 0:
            bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}", lr=f"{lr:.2g}")
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out.update(steps=n, lr=learning_rate(config, state.step), momentum=momentum(config, state.epoch + 1))
    return out


def validate(G: Generator, features: np.ndarray, truth: list[set[int]], index: TagIndex, sampling: SamplingConfig, k: int = 5,
             prior: np.ndarray | None = None) -> float:
    """P@k of the real tagging procedure on held-out photos."""
    table = score_words(G, features, index, sampling, prior)
    return precision_at_k(top_ids(table, k), truth, k)


def train(
    features: np.ndarray,
    pairs: np.ndarray,
    targets: np.ndarray,
    index: TagIndex,
    gan_config: GANConfig,
    config: TrainConfig,
    sampling: SamplingConfig = SamplingConfig(),
    val: tuple[np.ndarray, list[set[int]]] | None = None,
    standardize_features: bool = False,
    work_dir: Path | None = None,
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
    prior: np.ndarray | None = None,
) -> tuple[Generator, TrainState]:
    """Train G and D; return the best generator (by validation P@5, else the last) and the run's state.

    features: (N, F) raw image features; pairs: (P, 2) rows of (photo row, word id); targets: (V, D)
    prepared word vectors that the index also holds. With `work_dir`, a checkpoint is written after
    every epoch and an existing one is resumed. `prior`: each word's share of the training photos, for the
    softmax term and the scorings that use it (default: counted from `pairs`).
    """
    torch.manual_seed(config.seed)
    G, D = Generator(gan_config).to(device), Discriminator(gan_config).to(device)
    if standardize_features:
        # Statistics of the photos G trains on, never of held-out ones.
        used = features[np.unique(pairs[:, 0])]
        mean, std = used.mean(axis=0), used.std(axis=0)
        G.set_feature_stats(torch.as_tensor(mean), torch.as_tensor(np.maximum(std, 1e-6)))
    opt_g, opt_d = make_optimizer(G.parameters(), config), make_optimizer(D.parameters(), config)
    if config.recon not in RECONS:
        raise ValueError(f"recon must be one of {', '.join(map(repr, RECONS))}, got {config.recon!r}")
    if prior is None:  # the share of training photos that carry each word
        prior = np.bincount(pairs[:, 1], minlength=len(targets)) / max(len(np.unique(pairs[:, 0])), 1)
    if config.diversity and not (config.recon == "set" and config.recon_weight):
        raise ValueError("diversity needs recon 'set' and a recon_weight: it compares a photo's set of samples")
    # The averaged generator is the one validated and kept; G itself keeps training.
    G_ema = copy.deepcopy(G) if config.ema else None
    rng = torch.Generator(device=device).manual_seed(config.seed)
    state = TrainState()
    best_g = copy.deepcopy(G.state_dict())

    ckpt_path = work_dir / "checkpoint.pt" if work_dir else None
    if ckpt_path and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        if G_ema is not None:
            G_ema.load_state_dict(ckpt["G_ema"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        rng.set_state(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])  # dropout draws from the global generator
        state = TrainState(**ckpt["state"])
        best_g = ckpt["best_G"]
        if progress:
            print(f"resuming from {ckpt_path} after epoch {state.epoch} (step {state.step})")

    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    t = torch.as_tensor(targets, dtype=torch.float32, device=device)
    p = torch.as_tensor(pairs, dtype=torch.int64, device=device)
    tags = torch.as_tensor(tag_table(pairs, len(features)), device=device) if config.recon == "set" else None
    log_prior = torch.as_tensor(np.log(np.maximum(prior, 1e-12)), dtype=torch.float32, device=device)
    kept = G_ema if G_ema is not None else G
    val_sampling = replace(sampling, seed=config.seed)
    if val is not None and len(val[0]) > config.val_photos:
        pick = np.random.default_rng(config.seed).choice(len(val[0]), config.val_photos, replace=False)
        val = (val[0][pick], [val[1][i] for i in pick])

    while state.epoch < config.epochs and not (config.max_steps and state.step >= config.max_steps):
        start = time.perf_counter()
        row = {"epoch": state.epoch + 1}
        row.update(train_one_epoch(G, D, opt_g, opt_d, x, t, p, config, state, rng, progress, tags, G_ema, log_prior))
        row["val_p5"] = validate(kept, val[0], val[1], index, val_sampling, prior=prior) if val is not None else float("nan")
        row["seconds"] = time.perf_counter() - start
        state.epoch += 1
        state.log.append(row)
        score = row["val_p5"] if val is not None else state.epoch
        if score > state.best_p5:
            state.best_p5, state.best_epoch = float(score), state.epoch
            best_g = copy.deepcopy(kept.state_dict())
        if progress:
            p5 = "" if math.isnan(row["val_p5"]) else f" val P@5 {row['val_p5']:.4f}"  # nan: no validation photos
            print(
                f"epoch {state.epoch}: loss_d {row['loss_d']:.3f} loss_g {row['loss_g']:.3f} "
                f"D(real) {row['d_real']:.2f} D(fake) {row['d_fake']:.2f}{p5} ({row['seconds']:.0f} s)"
            )
        if ckpt_path:
            _atomic_save(
                {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict() if G_ema is not None else None,
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                 "rng": rng.get_state(), "torch_rng": torch.get_rng_state(), "state": asdict(state), "best_G": best_g},
                ckpt_path,
            )
    G.load_state_dict(best_g)
    G.eval()
    if val is None:
        state.best_p5 = float("nan")
    return G, state


def write_log(log: list[dict], csv_path: Path, png_path: Path | None = None) -> None:
    """The per-epoch log as CSV and, optionally, a PNG of losses, D outputs and validation P@5."""
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
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["loss_d"] for r in log], label="D loss")
    axes[0].plot(epochs, [r["loss_g"] for r in log], label="G loss")
    axes[0].set_title("losses")
    axes[1].plot(epochs, [r["d_real"] for r in log], label="D(real)")
    axes[1].plot(epochs, [r["d_fake"] for r in log], label="D(fake)")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("discriminator outputs")
    axes[2].plot(epochs, [r["val_p5"] for r in log], marker="o", label="val P@5")
    axes[2].set_title("validation P@5")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
