"""`Tagger`: a loaded model bundle that tags photos, one scorer per tagging method.

Its methods (`Tagger.methods`): the bundle's generator, named after its family (cgan, cvae, caae);
knn and the generator + knn combination when the bundle has the kNN baseline; prior. The bundle
names its default (`tagger train` picks the generator or its combination with kNN, whichever did
better on validation photos). Where the bundle has a calibration for a method, its scores
are probabilities that the photo's owner would use the tag (`tagger.scoring.calibration`); otherwise they
are relative to the photo's best tag (or vote shares, for the paper's plain votes). Saving and
loading live in `tagger.bundle`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from embeddings.index import TagIndex
from embeddings.tags import Vocabulary
from embeddings.word2vec import WordVectors
from pipelines.backbones import create_backbone
from pipelines.errors import OptionError
from pipelines.cache import FeatureCache
from pipelines.features import Batch, extract_images, hash_files, iter_batches
from pipelines.images import COLOUR_CHROMA, is_colour, load_image
from pipelines.memory import release_free_memory
from tagger.scoring.knn import KNNTagger
from tagger.scoring.calibration import Calibration
from tagger.scoring.condition import ConditionConfig, build_condition
from tagger.generators import WordGenerator, family_for
from tagger.scoring.scorers import GeneratorScorer, KNNScorer, PriorScorer, Scorer, SumScorer, word_prior
from tagger.training.summary import TrainingSummary
from tagger.scoring.words import WordSpaceConfig, prepare_word_vectors
from tagger.scoring.voting import SamplingConfig, rank


# Words a colour photo never gets: the backbone's features barely tell a colour photo from a black-and-white
# one of the same scene, but the pixels do (`pipelines.images.is_colour`).
BW_WORDS = ("blackandwhite",)


CHUNK_BATCHES = 2  # tag_paths works in chunks of this many batches (the ray engine's units are the same chunks)
CACHE_SHARD = 4096  # photos per feature-cache shard tag_paths writes (20 MB at 1280-d): few shards, little lost to a kill


class Tagger:
    def __init__(
        self,
        generator: WordGenerator,
        vocabulary: Vocabulary,
        word_vectors: WordVectors,
        backbone: str,
        words: WordSpaceConfig = WordSpaceConfig(),
        sampling: SamplingConfig = SamplingConfig(),
        info: dict | None = None,
        backbone_weights: str | None = None,
        knn: KNNTagger | None = None,
        condition: ConditionConfig = ConditionConfig(),
        calibration: dict[str, Calibration] | None = None,
        method: str | None = None,
        runtime: str | None = None,
    ):
        if word_vectors.vectors.shape[1] != generator.config.word_dim:
            raise ValueError(f"word vectors are {word_vectors.vectors.shape[1]}-d but the generator makes {generator.config.word_dim}-d")
        if condition.neighbour_votes and knn is None:
            raise ValueError("the generator is conditioned on neighbour votes but the bundle has no kNN tagger")
        self.generator = generator.eval()
        self.family = family_for(generator.config)
        self.vocabulary = vocabulary
        self.word_vectors = word_vectors
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.words_config = words
        self.sampling = sampling
        self.info = info or {}
        self.knn = knn
        self.condition = condition
        self.calibration = dict(calibration or {})
        self.method = method  # the method it tags with by default (None: the generator's)
        self.runtime = runtime  # the backbone's runtime: torch, onnx, onnx-int8 (None: choose_runtime's pick for the device)
        self.targets = prepare_word_vectors(word_vectors.vectors, words)
        self.index = TagIndex(list(word_vectors.words), self.targets)
        self._backbone = None
        self.fingerprint = ""  # content hash of the bundle it was loaded from ("" when built in memory)

    @property
    def scorers(self) -> dict[str, Scorer]:
        """Every tagging method of this bundle by name (built on use: cheap, and right after `knn` is set)."""
        gen = GeneratorScorer(self.family, self.generator, self.index, self.prior, self.conditions)
        found: list[Scorer] = [gen]
        if self.knn is not None:
            knn = KNNScorer(self.knn)
            found += [knn, SumScorer([gen, knn])]
        found.append(PriorScorer(self.prior))
        return {s.name: s for s in found}

    @property
    def summary(self) -> TrainingSummary:
        """What the training run did (the bundle's info), typed."""
        return TrainingSummary.from_dict(self.info)

    @property
    def words(self) -> list[str]:
        return self.index.words

    @property
    def device(self) -> torch.device:
        return self.generator.device

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.scorers)

    @property
    def default_method(self) -> str:
        return self.method or self.family

    @cached_property
    def prior(self) -> np.ndarray:
        """Share of training photos carrying each word."""
        n = self.summary.train_photos or int(self.vocabulary.counts.max(initial=1))
        return word_prior(self.vocabulary, self.words, n)

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = create_backbone(self.backbone_name, weights=self.backbone_weights, device=self.device,
                                             runtime=self.runtime)
            if self._backbone.dim != self.feature_dim:
                raise ValueError(
                    f"backbone {self.backbone_name} gives {self._backbone.dim}-d features but this model "
                    f"was trained on {self.feature_dim}-d features"
                )
        return self._backbone

    @property
    def feature_dim(self) -> int:
        """Width of the image features (the generator's condition may append more)."""
        return self.generator.config.feature_dim - (len(self.words) if self.condition.neighbour_votes else 0)

    def conditions(self, features: np.ndarray) -> np.ndarray:
        """What the generator is conditioned on, for raw image features of photos it did not train on."""
        return build_condition(features, self.condition, self.knn)

    def scorer(self, method: str | None = None) -> Scorer:
        method = method or self.default_method
        if method not in self.scorers:
            raise OptionError(f"unknown tagging method {method!r} for this model (choose from {', '.join(self.methods)})")
        return self.scorers[method]

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

    def settings(self, method: str | None = None, **options) -> str:
        """Everything a photo's tags depend on besides the photo, in one line: batch runs re-tag a photo when it changes."""
        config = self.options(**options)
        return (f"model={self.fingerprint[:16] or 'unsaved'} method={method or self.default_method} top_k={config.top_k} "
                f"min_score={config.min_score:g} seed={config.seed} exclude={','.join(sorted(config.exclude))}")

    def excluded_ids(self, tags: Sequence[str]) -> np.ndarray:
        """Vocabulary ids of tags to leave out, given as users type them (normalized like training tags)."""
        pos = {w: i for i, w in enumerate(self.words)}
        ids = {pos[w] for w in map(self.vocabulary.lookup, tags) if w in pos}
        return np.asarray(sorted(ids), dtype=np.int64)

    def score_features(self, features: np.ndarray, config: SamplingConfig | None = None, method: str | None = None) -> np.ndarray:
        """(N, V) raw word scores for raw image features (N, F) by one tagging method."""
        return self.scorer(method).scores(features, config or self.sampling)

    def shown_scores(self, table: np.ndarray, method: str | None = None, config: SamplingConfig | None = None) -> np.ndarray:
        """The scores users see for a raw table: probabilities where the method is calibrated, else vote
        shares for plain votes, else relative to each photo's best."""
        method = method or self.default_method
        if method in self.calibration:
            return self.calibration[method](table)
        if self.scorer(method).shares(config or self.sampling):
            return table
        return table / np.maximum(table.max(axis=1, keepdims=True), 1e-12)

    def apply_evidence(self, table: np.ndarray, colour: np.ndarray | None) -> np.ndarray:
        """Raw scores with what the pixels rule out removed: no black-and-white words for a colour photo.

        colour: (N,) whether each photo has colour (None: not known, nothing removed).
        """
        ids = [i for i, w in enumerate(self.words) if w in BW_WORDS]
        if colour is None or not ids or not np.any(colour):
            return table
        table = table.copy()
        table[np.ix_(np.flatnonzero(colour), ids)] = -np.inf
        return table

    def table(self, features: np.ndarray, method: str | None = None, colour: np.ndarray | None = None,
              config: SamplingConfig | None = None) -> np.ndarray:
        """(N, V) the scores that rank each photo's tags, as users get them: the method's raw scores, what the
        pixels rule out removed, then probabilities where the method is calibrated."""
        config = config or self.sampling
        raw = self.apply_evidence(self.score_features(features, config, method), colour)
        return self.shown_scores(raw, method, config) if (method or self.default_method) in self.calibration else raw

    def predict_features(self, features: np.ndarray, method: str | None = None, colour: np.ndarray | None = None,
                         **options) -> list[list[tuple[str, float]]]:
        """Tags with scores, best first, for raw image features; `colour` (N,) says which photos have colour."""
        config = self.options(**options)
        table = self.apply_evidence(self.score_features(features, config, method), colour)
        return rank(self.shown_scores(table, method, config), self.words, config, self.excluded_ids(config.exclude), order=table)

    def features(self, images: Sequence) -> np.ndarray:
        """Image features for photos given as paths or PIL images (raises ImageError on a bad file)."""
        min_side = self.backbone.preprocessing.resize  # big JPEGs decode at reduced size
        pil = [load_image(im, min_side=min_side) if isinstance(im, (str, Path, bytes)) else im for im in images]
        return extract_images(pil, self.backbone, self.device)

    def predict(self, images: Sequence, method: str | None = None, **options) -> list[list[tuple[str, float]]]:
        """Tags with scores, best first, for each photo (paths or PIL images)."""
        min_side = self.backbone.preprocessing.resize  # big JPEGs decode at reduced size
        pil = [load_image(im, min_side=min_side) if isinstance(im, (str, Path, bytes)) else im for im in images]
        colour = np.array([is_colour(im) for im in pil], dtype=bool)
        return self.predict_features(self.features(pil), method, colour=colour, **options)

    def tag_paths(self, paths: Sequence[Path], batch_size: int = 64, chunk: int | None = None, num_workers: int | None = None,
                  method: str | None = None, cache_dir: str | Path | None = None, **options):
        """Yield (path, tags, error) for photo files, decoding in worker processes while the network runs.

        The photos go through one stream of batches (`pipelines.features.iter_batches`: the workers start
        once); every `chunk` photos (default 2 batches, a few seconds of work on a CPU) are tagged and
        yielded, so a caller that records each result loses at most one chunk when killed and shows
        progress every few seconds. A photo that cannot be read gets tags None and the reason.

        cache_dir: a feature cache (`pipelines.cache.FeatureCache`, shared with `tagger train` and
        `tagger features`): photos whose features and colour it holds are tagged first, without decoding,
        and the others are added to it, so tagging the same photos again with other options or another
        bundle on the same backbone does not run the network. Without it, photos are yielded in order.
        """
        self.scorer(method)  # an unknown method fails before the first photo
        chunk = chunk or CHUNK_BATCHES * batch_size
        paths = list(paths)
        todo = list(range(len(paths)))
        cache = FeatureCache(cache_dir, self.backbone) if cache_dir is not None else None
        if cache is not None:
            hashes = hash_files(paths)
            known = cache.lookup_rows({h for h in hashes if isinstance(h, str)})
            # A shard written without chroma cannot say the photo's colour: such photos are decoded again.
            hit = [i for i, h in enumerate(hashes) if isinstance(h, str) and h in known and np.isfinite(known[h][1])]
            for start in range(0, len(hit), chunk):
                rows = hit[start:start + chunk]
                cached = Batch(rows, np.stack([known[hashes[i]][0] for i in rows]), [hashes[i] for i in rows],
                               [known[hashes[i]][1] for i in rows], [])
                yield from self._tag_batches(paths, rows, [cached], method, options)
            taken = set(hit)
            todo = [i for i in todo if i not in taken]
        pending: list[Batch] = []
        unsaved: list[Batch] = []
        done = 0  # photos of todo yielded so far: the pending batches cover the next ones, in order
        for batch in iter_batches(paths, self.backbone, batch_size, num_workers, rows=todo, hash=cache is not None):
            pending.append(batch)
            covered = sum(len(b.rows) + len(b.failed) for b in pending)
            if covered >= chunk or done + covered == len(todo):
                yield from self._tag_batches(paths, todo[done:done + covered], pending, method, options)
                if cache is not None:
                    unsaved += pending
                    if sum(len(b.rows) for b in unsaved) >= CACHE_SHARD or done + covered == len(todo):
                        self._cache_batches(cache, unsaved)
                        unsaved = []
                done, pending = done + covered, []
                release_free_memory()  # or the heap keeps every chunk's temporaries and grows with the photos
        if cache is not None:
            cache.trim()

    @staticmethod
    def _cache_batches(cache: FeatureCache, batches: list[Batch]) -> None:
        """One shard for the photos of `batches` that decoded to finite features."""
        rows = [(h, f, c) for b in batches for h, f, c in zip(b.hashes, b.features, b.chroma) if h and np.isfinite(f).all()]
        if rows:
            cache.write(f"tag-{time.time_ns():x}-{os.getpid()}", [h for h, _, _ in rows], np.stack([f for _, f, _ in rows]),
                        [c for _, _, c in rows])

    def _tag_batches(self, paths: list[Path], positions: list[int], batches: list[Batch], method: str | None, options: dict):
        """(path, tags, error) for paths[i], i in `positions`: the photos `batches` decoded or failed."""
        rows = [r for b in batches for r in b.rows]
        failed = {r: reason for b in batches for r, reason in b.failed}
        by_row = {}
        if rows:
            features = np.concatenate([b.features for b in batches])
            finite = np.isfinite(features).all(axis=1)
            for r in np.asarray(rows)[~finite].tolist():
                failed[r] = "no features (non-finite output)"
            chroma = np.array([c for b in batches for c in b.chroma], dtype=np.float32)
            kept = np.asarray(rows)[finite].tolist()
            if kept:
                tags = self.predict_features(features[finite], method, colour=chroma[finite] > COLOUR_CHROMA, **options)
                by_row = dict(zip(kept, tags))
        for i in positions:
            if i in by_row:
                yield paths[i], by_row[i], ""
            else:
                yield paths[i], None, failed.get(i, "not tagged")

    def save(self, path: str | Path, half: bool = False, extras: dict[str, Path] | None = None) -> Path:
        """Write the bundle atomically (`tagger.bundle.save`)."""
        from tagger.bundle import save

        return save(self, path, half=half, extras=extras)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, runtime: str | None = None) -> "Tagger":
        """Load a bundle (`tagger.bundle.load`); anything damaged is a BundleError naming the file.

        runtime: what runs the backbone (not part of the bundle: torch and onnx give the same features within 1e-4).
        """
        from pipelines.device import choose_runtime
        from tagger.bundle import load

        tagger = load(path, device=device)
        choose_runtime(runtime, tagger.device)  # an impossible choice fails here, not at the first photo
        tagger.runtime = runtime
        return tagger
