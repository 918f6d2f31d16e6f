"""`Tagger`: a loaded model bundle, and the one function that tags photos with it.

Every entry point (predict, `tagger tag` on either engine, the service, evaluate, calibration)
hands photos as `Evidence` (image features + what decoding measured: chroma, blank frame, GPS
places) and a `TagOptions` to `Tagger.tag` (tags with scores, or the reason a photo has none) or
`Tagger.score` (the score tables evaluation and calibration need); nothing else calls the scorers.
Inside: the non-finite check, the method's raw scores, what the pixels rule out, then probabilities
where the bundle has a map for the method (that a person agrees, else that the owner uses the tag; otherwise scores relative to the photo's best, or
vote shares for the paper's plain votes), ranked. `tag` then gives a blank frame no tags and a note
saying why, and puts the places of a photo's GPS before its content tags.

The bundle's methods (`Tagger.methods`): the generator, named after its family (cgan, cvae,
caae); knn and the generator + knn combination when the bundle has the kNN baseline; classifier
and generator + knn + classifier when the bundle's backbone has a retrained tail with its word layer
(tagger.scoring.classifier); head (the
backbone's ImageNet classifier read as words, tagger.scoring.head) and the generator + knn + head
combination when the bundle has the class -> word links; prior. A
`Tagger` is built complete and never changed: `replace` makes a new one (training adds the
calibration that way). Loading and saving live in `tagger.bundle` (`tagger.load`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from embeddings.imagenet import ClassWords
from embeddings.index import TagIndex
from embeddings.kinds import Kind, WordKinds
from embeddings.tags import Vocabulary, normalize_tag
from embeddings.word2vec import WordVectors
from pipelines.backbones import create_backbone, load_classifier
from pipelines.errors import OptionError
from pipelines.features import extract_images
from pipelines.images import ImageError, load_image
from pipelines.measures import measure
from tagger.generators import WordGenerator, family_for
from tagger.scoring.calibration import Calibration
from tagger.scoring.condition import ConditionConfig, build_condition
from tagger.scoring.evidence import Evidence, rule_out
from tagger.scoring.classifier import ClassifierScorer, WordClassifier
from tagger.scoring.head import HEAD_WEIGHT, HeadScorer
from tagger.scoring.knn import KNNTagger
from tagger.scoring.options import ALL_KINDS, DEFAULT_KINDS, TagOptions
from tagger.scoring.scorers import GeneratorScorer, KNNScorer, PriorScorer, Scorer, SumScorer, word_prior
from tagger.scoring.voting import SamplingConfig, rank
from tagger.scoring.words import WordSpaceConfig, prepare_word_vectors
from tagger.training.summary import TrainingSummary

NON_FINITE = "no features (non-finite output)"
# The score of a place named by the photo's own GPS: where it was taken is known, not guessed (a content tag's
# score is the probability that a person looking at the photo agrees with it). Being the highest score, the places come first, the
# city then the country, and they come in addition to the top_k content tags.
PLACE_SCORE = 1.0


class Tagged(NamedTuple):
    """One photo's result: its tags with scores, best first, or None and the error.

    note: why a photo that did not fail has no tags ("no tags: near-black frame"); it is not an error.
    """

    tags: list[tuple[str, float]] | None
    error: str = ""
    note: str = ""


@dataclass(frozen=True)
class Scores:
    """(N, V) tables for N photos: `shown` as users see the scores, `order` the raw scores they rank by."""

    shown: np.ndarray
    order: np.ndarray
    ok: np.ndarray  # (N,) photos with usable features; the other rows are -inf


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
        fingerprint: str = "",
        kinds: WordKinds | None = None,
        acceptance: dict[str, Calibration] | None = None,
        head: ClassWords | None = None,
        classifier: WordClassifier | None = None,
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
        self.info = dict(info or {})
        self.knn = knn
        self.condition = condition
        self.calibration = dict(calibration or {})  # per method: raw score -> probability the owner uses the tag
        self.acceptance = dict(acceptance or {})  # per method: raw score -> probability a person looking at the photo agrees
        self.runtime = runtime  # the backbone's runtime: torch, onnx, onnx-int8 (None: choose_runtime's pick for the device)
        self.fingerprint = fingerprint  # content hash of the bundle it was loaded from ("" when built in memory)
        self.kinds = kinds  # each word's kind and keyword (embeddings.kinds); None: every word is shown, as it is
        self.head = head  # ImageNet class -> word links (embeddings.imagenet); None: no head methods
        self.classifier = classifier  # features -> words, trained with a retrained backbone tail; None: no classifier methods
        self.targets = prepare_word_vectors(word_vectors.vectors, words)
        self.index = TagIndex(list(word_vectors.words), self.targets)
        self.summary = TrainingSummary.from_dict(self.info)
        n = self.summary.train_photos or int(vocabulary.counts.max(initial=1))
        self.prior = word_prior(vocabulary, self.words, n)  # share of training photos carrying each word
        gen = GeneratorScorer(self.family, self.generator, self.index, self.prior, self.conditions)
        found: list[Scorer] = [gen]
        if knn is not None:
            found += [KNNScorer(knn), SumScorer([gen, KNNScorer(knn)])]
        found += self._classifier_scorers(gen)
        found += self._head_scorers(gen)
        found.append(PriorScorer(self.prior))
        self.scorers = {s.name: s for s in found}
        self.default_method = method or self.family
        if self.default_method not in self.scorers:
            raise ValueError(f"default method {self.default_method!r} is not one of the bundle's ({', '.join(self.scorers)})")
        unknown = sorted((set(self.calibration) | set(self.acceptance)) - set(self.scorers))
        if unknown:
            raise ValueError(f"calibrates {', '.join(unknown)}, which this bundle does not have")
        missing = [w for w in self.words if kinds is not None and w not in kinds.kinds]
        if missing:
            raise ValueError(f"the word kinds lack {len(missing)} of the vocabulary's words (e.g. {missing[0]!r})")
        # Words of one keyword (kids, child, children -> kid) are one tag: the group's first word (the most
        # frequent) stands for it, with the best score of any of them, under the keyword's name.
        self.shown_words = [kinds.keywords[w] for w in self.words] if kinds is not None else list(self.words)
        self._kind = np.array([kinds.kinds[w].value for w in self.words] if kinds is not None else [""] * len(self.words))
        first: dict[str, int] = {}
        groups: dict[int, list[int]] = {}
        for i, keyword in enumerate(self.shown_words):
            groups.setdefault(first.setdefault(keyword, i), []).append(i)
        self._groups = [(head, members) for head, members in groups.items() if len(members) > 1]
        self._backbone = None
        self._built = True

    def _classifier_scorers(self, gen: Scorer) -> list[Scorer]:
        """classifier, and generator + knn + classifier, where the bundle has a classifier (tagger.scoring.classifier)."""
        if self.classifier is None:
            return []
        if (self.classifier.words, self.classifier.dim) != (len(self.words), self.feature_dim):
            raise ValueError(f"the classifier maps {self.classifier.dim}-d features to {self.classifier.words} words, "
                             f"the model has {self.feature_dim}-d features and {len(self.words)} words")
        own = ClassifierScorer(self.classifier)
        return [own] + ([SumScorer([gen, KNNScorer(self.knn), own])] if self.knn is not None else [])

    def _head_scorers(self, gen: Scorer) -> list[Scorer]:
        """head, and generator + knn + head, where the bundle has class -> word links (the classifier is read on first use)."""
        if self.head is None:
            return []
        head = HeadScorer(lambda: load_classifier(self.backbone_name, self.backbone_weights), self.head, self.words)
        return [head] + ([SumScorer([gen, KNNScorer(self.knn), head], weights=[1.0, 1.0, HEAD_WEIGHT])] if self.knn is not None else [])

    def __setattr__(self, name, value):
        if getattr(self, "_built", False):
            raise AttributeError(f"a Tagger is not changed once built (set {name!r}): use tagger.replace({name}=...)")
        object.__setattr__(self, name, value)

    def replace(self, **changes) -> "Tagger":
        """A new Tagger with the same parts but `changes` (constructor arguments: calibration, method, info, ...)."""
        given = dict(generator=self.generator, vocabulary=self.vocabulary, word_vectors=self.word_vectors, backbone=self.backbone_name,
                     words=self.words_config, sampling=self.sampling, info=self.info, backbone_weights=self.backbone_weights,
                     knn=self.knn, condition=self.condition, calibration=self.calibration, method=self.default_method,
                     runtime=self.runtime, fingerprint=self.fingerprint, kinds=self.kinds, acceptance=self.acceptance,
                     head=self.head, classifier=self.classifier)
        unknown = set(changes) - set(given)
        if unknown:
            raise TypeError(f"Tagger has no part {', '.join(sorted(unknown))}")
        return Tagger(**{**given, **changes})

    # -- what the bundle is ------------------------------------------------------------------------

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
    def feature_dim(self) -> int:
        """Width of the image features (the generator's condition may append more)."""
        return self.generator.config.feature_dim - (len(self.words) if self.condition.neighbour_votes else 0)

    @property
    def backbone(self):
        """The image network of the bundle's backbone, built on first use (and then kept: it is the slow part)."""
        if self._backbone is None:
            backbone = create_backbone(self.backbone_name, weights=self.backbone_weights, device=self.device, runtime=self.runtime)
            if backbone.dim != self.feature_dim:
                raise ValueError(f"backbone {self.backbone_name} gives {backbone.dim}-d features but this model "
                                 f"was trained on {self.feature_dim}-d features")
            object.__setattr__(self, "_backbone", backbone)
        return self._backbone

    def conditions(self, features: np.ndarray) -> np.ndarray:
        """What the generator is conditioned on, for raw image features of photos it did not train on."""
        return build_condition(features, self.condition, self.knn)

    # -- options -----------------------------------------------------------------------------------

    def method_of(self, options: TagOptions) -> str:
        """The method `options` asks for (an unknown one is an OptionError listing the bundle's)."""
        method = options.method or self.default_method
        if method not in self.scorers:
            raise OptionError(f"unknown tagging method {method!r} for this model (choose from {', '.join(self.methods)})")
        return method

    def sampling_for(self, options: TagOptions) -> SamplingConfig:
        """The bundle's sampling settings with the options' overrides."""
        changes = {k: getattr(options, k) for k in ("top_k", "min_score", "seed") if getattr(options, k) is not None}
        if options.exclude:
            changes["exclude"] = tuple(options.exclude)
        return replace(self.sampling, **changes)

    def settings(self, options: TagOptions = TagOptions()) -> str:
        """Everything a photo's tags depend on besides the photo, in one line: batch runs re-tag a photo when it changes."""
        config = self.sampling_for(options)
        return (f"model={self.fingerprint[:16] or 'unsaved'} method={self.method_of(options)} top_k={config.top_k} "
                f"min_score={config.min_score:g} seed={config.seed} exclude={','.join(sorted(config.exclude))} "
                f"kinds={','.join(self.kinds_of(options))} evidence=chroma,blank{',gps' if self.shows_places(options) else ''}")

    def kinds_of(self, options: TagOptions) -> tuple[str, ...]:
        """The kinds of words `options` shows (("all",) for a bundle without word kinds, which shows every word)."""
        if self.kinds is None or (options.kinds and ALL_KINDS in options.kinds):
            return (ALL_KINDS,)
        return tuple(sorted(options.kinds or DEFAULT_KINDS))

    def shown_truth(self, truth: Sequence[set[int]], options: TagOptions = TagOptions()) -> list[set[int]]:
        """Each photo's true word ids as the tags `options` shows can match them: filed under their keyword's
        word (an owner's `flowers` is matched by a shown `flower`) and of the kinds shown."""
        head = {m: h for h, members in self._groups for m in members}
        kinds = self.kinds_of(options)
        shows = np.ones(len(self.words), dtype=bool) if ALL_KINDS in kinds else np.isin(self._kind, kinds)
        return [{head.get(w, w) for w in t if shows[w]} for t in truth]

    def shows_places(self, options: TagOptions) -> bool:
        """Whether the places of a photo's GPS are shown: by default, with "all" and with "place" among the kinds."""
        kinds = options.kinds
        return kinds is None or self.kinds is None or ALL_KINDS in kinds or Kind.PLACE.value in kinds

    def excluded_ids(self, tags: Sequence[str]) -> np.ndarray:
        """Vocabulary ids of tags to leave out, given as users type them (normalized like training tags)."""
        pos = {w: i for i, w in enumerate(self.words)}
        wanted = set(map(self.vocabulary.lookup, tags)) | set(tags)
        ids = {pos[w] for w in wanted if w in pos} | {i for i, k in enumerate(self.shown_words) if k in wanted}
        return np.asarray(sorted(ids), dtype=np.int64)

    # -- the one tagging function ------------------------------------------------------------------

    def score(self, evidence: Evidence, options: TagOptions = TagOptions(), calibrated: bool = True) -> Scores:
        """Score tables for the photos of `evidence`: the method's raw scores with what the pixels rule out
        removed (`order`), and as users see them (`shown`, when `calibrated`: the probability that a person
        looking at the photo agrees where the bundle has that map for the method, else the probability that
        the owner uses the tag where it has that one; else vote shares for plain votes, else relative to
        each photo's best)."""
        method, config = self.method_of(options), self.sampling_for(options)
        ok = evidence.finite
        order = np.full((len(evidence), len(self.words)), -np.inf, dtype=np.float32)
        if ok.any():
            order[ok] = self.arrange(self.scorers[method].scores(evidence.features[ok], config), evidence.colour[ok], options)
        if calibrated and method in self.acceptance:
            shown = self.acceptance[method](order)
        elif calibrated and method in self.calibration:
            shown = self.calibration[method](order)
        elif self.scorers[method].shares(config) or not calibrated:
            shown = order
        else:
            shown = order / np.maximum(order.max(axis=1, keepdims=True), 1e-12)
        shown = np.where(ok[:, None], shown, -np.inf)
        return Scores(shown, order, ok)

    def arrange(self, raw: np.ndarray, colour: np.ndarray, options: TagOptions = TagOptions()) -> np.ndarray:
        """A method's raw scores (N, V) -> the scores photos rank by: what the pixels (`colour`, (N,)) rule out
        removed, a keyword's words as one (its first word, with their best score), only the kinds `options` shows."""
        order = np.array(rule_out(raw, self.words, colour), dtype=np.float32)  # a copy: the scorer's table stays as it was
        for head, members in self._groups:
            order[:, head] = order[:, members].max(axis=1)
            order[:, [m for m in members if m != head]] = -np.inf
        kinds = self.kinds_of(options)
        if ALL_KINDS not in kinds:
            order[:, ~np.isin(self._kind, kinds)] = -np.inf
        return order

    def tag(self, evidence: Evidence, options: TagOptions = TagOptions(), scores: Scores | None = None) -> list[Tagged]:
        """Tags with scores, best first, for each photo of `evidence`.

        A photo without usable features gets the error; a blank frame no tags and a note saying why (its GPS
        place too: a blank frame shows nothing of it); any other photo with places from its GPS gets them
        first, scored PLACE_SCORE, then its top_k content tags (a content tag of the same name is left out).
        `scores`: `score(evidence, options)` when the caller has it already (an evaluation needs both).
        """
        config = self.sampling_for(options)
        if scores is None:
            scores = self.score(evidence, options)
        elif scores.shown.shape != (len(evidence), len(self.words)):
            raise ValueError(f"scores of shape {scores.shown.shape} for {len(evidence)} photos and {len(self.words)} words")
        ranked = rank(scores.shown, self.shown_words, config, self.excluded_ids(config.exclude), order=scores.order)
        shown = self.shows_places(options)
        excluded = {normalize_tag(t) for t in config.exclude} | {self.vocabulary.lookup(t) for t in config.exclude}
        out = []
        for tags, ok, blank, places in zip(ranked, scores.ok, evidence.blank_reasons, evidence.places):
            if not ok:
                out.append(Tagged(None, NON_FINITE))
            elif blank:
                out.append(Tagged([], note=f"no tags: {blank}"))
            else:
                known = [p for p in (places or ()) if shown and p not in excluded]
                out.append(Tagged([(p, PLACE_SCORE) for p in known] + [(t, s) for t, s in tags if t not in known]))
        return out

    # -- photos in memory --------------------------------------------------------------------------

    def read(self, images: Sequence) -> Evidence:
        """The evidence of photos given as paths, bytes or decoded PIL images: their features, and what is measured
        on the same pixels and their EXIF (`pipelines.measures`; a file that cannot be read raises ImageError)."""
        min_side = self.backbone.preprocessing.resize  # big JPEGs decode at reduced size
        pil = [load_image(im, min_side=min_side) if isinstance(im, (str, Path, bytes)) else im for im in images]
        return Evidence.of(extract_images(pil, self.backbone, self.device), [measure(im) for im in pil])

    def predict(self, images: Sequence, options: TagOptions = TagOptions()) -> list[list[tuple[str, float]]]:
        """Tags with scores, best first, for each photo (paths, bytes or PIL images); a photo that cannot be read raises ImageError.

        A blank frame gets an empty list (`tag` says why)."""
        out = []
        for image, result in zip(images, self.tag(self.read(images), options)):
            if result.tags is None:
                raise ImageError(str(image) if isinstance(image, (str, Path)) else "photo", result.error)
            out.append(result.tags)
        return out
