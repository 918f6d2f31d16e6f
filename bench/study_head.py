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

Besides P@5 (a photo's five best tags), per-tag MAP: for each word carried by 3 or more of the
photos, the average precision of ranking the photos by its score (finding the photos of a dog),
over every such word, over those the head links to a class, and over the 24 labels.

What it found on the shipped model (1,090 validation photos, 804 with content or style tags;
min_share 0, decay 1, head weight 2 chosen on training photos): the head costs P@5 in every form
(cgan+knn+head 0.1654 against cgan+knn's 0.1776, -0.0122 [-0.0174, -0.0070]; scaled to its best
per photo like the other parts, -0.0256) and helps per-tag MAP: +0.0108 [+0.0043, +0.0184] over
248 words, +0.044 [+0.018, +0.075] over the 61 the head links, +0.010 [+0.004, +0.024] over the
labels. Flip TTA and Lite2 features change knn by less than their intervals.
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

DECAYS = (1.0, 0.8, 0.6, 0.4)
MIN_SHARES = (0.0, 0.1, 0.3)
WEIGHTS = (0.5, 1.0, 2.0)
TUNE_PHOTOS = 2000
MIN_PHOTOS = 3  # a word (or label) enters MAP when at least this many of the photos carry it
RESAMPLES = 1000
ALL = TagOptions(kinds=(ALL_KINDS,))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def column_ap(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(W,) the AP of ranking the photos (rows) by each column, as metrics.average_precision (ties in row order)."""
    order = np.argsort(-scores, axis=0, kind="stable")
    rel = np.take_along_axis(relevant, order, axis=0)
    precision = np.cumsum(rel, axis=0) / np.arange(1, len(rel) + 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (precision * rel).sum(axis=0) / rel.sum(axis=0)


def paired_map(a: np.ndarray, b: np.ndarray, relevant: np.ndarray, seed: int = 0) -> dict:
    """MAP over the columns of table a minus table b on the same photos, with a 95% paired bootstrap interval
    (photos drawn with replacement, both tables kept together; a column no drawn photo carries is left out)."""
    a, b = np.nan_to_num(a, neginf=-1e30), np.nan_to_num(b, neginf=-1e30)
    diff = float(np.nanmean(column_ap(a, relevant) - column_ap(b, relevant)))
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(RESAMPLES):
        idx = rng.integers(0, len(a), len(a))
        means.append(np.nanmean(column_ap(a[idx], relevant[idx]) - column_ap(b[idx], relevant[idx])))
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": diff, "low": float(low), "high": float(high)}


class Judge:
    """P@5 and per-tag MAP of score tables on fixed photos against their tags (content+style keywords) and labels."""

    def __init__(self, tagger, frame: pd.DataFrame, colour: np.ndarray, head_words: set[str] = frozenset()):
        self.tagger, self.colour = tagger, colour
        words = tagger.words
        # A word's keyword is scored at its first word (Tagger.arrange): truth words map there too.
        first: dict[str, int] = {}
        home = [first.setdefault(k, i) for i, k in enumerate(tagger.shown_words)]
        shown = np.isin(tagger._kind, DEFAULT_KINDS) if tagger.kinds is not None else np.ones(len(words), bool)
        ids = word_ids(frame, tagger.vocabulary, list(words))
        self.truth = [{home[i] for i in t if shown[i]} for t in ids]
        self.tagged = np.array([bool(t) for t in self.truth])
        rel = np.zeros((len(frame), len(words)), dtype=bool)
        for r, t in enumerate(self.truth):
            rel[r, list(t)] = True
        cols = np.flatnonzero(rel[self.tagged].sum(axis=0) >= MIN_PHOTOS)
        self.map_cols = {"all": cols, "head": np.array([c for c in cols if words[c] in head_words], dtype=np.int64)}
        self.relevant = rel
        has = frame["labels"].map(lambda x: x is not None).to_numpy()
        self.label_rows = np.flatnonzero(has)
        _, labels, _ = label_table(np.zeros((1, len(words))), list(words))
        pos = {l: i for i, l in enumerate(labels)}
        self.label_truth = [{pos[l] for l in (frame["labels"].iloc[r] or []) if l in pos} for r in self.label_rows]
        lrel = np.zeros((len(self.label_rows), len(labels)), dtype=bool)
        for r, t in enumerate(self.label_truth):
            lrel[r, list(t)] = True
        self.label_relevant = lrel[:, lrel.sum(axis=0) >= MIN_PHOTOS]
        self.label_cols = np.flatnonzero(lrel.sum(axis=0) >= MIN_PHOTOS)

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

    def tag_map(self, tags: np.ndarray, which: str = "all") -> float:
        c = self.map_cols[which]
        return float(np.nanmean(column_ap(np.nan_to_num(tags[self.tagged][:, c], neginf=-1e30), self.relevant[self.tagged][:, c])))

    def row(self, name: str, raw: np.ndarray, reference: tuple | None, maps: bool = True) -> dict:
        tags, labels = self.tables(raw)
        out = {"method": name, "photos": int(self.tagged.sum()), "p5": precision_at_k(top_ids(tags, 5), self.truth, 5)}
        if maps:
            out["map"], out["map_head"] = self.tag_map(tags), self.tag_map(tags, "head")
        if labels is not None:
            out["label_p5"] = precision_at_k(top_ids(labels, 5), self.label_truth, 5)
            if maps:
                out["label_map"] = float(np.nanmean(column_ap(np.nan_to_num(labels[:, self.label_cols], neginf=-1e30), self.label_relevant)))
        if reference is not None:
            out["vs"] = paired_difference(tags, reference[0], self.truth, k=5)
            t = self.tagged
            if maps:
                for key, which in (("map_vs", "all"), ("map_head_vs", "head")):
                    c = self.map_cols[which]
                    out[key] = paired_map(tags[t][:, c], reference[0][t][:, c], self.relevant[t][:, c])
            if labels is not None:
                out["label_vs"] = paired_difference(labels, reference[1], self.label_truth, k=5)
                if maps:
                    out["label_map_vs"] = paired_map(labels[:, self.label_cols], reference[1][:, self.label_cols], self.label_relevant)
        return out


def fmt(d: dict | None) -> str:
    if not d:
        return f"{'':>25}"
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


COLUMNS = (("p5", "vs", "P@5 tags"), ("label_p5", "label_vs", "P@5 labels"), ("map", "map_vs", "MAP tags"),
           ("map_head", "map_head_vs", "MAP head words"), ("label_map", "label_map_vs", "MAP labels"))


def print_table(title: str, rows: list[dict]) -> None:
    """Each measure with its difference from the reference (95% interval); one block of columns per measure."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    print(f"\n{title}")
    print(f"{'method':<26} " + " ".join(f"{label:>10} {'difference (95% CI)':<25}" for _, _, label in cols))
    for r in rows:
        print(f"{r['method']:<26} " + " ".join(f"{r.get(v, float('nan')):>10.4f} {fmt(r.get(d)):<25}" for v, d, _ in cols))


def knn_left_out(knn: KNNTagger, features: np.ndarray, self_rows: np.ndarray) -> np.ndarray:
    """TagVote for training photos with each photo's own row left out of its neighbours (as for a photo not trained on)."""
    k = min(knn.config.k, len(knn.tags))
    table = knn.votes(features, k, self_rows)
    return table - k * knn.prior if knn.config.subtract_prior else table


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


def validation_setup(model: Path, data: Path):
    """(tagger, frame with its split and ok columns, features, chroma, colour) for a study of the bundle at `model`
    on `data`: the photos split as the bundle was trained, features from the shared feature cache."""
    tagger = load(model, device="cpu")
    if tagger.knn is None:
        raise SystemExit("the model has no kNN baseline: cgan+knn, the reference, needs one")
    frame = read_dataset(data)
    s = tagger.summary
    frame["split"] = split_ids(frame["id"], tuple(s.split_fractions), s.split_seed)
    cfg = FeatureConfig(backbone=tagger.backbone_name, weights=tagger.backbone_weights, cache_dir=default_cache_dir() / "features")
    feats = extract_features(list(frame["path"]), cfg, progress=False)
    frame["ok"] = feats.ok
    chroma = feats.chroma if feats.chroma is not None else np.full(len(frame), np.nan, np.float32)
    colour = Evidence(np.zeros((len(frame), 1), np.float32), chroma).colour  # what the pixels rule out, as tagging sees it
    return tagger, frame, feats, chroma, colour


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "tagger" / "assets" / "model")
    ap.add_argument("--data", type=Path, default=SUBSET)
    ap.add_argument("--lite2", type=Path, default=None, help="folder of `tagger features --backbone efficientnet_lite2` output")
    ap.add_argument("--no-flip", action="store_true", help="skip the flip test (it extracts features of every validation photo again)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()

    tagger, frame, feats, chroma, colour = validation_setup(args.model, args.data)
    s = tagger.summary
    words = list(tagger.words)
    ids = word_ids(frame, tagger.vocabulary, words)
    val = frame.index[(frame["split"] == "val") & frame["ok"]].to_numpy()
    train = frame.index[(frame["split"] == "train") & frame["ok"]].to_numpy()
    knn_rows = np.array([i for i in train if ids[i]])  # the photos the bundle's kNN holds, in its order (fit_knn)
    if len(knn_rows) != len(tagger.knn.tags):
        raise SystemExit(f"the kNN holds {len(tagger.knn.tags)} photos, the split gives {len(knn_rows)}: another split or data")
    tune = np.sort(np.random.default_rng(0).choice(knn_rows, min(TUNE_PHOTOS, len(knn_rows)), replace=False))
    log(f"{len(val)} validation photos, {len(train)} training photos ({len(tune)} to choose the head's settings)")
    results: dict = {"model": args.model.name, "data": args.data.name, "split": list(s.split_fractions), "split_seed": s.split_seed}

    # 1. The head's settings, on training photos, with knn leaving each photo's own row out.
    classifier = load_classifier(tagger.backbone_name, tagger.backbone_weights)
    links = {m: ClassWords.build(words, min_share=m) for m in MIN_SHARES}
    jt = Judge(tagger, frame.loc[tune], colour[tune])
    self_rows = np.searchsorted(knn_rows, tune)
    xt = feats.features[tune]
    kt = knn_left_out(tagger.knn, xt, self_rows)
    own = tagger.knn.neighbours(xt, 1)[:, 0] == self_rows
    log(f"training photos: {own.mean():.1%} are their own nearest neighbour (left out below)")
    grid = {}
    for m, cw in links.items():
        for d in DECAYS:
            ht = HeadScorer(lambda: classifier, cw, words, decay=d).scores(xt)
            table = jt.tables(combine([kt, ht], absolute=[False, True]))[0]
            grid[(m, d)] = (jt.p5(combine([kt, ht], absolute=[False, True])), jt.tag_map(table), jt.p5(ht))
    best_m, best_d = max(grid, key=lambda key: grid[key][1])
    knn_t = jt.tables(kt)[0]
    print(f"1. settings on {len(tune)} training photos (knn with the photo's own row left out): knn alone P@5 "
          f"{jt.p5(kt):.4f}, MAP {jt.tag_map(knn_t):.4f}")
    print(f"{'min_share':<10}{'decay':>6} {'knn+head P@5':>13} {'knn+head MAP':>13} {'head P@5':>9} {'words linked':>13}")
    for (m, d), (p, mp, hp) in grid.items():
        print(f"{m:<10}{d:>6} {p:>13.4f} {mp:>13.4f} {hp:>9.4f} {len(links[m].links):>13}")
    head = HeadScorer(lambda: classifier, links[best_m], words, decay=best_d)
    ht = head.scores(xt)
    wgrid = {w: jt.tag_map(jt.tables(combine([kt, ht], [1, w], [False, True]))[0]) for w in WEIGHTS}
    best_w = max(wgrid, key=wgrid.get)
    print(f"chosen by MAP: min_share {best_m}, decay {best_d}; head weight {best_w} "
          f"(MAP of knn+w*head: {', '.join(f'{w:g}: {v:.4f}' for w, v in wgrid.items())})")
    results["tune"] = {f"{m}/{d}": dict(zip(("p5", "map", "head_p5"), v)) for (m, d), v in grid.items()}
    results["chosen"] = {"min_share": best_m, "decay": best_d, "weight": best_w, "linked_words": len(links[best_m].links)}

    # 2. The methods on the validation photos.
    x = feats.features[val]
    judge = Judge(tagger, frame.loc[val], colour[val], set(links[best_m].links))
    parts = {"cgan": tagger.scorers[tagger.family].scores(x, tagger.sampling), "knn": tagger.knn.scores(x), "head": head.scores(x)}
    ref_raw = combine([parts["cgan"], parts["knn"]])
    shipped = tagger.score(Evidence(x, chroma[val]), TagOptions(method="cgan+knn")).order
    assert np.array_equal(shipped, judge.tables(ref_raw)[0]), "the study's cgan+knn is not the tagger's"
    ref = judge.tables(ref_raw)
    g, k, h = parts["cgan"], parts["knn"], parts["head"]
    raws = {"knn": k, "cgan": g, "cgan+knn": ref_raw, "head": h, "knn+head": combine([k, h], absolute=[False, True]),
            "cgan+knn+head": combine([g, k, h], [1, 1, best_w], [False, False, True])}
    for w in WEIGHTS:
        if w != best_w:
            raws[f"cgan+knn+{w:g}*head"] = combine([g, k, h], [1, 1, w], [False, False, True])
    raws["cgan+knn+head scaled"] = combine([g, k, h])  # the head scaled to its best per photo, as the other parts
    rows = [judge.row(name, raw, None if name == "cgan+knn" else ref) for name, raw in raws.items()]
    print_table(f"2. validation photos ({rows[0]['photos']} with content+style tags, {len(judge.label_rows)} with labels; "
                f"MAP over {len(judge.map_cols['all'])} words on {MIN_PHOTOS}+ photos, {len(judge.map_cols['head'])} of them "
                f"linked to a class, {len(judge.label_cols)} labels), differences from cgan+knn", rows)
    results["validation"] = rows

    # 3. Flip test-time augmentation and Lite2 features, with knn and knn+head.
    knn_ref = judge.tables(k)
    quick = [judge.row("knn (lite0)", k, None), judge.row("knn+head (lite0)", raws["knn+head"], knn_ref)]
    if not args.no_flip:
        log("flip: features of the mirrored validation photos")
        backbone = create_backbone(tagger.backbone_name, tagger.backbone_weights, "cpu")
        xf = (x + flipped_features(list(frame["path"].iloc[val]), backbone)) / 2
        kf, hf = tagger.knn.scores(xf), head.scores(xf)
        quick.append(judge.row("knn, flip TTA", kf, knn_ref))
        quick.append(judge.row("knn+head, flip TTA", combine([kf, hf], absolute=[False, True]), knn_ref))
        gf = tagger.scorers[tagger.family].scores(xf, tagger.sampling)
        quick.append(judge.row("cgan+knn, flip TTA", combine([gf, kf]), ref))
        quick.append(judge.row("cgan+knn+head, flip TTA", combine([gf, kf, hf], [1, 1, best_w], [False, False, True]), ref))
    lite2 = read_lite2(args.lite2, frame) if args.lite2 else None
    if lite2 is not None:
        ok2 = np.isfinite(lite2).all(axis=1)
        rows2 = np.array([i for i in knn_rows if ok2[i]])
        knn2 = KNNTagger.fit(lite2[rows2], [ids[i] for i in rows2], len(words), tagger.knn.config)
        head2 = HeadScorer(lambda: load_classifier("efficientnet_lite2"), links[best_m], words, decay=best_d)
        x2 = np.where(ok2[val, None], lite2[val], x)  # a photo Lite2 failed on keeps its Lite0 features (none expected)
        k2, h2 = knn2.scores(x2), head2.scores(x2)
        quick.append(judge.row("knn (lite2)", k2, knn_ref))
        quick.append(judge.row("knn+head (lite2)", combine([k2, h2], absolute=[False, True]), knn_ref))
        quick.append(judge.row("head (lite2)", h2, judge.tables(h)))
    print_table("3. quick variants; differences from knn (lite0), but cgan+knn rows from cgan+knn (lite0), "
                "head (lite2) from head (lite0)", quick)
    results["quick"] = quick
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\n{results['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
