"""A photo library to train `--from` the shipped model on: photos it never saw, their owners' tags in the JPEGs.

    python bench/library_from.py build --out ~/libtest          # ~/libtest/library (400), ~/libtest/heldout (100)
    python bench/library_from.py build --out ~/libtest --kind any
    python bench/library_from.py build --out ~/liblabels --keywords labels   # one owner's own words: the concept labels

The photos come from the shipped model's validation tenth (the Makefile's SHIPPED_SPLIT, 0.9,0.1,0 with
seed 0: `split_ids(frame["id"], (0.9, 0.1, 0.0), 0) == "val"`), so the shipped model trained on none
of them. `--kind nature` (the default) keeps those whose concept labels name an outdoor, natural
scene (plant_life, flower, tree, animals, bird, dog, sky, clouds, water, sea, lake, river, sunset:
562 of the 1,090), standing in for one owner's library, which is of a kind; `--kind any` keeps them
all. A seeded draw of 500 is cut into 400 library photos and 100 held out "of the same kind". Each
photo is copied and its Flickr owner's tags written into it as XMP dc:subject by exiftool, one
exiftool process for all of them, as a photo manager would have left them. `--keywords labels` writes each
photo's MIRFLICKR concept labels instead (`plant life`, `sky`, `people`: one owner's consistent vocabulary,
every photo of a dog tagged `dog`), and keeps the photos that have any.

The figures of README "Train on your own library" came from (`OMP_NUM_THREADS=1` on a 2-core CPU):

    tagger train ~/libtest/library --out ~/m/lib --min-count 3                 # the library alone
    tagger train ~/libtest/library --out ~/m/from --from shipped --min-count 3  # from the shipped model
    tagger evaluate ~/libtest/heldout --split all --model ~/m/from --model ~/m/lib --model tagger/assets/model
    python bench/library_from.py compare ~/libtest/heldout ~/m/from ~/m/lib tagger/assets/model

`compare` scores every bundle on the held-out photos against one truth, each photo's owner tags that
are words of the first bundle (the one from `--from`, whose vocabulary holds the others' words, when
they grew from it): evaluate's truth is each bundle's own vocabulary, so a small one leaves its hard
photos out.
"""
from __future__ import annotations

import argparse
from collections import Counter
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "datasets" / "mirflickr25k_subset"
SHIPPED_SPLIT = (0.9, 0.1, 0.0)  # the Makefile's, with seed 0
NATURE = {"plant_life", "flower", "tree", "animals", "bird", "dog", "sky", "clouds", "water", "sea", "lake", "river", "sunset"}


def pick(data: Path, kind: str, n_library: int, n_heldout: int, seed: int = 0, keywords: str = "owners"):
    """(library rows, held-out rows) of the subset's frame: photos of the shipped model's validation tenth of `kind`,
    with their `keywords` in the "tags" column: the Flickr owners' tags, or the concept labels ("labels")."""
    from pipelines.datasets import read_dataset, split_ids

    frame = read_dataset(data)
    frame["split"] = split_ids(frame["id"], SHIPPED_SPLIT, 0)
    val = frame[frame["split"] == "val"]
    if kind == "nature":
        val = val[val["labels"].map(lambda labels: bool(labels and NATURE & set(labels)))]
    if keywords == "labels":  # one owner's consistent vocabulary: every photo of a dog is "dog"
        val = val.assign(tags=val["labels"].map(lambda labels: [l.replace("_", " ") for l in labels or []]))
    val = val[val["tags"].map(len) > 0].reset_index(drop=True)
    if len(val) < n_library + n_heldout:
        raise SystemExit(f"only {len(val)} photos of kind {kind!r} in the shipped model's validation tenth")
    order = np.random.default_rng(seed).permutation(len(val))
    return val.iloc[order[:n_library]], val.iloc[order[n_library:n_library + n_heldout]]


def write_library(rows, folder: Path) -> None:
    """Copy the photos into `folder` and write each one's tags into it with exiftool (one process for all)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = []
    for path, tags in zip(rows["path"], rows["tags"]):
        target = folder / Path(path).name
        shutil.copyfile(path, target)
        args += [f"-XMP-dc:Subject+={t}" for t in tags] + [str(target), "-execute"]
    with tempfile.NamedTemporaryFile("w", suffix=".args", encoding="utf-8", delete=False) as f:
        f.write("\n".join(args[:-1]) + "\n")
    try:
        subprocess.run(["exiftool", "-@", f.name, "-common_args", "-q", "-overwrite_original"], check=True, stdout=subprocess.DEVNULL)
    finally:
        Path(f.name).unlink()


def build(args) -> None:
    if shutil.which("exiftool") is None:
        raise SystemExit("exiftool not found (Debian: libimage-exiftool-perl)")
    library, heldout = pick(args.data, args.kind, args.photos, args.heldout, args.seed, args.keywords)
    for name, rows in (("library", library), ("heldout", heldout)):
        folder = args.out / name
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"{folder}: exists and is not empty")
        write_library(rows, folder)
        print(f"{folder}: {len(rows)} photos, {sum(map(len, rows['tags'])):,} owner tags")


def compare(args) -> None:
    """P@5 of each bundle's default method on the held-out photos, against the first bundle's in-vocabulary owner tags."""
    from pipelines.cache import default_cache_dir
    from pipelines.datasets import read_dataset
    from pipelines.features import FeatureConfig, extract_features
    from tagger.bundle import load
    from tagger.evaluation.metrics import precision_at_k, top_ids
    from tagger.scoring.evidence import Evidence
    from tagger.scoring.options import TagOptions

    frame = read_dataset(args.heldout)
    taggers = [load(m, device="cpu") for m in args.models]
    first = taggers[0]
    pos = {w: i for i, w in enumerate(first.words)}
    truth = [{pos[w] for w in first.vocabulary.normalize(tags)} for tags in frame["tags"]]
    judged = [i for i, t in enumerate(truth) if t]
    for path, tagger in zip(args.models, taggers):
        # A word the first bundle lacks is right where it is another form of a word it has (`buildings`), else never.
        same = np.array([pos.get(w, pos.get(first.vocabulary.lookup(w), -1)) for w in tagger.words])
        cfg = FeatureConfig(backbone=tagger.backbone_name, weights=tagger.backbone_weights, cache_dir=default_cache_dir() / "features")
        feats = extract_features(list(frame["path"][judged]), cfg, progress=False)
        scores = tagger.score(Evidence.of(feats.features, feats.measures), TagOptions())
        table = scores.shown if tagger.default_method in tagger.calibration else scores.order
        ids = same[top_ids(table, 5)]
        p5 = precision_at_k(ids, [truth[i] for i in judged], 5)
        print(f"{path}: {tagger.default_method} P@5 {p5:.4f} on {len(judged)} of {len(frame)} held-out photos")


XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" xmlns:tagger="urn:tagger:xmp:1.0/"><tagger:Rejected><rdf:Bag><rdf:li>{}</rdf:li></rdf:Bag>'
       '</tagger:Rejected></rdf:Description></rdf:RDF></x:xmpmeta>')


def top5(tagger, paths) -> list[list[str]]:
    from pipelines.cache import default_cache_dir
    from pipelines.features import FeatureConfig, extract_features
    from tagger.scoring.evidence import Evidence
    from tagger.scoring.options import TagOptions

    cfg = FeatureConfig(backbone=tagger.backbone_name, weights=tagger.backbone_weights, cache_dir=default_cache_dir() / "features")
    feats = extract_features(list(paths), cfg, progress=False)
    return [[w for w, _ in r.tags or []] for r in tagger.tag(Evidence.of(feats.features, feats.measures), TagOptions(top_k=5, min_score=0))]


def reject(args) -> None:
    """The owner rejects one word on `--photos` library photos (the word the model shows most often among the top 5 of
    photos that lack it): writes `tagger:Rejected` sidecars into a copy of the library at `--out`."""
    from pipelines.datasets import read_dataset
    from tagger.bundle import load

    tagger = load(args.model, device="cpu")
    frame = read_dataset(args.library)
    tops = top5(tagger, frame["path"])
    owner = [set(tagger.vocabulary.canonicalize(t)) for t in frame["tags"]]
    wrong = Counter(w for top, mine in zip(tops, owner) for w in top if w not in mine)
    word = args.word or wrong.most_common(1)[0][0]
    chosen = [i for i, (top, mine) in enumerate(zip(tops, owner)) if word in top and word not in mine][: args.photos]
    if (args.out).exists():
        raise SystemExit(f"{args.out}: exists")
    shutil.copytree(args.library, args.out)
    for i in chosen:
        target = args.out / Path(frame["path"][i]).name
        target.with_name(target.name + ".xmp").write_text(XMP.format(word))
    print(f"{args.out}: {word!r} rejected on {len(chosen)} photos (shown in the top 5 of {wrong[word]} photos lacking it)")
    print("rejected photos: " + " ".join(frame["id"][i] for i in chosen))


def rejected_share(args) -> None:
    """How often each bundle shows the rejected word in the top 5: on the photos it was rejected on, and on held-out photos."""
    from pipelines.datasets import read_dataset
    from pipelines.keywords import read_sidecar, sidecar_path
    from tagger.bundle import load

    frame = read_dataset(args.library)
    rejected = {i: read_sidecar(sidecar_path(p)).rejected for i, p in enumerate(frame["path"])}
    rows = [i for i, r in rejected.items() if r]
    word = rejected[rows[0]][0]
    held = read_dataset(args.heldout)
    for model in args.models:
        tagger = load(model, device="cpu")
        on = top5(tagger, frame["path"][rows])
        other = top5(tagger, held["path"])
        print(f"{model}: {word!r} in the top 5 of {sum(word in t for t in on)} of the {len(rows)} photos it was rejected on, "
              f"of {sum(word in t for t in other)} of the {len(held)} held-out photos")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the library and the held-out photos")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--data", type=Path, default=DATA)
    b.add_argument("--kind", choices=("nature", "any"), default="nature")
    b.add_argument("--keywords", choices=("owners", "labels"), default="owners",
                   help="what is written as each photo's keywords: its Flickr owner's tags, or its concept labels")
    b.add_argument("--photos", type=int, default=400)
    b.add_argument("--heldout", type=int, default=100)
    b.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="P@5 of bundles on the held-out photos against one truth")
    c.add_argument("heldout", type=Path)
    c.add_argument("models", type=Path, nargs="+")
    r = sub.add_parser("reject", help="a copy of the library with one word rejected on some photos")
    r.add_argument("library", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--model", type=Path, default=REPO / "tagger" / "assets" / "model")
    r.add_argument("--word", default=None)
    r.add_argument("--photos", type=int, default=50)
    s = sub.add_parser("rejected", help="how often bundles show the rejected word")
    s.add_argument("library", type=Path)
    s.add_argument("heldout", type=Path)
    s.add_argument("models", type=Path, nargs="+")
    args = ap.parse_args()
    {"build": build, "compare": compare, "reject": reject, "rejected": rejected_share}[args.command](args)


if __name__ == "__main__":
    main()
