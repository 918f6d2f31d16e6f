"""Does another bundle, or the mean of two bundles' probabilities, tag better than the shipped model? Validation, then judged.

    python bench/study_backbones.py --other lite2                       # the shipped model against the bundle at lite2
    python bench/study_backbones.py --other lite2 --judged verdicts.tsv  # and the judged photos' table for their mean

Both bundles must be trained on the same data, split and vocabulary (the shipped model's recipe with
another `--backbone`, say). On the shipped model's validation tenth it prints P@5 of each bundle's
default method against the owners' content and style tags (as keywords), and of the mean of the two
bundles' probabilities, each with its paired 95% interval over the shipped model; the same against
the concept labels. With `--judged FILE` it chooses the mean's threshold as the bundles choose theirs
(the lowest probability at which 80% of the concept tags shown on labelled validation photos are
right, `tagger.training.fit.choose_threshold`), tags the 60 photos of bench/judge.py with the mean,
and writes their rows to FILE, verdicts filled in from the verdict files given with `--known` (a
verdict is of a photo and a word); the rest are to judge by looking, then `python bench/judge.py
score FILE`.

What it found (the shipped recipe on EfficientNet-Lite2, README "The same recipe on
EfficientNet-Lite2"): Lite2 +0.0100 [+0.0025, +0.0172] on the owners' tags, concept P@5 level; the
mean of Lite0's and Lite2's +0.0112 [+0.0060, +0.0167] and concept +0.0083 [+0.0015, +0.0151]; judged,
both below the shipped model.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import types
from pathlib import Path

from harness import REPO, SUBSET

import numpy as np  # noqa: E402

from judge import VERDICTS, photos  # noqa: E402
from pipelines.cache import default_cache_dir  # noqa: E402
from pipelines.datasets import read_dataset, split_ids  # noqa: E402
from pipelines.features import FeatureConfig, extract_features  # noqa: E402
from tagger.bundle import load  # noqa: E402
from tagger.evaluation.evaluate import label_table  # noqa: E402
from tagger.evaluation.metrics import paired_difference, precision_at_k, top_ids  # noqa: E402
from tagger.scoring.concepts import concept_truth  # noqa: E402
from tagger.scoring.evidence import Evidence  # noqa: E402
from tagger.scoring.options import TagOptions  # noqa: E402
from tagger.training.fit import choose_threshold  # noqa: E402

PRECISION = 0.8  # of the concept tags shown, as `tagger train` chooses a bundle's threshold
TOP_K = 10


def fmt(d: dict) -> str:
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "tagger" / "assets" / "model")
    ap.add_argument("--other", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=SUBSET)
    ap.add_argument("--judged", type=Path, default=None, help="write the judged photos' rows for the mean here")
    ap.add_argument("--known", type=Path, nargs="*", default=[VERDICTS], help="verdict files to fill verdicts from")
    ap.add_argument("--photos", type=Path, default=None, help="folder for the judged photos from other sources (default: a temporary one)")
    args = ap.parse_args()

    a, b = load(args.model, device="cpu"), load(args.other, device="cpu")
    if list(a.words) != list(b.words):
        raise SystemExit("the bundles have different vocabularies: train them on the same data and settings")
    frame = read_dataset(args.data)
    s = a.summary
    frame["split"] = split_ids(frame["id"], tuple(s.split_fractions), s.split_seed)
    frame = frame[frame["split"] == "val"].reset_index(drop=True)
    tables = []
    for t in (a, b):
        cfg = FeatureConfig(backbone=t.backbone_name, weights=t.backbone_weights, cache_dir=default_cache_dir() / "features")
        feats = extract_features(list(frame["path"]), cfg, progress=False, backbone=t.backbone)
        tables.append(t.score(Evidence.of(feats.features, feats.measures), TagOptions()).shown)
    mean = (tables[0] + tables[1]) / 2
    pos = {w: i for i, w in enumerate(a.words)}
    truth = a.shown_truth([{pos[w] for w in a.vocabulary.normalize(tags) if w in pos} for tags in frame["tags"]])
    has = frame["labels"].map(lambda x: x is not None).to_numpy()
    words = list(a.words)
    _, labels, _ = label_table(tables[0][:1], words)
    lpos = {l: i for i, l in enumerate(labels)}
    ltruth = [{lpos[l] for l in (labs or []) if l in lpos} for labs in frame["labels"][has]]
    ltables = [label_table(t[has], words)[0] for t in (*tables, mean)]
    print(f"{len(frame)} validation photos; P@5 against the owners' content and style tags, and against the concept labels")
    for name, table, ltable in ((args.model.name, tables[0], ltables[0]), (args.other.name, tables[1], ltables[1]),
                                ("mean of both", mean, ltables[2])):
        line = f"{name:<14} P@5 {precision_at_k(top_ids(table, 5), truth, 5):.4f}  concept P@5 {precision_at_k(top_ids(ltable, 5), ltruth, 5):.4f}"
        if table is not tables[0]:
            line += (f"  vs {args.model.name} {fmt(paired_difference(table, tables[0], truth, k=5))},"
                     f" concept {fmt(paired_difference(ltable, ltables[0], ltruth, k=5))}")
        print(line)
    if args.judged is None:
        return

    known, ctruth = concept_truth(words, list(frame["labels"][has]))
    threshold, reached, per_photo = choose_threshold(types.SimpleNamespace(shown=mean[has]), known, ctruth, TOP_K, PRECISION)
    print(f"the mean's threshold {threshold:.2f} ({reached:.0%} of shown concept tags right, {per_photo:.2f} tags a photo)")
    verdicts = {}
    for file in args.known:
        with open(file, encoding="utf-8") as f:
            verdicts.update({(r["photo"], r["tag"]): r["verdict"] for r in csv.DictReader(f, delimiter="\t") if r["verdict"]})
    rows = []
    for source, path in photos(args.photos or Path(tempfile.mkdtemp(prefix="judged-"))):
        shown = [(t.score(ev := t.read([path]), TagOptions()).shown[0], ev) for t in (a, b)]
        blank = shown[0][1].blank_reasons[0]
        p = (shown[0][0] + shown[1][0]) / 2
        tags = [] if blank else [(a.shown_words[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:TOP_K] if p[i] >= threshold]
        for tag, score in tags or [("", float("nan"))]:
            rows.append({"photo": path.name, "source": source, "tag": tag, "score": f"{score:.2f}" if tag else "",
                         "note": f"no tags: {blank}" if blank and not tag else "", "verdict": verdicts.get((path.name, tag), "")})
    with open(args.judged, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{args.judged}: {sum(1 for r in rows if r['tag'])} shown tags, {sum(1 for r in rows if not r['verdict'])} to judge")


if __name__ == "__main__":
    sys.exit(main())
