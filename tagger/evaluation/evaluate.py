"""`tagger evaluate`: every tagging method of one or more bundles on the same held-out photos and features.

Ground truth is each photo's normalized user tags inside the model's vocabulary (photos with none
are left out and counted), and, where the data has them, the 24 MIRFLICKR concept labels. A
label is scored by the best score of the vocabulary words that name it (`LABEL_WORDS`), so every
method ranks the 24 labels with no extra training.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.datasets import check_photos, read_dataset, split_ids
from pipelines.errors import OptionError
from pipelines.features import FeatureConfig, extract_features
from pipelines.images import Blank
from tagger.evaluation.audit import audit
from tagger.scoring.calibration import candidates, expected_calibration_error, reliability
from tagger.evaluation.metrics import paired_difference, precision_at_k, report, top_ids, visualness
from tagger.model import Scores, Tagger
from tagger.scoring.evidence import Evidence
from tagger.scoring.concepts import LABEL_WORDS, concept_truth
from tagger.scoring.options import TagOptions

# Calibration is judged on each photo's best words, as many as a photo shows by default.
CALIBRATION_TOP = 10

@dataclass
class Evaluation:
    split: str
    photos: int  # photos in the split whose features could be extracted
    left_out: int  # of those, photos without a single in-vocabulary user tag
    tags: dict[str, dict] = field(default_factory=dict)  # row -> metrics against user tags
    labels: dict[str, dict] = field(default_factory=dict)  # row -> metrics against concept labels
    seconds: dict[str, float] = field(default_factory=dict)  # row -> wall time of its tagging
    label_words: dict[str, list[str]] = field(default_factory=dict)  # label -> words used for it
    samples: list[dict] = field(default_factory=list)  # a few photos with truth and each row's tags
    versus_knn: dict[str, dict] = field(default_factory=dict)  # row -> its P@5 minus its bundle's kNN's, per photo
    versus_knn_shown: dict[str, dict] = field(default_factory=dict)  # the same against the owners' tags of the kinds shown
    calibration: dict[str, dict] = field(default_factory=dict)  # row -> ECE and reliability bins of its calibrated scores
    audit: dict[str, dict] = field(default_factory=dict)  # row -> place / self / blackandwhite-on-colour counts (tagger.evaluation.audit)
    visualness: dict[str, dict] = field(default_factory=dict)  # word -> AP, prior and lift under the first bundle's default method (--kinds all)
    shown: dict[str, dict] = field(default_factory=dict)  # row -> what its default rule shows (top_k, min_score): counts, precision, kinds

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _table(tagger: Tagger, scores: Scores, method: str) -> np.ndarray:
    """(N, V) a method's scores (`Tagger.score`'s) as evaluated: probabilities where it is calibrated, else its raw
    scores (not scaled to each photo's best, which would change how photos rank for one tag, MiAP's order)."""
    return scores.shown if method in tagger.calibration else scores.order


def shown_report(tagger: Tagger, tagged: list, truth: list[set[int]], concepts: tuple[np.ndarray, list[set[int]], np.ndarray],
                 blank: np.ndarray | None = None) -> dict:
    """What the bundle's default rule shows, as `Tagger.tag` gives it (tagged: its results, one per photo; its
    top_k best tags scored at least its min_score, none on a blank frame, GPS places first): tags per photo,
    photos with none, how often a shown tag is the owner's (of the photos with an owner's tag), how often a
    shown concept word is right by the labels, per kind of word its share of the shown tags and how often
    those were the owner's, and the blank frames among the photos (blank: each photo's
    pipelines.images.Blank) with the tags shown on them (0 when the rule works)."""
    config = tagger.sampling_for(TagOptions())
    home: dict[str, int] = {}
    for i, keyword in enumerate(tagger.shown_words):
        home.setdefault(keyword, i)  # a keyword's tag is scored at its group's first word, as shown_truth files the truth
    # A GPS place outside the vocabulary has no word id (-1): it counts as a tag of kind place, never judged right.
    given = [[home.get(t, -1) for t, _ in (r.tags or [])] for r in tagged]
    counts = np.array([len(g) for g in given], dtype=np.int64)
    is_blank = np.zeros(len(given), bool) if blank is None else np.asarray(blank) > Blank.NONE
    judged = [(g, t) for g, t in zip(given, truth) if t]
    known, ctruth, labelled = concepts
    concept_hits = [w in ctruth[i] for i in np.flatnonzero(labelled) for w in given[i] if w >= 0 and known[w]]
    kinds: dict[str, dict] = {}
    total = max(int(counts.sum()), 1)
    for g, t in zip(given, truth):
        for w in g:
            k = kinds.setdefault((str(tagger._kind[w]) or "all") if w >= 0 else "place", {"tags": 0, "right": 0, "judged": 0})
            k["tags"] += 1
            if t:
                k["judged"] += 1
                k["right"] += int(w in t)
    return {
        "top_k": config.top_k, "min_score": config.min_score, "tags/photo": float(counts.mean()) if len(counts) else float("nan"),
        "none": float((counts == 0).mean()) if len(counts) else float("nan"),
        "owners": float(sum(len(set(g) & t) for g, t in judged) / max(sum(len(g) for g, _ in judged), 1)),
        "concepts": float(np.mean(concept_hits)) if concept_hits else float("nan"), "concept tags": len(concept_hits),
        "kinds": {k: {"share": v["tags"] / total, "right": v["right"] / v["judged"] if v["judged"] else float("nan")}
                  for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]["tags"])},
        "blank frames": int(is_blank.sum()), "tags on blank frames": int(counts[is_blank].sum()),
    }


def label_table(word_table: np.ndarray, words: list[str]) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """(N, L) label scores: each label's best word score; labels with no word in the vocabulary dropped."""
    pos = {w: i for i, w in enumerate(words)}
    labels, cols, used = [], [], {}
    for label, names in LABEL_WORDS.items():
        ids = [pos[w] for w in names if w in pos]
        if ids:
            labels.append(label)
            cols.append(word_table[:, ids].max(axis=1))
            used[label] = [words[i] for i in ids]
    return (np.stack(cols, axis=1) if cols else np.zeros((len(word_table), 0))), labels, used


def evaluate(
    models: Tagger | dict[str, Tagger],
    data: str | Path,
    split: str = "test",
    methods: tuple[str, ...] | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    n_samples: int = 12,
    progress: bool = True,
) -> Evaluation:
    """Every method of every bundle on the same photos of `split`, by the split settings the bundles were trained with.

    Each method is scored on the table users get (`Tagger.table`): calibrated probabilities where the
    bundle has them, with what the pixels rule out removed.

    `models`: one tagger, or several by label; rows are named by method, or "label/method" for several.
    Bundles must share their split settings. A later bundle's knn and prior rows are left out when they
    tag exactly as an earlier bundle's do (the same training photos and vocabulary).
    """
    taggers = {"": models} if isinstance(models, Tagger) else dict(models)
    if not taggers:
        raise OptionError("no model to evaluate")
    splits = {(tuple(t.summary.split_fractions), t.summary.split_seed) for t in taggers.values()}
    if split != "all" and len(splits) > 1:
        raise OptionError(f"the models were trained on different splits ({sorted(splits)}): their {split} photos differ")
    frame = read_dataset(data)
    if split != "all":
        fractions, seed = next(iter(splits))
        frame["split"] = split_ids(frame["id"], fractions, seed)
        frame = frame[frame["split"] == split].reset_index(drop=True)
    if frame.empty:
        raise OptionError(f"{data}: no photos in split {split!r}")
    check_photos(frame, data)

    # Features once per backbone; photos any backbone fails on are left out for all.
    features, ok = {}, np.ones(len(frame), dtype=bool)
    for t in taggers.values():
        key = (t.backbone_name, t.backbone_weights)
        if key not in features:
            fcfg = FeatureConfig(backbone=t.backbone_name, weights=t.backbone_weights, batch_size=batch_size,
                                 device=str(t.device), cache_dir=cache_dir)
            feats = extract_features(list(frame["path"]), fcfg, progress=progress, backbone=t.backbone)
            # Everything decoding measured, as tagging uses it: blank frames get no tags, GPS gives places.
            features[key], ok = Evidence.of(feats.features, feats.measures), ok & feats.ok
    frame = frame[ok].reset_index(drop=True)
    features = {k: v.take(ok) for k, v in features.items()}
    has_labels = frame["labels"].map(lambda x: x is not None).to_numpy()

    ev = Evaluation(split=split, photos=len(frame), left_out=0)
    tables, words, seen = {}, {}, []
    for label, tagger in taggers.items():
        x = features[(tagger.backbone_name, tagger.backbone_weights)]
        pos = {w: i for i, w in enumerate(tagger.words)}
        truth = [{pos[w] for w in tagger.vocabulary.normalize(tags) if w in pos} for tags in frame["tags"]]
        if not tables:
            ev.left_out, first_truth = sum(1 for t in truth if not t), truth
        chosen = methods or tagger.methods
        if len(taggers) == 1:
            for m in chosen:
                tagger.method_of(TagOptions(method=m))  # an unknown method is an error that lists the model's
        # Each method scored once: its table and what its default rule shows come from the same scores.
        knn_scores = tagger.score(x, TagOptions(method="knn")) if "knn" in tagger.methods else None
        knn_table = _table(tagger, knn_scores, "knn") if knn_scores is not None else None
        if not ev.visualness:
            # Every word, whatever its kind: how much the pixels say about it.
            every = tagger.score(x, TagOptions(kinds=("all",))).order
            ev.visualness = {tagger.words[w]: {**v, "kind": str(tagger._kind[w]) or "all"}
                             for w, v in sorted(visualness(every, truth).items(), key=lambda kv: -kv[1]["lift"])}
        # The owners' tags a shown tag can match (keyword groups, the kinds shown), and the concept truth.
        visible = tagger.shown_truth(truth)
        labelled = frame["labels"].map(lambda x: x is not None).to_numpy()
        known, ctruth = concept_truth(tagger.words, list(frame["labels"]))
        for method in (m for m in chosen if m in tagger.methods):
            start = time.perf_counter()
            scores = knn_scores if method == "knn" else tagger.score(x, TagOptions(method=method))
            table = _table(tagger, scores, method)
            seconds = time.perf_counter() - start
            if tagger.scorers[method].baseline:
                if any(np.array_equal(table, t) for t in seen):
                    continue  # the same baseline as a bundle before
                seen.append(table)
            row = f"{label}/{method}" if label else method
            tables[row], words[row] = table, tagger.words
            ev.seconds[row] = seconds
            ev.tags[row] = report(table, truth)
            ev.tags[row]["shown P@5"] = precision_at_k(top_ids(table, 5), visible, 5)
            ev.shown[row] = shown_report(tagger, tagger.tag(x, TagOptions(method=method), scores), visible, (known, ctruth, labelled), x.blank)
            if method in tagger.acceptance and labelled.any():
                # The probabilities shown are a person's agreement: checked against the concept labels.
                probs, hits, _ = candidates(table, ctruth, CALIBRATION_TOP, known=known, photos=labelled)
                ev.tags[row]["ECE"] = expected_calibration_error(probs, hits)
                ev.calibration[row] = {"ece": ev.tags[row]["ECE"], "bins": reliability(probs, hits), "top": CALIBRATION_TOP,
                                       "against": "concept labels"}
            elif method in tagger.calibration:
                probs, hits, _ = candidates(table, truth, CALIBRATION_TOP)  # the table holds probabilities
                ev.tags[row]["ECE"] = expected_calibration_error(probs, hits)
                ev.calibration[row] = {"ece": ev.tags[row]["ECE"], "bins": reliability(probs, hits), "top": CALIBRATION_TOP}
            kinds = [tagger.kinds.kinds[w].value for w in tagger.words] if tagger.kinds is not None else None
            ev.audit[row] = audit(table, truth, tagger.words, x.colour, word_kinds=kinds)
            if knn_table is not None and method != "knn":
                ev.versus_knn[row] = paired_difference(table, knn_table, truth, k=5)
                ev.versus_knn_shown[row] = paired_difference(table, knn_table, visible, k=5)
            if has_labels.any():
                lt, labels, ev.label_words = label_table(table[has_labels], tagger.words)
                lpos = {l: i for i, l in enumerate(labels)}
                ltruth = [{lpos[l] for l in (labs or []) if l in lpos} for labs in frame["labels"][has_labels]]
                ev.labels[row] = report(lt, ltruth, ks=(1, 3, 5))

    first_words = next(iter(words.values()))
    rng = np.random.default_rng(0)
    for i in sorted(rng.choice(len(frame), min(n_samples, len(frame)), replace=False).tolist()):
        ev.samples.append({
            "path": frame["path"][i],
            "user_tags": list(frame["tags"][i]),
            "truth": sorted(first_words[w] for w in first_truth[i]),
            "predicted": {r: [words[r][w] for w in np.argsort(-t[i], kind="stable")[:10]] for r, t in tables.items()},
        })
    return ev


def format_versus_knn(ev: Evaluation, which: str = "versus_knn") -> str:
    """One line per method: its P@5 minus kNN's on the same photos, with a 95% bootstrap interval."""
    results = getattr(ev, which)
    width = max(map(len, results), default=0)
    return "\n".join(
        f"{m:<{width}} {d['diff']:+.4f} (standard error {d['se']:.4f}, 95% [{d['low']:+.4f}, {d['high']:+.4f}]; "
        f"better on {d['a_better']} photos, worse on {d['b_better']})"
        for m, d in results.items())


def format_shown(ev: Evaluation) -> str:
    """One line per row: what its default rule shows, how often it is right, and of which kinds."""
    width = max(map(len, ev.shown), default=0)
    lines = []
    for row, r in ev.shown.items():
        kinds = ", ".join(f"{k} {v['share']:.0%}" + (f" ({v['right']:.0%} owners')" if v["right"] == v["right"] else "")
                          for k, v in r["kinds"].items())
        lines.append(f"{row:<{width}} top {r['top_k']} at >= {r['min_score']:.2f}: {r['tags/photo']:.2f} tags/photo, none on {r['none']:.0%}; "
                     f"owners' {r['owners']:.1%}, concepts right {r['concepts']:.1%} of {r['concept tags']}; {kinds}; "
                     f"{r['tags on blank frames']} tags on {r['blank frames']} blank frames")
    return "\n".join(lines)


def format_audit(ev: Evaluation) -> str:
    """One line per row: of its top-5 tags, how many photos got each kind of tag, how many were right."""
    if not ev.audit:
        return ""
    first = next(iter(ev.audit.values()))
    width = max(map(len, ev.audit))
    owners = "; ".join(f"{k} {c['owners']} of {c['photos']}" for k, c in first.items())
    lines = [f"{'owners':<{width}} {owners}"]
    for row, counts in ev.audit.items():
        lines.append(f"{row:<{width}} " + "; ".join(f"{k} {c['tagged']} ({c['right']} right)" for k, c in counts.items()))
    return "\n".join(lines)


def format_table(ev: Evaluation, which: str = "tags") -> str:
    """A plain-text table: one row per method, one column per metric."""
    results = getattr(ev, which)
    if not results:
        return ""
    frame = pd.DataFrame(results).T
    cols = [c for c in frame.columns if c != "photos"]
    frame = frame[cols].astype(object)
    for c in cols:
        frame[c] = frame[c].map(lambda x, c=c: "" if pd.isna(x) else f"{int(x)}" if c == "N+" else f"{float(x):.4f}")
    return frame.to_string()
