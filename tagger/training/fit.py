"""`tagger train` end to end: photos and tags -> features, word2vec, tag index, kNN, the generator,
its calibration and default method -> a model bundle.

Each stage reuses a cache where one exists: image features by file content and backbone, word
vectors by corpus and settings, and the generator's run by a checkpoint after every epoch, so
running the same command again (or after an interruption) redoes only what is missing.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from embeddings.files import content_hash, remove_stale, stale_pattern
from embeddings.imagenet import NUM_CLASSES, ClassWords
from embeddings.index import TagIndex
from embeddings.kinds import WordKinds
from embeddings.tags import TagConfig, Vocabulary
from embeddings.word2vec import Word2VecConfig, WordVectors
from embeddings.wordnet import WordNetMissing
from pipelines.backbones import DEFAULT_BACKBONE, get_spec
from pipelines.datasets import DatasetError, check_photos, count_untagged, read_dataset, read_tag_lists, split_ids
from pipelines.device import choose_device
from pipelines.cache import default_cache_dir
from pipelines.features import FeatureConfig, extract_features
from tagger.scoring.knn import KNNTagger
from tagger.scoring.calibration import Calibration, candidates
from tagger.scoring.concepts import concept_truth
from tagger.scoring.condition import build_condition
from tagger.evaluation.metrics import precision_at_k, top_ids
from tagger.bundle import save
from tagger.model import Tagger
from tagger.scoring.evidence import Evidence
from tagger.scoring.options import TagOptions
from tagger.training.presets import default_preset_name, get_preset
from tagger.library.ray_engine import RayOptions
from tagger.scoring.scorers import word_prior
from tagger.training.summary import TrainingSummary
from tagger.training.loop import CHECKPOINT_FORMAT, make_pairs, train, write_log
from tagger.training.tune import TuneConfig, tune
from tagger.scoring.words import prepare_word_vectors
from tagger.scoring.voting import SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    generator: str = "cgan"  # the generator family (tagger.generators)
    preset: str | None = None  # one of the family's presets (tagger.training.presets); None: its first
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None  # backbone weights file, for backbones without offline weights
    min_count: int = 10  # tags on fewer training photos are left out of the vocabulary
    epochs: int | None = None  # overrides the preset's
    max_steps: int | None = None  # overrides the preset's (0: no limit)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test shares, by photo id
    split_seed: int = 0
    seed: int = 0
    half: bool = False  # store the generator in float16
    feature_batch_size: int = 64
    num_workers: int | None = None  # feature decoding workers (None: the feature config's default)
    device: str | None = None
    runtime: str | None = None  # what runs the backbone for the features: torch, onnx, onnx-int8 (None: choose_runtime)
    cache_dir: Path = field(default_factory=default_cache_dir)
    word2vec: Word2VecConfig = field(default_factory=Word2VecConfig)
    # Tag lists of photos not in the dataset (e.g. MIRFLICKR's tags_corpus.tsv), added to word2vec's
    # training lists; lists of the dataset's own photos in it are left out, so held-out tags never leak.
    corpus: Path | None = None
    sampling: SamplingConfig | None = None  # None: the preset's
    # The default rule of what is shown: a tag whose probability that a person agrees passes the lowest
    # threshold at which this share of the validation photos' shown concept tags were right.
    precision: float = 0.8
    ray: RayOptions | None = None  # extract the features on Ray (tagger.library.ray_engine) with these options; None: in this process
    tune: TuneConfig | None = None  # retrain the backbone's last blocks and a word layer first (tagger.training.tune); None: keep it as it is


@dataclass
class Stages:
    """Wall time of each stage, in seconds."""

    read: float = 0.0
    features: float = 0.0
    word2vec: float = 0.0
    tune: float = 0.0
    index: float = 0.0
    knn: float = 0.0
    generator: float = 0.0
    calibration: float = 0.0
    save: float = 0.0


@dataclass
class Prepared:
    """Everything before the generator, as `prepare` leaves it."""

    frame: pd.DataFrame  # one row per photo: id, path, tags, labels, split, ok
    features: np.ndarray  # (photos, D), NaN rows where ok is False
    chroma: np.ndarray  # (photos,) each photo's chroma, measured on its decoded pixels (the colour evidence tagging uses)
    vocabulary: Vocabulary
    word_vectors: WordVectors  # of the vocabulary's words that word2vec kept
    stages: Stages
    corpus_lists: int = 0  # tag lists word2vec took from --corpus
    warnings: list[str] = field(default_factory=list)


def prepare(data: str | Path, config: FitConfig, progress: bool = True) -> Prepared:
    """Everything before the generator: frame with splits, features, vocabulary, word vectors."""
    stages = Stages()
    t = time.perf_counter()
    frame = read_dataset(data)
    check_photos(frame, data)
    frame["split"] = split_ids(frame["id"], config.split, config.split_seed)
    stages.read = time.perf_counter() - t

    t = time.perf_counter()
    fcfg = FeatureConfig(
        backbone=config.backbone,
        weights=config.weights,
        batch_size=config.feature_batch_size,
        device=config.device,
        runtime=config.runtime,
        cache_dir=config.cache_dir / "features",
        **({"num_workers": config.num_workers} if config.num_workers is not None else {}),
    )
    if config.ray is not None:
        from tagger.library.ray_engine import warm_feature_cache

        warm_feature_cache(list(frame["path"]), fcfg, config.ray)  # then the line below reads every photo from the cache
    feats = extract_features(list(frame["path"]), fcfg, progress=progress)  # logs each photo it skips
    frame["ok"] = feats.ok
    stages.features = time.perf_counter() - t

    t = time.perf_counter()
    train_rows = frame[(frame["split"] == "train") & frame["ok"]]
    vocab = Vocabulary.build(train_rows["tags"], TagConfig(min_count=config.min_count))
    # Vocabulary words only: rare one-off tags slow training sixfold and crowd the neighbour lists.
    sentences = [s for s in (vocab.normalize(tags) for tags in train_rows["tags"]) if s]
    warnings = check_vocabulary(vocab, sentences, train_rows["tags"], config.min_count, data)
    extra = extra_tag_lists(config.corpus, frame, vocab, progress) if config.corpus is not None else []
    sentences += extra
    wv = _cached_word2vec(sentences, replace(config.word2vec, seed=config.seed), config.cache_dir / "word2vec")
    wv = wv.subset([w for w in vocab.words if w in wv])
    stages.word2vec = time.perf_counter() - t
    return Prepared(frame, feats.features, feats.chroma, vocab, wv, stages, corpus_lists=len(extra), warnings=warnings)


MIN_WORDS = 5  # fewer words than tags shown per photo: every photo would get them all
FEW_WORDS = 30  # below this a model can say little; said loudly, not refused


def check_vocabulary(vocab: Vocabulary, sentences: list[list[str]], tag_lists, min_count: int, data) -> list[str]:
    """Refuse a vocabulary too small to tag with, naming --min-count and the value that would work; warn of a small one."""
    if len(vocab) >= MIN_WORDS and any(len(s) >= 2 for s in sentences):
        if len(vocab) < FEW_WORDS:
            return [f"only {len(vocab)} tags occur on {min_count} or more training photos: the model can only ever give these; "
                    "lower --min-count or add photos with keywords for more"]
        return []
    suggestion = next((m for m in range(min_count - 1, 1, -1)
                       if len(Vocabulary.build(tag_lists, TagConfig(min_count=m))) >= FEW_WORDS), 2)
    raise DatasetError(
        f"{data}: only {len(vocab)} tags occur on {min_count} or more of the {len(tag_lists)} training photos (--min-count {min_count}); "
        f"a model needs at least {MIN_WORDS}, and tag lists of two or more of them: lower --min-count "
        f"(e.g. --min-count {suggestion}) or add photos with keywords"
    )


def extra_tag_lists(corpus: str | Path, frame: pd.DataFrame, vocab: Vocabulary, progress: bool = True) -> list[list[str]]:
    """`corpus`'s tag lists in vocabulary words, without the dataset's own photos.

    A training photo's tags are already among word2vec's lists; a held-out photo's must not shape the
    word space its evaluation is scored in. The vocabulary stays that of the training photos.
    """
    table = read_tag_lists(corpus)
    ours = table["id"].isin(set(frame["id"].astype(str)))
    lists = [s for s in (vocab.normalize(tags) for tags in table.loc[~ours, "tags"]) if s]
    log.info("word2vec: %s more tag lists from %s (%s rows of the dataset's own photos left out)",
             f"{len(lists):,}", Path(corpus).name, f"{int(ours.sum()):,}")
    return lists


def word_ids(frame: pd.DataFrame, vocab: Vocabulary, words: list[str]) -> list[list[int]]:
    """Each photo's normalized, in-vocabulary user tags as word ids."""
    pos = {w: i for i, w in enumerate(words)}
    return [[pos[w] for w in vocab.normalize(tags) if w in pos] for tags in frame["tags"]]


def fit(data: str | Path, out: str | Path, config: FitConfig = FitConfig(), progress: bool = True) -> tuple[Tagger, TrainingSummary]:
    """Train a bundle on `data` and save it to `out`; returns the tagger and a run summary."""
    preset = get_preset(config.generator, config.preset)
    preset_name = config.preset or default_preset_name(config.generator)
    tcfg = replace(
        preset.train,
        seed=config.seed,
        **({"epochs": config.epochs} if config.epochs is not None else {}),
        **({"max_steps": config.max_steps} if config.max_steps is not None else {}),
    )
    device = choose_device(config.device)
    sampling = config.sampling or preset.sampling
    prep = prepare(data, config, progress)
    frame, features, vocab, wv, stages = prep.frame, prep.features, prep.vocabulary, prep.word_vectors, prep.stages

    t = time.perf_counter()
    targets = prepare_word_vectors(wv.vectors, preset.words)
    index = TagIndex(list(wv.words), targets)
    stages.index = time.perf_counter() - t

    ids = word_ids(frame, vocab, list(wv.words))
    is_train = ((frame["split"] == "train") & frame["ok"]).to_numpy()
    is_val = ((frame["split"] == "val") & frame["ok"]).to_numpy()
    train_rows = np.flatnonzero(is_train)
    val_rows = [i for i in np.flatnonzero(is_val) if ids[i]]
    val_truth = [set(ids[i]) for i in val_rows]

    weights, tuned = config.weights, None
    if config.tune is not None:
        # Everything after this stage works on the retrained network's features, as tagging will.
        t = time.perf_counter()
        tuned = tune(list(frame["path"]), ids, train_rows, features, len(wv.words), config.backbone, config.weights, config.tune,
                     config.cache_dir / "tune", device, config.seed, config.num_workers, half=config.half)
        features, weights = tuned.features, str(tuned.overlay)
        stages.tune = time.perf_counter() - t

    t = time.perf_counter()
    knn, knn_rows, knn_val = fit_knn(features, ids, train_rows, (features[val_rows], val_truth) if val_rows else None,
                                     len(wv.words), config.seed)
    stages.knn = time.perf_counter() - t

    t = time.perf_counter()
    # What G is conditioned on; a training photo's neighbour votes leave the photo itself out.
    self_rows = np.full(len(frame), -1, dtype=np.int64)
    self_rows[knn_rows] = np.arange(len(knn_rows))
    cond = build_condition(features, preset.condition, knn, self_rows)
    pairs = make_pairs([ids[i] for i in train_rows])
    pairs[:, 0] = train_rows[pairs[:, 0]]
    val = (cond[val_rows], val_truth) if val_rows else None
    gen_cfg = replace(preset.generator, feature_dim=cond.shape[1], word_dim=targets.shape[1])
    # The word vectors themselves, not their settings, key the run: another corpus gives another space.
    run_key = _key(CHECKPOINT_FORMAT, str(Path(data).resolve()), config.generator, preset_name, asdict(tcfg), asdict(gen_cfg),
                   content_hash(targets.tobytes()), content_hash(cond[:, features.shape[1]:].tobytes()),
                   config.min_count, config.split, config.split_seed, config.backbone, weights, len(frame), asdict(sampling))
    work_dir = config.cache_dir / "runs" / run_key
    work_dir.mkdir(parents=True, exist_ok=True)
    # A run killed while writing its checkpoint left its temporary file behind, as big as a checkpoint.
    remove_stale(work_dir, stale_pattern("checkpoint.pt"))
    log.info(f"{config.generator}: {len(pairs):,} (photo, tag) pairs from {len(train_rows):,} photos, {len(wv.words):,} words, "
             f"{len(val_rows):,} validation photos, preset {preset_name!r}, device {device}")
    G, state = train(
        cond, pairs, targets, index, gen_cfg, tcfg, sampling=sampling, val=val, standardize_features=preset.standardize_features,
        work_dir=work_dir, device=device, progress=progress, prior=word_prior(vocab, list(wv.words), int(is_train.sum())),
    )
    stages.generator = time.perf_counter() - t

    t = time.perf_counter()
    write_log(state.log, work_dir / "train_log.csv", work_dir / "train_curves.png")
    summary = TrainingSummary(
        data=Path(data).name,
        generator=config.generator,
        preset=preset_name,
        preset_description=preset.description,
        photos=int(len(frame)),
        photos_failed=int((~frame["ok"]).sum()),
        photos_untagged=count_untagged(frame),
        split={s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")},
        split_fractions=list(config.split),
        split_seed=config.split_seed,
        min_count=config.min_count,
        corpus=Path(config.corpus).name if config.corpus is not None else None,
        corpus_lists=prep.corpus_lists,
        train_photos=int(is_train.sum()),
        pairs=int(len(pairs)),
        epochs=state.epoch,
        steps=state.step,
        best_epoch=state.best_epoch,
        val_p5=state.best_p5,
        knn_k=knn.config.k,
        knn_val_p5=knn_val,
        train=tcfg.to_dict(),
        tune=tuned.summary(config.tune) if tuned is not None else {},
        warnings=list(prep.warnings),
    )
    try:
        kinds = WordKinds.build(list(wv.words))  # each word's kind and keyword, saved with the bundle
    except WordNetMissing as e:
        kinds = None
        summary.warnings.append(f"no word kinds ({e}): the model will show every kind of word, places and `me` too")
    head = None  # the ImageNet classes each word names, for the head methods (tagger.scoring.head), where the backbone has a head
    # A retrained tail gives features the ImageNet head was not trained on: such a bundle has no head methods.
    if kinds is not None and get_spec(config.backbone).num_classes == NUM_CLASSES and tuned is None:
        head = ClassWords.build(list(wv.words))
    tagger = Tagger(G, vocab, wv, config.backbone, preset.words, sampling, info=summary.to_dict(),
                    backbone_weights=weights, knn=knn, condition=preset.condition, kinds=kinds, head=head,
                    classifier=tuned.classifier if tuned is not None else None)
    if 0 < len(val_rows) < MIN_CALIBRATION_PHOTOS:
        summary.warnings.append(
            f"only {len(val_rows)} validation photos with tags: scores are left uncalibrated and the default method is a guess; "
            f"a larger --split validation share (or more photos) fixes it")
    if len(val_rows) >= MIN_CALIBRATION_PHOTOS:
        val = Evidence(features[val_rows], prep.chroma[val_rows])
        tagger, summary.method_val_p5 = calibrate_and_choose(tagger, val, val_truth)
        summary.method = tagger.default_method
        labelled = [i for i in np.flatnonzero(is_val) if frame["labels"].iloc[i] is not None]
        if len(labelled) >= MIN_ACCEPTANCE_PHOTOS:
            lval = Evidence(features[labelled], prep.chroma[labelled])
            known, truth = concept_truth(tagger.words, list(frame["labels"].iloc[labelled]))
            tagger = tagger.replace(acceptance=accept(tagger, lval, known, truth))
            summary.accepted_photos = len(labelled)
            summary.threshold, summary.threshold_precision, summary.threshold_tags = choose_threshold(
                tagger.score(lval), known, truth, tagger.sampling.top_k, config.precision)
            tagger = tagger.replace(sampling=replace(tagger.sampling, min_score=summary.threshold))
    summary.warnings += collapse_warnings(tagger, features[train_rows], state.best_p5 if val_rows else None, preset_name)
    stages.calibration = time.perf_counter() - t

    t = time.perf_counter()
    extras = {"train_log.csv": work_dir / "train_log.csv"}
    if (work_dir / "train_curves.png").is_file():
        extras["train_curves.png"] = work_dir / "train_curves.png"
    tagger = tagger.replace(info=summary.to_dict())
    save(tagger, out, half=config.half, extras=extras)
    stages.save = time.perf_counter() - t
    summary.stage_seconds = {k: round(v, 1) for k, v in asdict(stages).items()}
    return tagger, summary


MIN_CALIBRATION_PHOTOS = 20  # fewer validation photos than this give a calibration map of noise
MIN_ACCEPTANCE_PHOTOS = 100  # concept-labelled validation photos: each gives only its few concept words among its best


def accept(tagger: Tagger, evidence: Evidence, known: np.ndarray, truth: list[set[int]]) -> dict[str, Calibration]:
    """Every method's map from raw score to the probability that a person looking at the photo agrees: fitted
    on the concept words among each labelled photo's best words, right when the photo has that concept
    (tagger.scoring.concepts), and used for every word: the labels are the only complete truth there is."""
    every = np.ones(len(truth), dtype=bool)
    return {m: Calibration.fit(tagger.score(evidence, TagOptions(method=m), calibrated=False).order, truth, known=known, photos=every)
            for m in tagger.methods}


def choose_threshold(scores, known: np.ndarray, truth: list[set[int]], top_k: int, precision: float) -> tuple[float, float, float]:
    """The lowest probability at which the concept tags a labelled photo shows (among its `top_k` best)
    were right at least `precision` of the time; with the precision reached and the tags per photo it
    shows. When no threshold reaches it, the one with the best precision among those leaving a tag on at
    least a tenth of the photos."""
    every = np.ones(len(truth), dtype=bool)
    probs, hits, _ = candidates(scores.shown, truth, top_k, known=known, photos=every)
    order = np.argsort(-probs, kind="stable")
    probs, hits = probs[order], hits[order]
    running = np.cumsum(hits) / np.arange(1, len(hits) + 1)  # precision of the tags at or above each probability
    last = np.flatnonzero(running >= precision)
    top = np.sort(scores.shown, axis=1)[:, ::-1][:, :top_k]
    if len(last):
        threshold = float(probs[last[-1]])
    else:
        enough = [i for i in range(len(probs)) if (top[:, 0] >= probs[i]).mean() >= 0.1] or [len(probs) - 1]
        threshold = float(probs[max(enough, key=lambda i: running[i])])
    reached = float(hits[probs >= threshold].mean()) if (probs >= threshold).any() else float("nan")
    return threshold, reached, float((top >= threshold).sum(axis=1).mean())


def collapse_warnings(tagger: Tagger, features: np.ndarray, val_p5: float | None, preset: str, photos: int = 200) -> list[str]:
    """What says a model learnt nothing: a validation P@5 of 0, or the same top tags for every photo."""
    warnings = []
    if val_p5 is not None and val_p5 == 0:
        warnings.append(f"validation P@5 is 0: the model tags no validation photo correctly; try another --preset "
                        f"(this run: {preset}), more --epochs, or more photos with keywords")
    sample = features[:photos]
    if len(sample) >= 5:
        tops = {tuple(t for t, _ in result.tags or ()) for result in tagger.tag(Evidence(sample, None), TagOptions(top_k=5))}
        if len(tops) == 1:
            warnings.append(f"the model gives all {len(sample)} training photos checked the same tags ({', '.join(next(iter(tops)))}): "
                            f"it has collapsed; try another --preset (this run: {preset}) or more --epochs")
    return warnings


def calibrate_and_choose(tagger: Tagger, evidence: Evidence, truth: list[set[int]]) -> tuple[Tagger, dict[str, float]]:
    """The tagger calibrated on validation photos, its default method the one that tags them best (against the
    owners' tags of the kinds a photo shows by default), and each method's validation P@5 it was chosen by."""
    tagger = tagger.replace(calibration=calibrate(tagger, evidence, truth))
    choices = [m for m, scorer in tagger.scorers.items() if not scorer.baseline]
    shown_truth = tagger.shown_truth(truth)
    p5 = {m: precision_at_k(top_ids(tagger.score(evidence, TagOptions(method=m)).shown, 5), shown_truth, 5) for m in choices}
    return tagger.replace(method=max(choices, key=p5.get)), p5


def calibrate(tagger: Tagger, evidence: Evidence, truth: list[set[int]]) -> dict[str, Calibration]:
    """Every method's map from raw score to the probability of a true tag, fitted on validation photos
    (their raw scores as `Tagger.score` gives them, the pixels' evidence applied, as tagging sees them)."""
    return {m: Calibration.fit(tagger.score(evidence, TagOptions(method=m), calibrated=False).order, truth) for m in tagger.methods}


def fit_knn(features: np.ndarray, ids: list[list[int]], train_rows: np.ndarray, val, vocab_size: int, seed: int = 0,
            ks: tuple[int, ...] = (5, 10, 20, 50, 100, 200)) -> tuple[KNNTagger, np.ndarray, float]:
    """The TagVote baseline on the training photos that have tags, its K chosen by validation P@5.

    Returns the tagger, the rows of `features` it holds (in its order) and its validation P@5.
    """
    rows = np.asarray([i for i in train_rows if ids[i]], dtype=np.int64)
    knn = KNNTagger.fit(features[rows], [ids[i] for i in rows], vocab_size, seed=seed)
    if val is None:
        return knn, rows, float("nan")
    scores = {k: precision_at_k(top_ids(knn.scores(val[0], k), 5), val[1], 5) for k in ks if k <= len(rows)}
    best = max(scores, key=scores.get)
    knn.config = replace(knn.config, k=best)
    return knn, rows, scores[best]


def _cached_word2vec(sentences: list[list[str]], config: Word2VecConfig, cache: Path) -> WordVectors:
    key = _key(sentences, asdict(config))
    file = cache / f"{key}.npz"
    if file.is_file():
        return WordVectors.load(file)
    wv = WordVectors.train(sentences, config)
    cache.mkdir(parents=True, exist_ok=True)
    wv.save(file)
    return wv


def _key(*parts) -> str:
    return content_hash(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=10)
