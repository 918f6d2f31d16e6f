"""`tagger train LIB --from MODEL`: a bundle grown from another one on a photo library's own keywords.

The new bundle starts from the base bundle's word space, vocabulary, generator and kNN memory, and:

- adds the library's own words (canonical forms on `min_count` or more of its training photos that
  the base has no vector for), each placed at the mean of the vectors of the known words it shares
  photos with, weighted by how many (`place_words`: the bundle keeps word2vec's vectors, not the
  model gensim's vocabulary update needs);
- adds the library's training photos with their keywords to the kNN memory (projected by the base's
  PCA, so the base's photos stay as they were);
- widens the generator's condition by the new words' neighbour-vote columns (their weights start at
  zero, so the grown generator first tags exactly as the base did) and fine-tunes it on the
  library's (photo, keyword) pairs with the softmax over the vocabulary that every preset's training
  adds, and on each photo's rejected tags (`tagger:Rejected` of its sidecar or its own XMP) with an
  unlikelihood term: the bundle keeps no discriminator or encoder, so no family's adversarial or KL
  term can go on, and the generator, which every family shares, learns the same way in all of them;
  the epoch kept is the best on the library's validation photos, the base generator (epoch 0) included;
- calibrates on the library's validation photos, or keeps the base's calibration when they are too few;
- scores the new bundle and the base on the library's held-out photos (`Comparison`): when the new
  one is worse, the run says so and the base stays the recommended model.

Features come from the base bundle's own backbone and weights: the kNN memory and the generator
were made on them.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embeddings.imagenet import ClassWords
from embeddings.kinds import Kind, WordKinds
from embeddings.tags import Vocabulary
from embeddings.word2vec import WordVectors
from embeddings.wordnet import WordNetMissing
from pipelines.cache import default_cache_dir
from pipelines.datasets import DatasetError, check_photos, count_untagged, read_dataset, split_ids
from pipelines.device import choose_device
from pipelines.errors import OptionError
from pipelines.features import FeatureConfig, extract_features
from pipelines.keywords import KeywordError, embedded_fields, read_sidecar, sidecar_path
from tagger.bundle import save
from tagger.scoring.classifier import WordClassifier
from tagger.evaluation.metrics import precision_at_k, top_ids
from tagger.generators import WordGenerator
from tagger.generators.losses import mixture_loss, unlikelihood_loss
from tagger.model import Tagger
from tagger.scoring.condition import build_condition
from tagger.scoring.evidence import Evidence
from tagger.scoring.knn import KNNTagger
from tagger.scoring.options import TagOptions
from tagger.scoring.scorers import word_prior
from tagger.training.fit import MIN_CALIBRATION_PHOTOS, calibrate_and_choose
from tagger.training.loop import validate
from tagger.training.summary import TrainingSummary

log = logging.getLogger(__name__)

# `--from auto`: a library with fewer tagged photos than this starts from the shipped model; one this big
# is trained on its own, as the shipped model itself was trained on 9,620 photos.
AUTO_FROM_PHOTOS = 2000


@dataclass(frozen=True)
class ExtendConfig:
    min_count: int = 3  # a library word on fewer training photos is not added
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # the library's train / val / test shares, by photo id
    split_seed: int = 0
    seed: int = 0
    epochs: int = 6  # passes over the library's (photo, keyword) pairs
    lr: float = 1e-4  # Adam's: a tenth of the presets', so a few hundred photos move the generator, not replace it
    batch_size: int = 64
    reject_weight: float = 1.0  # weight of the unlikelihood term of rejected tags beside the keywords' softmax
    # A retrained backbone's word layer (tagger.scoring.classifier) is fine-tuned too: full-batch passes over the
    # library's photos, binary cross-entropy on the keywords, a rejected tag's term weighted classifier_reject_weight.
    classifier_epochs: int = 60
    classifier_lr: float = 1e-3
    classifier_reject_weight: float = 20.0
    # Each library photo counts this many times in the word frequencies the tagging prior and the training
    # term use: the owner's own frequencies, not the base's, are what the library's photos have.
    prior_weight: float = 1.0
    half: bool = False
    feature_batch_size: int = 64
    num_workers: int | None = None
    device: str | None = None
    runtime: str | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)

    def __post_init__(self):
        if self.min_count < 1 or self.epochs < 0 or self.batch_size < 1:
            raise OptionError("min_count and batch_size must be 1 or more, epochs 0 or more")
        if not (self.lr > 0 and self.reject_weight >= 0 and self.prior_weight > 0):
            raise OptionError("lr and prior_weight must be above 0, reject_weight 0 or more")
        if self.classifier_epochs < 0 or not (self.classifier_lr > 0 and self.classifier_reject_weight >= 0):
            raise OptionError("classifier_epochs and classifier_reject_weight must be 0 or more, classifier_lr above 0")


@dataclass
class Comparison:
    """The new bundle and the base on the library's held-out photos, each by its default method."""

    photos: int = 0  # held-out photos with an owner tag among the new bundle's words
    split: str = "test"  # which split they are (val when the split has no test share)
    new_p5: float = math.nan
    base_p5: float = math.nan

    @property
    def worse(self) -> bool:
        return self.photos > 0 and self.new_p5 < self.base_p5


@dataclass
class Extended:
    """What `extend` made: the new tagger, its summary (saved in the bundle) and the comparison with the base."""

    tagger: Tagger
    summary: TrainingSummary
    comparison: Comparison
    new_words: list[str]
    rejected: int  # (photo, word) pairs the owner rejected, among the training photos, learnt as negatives


def auto_base(frame_or_count) -> bool:
    """`--from auto`'s rule: start from the shipped model when the library has fewer than AUTO_FROM_PHOTOS tagged photos."""
    n = frame_or_count if isinstance(frame_or_count, int) else len(frame_or_count) - count_untagged(frame_or_count)
    return n < AUTO_FROM_PHOTOS


def rejected_tags(frame: pd.DataFrame) -> list[list[str]]:
    """Each photo's tags its owner rejected: `tagger:Rejected` of its XMP sidecar and of its own XMP."""
    out = []
    for path in frame["path"]:
        found = []
        try:
            found += read_sidecar(sidecar_path(path)).rejected
        except KeywordError as e:
            log.warning("%s", e)  # a broken sidecar rejects nothing; tagging says so too
        found += embedded_fields(path).rejected
        out.append(found)
    return out


def place_words(new: list[str], lists: list[list[str]], known: WordVectors) -> tuple[list[str], np.ndarray]:
    """Vectors for `new` words: the mean of the known words' vectors over the photos they share, weighted by
    how many. A word that shares photos only with other new words is placed after them (a second pass); one
    that shares none with any placed word gets no vector and is left out. Returns the words placed and their vectors."""
    together: dict[str, Counter] = {w: Counter() for w in new}
    for tags in lists:
        present = [w for w in tags if w in together]
        for w in present:
            together[w].update(t for t in tags if t != w)
    placed: dict[str, np.ndarray] = {}
    for _ in range(2):
        for w in new:
            if w in placed:
                continue
            pairs = [(known[t] if t in known else placed[t], n) for t, n in together[w].items() if t in known or t in placed]
            if pairs:
                weights = np.array([n for _, n in pairs], dtype=np.float32)
                placed[w] = (np.stack([v for v, _ in pairs]) * weights[:, None]).sum(axis=0) / weights.sum()
    words = [w for w in new if w in placed]
    return words, np.array([placed[w] for w in words], dtype=np.float32).reshape(len(words), known.dim)


def grow_vocabulary(base: Vocabulary, new: list[str], base_photos: int, counts: Counter, photos: int, weight: float) -> Vocabulary:
    """The base vocabulary with `new` words after its own and every word's count raised by its library count
    (`counts` over `photos` library photos, each counting `weight` times), so the prior is base + library."""
    words = base.words + [w for w in new if w not in base]
    values = np.concatenate([base.counts, np.zeros(len(words) - len(base), np.int64)]).astype(np.float64)
    for i, w in enumerate(words):
        values[i] += weight * counts.get(w, 0)
    canonical = {**{w: w for w in new}, **base.canonical}
    return Vocabulary(words, np.rint(values).astype(np.int64), canonical, base.config, base.stoplist)


def grow_kinds(base: WordKinds | None, words: list[str], new: list[str], warnings: list[str]) -> WordKinds | None:
    """The word kinds of the grown vocabulary: the base's words keep theirs, the new words get WordNet's and
    every word's keyword is found again (a new word can join a base group); no new word, the base's as they
    are (no WordNet read). Without WordNet, the new words are content words, each its own keyword."""
    if base is None:
        return None
    if all(w in base.kinds for w in words):
        return WordKinds({w: base.kinds[w] for w in words}, {w: base.keywords[w] for w in words},
                         {w: base.categories[w] for w in words})
    try:
        return WordKinds.build(words, known=base)
    except WordNetMissing as e:
        warnings.append(f"no WordNet ({e}): the {len(new)} new words are shown as content words, ungrouped")
        kinds = {**base.kinds, **{w: Kind.CONTENT for w in new}}
        return WordKinds(kinds, {**base.keywords, **{w: w for w in new}},
                         {**base.categories, **{w: Kind.CONTENT.value for w in new}})


def grow_head(base: ClassWords | None, new: list[str]) -> ClassWords | None:
    """The base's class -> word links, with the new words' (where WordNet has them)."""
    if base is None or not new:
        return base
    try:
        links = ClassWords.build(new).links
    except WordNetMissing:
        links = {}
    return ClassWords({**base.links, **links}, base.classes)


def grow_knn(base: KNNTagger, features: np.ndarray, tags: list[list[int]], vocab_size: int) -> KNNTagger:
    """The base's kNN memory with more photos (raw features, their word ids), projected by the base's own PCA."""
    stored = np.concatenate([base.features, base.project(features)]) if len(features) else base.features
    return KNNTagger(base.mean, base.components, stored, list(base.tags) + [np.asarray(t, np.int64) for t in tags],
                     vocab_size, base.config)


def grow_generator(base: WordGenerator, extra: int, mean: np.ndarray, scale: np.ndarray) -> WordGenerator:
    """The base generator with `extra` more condition columns (the new words' neighbour votes): their input weights
    zero, so it generates exactly what the base did; `mean` and `scale` standardize the new columns."""
    if not extra:
        return copy.deepcopy(base)
    config = replace(base.config, feature_dim=base.config.feature_dim + extra)
    grown = WordGenerator(config).to(base.device)
    state = base.state_dict()
    w = state["image_branch.0.weight"]
    state["image_branch.0.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra)], dim=1)
    state["feature_mean"] = torch.cat([state["feature_mean"], torch.as_tensor(mean, dtype=w.dtype, device=w.device)])
    state["feature_scale"] = torch.cat([state["feature_scale"], torch.as_tensor(scale, dtype=w.dtype, device=w.device)])
    grown.load_state_dict(state)
    return grown


def finetune(G: WordGenerator, cond: np.ndarray, pairs: np.ndarray, negatives: np.ndarray, tagger: Tagger, prior: np.ndarray,
             config: ExtendConfig, val: tuple[np.ndarray, list[set[int]]] | None, progress: bool = True) -> tuple[WordGenerator, list[dict]]:
    """Fine-tune G on (condition row, word id) `pairs`, with `negatives` (rows, rejected word ids) pushed down;
    returns the best generator by validation P@5 of its own votes (epoch 0, the grown base, among them) and the log."""
    train_cfg = tagger.summary.train or {}
    temperature, prior_power = train_cfg.get("recon_temperature", 0.1), train_cfg.get("recon_prior", 1.0)
    device = G.device
    torch.manual_seed(config.seed)
    rng = torch.Generator(device=device).manual_seed(config.seed)
    targets = torch.as_tensor(tagger.targets, dtype=torch.float32, device=device)
    bias = prior_power * torch.as_tensor(np.log(np.maximum(prior, 1e-12)), dtype=torch.float32, device=device) if prior_power else None
    x = torch.as_tensor(cond, dtype=torch.float32, device=device)
    p = torch.as_tensor(pairs, dtype=torch.int64, device=device)
    neg = torch.as_tensor(negatives, dtype=torch.int64, device=device).reshape(-1, 2)
    sampling = replace(tagger.sampling, seed=config.seed)

    def score() -> float:
        return validate(G, val[0], val[1], tagger.index, sampling, prior=prior) if val is not None else float("nan")

    best, best_p5, best_epoch = copy.deepcopy(G.state_dict()), score(), 0
    rows = [{"epoch": 0, "loss": float("nan"), "reject_loss": float("nan"), "val_p5": best_p5, "seconds": 0.0}]
    log.info("fine-tuning: epoch 0 (the base generator) val P@5 %.4f", best_p5)
    opt = torch.optim.Adam(G.parameters(), lr=config.lr, betas=(0.5, 0.999))
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        G.train()
        order = p[torch.randperm(len(p), generator=rng, device=device)]
        sums, reject_sums, steps = 0.0, 0.0, 0
        for b in range(0, len(order), config.batch_size):
            batch = order[b : b + config.batch_size]
            noise = G.sample_noise(len(batch), rng)
            loss = mixture_loss(G.all_heads(noise, x[batch[:, 0]]), batch[:, 1], targets, temperature, bias)
            sums += loss.item()
            if len(neg) and config.reject_weight:
                pick = neg[torch.randint(len(neg), (min(len(neg), config.batch_size),), generator=rng, device=device)]
                reject = unlikelihood_loss(G.all_heads(G.sample_noise(len(pick), rng), x[pick[:, 0]]), pick[:, 1], targets,
                                           temperature, bias)
                loss = loss + config.reject_weight * reject
                reject_sums += reject.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        p5 = score()
        rows.append({"epoch": epoch, "loss": sums / max(steps, 1), "reject_loss": reject_sums / max(steps, 1) if len(neg) else float("nan"),
                     "val_p5": p5, "seconds": time.perf_counter() - start})
        log.info("fine-tuning: epoch %d loss %.3f%s val P@5 %.4f (%.0f s)", epoch, rows[-1]["loss"],
                 f" rejected {rows[-1]['reject_loss']:.3f}" if len(neg) else "", p5, rows[-1]["seconds"])
        # With no validation photos the last epoch is kept; with them, the best (the base's on a tie).
        if val is None or p5 > best_p5:
            best, best_p5, best_epoch = copy.deepcopy(G.state_dict()), p5, epoch
    G.load_state_dict(best)
    G.eval()
    rows.append({"best_epoch": best_epoch, "best_p5": best_p5})
    return G, rows


def held_out_p5(tagger: Tagger, evidence: Evidence, truth: list[set[int]], words: list[str]) -> float:
    """P@5 of the tagger's default method, as evaluate scores it (calibrated probabilities where it has them),
    against `truth` given as ids of `words` (the grown vocabulary, which holds every word of the base)."""
    scores = tagger.score(evidence, TagOptions())
    table = scores.shown if tagger.default_method in tagger.calibration else scores.order
    pos = {w: i for i, w in enumerate(words)}
    ids = np.array([pos[w] for w in tagger.words])[top_ids(table, 5)]
    return precision_at_k(ids, truth, 5)


def extend(data: str | Path, out: str | Path, base: Tagger, config: ExtendConfig = ExtendConfig(), progress: bool = True,
           base_name: str = "") -> Extended:
    """Grow `base` on the photos and keywords at `data` (see the module docstring) and save the bundle to `out`."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    if base.knn is None:
        raise OptionError(f"{base_name or 'the base model'}: has no kNN memory to add the library's photos to; "
                          "--from needs a bundle made by `tagger train` with one")
    frame = read_dataset(data)
    check_photos(frame, data)
    frame["split"] = split_ids(frame["id"], config.split, config.split_seed)
    rejected = rejected_tags(frame)
    stages["read"] = time.perf_counter() - t0

    t = time.perf_counter()
    # The base's own backbone and weights: its kNN memory and its generator were made on their features.
    fcfg = FeatureConfig(backbone=base.backbone_name, weights=base.backbone_weights, batch_size=config.feature_batch_size,
                         device=config.device, runtime=config.runtime, cache_dir=config.cache_dir / "features",
                         **({"num_workers": config.num_workers} if config.num_workers is not None else {}))
    feats = extract_features(list(frame["path"]), fcfg, progress=progress)
    if feats.features.shape[1] != base.feature_dim:
        raise OptionError(f"backbone {base.backbone_name} gives {feats.features.shape[1]}-d features, the base model takes {base.feature_dim}-d")
    frame["ok"] = feats.ok
    stages["features"] = time.perf_counter() - t

    t = time.perf_counter()
    is_train = ((frame["split"] == "train") & frame["ok"]).to_numpy()
    lists = [base.vocabulary.canonicalize(tags) for tags in frame["tags"]]
    train_lists = [lists[i] for i in np.flatnonzero(is_train)]
    counts = Counter(w for tags in train_lists for w in set(tags))
    candidates = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= config.min_count and w not in base.word_vectors]
    new_words, new_vectors = place_words(candidates, train_lists, base.word_vectors)
    warnings = []
    if len(new_words) < len(candidates):
        lost = [w for w in candidates if w not in new_words]
        warnings.append(f"{len(lost)} library words share no photo with a known word and were left out (e.g. {lost[0]!r})")
    n_train = int(is_train.sum())
    vocab = grow_vocabulary(base.vocabulary, new_words, base.summary.train_photos, counts, n_train, config.prior_weight)
    wv = WordVectors(base.words + new_words, np.concatenate([base.word_vectors.vectors, new_vectors]))
    words = list(wv.words)
    kinds = grow_kinds(base.kinds, words, new_words, warnings)
    head = grow_head(base.head, new_words)
    classifier = grow_classifier(base.classifier, len(new_words))
    stages["words"] = time.perf_counter() - t

    t = time.perf_counter()
    pos = {w: i for i, w in enumerate(words)}
    ids = [[pos[w] for w in tags if w in pos] for tags in lists]
    memory_rows = np.array([i for i in np.flatnonzero(is_train) if ids[i]], dtype=np.int64)
    knn = grow_knn(base.knn, feats.features[memory_rows], [ids[i] for i in memory_rows], len(words))
    stages["knn"] = time.perf_counter() - t

    t = time.perf_counter()
    features = np.where(frame["ok"].to_numpy()[:, None], feats.features, 0).astype(np.float32)
    self_rows = np.full(len(frame), -1, dtype=np.int64)
    self_rows[memory_rows] = len(base.knn.tags) + np.arange(len(memory_rows))
    cond = build_condition(features, base.condition, knn, self_rows)
    extra = cond.shape[1] - base.generator.config.feature_dim
    new_cols = cond[memory_rows, cond.shape[1] - extra:] if extra else np.zeros((0, 0), np.float32)
    G = grow_generator(base.generator, extra, new_cols.mean(axis=0), np.maximum(new_cols.std(axis=0), 1e-3))
    train_photos = base.summary.train_photos + config.prior_weight * n_train
    info = base.summary.to_dict() | {"train_photos": int(round(train_photos))}
    grown = Tagger(G, vocab, wv, base.backbone_name, base.words_config, base.sampling, info=info, backbone_weights=base.backbone_weights,
                   knn=knn, condition=base.condition, method=base.default_method, runtime=base.runtime, kinds=kinds, head=head,
                   classifier=classifier)
    prior = word_prior(vocab, words, int(round(train_photos)))

    pairs = np.array([(i, w) for i in memory_rows for w in ids[i]], dtype=np.int64).reshape(-1, 2)
    owner = [set(tags) for tags in lists]
    negatives = np.array([(i, pos[w]) for i in np.flatnonzero(is_train) for w in dict.fromkeys(base.vocabulary.canonicalize(rejected[i]))
                          if w in pos and w not in owner[i]], dtype=np.int64).reshape(-1, 2)
    val_rows = [i for i in np.flatnonzero(((frame["split"] == "val") & frame["ok"]).to_numpy()) if ids[i]]
    val_truth = [set(ids[i]) for i in val_rows]
    val = (cond[val_rows], val_truth) if val_rows else None
    device = choose_device(config.device)
    log.info(f"--from {base_name or 'model'}: {len(base.words):,} words + {len(new_words)} of the library's, {len(base.knn.tags):,} + "
             f"{len(memory_rows)} photos in the kNN memory; fine-tuning on {len(pairs):,} (photo, keyword) pairs and {len(negatives)} "
             f"rejected tags of {n_train} photos, {len(val_rows)} validation photos, device {device}")
    G, train_log = finetune(G.to(device), cond, pairs, negatives, grown, prior, config, val, progress)
    G = G.cpu() if device.type != "cpu" else G
    best = train_log[-1]
    if classifier is not None:
        train_rows = np.flatnonzero(is_train)
        classifier, classifier_log = finetune_classifier(classifier, features, train_rows, [ids[i] for i in train_rows], negatives,
                                                         config, (features[val_rows], val_truth) if val_rows else None)
        grown = grown.replace(classifier=classifier)
        log.info(f"word layer: best pass {classifier_log['best_epoch']} of {config.classifier_epochs} (0 is the base's), "
                 f"val P@5 {classifier_log['best_p5']:.4f}")
    stages["generator"] = time.perf_counter() - t

    t = time.perf_counter()
    summary = TrainingSummary(
        data=Path(data).name, generator=base.family, preset=base.summary.preset, preset_description=base.summary.preset_description,
        photos=int(len(frame)), photos_failed=int((~frame["ok"]).sum()), photos_untagged=count_untagged(frame),
        split={s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")}, split_fractions=list(config.split),
        split_seed=config.split_seed, min_count=config.min_count, train_photos=int(round(train_photos)), pairs=int(len(pairs)),
        epochs=config.epochs, best_epoch=best["best_epoch"], val_p5=best["best_p5"], knn_k=knn.config.k,
        train=base.summary.train, warnings=warnings)
    tagger = grown.replace(generator=G)
    if len(val_rows) >= MIN_CALIBRATION_PHOTOS:
        evidence = Evidence(features[val_rows], feats.chroma[val_rows])
        tagger, summary.method_val_p5 = calibrate_and_choose(tagger, evidence, val_truth)
        summary.method = tagger.default_method
    else:
        # Calibrated on the base's photos: the grown generator's scores are those of the base's at epoch 0.
        tagger = tagger.replace(calibration={m: c for m, c in base.calibration.items() if m in tagger.scorers})
        summary.method = tagger.default_method
        summary.warnings.append(f"only {len(val_rows)} validation photos with tags (fewer than {MIN_CALIBRATION_PHOTOS}): the scores use "
                                f"the calibration of {base_name or 'the base model'} and its default method, {summary.method}")
    if base.acceptance:
        # The probability that a person agrees needs concept-labelled photos, which a library does not have.
        tagger = tagger.replace(acceptance={m: c for m, c in base.acceptance.items() if m in tagger.scorers})
    stages["calibration"] = time.perf_counter() - t

    t = time.perf_counter()
    comparison = compare(tagger, base, frame, features, feats.chroma, ids)
    stages["compare"] = time.perf_counter() - t
    extra_info = {"from": {"model": base_name, "fingerprint": base.fingerprint, "words": len(base.words), "photos": len(base.knn.tags)},
                  "new_words": new_words, "rejected_pairs": int(len(negatives)), "finetune_log": train_log[:-1],
                  "held_out": asdict(comparison) | {"recommended": "base" if comparison.worse else "new"}}
    summary.stage_seconds = {k: round(v, 1) for k, v in stages.items()}
    tagger = tagger.replace(info=summary.to_dict() | extra_info)
    t = time.perf_counter()
    save(tagger, out, half=config.half)
    summary.stage_seconds["save"] = round(time.perf_counter() - t, 1)
    return Extended(tagger, summary, comparison, new_words, int(len(negatives)))


def compare(tagger: Tagger, base: Tagger, frame: pd.DataFrame, features: np.ndarray, chroma: np.ndarray, ids: list[list[int]]) -> Comparison:
    """Both bundles on the library's test photos (its validation photos when the split has no test share)."""
    split = "test" if ((frame["split"] == "test") & frame["ok"]).any() else "val"
    rows = [i for i in np.flatnonzero(((frame["split"] == split) & frame["ok"]).to_numpy()) if ids[i]]
    if not rows:
        return Comparison(0, split)
    evidence, truth = Evidence(features[rows], chroma[rows]), [set(ids[i]) for i in rows]
    return Comparison(len(rows), split, held_out_p5(tagger, evidence, truth, tagger.words), held_out_p5(base, evidence, truth, tagger.words))


def finetune_classifier(classifier: WordClassifier, features: np.ndarray, rows: np.ndarray, ids: list[list[int]],
                        negatives: np.ndarray, config: ExtendConfig, val: tuple[np.ndarray, list[set[int]]] | None
                        ) -> tuple[WordClassifier, dict]:
    """The word layer fine-tuned on the library's training photos `rows` (their keyword ids `ids`), with the rejected
    (row, word) `negatives` pushed down harder; the pass kept is the best by the layer's own P@5 on `val`, the base's
    (pass 0) included, so a library that teaches it nothing leaves it as it was. Without `val`, the last pass."""
    torch.manual_seed(config.seed)
    weight = torch.nn.Parameter(torch.from_numpy(classifier.weight.copy()))
    bias = torch.nn.Parameter(torch.from_numpy(classifier.bias.copy()))
    x = torch.from_numpy(np.ascontiguousarray(features[rows], dtype=np.float32))
    target = torch.zeros(len(rows), classifier.words)
    for r, words in enumerate(ids):
        target[r, words] = 1.0
    loss_weight = torch.ones_like(target)
    where = {int(row): r for r, row in enumerate(rows)}
    for row, word in negatives:
        if int(row) in where:
            loss_weight[where[int(row)], int(word)] = config.classifier_reject_weight
    has_words = torch.from_numpy(np.array([bool(w) for w in ids]) | (loss_weight > 1).any(dim=1).numpy())
    x, target, loss_weight = x[has_words], target[has_words], loss_weight[has_words]

    def val_p5() -> float:
        if val is None:
            return math.nan
        with torch.no_grad():
            logits = torch.from_numpy(val[0]) @ weight.T + bias
        return precision_at_k(top_ids(logits.numpy(), 5), val[1], 5)

    best = {"best_epoch": 0, "best_p5": val_p5(), "weight": classifier.weight, "bias": classifier.bias}
    if not len(x):
        return classifier, best
    opt = torch.optim.Adam([weight, bias], lr=config.classifier_lr)
    for epoch in range(1, config.classifier_epochs + 1):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight.T + bias, target, weight=loss_weight)
        loss.backward()
        opt.step()
        p5 = val_p5()
        if val is None or p5 > best["best_p5"]:
            best = {"best_epoch": epoch, "best_p5": p5, "weight": weight.detach().numpy().copy(), "bias": bias.detach().numpy().copy()}
    return WordClassifier(best.pop("weight"), best.pop("bias")), best


def grow_classifier(classifier: WordClassifier | None, new: int) -> WordClassifier | None:
    """The base's word layer (a retrained backbone's, tagger.scoring.classifier) with a row per new word that
    never fires: it was trained on the base's photos, which never had the word; the generator and kNN propose it."""
    if classifier is None or not new:
        return classifier
    return WordClassifier(np.concatenate([classifier.weight, np.zeros((new, classifier.dim), np.float32)]),
                          np.concatenate([classifier.bias, np.full(new, -20.0, np.float32)]))
