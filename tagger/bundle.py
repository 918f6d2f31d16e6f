"""The model bundle: one folder holding everything needed to tag, and its save/load with checks.

    config.json            format version, backbone, the generator's family and config, the condition,
                           the default tagging method, word-space and sampling settings, a summary
                           of the training data and run
    generator.safetensors  generator weights (with its feature standardization buffers)
    vocabulary.json        the tag vocabulary: raw -> canonical map, counts, normalization settings
    word_vectors.npz       the skip-gram vectors of the vocabulary words
    knn.npz                the kNN baseline: PCA-reduced training features and their tags (optional;
                           required when the generator is conditioned on neighbour votes)
    calibration.json       per method, the map from raw score to the probability that the owner uses the tag (optional)
    acceptance.json        per method, the map from raw score to the probability that a person looking at the
                           photo agrees, fitted on concept-labelled photos (optional; when present, it is what users see)
    kinds.json             each word's kind and keyword (embeddings.kinds; optional: without it every word
                           is shown as it is, as bundles made before the kinds tag)
    head.json              the ImageNet classes each word names (embeddings.imagenet; optional: with it the
                           bundle has the head methods, whose classifier weights are the backbone's own)
    backbone.safetensors   the backbone's retrained last blocks, an overlay on its own weights
                           (pipelines/backbones/tail.py; optional: config.json's backbone.weights names it)
    classifier.safetensors the word layer trained with them (tagger.scoring.classifier; optional)

The FAISS index is rebuilt from the word vectors on load: for vocabularies of a few thousand words
that takes milliseconds and keeps the bundle free of a second copy of the same numbers. Bundles
are written into a temporary folder and renamed into place, so a crash never leaves a half-written
bundle that loads. Format 1 (before the generator families) had the cGAN's config under "gan" and
still loads, as a cgan bundle.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from pydantic import NonNegativeInt
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from embeddings.checks import check_type, check_values, field_types, read_json
from embeddings.files import atomic_dir, content_hash
from embeddings.imagenet import ClassWords
from embeddings.kinds import WordKinds
from embeddings.tags import Vocabulary
from embeddings.word2vec import WordVectors
from pipelines.backbones import get_spec
from pipelines.backbones.tail import overlay_of
from pipelines.device import choose_device, choose_runtime
from pipelines.errors import TaggerError
from tagger.scoring.knn import KNNTagger
from tagger.scoring.calibration import Calibration
from tagger.scoring.classifier import WordClassifier
from tagger.scoring.condition import ConditionConfig
from tagger.generators import create_generator, make_config
from tagger.model import Tagger
from tagger.scoring.words import WordSpaceConfig
from tagger.training.summary import TrainingSummary
from tagger.scoring.voting import SamplingConfig

FORMAT_VERSION = 2
READS = (1, 2)  # format versions this tagger loads
CONFIG, WEIGHTS, VOCABULARY, VECTORS, KNN, CALIBRATION, KINDS, ACCEPTANCE, HEAD, TAIL, CLASSIFIER = (
    "config.json", "generator.safetensors", "vocabulary.json", "word_vectors.npz", "knn.npz", "calibration.json", "kinds.json",
    "acceptance.json", "head.json", "backbone.safetensors", "classifier.safetensors")


# A real config.json is a few KB and a calibration.json a few hundred; these are far above and still small.
MAX_CONFIG_BYTES, MAX_CALIBRATION_BYTES = 1 << 20, 16 << 20

# config.json's values by type, checked before any is used (a section's own settings by its config's
# dataclass). The run's summary (info) may hold fields this tagger does not know: they are kept as they
# are; the ones it knows are of their type, and its counts 0 or more.
CONFIG_TYPES = {
    "format_version": int, "backbone": dict, "backbone.name": str, "backbone.weights": str | None,
    "backbone.feature_dim": int, "gan": dict, "generator": dict, "generator.family": str, "generator.config": dict,
    "condition": dict, "method": str | None, "words": dict, "sampling": dict, "sampling.exclude": list[str],
    "vocabulary_size": NonNegativeInt, "info": dict,
    **{f"info.{name}": NonNegativeInt if tp is int else tp for name, tp in field_types(TrainingSummary).items()},
}


class BundleError(TaggerError, ValueError):
    """A model bundle that cannot be loaded; the message names the file and what is wrong."""


def config_dict(tagger: Tagger) -> dict:
    weights = TAIL if _is_overlay(tagger.backbone_weights) else tagger.backbone_weights
    return {
        "format_version": FORMAT_VERSION,
        "backbone": {"name": tagger.backbone_name, "weights": weights, "feature_dim": tagger.feature_dim},
        "generator": {"family": tagger.family, "config": tagger.generator.config.to_dict()},
        "condition": tagger.condition.to_dict(),
        "method": tagger.default_method,
        "words": tagger.words_config.to_dict(),
        "sampling": tagger.sampling.to_dict(),
        "vocabulary_size": len(tagger.words),
        "info": tagger.info,
    }


def save(tagger: Tagger, path: str | Path, half: bool = False, extras: dict[str, Path] | None = None) -> Path:
    """Write the bundle atomically; `half` stores the generator and classifier weights in float16 (half their size;
    a retrained backbone tail is stored as it was made, float16 when training rounded it).

    `extras` are further files copied in under the given names (the training log and curves).
    """
    path = Path(path)
    if path.exists() and not (path / CONFIG).is_file() and any(path.iterdir()):
        raise BundleError(f"{path}: exists and is not a model bundle; refusing to replace it")
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in tagger.generator.state_dict().items()}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS))
        os.chmod(tmp / WEIGHTS, 0o644)
        tagger.vocabulary.save(tmp / VOCABULARY)
        tagger.word_vectors.save(tmp / VECTORS)
        if tagger.knn is not None:
            tagger.knn.save(tmp / KNN)
        if tagger.kinds is not None:
            tagger.kinds.save(tmp / KINDS)
        if tagger.head is not None:
            tagger.head.save(tmp / HEAD)
        if _is_overlay(tagger.backbone_weights):  # a retrained tail travels with the bundle; other weights files are the user's
            shutil.copyfile(tagger.backbone_weights, tmp / TAIL)
        if tagger.classifier is not None:
            tagger.classifier.save(tmp / CLASSIFIER, half=half)
            os.chmod(tmp / CLASSIFIER, 0o644)
        if tagger.calibration:
            (tmp / CALIBRATION).write_text(json.dumps({m: c.to_dict() for m, c in tagger.calibration.items()}))
        if tagger.acceptance:
            (tmp / ACCEPTANCE).write_text(json.dumps({m: c.to_dict() for m, c in tagger.acceptance.items()}))
        for name, file in (extras or {}).items():
            shutil.copyfile(file, tmp / name)
        # config.json last: a folder without it is not a bundle.
        (tmp / CONFIG).write_text(json.dumps(config_dict(tagger), indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def load(path: str | Path, device: str | torch.device | None = None, runtime: str | None = None) -> Tagger:
    """Load a bundle; anything damaged or made for another backbone is a BundleError naming the file.

    runtime: what runs the backbone (not part of the bundle: torch and onnx give the same features within 1e-4).
    """
    path = Path(path)
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise BundleError(f"{path}: not a model bundle (no {CONFIG})")
    try:
        cfg = read_json(cfg_file, MAX_CONFIG_BYTES)
    except (OSError, ValueError) as e:
        raise BundleError(f"{cfg_file}: {_one_line(e)}") from None
    version = cfg.get("format_version") if isinstance(cfg, dict) else None
    if isinstance(version, bool) or version not in READS:  # True == 1
        raise BundleError(f"{cfg_file}: bundle format {version!r}, this tagger reads formats {', '.join(map(str, READS))}")
    try:
        check_values(cfg, CONFIG_TYPES)
    except ValueError as e:
        raise BundleError(f"{cfg_file}: {e}") from None
    for name in (WEIGHTS, VOCABULARY, VECTORS):
        if not (path / name).is_file():
            raise BundleError(f"{path / name}: missing from the bundle")
    try:
        family, gen_values = ("cgan", cfg["gan"]) if version == 1 else (cfg["generator"]["family"], cfg["generator"]["config"])
        gen_config = make_config(family, gen_values)
        backbone, backbone_weights = cfg["backbone"]["name"], cfg["backbone"].get("weights")
        if backbone_weights == TAIL:  # the bundle's own retrained tail, wherever the bundle is
            backbone_weights = str(path / TAIL)
        condition = ConditionConfig(**cfg.get("condition", {}))
        words = WordSpaceConfig(**cfg["words"])
        sampling = SamplingConfig(**{**cfg["sampling"], "exclude": tuple(cfg["sampling"].get("exclude", ()))})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{cfg_file}: missing, unknown or out-of-range setting ({_one_line(e)})") from e
    vocab_size = cfg.get("vocabulary_size")
    image_dim = gen_config.feature_dim - (vocab_size if condition.neighbour_votes and isinstance(vocab_size, int) else 0)
    _check_backbone(cfg_file, backbone, image_dim)
    device = choose_device(device) if not isinstance(device, torch.device) else device
    choose_runtime(runtime, device)  # an impossible choice fails here, not at the first photo
    _check_weight_shapes(path / WEIGHTS, family, gen_config)  # before anything the size of the config is allocated
    generator = create_generator(family, gen_config)
    try:
        state = load_file(str(path / WEIGHTS))
        generator.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # safetensors raises several types for a damaged file
        raise BundleError(f"{path / WEIGHTS}: cannot load generator weights ({_one_line(e)})") from e
    broken = [k for k, v in generator.state_dict().items() if not torch.isfinite(v).all()]
    if broken:
        raise BundleError(f"{path / WEIGHTS}: {len(broken)} tensors hold NaN or infinite values (e.g. {broken[0]}); the bundle is damaged")
    vocabulary = _load_part(path / VOCABULARY, "the vocabulary", Vocabulary.load)
    wv = _load_part(path / VECTORS, "the word vectors", WordVectors.load)
    if len(wv.words) != cfg.get("vocabulary_size", len(wv.words)):
        raise BundleError(f"{path / VECTORS}: {len(wv.words)} words, config.json says {cfg['vocabulary_size']}")
    if wv.dim != gen_config.word_dim:
        raise BundleError(f"{path / VECTORS}: {wv.dim}-d vectors, but the generator makes {gen_config.word_dim}-d")
    missing = [w for w in wv.words if w not in vocabulary]
    if missing:
        raise BundleError(f"{path / VECTORS}: {len(missing)} words are not in {VOCABULARY} (e.g. {missing[:3]})")
    knn = None
    if (path / KNN).is_file():
        knn = _load_part(path / KNN, "the kNN baseline", KNNTagger.load)
        if knn.vocab_size != len(wv.words):
            raise BundleError(f"{path / KNN}: made for {knn.vocab_size} words, the bundle has {len(wv.words)}")
        if len(knn.mean) != image_dim:
            raise BundleError(f"{path / KNN}: made for {len(knn.mean)}-d features, but backbone {backbone} gives {image_dim}")
    elif condition.neighbour_votes:
        raise BundleError(f"{path / KNN}: missing from the bundle (the generator is conditioned on neighbour votes)")
    kinds = _load_part(path / KINDS, "the word kinds", WordKinds.load) if (path / KINDS).is_file() else None
    head = _load_part(path / HEAD, "the class -> word links", ClassWords.load) if (path / HEAD).is_file() else None
    if head is not None:
        _check_head(path / HEAD, head, backbone, wv.words)
    if backbone_weights == str(path / TAIL):
        _check_tail(path / TAIL, backbone)
    classifier = _load_part(path / CLASSIFIER, "the classifier", WordClassifier.load) if (path / CLASSIFIER).is_file() else None
    calibration = {}
    if (path / CALIBRATION).is_file():
        calibration = _load_part(path / CALIBRATION, "the calibration", _read_calibration)
    acceptance = _load_part(path / ACCEPTANCE, "the acceptance map", _read_calibration) if (path / ACCEPTANCE).is_file() else {}
    try:
        return Tagger(generator.to(device), vocabulary, wv, backbone=backbone, words=words, sampling=sampling,
                      info=cfg.get("info", {}), backbone_weights=backbone_weights, knn=knn, condition=condition,
                      calibration=calibration, method=cfg.get("method"), runtime=runtime, fingerprint=_fingerprint(path), kinds=kinds,
                      acceptance=acceptance, head=head, classifier=classifier)
    except ValueError as e:
        where = (path / CALIBRATION if str(e).startswith("calibrates") else path / KINDS if "word kinds" in str(e)
                 else path / CLASSIFIER if str(e).startswith("the classifier") else cfg_file)
        raise BundleError(f"{where}: {e}") from None


def _check_weight_shapes(file: Path, family: str, config) -> None:
    """The weights file holds exactly the tensors, of exactly the shapes, that the config describes.

    The expected shapes come from the network built on the meta device, which allocates nothing;
    the file's from its header. A tampered size is refused here, in one line.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_generator(family, config).state_dict().items()}
    try:
        with safe_open(str(file), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged header
        raise BundleError(f"{file}: cannot load generator weights ({_one_line(e)})") from e
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            raise BundleError(f"{file}: tensor {key} is {found.get(key, 'missing')} but config.json describes "
                              f"{expected.get(key, 'no such tensor')}; the weights and the config do not belong together")


def _fingerprint(path: Path) -> str:
    """A hash of every file of the bundle: two bundles tag alike exactly when it is equal."""
    files = sorted(p for p in path.iterdir() if p.is_file())
    return content_hash("".join(f"{f.name}\0{content_hash(f)}\n" for f in files).encode())


def _one_line(error: Exception, drop: str = "") -> str:
    """An exception's message on one line (torch's state-dict errors span several), `drop` cut from its start."""
    text = " ".join(str(error).removeprefix(drop).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load_part(file: Path, what: str, load):
    try:
        return load(file)
    except Exception as e:  # a damaged file fails in format-specific ways: zip, JSON, npy, missing keys
        raise BundleError(f"{file}: cannot load {what} ({_one_line(e, drop=f'{file}: ')})") from e


def _read_calibration(file: Path) -> dict[str, Calibration]:
    data = read_json(file, MAX_CALIBRATION_BYTES)
    check_type(data, dict[str, dict], "the file")
    out = {}
    for method, values in data.items():
        try:
            out[method] = Calibration.from_dict(values)
        except ValueError as e:
            raise ValueError(f"{method}: {e}") from None
    return out


def _is_overlay(weights: str | None) -> bool:
    return weights is not None and Path(weights).is_file() and overlay_of(Path(weights)) is not None


def _check_tail(file: Path, backbone: str) -> None:
    """At load time: the bundle's retrained tail is there, and an overlay for its backbone."""
    if not file.is_file():
        raise BundleError(f"{file}: missing from the bundle (config.json names it as the backbone's weights)")
    try:
        made_for = overlay_of(file)
    except TaggerError as e:
        raise BundleError(str(e)) from None
    if made_for != backbone:
        raise BundleError(f"{file}: retrained blocks of backbone {made_for!r}, but the bundle's backbone is {backbone}")


def _check_head(file: Path, head: ClassWords, backbone: str, words) -> None:
    """The links name words of this vocabulary and classes of this backbone's head."""
    classes = get_spec(backbone).num_classes
    if classes is None:
        raise BundleError(f"{file}: backbone {backbone} has no classification head to link words to")
    if head.classes != classes:
        raise BundleError(f"{file}: links {head.classes} classes, backbone {backbone}'s head has {classes}")
    unknown = sorted(set(head.links) - set(words))
    if unknown:
        raise BundleError(f"{file}: {len(unknown)} words are not in the vocabulary (e.g. {unknown[0]!r})")


def _check_backbone(cfg_file: Path, name: str, feature_dim: int) -> None:
    """At load time, not at the first photo: the bundle's backbone exists here and gives the features G takes."""
    try:
        spec = get_spec(name)
    except ValueError as e:
        raise BundleError(f"{cfg_file}: made for backbone {name!r}, which this tagger does not have ({_one_line(e)})") from None
    if spec.dim != feature_dim:
        raise BundleError(f"{cfg_file}: backbone {name} gives {spec.dim}-d features but this model was trained on {feature_dim}-d features")
