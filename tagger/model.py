"""`Tagger`: a trained model bundle that tags photos, and the bundle folder it is saved as.

A bundle is one folder holding everything needed to tag:

    config.json            format version, backbone, GAN sizes, word-space and sampling settings,
                           a summary of the training data and run
    generator.safetensors  generator weights (with its feature standardization buffers)
    vocabulary.json        the tag vocabulary: raw -> canonical map, counts, normalization settings
    word_vectors.npz       the skip-gram vectors of the vocabulary words
    knn.npz                the kNN baseline: PCA-reduced training features and their tags (optional)

The FAISS index is rebuilt from the word vectors on load: for vocabularies of a few thousand words
that takes milliseconds and keeps the bundle free of a second copy of the same numbers.
Bundles are written into a temporary folder and renamed into place, so a crash never leaves a
half-written bundle that loads.
"""
from __future__ import annotations

import json
import os
from functools import cached_property
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from embeddings.files import atomic_dir
from embeddings.index import TagIndex
from embeddings.tags import Vocabulary
from embeddings.word2vec import WordVectors
from pipelines.backbones import create_backbone, get_spec
from pipelines.device import choose_device
from pipelines.features import FeatureConfig, extract_features, extract_images
from pipelines.images import load_image
from pipelines.memory import release_free_memory
from tagger.baselines import KNNTagger
from tagger.gan import GANConfig, Generator
from tagger.sampling import score_words
from tagger.train import WordSpaceConfig, prepare_word_vectors
from tagger.voting import SamplingConfig, rank

FORMAT_VERSION = 1
CONFIG, WEIGHTS, VOCABULARY, VECTORS, KNN = "config.json", "generator.safetensors", "vocabulary.json", "word_vectors.npz", "knn.npz"


class BundleError(ValueError):
    """A model bundle that cannot be loaded; the message names the file and what is wrong."""


class Tagger:
    def __init__(
        self,
        generator: Generator,
        vocabulary: Vocabulary,
        word_vectors: WordVectors,
        backbone: str,
        words: WordSpaceConfig = WordSpaceConfig(),
        sampling: SamplingConfig = SamplingConfig(),
        info: dict | None = None,
        backbone_weights: str | None = None,
        knn: KNNTagger | None = None,
    ):
        if word_vectors.vectors.shape[1] != generator.config.word_dim:
            raise BundleError(f"word vectors are {word_vectors.vectors.shape[1]}-d but the generator makes {generator.config.word_dim}-d")
        self.generator = generator.eval()
        self.vocabulary = vocabulary
        self.word_vectors = word_vectors
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.words_config = words
        self.sampling = sampling
        self.info = info or {}
        self.targets = prepare_word_vectors(word_vectors.vectors, words)
        self.index = TagIndex(list(word_vectors.words), self.targets)
        self.knn = knn
        self._backbone = None

    @property
    def words(self) -> list[str]:
        return self.index.words

    @property
    def device(self) -> torch.device:
        return self.generator.feature_mean.device

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = create_backbone(self.backbone_name, weights=self.backbone_weights, device=self.device)
            if self._backbone.dim != self.generator.config.feature_dim:
                raise BundleError(
                    f"backbone {self.backbone_name} gives {self._backbone.dim}-d features but this model "
                    f"was trained on {self.generator.config.feature_dim}-d features"
                )
        return self._backbone

    def options(self, top_k: int | None = None, min_score: float | None = None, exclude: Sequence[str] = (), seed: int | None = None) -> SamplingConfig:
        """The bundle's sampling settings with per-call overrides."""
        changes = {}
        if top_k is not None:
            changes["top_k"] = top_k
        if min_score is not None:
            changes["min_score"] = min_score
        if seed is not None:
            changes["seed"] = seed
        if exclude:
            changes["exclude"] = tuple(exclude)
        return replace(self.sampling, **changes)

    def excluded_ids(self, tags: Sequence[str]) -> np.ndarray:
        """Vocabulary ids of tags to leave out, given as users type them (normalized like training tags)."""
        pos = {w: i for i, w in enumerate(self.words)}
        ids = {pos[w] for w in map(self.vocabulary.lookup, tags) if w in pos}
        return np.asarray(sorted(ids), dtype=np.int64)

    @property
    def methods(self) -> tuple[str, ...]:
        return ("cgan", "knn", "cgan+knn", "prior") if self.knn is not None else ("cgan", "prior")

    def score_features(self, features: np.ndarray, config: SamplingConfig | None = None, method: str = "cgan") -> np.ndarray:
        """(N, V) word scores for raw image features (N, F) by one tagging method."""
        if method == "cgan":
            return score_words(self.generator, features, self.index, config or self.sampling, self.prior)
        if method == "knn" and self.knn is not None:
            return self.knn.scores(features)
        if method == "cgan+knn" and self.knn is not None:
            # Each method's scores scaled to a best of 1 per photo, then summed: agreement wins.
            both = [self.score_features(features, config, m) for m in ("cgan", "knn")]
            return sum(np.clip(t, 0, None) / np.maximum(t.max(axis=1, keepdims=True), 1e-12) for t in both)
        if method == "prior":
            return np.broadcast_to(self.prior, (len(features), len(self.prior))).copy()
        raise ValueError(f"unknown tagging method {method!r} for this model (choose from {', '.join(self.methods)})")

    @cached_property
    def prior(self) -> np.ndarray:
        """Share of training photos carrying each word."""
        n = self.info.get("train_photos") or int(self.vocabulary.counts.max(initial=1))
        return word_prior(self.vocabulary, self.words, n)

    def predict_features(self, features: np.ndarray, method: str = "cgan", **options) -> list[list[tuple[str, float]]]:
        config = self.options(**options)
        table = self.score_features(features, config, method)
        if method != "cgan" or config.scoring != "votes" or config.prior_power:
            # Only plain votes are shares in 0..1; rescale other scores so min_score means the same.
            table = table / np.maximum(table.max(axis=1, keepdims=True), 1e-12)
        return rank(table, self.words, config, self.excluded_ids(config.exclude))

    def features(self, images: Sequence) -> np.ndarray:
        """Image features for photos given as paths or PIL images (raises ImageError on a bad file)."""
        min_side = self.backbone.preprocessing.resize  # big JPEGs decode at reduced size
        pil = [load_image(im, min_side=min_side) if isinstance(im, (str, Path, bytes)) else im for im in images]
        return extract_images(pil, self.backbone, self.device)

    def predict(self, images: Sequence, method: str = "cgan", **options) -> list[list[tuple[str, float]]]:
        """Tags with scores, best first, for each photo (paths or PIL images)."""
        return self.predict_features(self.features(images), method, **options)

    def tag_paths(self, paths: Sequence[Path], batch_size: int = 64, chunk: int | None = None, num_workers: int | None = None,
                  method: str = "cgan", **options):
        """Yield (path, tags, error) for photo files, decoding in worker processes while the network runs.

        Work goes in chunks of `chunk` photos (default 8 batches), so a caller that records each result loses at most
        one chunk when killed. A photo that cannot be read gets tags None and the reason.
        """
        chunk = chunk or 8 * batch_size
        fcfg = FeatureConfig(backbone=self.backbone_name, weights=self.backbone_weights, batch_size=batch_size,
                             device=str(self.device), **({"num_workers": num_workers} if num_workers is not None else {}))
        for start in range(0, len(paths), chunk):
            part = list(paths[start : start + chunk])
            # The caller gets every failure with its photo and reports it; the extractor need not say it too.
            result = extract_features(part, fcfg, progress=False, backbone=self.backbone, report=False)
            rows = np.flatnonzero(result.ok)
            tags = self.predict_features(result.features[rows], method, **options) if len(rows) else []
            by_row = dict(zip(rows.tolist(), tags))
            errors = result.errors
            del result
            release_free_memory()  # or the heap keeps every chunk's temporaries and grows with the photos
            for i, path in enumerate(part):
                if i in by_row:
                    yield path, by_row[i], ""
                else:
                    yield path, None, _reason(errors.get(i, "not tagged"), path)

    # -- the bundle -------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "backbone": {"name": self.backbone_name, "weights": self.backbone_weights, "feature_dim": self.generator.config.feature_dim},
            "gan": self.generator.config.to_dict(),
            "words": self.words_config.to_dict(),
            "sampling": self.sampling.to_dict(),
            "vocabulary_size": len(self.words),
            "info": self.info,
        }

    def save(self, path: str | Path, half: bool = False, extras: dict[str, Path] | None = None) -> Path:
        """Write the bundle atomically; `half` stores the generator weights in float16 (half their size).

        `extras` are further files copied in under the given names (the training log and curves).
        """
        path = Path(path)
        if path.exists() and not (path / CONFIG).is_file() and any(path.iterdir()):
            raise BundleError(f"{path}: exists and is not a model bundle; refusing to replace it")
        with atomic_dir(path) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
            if half:
                state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            save_file(state, str(tmp / WEIGHTS))
            os.chmod(tmp / WEIGHTS, 0o644)
            self.vocabulary.save(tmp / VOCABULARY)
            self.word_vectors.save(tmp / VECTORS)
            if self.knn is not None:
                self.knn.save(tmp / KNN)
            for name, file in (extras or {}).items():
                shutil.copyfile(file, tmp / name)
            # config.json last: a folder without it is not a bundle.
            (tmp / CONFIG).write_text(json.dumps(self.config_dict(), indent=2, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> "Tagger":
        """Load a bundle; anything damaged or made for another backbone is a BundleError naming the file."""
        path = Path(path)
        cfg_file = path / CONFIG
        if not cfg_file.is_file():
            raise BundleError(f"{path}: not a model bundle (no {CONFIG})")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{cfg_file}: not valid JSON ({_one_line(e)})") from e
        if not isinstance(cfg, dict) or cfg.get("format_version") != FORMAT_VERSION:
            version = cfg.get("format_version") if isinstance(cfg, dict) else None
            raise BundleError(f"{cfg_file}: bundle format {version!r}, this tagger reads format {FORMAT_VERSION}")
        for name in (WEIGHTS, VOCABULARY, VECTORS):
            if not (path / name).is_file():
                raise BundleError(f"{path / name}: missing from the bundle")
        try:
            gan = GANConfig(**cfg["gan"])
            backbone, backbone_weights = cfg["backbone"]["name"], cfg["backbone"].get("weights")
            words = WordSpaceConfig(**cfg["words"])
            sampling = SamplingConfig(**{**cfg["sampling"], "exclude": tuple(cfg["sampling"].get("exclude", ()))})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{cfg_file}: missing or unknown setting ({_one_line(e)})") from e
        _check_backbone(cfg_file, backbone, gan.feature_dim)
        device = choose_device(device) if not isinstance(device, torch.device) else device
        generator = Generator(gan)
        try:
            state = load_file(str(path / WEIGHTS))
            generator.load_state_dict({k: v.float() for k, v in state.items()})
        except Exception as e:  # safetensors raises several types for a damaged file
            raise BundleError(f"{path / WEIGHTS}: cannot load generator weights ({_one_line(e)})") from e
        vocabulary = _load_part(path / VOCABULARY, "the vocabulary", Vocabulary.load)
        wv = _load_part(path / VECTORS, "the word vectors", WordVectors.load)
        if len(wv.words) != cfg.get("vocabulary_size", len(wv.words)):
            raise BundleError(f"{path / VECTORS}: {len(wv.words)} words, config.json says {cfg['vocabulary_size']}")
        if wv.dim != gan.word_dim:
            raise BundleError(f"{path / VECTORS}: {wv.dim}-d vectors, but the generator makes {gan.word_dim}-d")
        missing = [w for w in wv.words if w not in vocabulary]
        if missing:
            raise BundleError(f"{path / VECTORS}: {len(missing)} words are not in {VOCABULARY} (e.g. {missing[:3]})")
        knn = None
        if (path / KNN).is_file():
            knn = _load_part(path / KNN, "the kNN baseline", KNNTagger.load)
            if knn.vocab_size != len(wv.words):
                raise BundleError(f"{path / KNN}: made for {knn.vocab_size} words, the bundle has {len(wv.words)}")
        return cls(
            generator.to(device),
            vocabulary,
            wv,
            backbone=backbone,
            words=words,
            sampling=sampling,
            info=cfg.get("info", {}),
            backbone_weights=backbone_weights,
            knn=knn,
        )


def _one_line(error: Exception) -> str:
    """An exception's message on one line (torch's state-dict errors span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load_part(file: Path, what: str, load):
    try:
        return load(file)
    except Exception as e:  # a damaged file fails in format-specific ways: zip, JSON, npy, missing keys
        raise BundleError(f"{file}: cannot load {what} ({_one_line(e)})") from e


def _check_backbone(cfg_file: Path, name: str, feature_dim: int) -> None:
    """At load time, not at the first photo: the bundle's backbone exists here and gives the features G takes."""
    try:
        spec = get_spec(name)
    except ValueError as e:
        raise BundleError(f"{cfg_file}: made for backbone {name!r}, which this tagger does not have ({_one_line(e)})") from None
    if spec.dim != feature_dim:
        raise BundleError(f"{cfg_file}: backbone {name} gives {spec.dim}-d features but this model was trained on {feature_dim}-d features")


def word_prior(vocab: Vocabulary, words: list[str], n_photos: int) -> np.ndarray:
    """Share of training photos carrying each word."""
    return np.array([vocab.counts[vocab.index(w)] for w in words], dtype=np.float32) / max(n_photos, 1)


def _reason(error: str, path: Path) -> str:
    """The reason alone, without the "path: " that feature errors start with."""
    prefix = f"{path}: "
    return error[len(prefix):] if error.startswith(prefix) else error
