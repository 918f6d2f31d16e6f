"""Does the backbone's own ImageNet classifier (tagger.scoring.head) make the tags better? Measured on validation photos.

    python bench/study_head.py                       # the shipped model, the subset beside the checkout
    python bench/study_head.py --model DIR --data DATA --lite2 FEATURES_DIR --json out.json

The photos are the validation split the model was trained with (`pipelines.datasets.split_ids` with
the bundle's split fractions and seed; the shipped model: 0.9/0.1/0, seed 0), never seen in training.
Ground truth: each photo's owner tags in the vocabulary, as keywords (synonyms as one), restricted
to content and style words (the kinds the tagger shows by default); photos with none are left out.
Where the data has them, the 24 MIRFLICKR concept labels too, each label scored by its best word
(tagger.evaluation.evaluate.LABEL_WORDS, every kind of word shown).

Every row is P@5, and its difference from cgan+knn (the shipped default) on the same photos with a
95% paired bootstrap interval (10,000 resamples of photos). Three parts:

1. Settings of the head, chosen on 2,000 *training* photos (the head has never seen them; nothing
   here is tuned on validation): the weight per hypernym step (decay) and the share of SemCor's
   counts a word's sense needs to link (min_share).
2. The methods on the validation photos: knn, cgan+knn, head, knn+head, cgan+knn+head, and
   cgan+knn+head with the head weighted; the weight's effect is also cross-fitted (chosen on one
   half of the validation photos, measured on the other, both ways).
3. Quick variants with knn and knn+head: flip test-time augmentation (the mean of the features of
   the photo and of its mirror image; query side only, the training photos' features stay as they
   are) and EfficientNet-Lite2 features (knn refitted on Lite2 features of the same training photos,
   with the bundle's k; the head is Lite2's own). Lite2 needs `tagger features DATA --out DIR
   --backbone efficientnet_lite2` first (--lite2 DIR); without it that part is skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import REPO, SUBSET

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import ImageOps  # noqa: E402

from embeddings.imagenet import ClassWords  # noqa: E402
from pipelines.backbones import create_backbone, load_classifier  # noqa: E402
from pipelines.cache import default_cache_dir  # noqa: E402
from pipelines.datasets import read_dataset, split_ids  # noqa: E402
from pipelines.features import FeatureConfig, extract_features, extract_images  # noqa: E402
from pipelines.images import load_image  # noqa: E402
from tagger.bundle import load  # noqa: E402
from tagger.evaluation.evaluate import label_table  # noqa: E402
from tagger.evaluation.metrics import paired_difference, precision_at_k, top_ids  # noqa: E402
from tagger.scoring.evidence import Evidence  # noqa: E402
from tagger.scoring.head import HeadScorer  # noqa: E402
from tagger.scoring.knn import KNNTagger  # noqa: E402
from tagger.scoring.options import ALL_KINDS, DEFAULT_KINDS, TagOptions  # noqa: E402
from tagger.scoring.scorers import combine  # noqa: E402
from tagger.training.fit import word_ids  # noqa: E402

DECAYS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3)
MIN_SHARES = (0.0, 0.1, 0.3)
WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0)
TUNE_PHOTOS = 2000
ALL = TagOptions(kinds=(ALL_KINDS,))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Judge:
    """P@5 of score tables on fixed photos against their tags (content+style keywords) and labels."""

    def __init__(self, tagger, frame: pd.DataFrame, colour: np.ndarray):
        self.tagger, self.colour = tagger, colour
        words = tagger.words
        # A word's keyword is scored at its first word (Tagger.arrange): truth words map there too.
        first: dict[str, int] = {}
        home = [first.setdefault(k, i) for i, k in enumerate(tagger.shown_words)]
        shown = np.isin(tagger._kind, DEFAULT_KINDS) if tagger.kinds is not None else np.ones(len(words), bool)
        ids = word_ids(frame, tagger.vocabulary, list(words))
        self.truth = [{home[i] for i in t if shown[i]} for t in ids]
        has = frame["labels"].map(lambda x: x is not None).to_numpy()
        self.label_rows = np.flatnonzero(has)
        _, labels, _ = label_table(np.zeros((1, len(words))), list(words))
        pos = {l: i for i, l in enumerate(labels)}
        self.label_truth = [{pos[l] for l in (frame["labels"].iloc[r] or []) if l in pos} for r in self.label_rows]

    def tables(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(tag table as the tagger ranks it by default, label table from every kind of word)."""
        tags = self.tagger.arrange(raw, self.colour)
        labels = None
        if len(self.label_rows):
            every = self.tagger.arrange(raw[self.label_rows], self.colour[self.label_rows], ALL)
            labels = label_table(every, list(self.tagger.words))[0]
        return tags, labels

    def p5(self, raw: np.ndarray) -> float:
        return precision_at_k(top_ids(self.tagger.arrange(raw, self.colour), 5), self.truth, 5)

    def row(self, name: str, raw: np.ndarray, reference: tuple | None) -> dict:
        tags, labels = self.tables(raw)
        out = {"method": name, "photos": sum(1 for t in self.truth if t),
               "p5": precision_at_k(top_ids(tags, 5), self.truth, 5)}
        if labels is not None:
            out["label_p5"] = precision_at_k(top_ids(labels, 5), self.label_truth, 5)
        if reference is not None:
            out["vs"] = paired_difference(tags, reference[0], self.truth, k=5)
            if labels is not None:
                out["label_vs"] = paired_difference(labels, reference[1], self.label_truth, k=5)
        return out


def fmt(d: dict | None) -> str:
    if not d:
        return f"{'':>26}"
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def print_table(title: str, rows: list[dict], reference: str) -> None:
    print(f"\n{title}\n{'method':<28} {'P@5 tags':>8}  {'diff vs ' + reference + ' (95% CI)':<30} {'P@5 labels':>10}  "
          f"{'diff vs ' + reference + ' (95% CI)'}")
    for r in rows:
        print(f"{r['method']:<28} {r['p5']:>8.4f}  {fmt(r.get('vs')):<30} {r.get('label_p5', float('nan')):>10.4f}  {fmt(r.get('label_vs'))}")


def flipped_features(paths, backbone, batch: int = 64) -> np.ndarray:
    """Features of each photo's mirror image (decoded like extract_features: RGB, the backbone's min side)."""
    out = []
    for start in range(0, len(paths), batch):
        pil = [ImageOps.mirror(load_image(p, min_side=backbone.preprocessing.resize)) for p in paths[start:start + batch]]
        out.append(np.asarray(extract_images(pil, backbone, backbone.device)))
    return np.concatenate(out).astype(np.float32)


def read_lite2(folder: Path, frame: pd.DataFrame) -> np.ndarray | None:
    """Lite2 features aligned with `frame`, from `tagger features --out folder` (None when it is not there)."""
    if not (folder / "features.npy").is_file():
        return None
    feats = np.load(folder / "features.npy")
    photos = pd.read_csv(folder / "photos.csv", dtype=str, keep_default_na=False)
    key = "id" if "id" in photos.columns else photos.columns[0]
    pos = {i: n for n, i in enumerate(photos[key])}
    rows = [pos.get(str(i), -1) for i in frame["id"]]
    out = np.full((len(frame), feats.shape[1]), np.nan, np.float32)
    have = np.array(rows) >= 0
    out[have] = feats[np.array(rows)[have]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "tagger" / "assets" / "model")
    ap.add_argument("--data", type=Path, default=SUBSET)
    ap.add_argument("--lite2", type=Path, default=None, help="folder of `tagger features --backbone efficientnet_lite2` output")
    ap.add_argument("--no-flip", action="store_true", help="skip the flip test (it extracts features of every validation photo again)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()

    tagger = load(args.model, device="cpu")
    if tagger.knn is None:
        raise SystemExit("the model has no kNN baseline: cgan+knn, the reference, needs one")
    frame = read_dataset(args.data)
    s = tagger.summary
    frame["split"] = split_ids(frame["id"], tuple(s.split_fractions), s.split_seed)
    cfg = FeatureConfig(backbone=tagger.backbone_name, weights=tagger.backbone_weights, cache_dir=default_cache_dir() / "features")
    feats = extract_features(list(frame["path"]), cfg, progress=False)
    frame["ok"] = feats.ok
    chroma = feats.chroma if feats.chroma is not None else np.full(len(frame), np.nan, np.float32)
    colour = Evidence(np.zeros((len(frame), 1), np.float32), chroma).colour  # what the pixels rule out, as tagging sees it
    val = frame.index[(frame["split"] == "val") & frame["ok"]].to_numpy()
    train = frame.index[(frame["split"] == "train") & frame["ok"]].to_numpy()
    tune = np.sort(np.random.default_rng(0).choice(train, min(TUNE_PHOTOS, len(train)), replace=False))
    log(f"{len(val)} validation photos, {len(train)} training photos ({len(tune)} to choose the head's settings)")
    results: dict = {"model": args.model.name, "data": args.data.name, "split": list(s.split_fractions), "split_seed": s.split_seed}

    # 1. The head's settings, on training photos.
    head_of = lambda: load_classifier(tagger.backbone_name, tagger.backbone_weights)  # noqa: E731
    classifier = head_of()
    words = list(tagger.words)
    judge_tune = Judge(tagger, frame.loc[tune], colour[tune])
    links = {m: ClassWords.build(words, min_share=m) for m in MIN_SHARES}
    grid = {}
    for m, cw in links.items():
        for d in DECAYS:
            scorer = HeadScorer(lambda: classifier, cw, words, decay=d)
            grid[(m, d)] = judge_tune.p5(scorer.scores(feats.features[tune]))
    best_m, best_d = max(grid, key=grid.get)
    print(f"\n1. head alone on {len(tune)} training photos, P@5 (content+style tags): min_share x decay")
    print("min_share " + " ".join(f"{d:>7}" for d in DECAYS))
    for m in MIN_SHARES:
        print(f"{m:<9} " + " ".join(f"{grid[(m, d)]:>7.4f}" for d in DECAYS))
    print(f"chosen: min_share {best_m}, decay {best_d}; {len(links[best_m].links)} of {len(words)} words name a class")
    results["tune"] = {f"{m}/{d}": v for (m, d), v in grid.items()}
    results["chosen"] = {"min_share": best_m, "decay": best_d, "linked_words": len(links[best_m].links)}

    # 2. The methods on the validation photos.
    head = HeadScorer(lambda: classifier, links[best_m], words, decay=best_d)
    x = feats.features[val]
    judge = Judge(tagger, frame.loc[val], colour[val])
    parts = {"cgan": tagger.scorers[tagger.family].scores(x, tagger.sampling), "knn": tagger.knn.scores(x), "head": head.scores(x)}
    ref_raw = combine([parts["cgan"], parts["knn"]])
    shipped = tagger.score(Evidence(x, chroma[val]), TagOptions(method="cgan+knn")).order
    assert np.array_equal(shipped, judge.tables(ref_raw)[0]), "the study's cgan+knn is not the tagger's"
    ref = judge.tables(ref_raw)
    raws = {"knn": parts["knn"], "cgan": parts["cgan"], "cgan+knn": ref_raw, "head": parts["head"],
            "knn+head": combine([parts["knn"], parts["head"]]), "cgan+head": combine([parts["cgan"], parts["head"]]),
            "cgan+knn+head": combine([parts["cgan"], parts["knn"], parts["head"]])}
    for w in WEIGHTS:
        if w != 1.0:
            raws[f"cgan+knn+{w:g}*head"] = combine([parts["cgan"], parts["knn"], parts["head"]], [1, 1, w])
    rows = [judge.row(name, raw, None if name == "cgan+knn" else ref) for name, raw in raws.items()]
    print_table(f"2. validation photos ({rows[0]['photos']} with content+style tags, {len(judge.label_rows)} with labels)", rows, "cgan+knn")
    results["validation"] = rows

    # The head's weight cross-fitted: chosen on one half of the validation photos by P@5, measured on the other.
    rng = np.random.default_rng(1)
    half = rng.permutation(len(val)) < len(val) // 2
    cross = []
    for pick, measure in ((half, ~half), (~half, half)):
        jp, jm = Judge(tagger, frame.loc[val[pick]], colour[val[pick]]), Judge(tagger, frame.loc[val[measure]], colour[val[measure]])
        best = max(WEIGHTS, key=lambda w: jp.p5(combine([parts["cgan"][pick], parts["knn"][pick], parts["head"][pick]], [1, 1, w])))
        r = jm.row(f"weight {best:g}", combine([parts["cgan"][measure], parts["knn"][measure], parts["head"][measure]], [1, 1, best]),
                   jm.tables(ref_raw[measure]))
        cross.append((best, r))
    print("cross-fitted head weight (chosen on one half, measured on the other): "
          + "; ".join(f"weight {b:g}: {fmt(r['vs'])}" for b, r in cross))
    results["cross_fitted"] = [{"weight": b, **r} for b, r in cross]

    # 3. Flip test-time augmentation and Lite2 features, with knn and knn+head.
    quick = []
    knn_ref = judge.tables(parts["knn"])
    quick.append(judge.row("knn (lite0)", parts["knn"], None))
    quick.append(judge.row("knn+head (lite0)", raws["knn+head"], knn_ref))
    if not args.no_flip:
        log("flip: features of the mirrored validation photos")
        backbone = create_backbone(tagger.backbone_name, tagger.backbone_weights, "cpu")
        xf = (x + flipped_features(list(frame["path"].iloc[val]), backbone)) / 2
        kf, hf = tagger.knn.scores(xf), head.scores(xf)
        quick.append(judge.row("knn, flip TTA", kf, knn_ref))
        quick.append(judge.row("head, flip TTA", hf, judge.tables(parts["head"])))
        quick.append(judge.row("knn+head, flip TTA", combine([kf, hf]), knn_ref))
        quick.append(judge.row("cgan+knn+head, flip TTA", combine([tagger.scorers[tagger.family].scores(xf, tagger.sampling), kf, hf]), ref))
    lite2 = read_lite2(args.lite2, frame) if args.lite2 else None
    if lite2 is not None:
        ok2 = np.isfinite(lite2).all(axis=1)
        ids = word_ids(frame, tagger.vocabulary, words)
        rows2 = np.array([i for i in train if ids[i] and ok2[i]])
        knn2 = KNNTagger.fit(lite2[rows2], [ids[i] for i in rows2], len(words), tagger.knn.config)
        head2 = HeadScorer(lambda: load_classifier("efficientnet_lite2"), links[best_m], words, decay=best_d)
        x2 = np.where(ok2[val, None], lite2[val], x)  # a photo Lite2 failed on keeps its Lite0 features (none expected)
        k2, h2 = knn2.scores(x2), head2.scores(x2)
        quick.append(judge.row("knn (lite2)", k2, knn_ref))
        quick.append(judge.row("head (lite2)", h2, judge.tables(parts["head"])))
        quick.append(judge.row("knn+head (lite2)", combine([k2, h2]), knn_ref))
    for r in quick[1:]:
        r["reference"] = "head (lite0)" if r["method"].startswith("head") else "cgan+knn (lite0)" if r["method"].startswith("cgan") else "knn (lite0)"
    print(f"\n3. quick variants (difference against the lite0 row of the same method: knn, head or cgan+knn)")
    print_table("", quick, "ref")
    results["quick"] = quick
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\n{results['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
