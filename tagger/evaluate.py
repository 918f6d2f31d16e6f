"""`tagger evaluate`: every tagging method of a bundle on the same held-out photos and features.

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
from pipelines.features import FeatureConfig, extract_features
from tagger.metrics import paired_difference, report
from tagger.model import Tagger

# Words that name each MIRFLICKR concept; those missing from a model's vocabulary are ignored.
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "animals": ("animal", "animals", "dog", "cat", "bird", "horse", "cow", "sheep", "pet", "wildlife", "zoo", "insect"),
    "baby": ("baby", "babies", "newborn", "infant"),
    "bird": ("bird", "birds", "gull", "seagull", "duck", "pigeon"),
    "car": ("car", "cars", "auto", "automobile"),
    "clouds": ("clouds", "cloud", "cloudy"),
    "dog": ("dog", "dogs", "puppy"),
    "female": ("woman", "girl", "female", "lady", "women", "girls"),
    "flower": ("flower", "flowers", "blossom", "bloom", "rose", "tulip", "daisy"),
    "food": ("food", "cake", "dinner", "lunch", "breakfast", "fruit", "dessert", "chocolate"),
    "indoor": ("indoor", "indoors", "interior", "room", "home", "kitchen"),
    "lake": ("lake", "pond"),
    "male": ("man", "boy", "male", "guy", "men", "boys"),
    "night": ("night", "nighttime", "nightshot", "dark"),
    "people": ("people", "person", "portrait", "man", "woman", "girl", "boy", "child", "kids", "friends", "family", "me", "selfportrait"),
    "plant_life": ("plant", "plants", "tree", "trees", "flower", "flowers", "garden", "leaf", "leaves", "grass", "forest"),
    "portrait": ("portrait", "selfportrait", "face", "self"),
    "river": ("river", "stream", "creek"),
    "sea": ("sea", "ocean", "beach", "coast", "waves"),
    "sky": ("sky", "skies", "clouds", "blue sky"),
    "structures": ("architecture", "building", "buildings", "house", "bridge", "church", "tower", "city", "castle"),
    "sunset": ("sunset", "sunrise", "dusk"),
    "transport": ("car", "train", "bus", "bike", "bicycle", "boat", "airplane", "plane", "truck", "motorcycle", "transport"),
    "tree": ("tree", "trees"),
    "water": ("water", "sea", "lake", "river", "ocean", "waterfall"),
}


@dataclass
class Evaluation:
    split: str
    photos: int  # photos in the split whose features could be extracted
    left_out: int  # of those, photos without a single in-vocabulary user tag
    tags: dict[str, dict] = field(default_factory=dict)  # method -> metrics against user tags
    labels: dict[str, dict] = field(default_factory=dict)  # method -> metrics against concept labels
    seconds: dict[str, float] = field(default_factory=dict)  # method -> wall time of its tagging
    label_words: dict[str, list[str]] = field(default_factory=dict)  # label -> words used for it
    samples: list[dict] = field(default_factory=list)  # a few photos with truth and each method's tags
    versus_knn: dict[str, dict] = field(default_factory=dict)  # method -> its P@5 minus kNN's, per photo (paired_difference)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


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
    tagger: Tagger,
    data: str | Path,
    split: str = "test",
    methods: tuple[str, ...] | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    n_samples: int = 12,
    progress: bool = True,
) -> Evaluation:
    """Every method on the photos of `split`, using the split settings the bundle was trained with."""
    info = tagger.info
    frame = read_dataset(data)
    if split != "all":
        frame["split"] = split_ids(frame["id"], tuple(info.get("split_fractions", (0.8, 0.1, 0.1))), info.get("split_seed", 0))
        frame = frame[frame["split"] == split].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{data}: no photos in split {split!r}")
    check_photos(frame, data)
    fcfg = FeatureConfig(backbone=tagger.backbone_name, weights=tagger.backbone_weights, batch_size=batch_size,
                         device=str(tagger.device), cache_dir=cache_dir)
    feats = extract_features(list(frame["path"]), fcfg, progress=progress, backbone=tagger.backbone)
    frame = frame[feats.ok].reset_index(drop=True)
    features = feats.features[feats.ok]

    pos = {w: i for i, w in enumerate(tagger.words)}
    truth = [{pos[w] for w in tagger.vocabulary.normalize(tags) if w in pos} for tags in frame["tags"]]
    ev = Evaluation(split=split, photos=len(frame), left_out=sum(1 for t in truth if not t))
    has_labels = frame["labels"].map(lambda x: x is not None).to_numpy()

    tables = {}
    for method in methods or tagger.methods:
        start = time.perf_counter()
        tables[method] = tagger.score_features(features, method=method)
        ev.seconds[method] = time.perf_counter() - start
        ev.tags[method] = report(tables[method], truth)
        if has_labels.any():
            lt, labels, ev.label_words = label_table(tables[method][has_labels], tagger.words)
            lpos = {l: i for i, l in enumerate(labels)}
            ltruth = [{lpos[l] for l in (labs or []) if l in lpos} for labs in frame["labels"][has_labels]]
            ev.labels[method] = report(lt, ltruth, ks=(1, 3, 5))

    if "knn" in tables:
        for method, table in tables.items():
            if method != "knn":
                ev.versus_knn[method] = paired_difference(table, tables["knn"], truth, k=5)

    rng = np.random.default_rng(0)
    for i in sorted(rng.choice(len(frame), min(n_samples, len(frame)), replace=False).tolist()):
        ev.samples.append({
            "path": frame["path"][i],
            "user_tags": list(frame["tags"][i]),
            "truth": sorted(tagger.words[w] for w in truth[i]),
            "predicted": {m: [tagger.words[w] for w in np.argsort(-t[i], kind="stable")[:10]] for m, t in tables.items()},
        })
    return ev


def format_versus_knn(ev: Evaluation) -> str:
    """One line per method: its P@5 minus kNN's on the same photos, with a 95% bootstrap interval."""
    return "\n".join(
        f"{m:<9} {d['diff']:+.4f} (standard error {d['se']:.4f}, 95% [{d['low']:+.4f}, {d['high']:+.4f}]; "
        f"better on {d['a_better']} photos, worse on {d['b_better']})"
        for m, d in ev.versus_knn.items())


def format_table(ev: Evaluation, which: str = "tags") -> str:
    """A plain-text table: one row per method, one column per metric."""
    results = getattr(ev, which)
    if not results:
        return ""
    frame = pd.DataFrame(results).T
    cols = [c for c in frame.columns if c != "photos"]
    frame = frame[cols].astype(object)
    for c in cols:
        frame[c] = frame[c].map(lambda x, c=c: f"{int(x)}" if c == "N+" else f"{float(x):.4f}")
    return frame.to_string()
