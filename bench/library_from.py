"""A photo library to train `--from` the shipped model on: photos it never saw, their owners' tags in the JPEGs.

    python bench/library_from.py build --out ~/libtest          # ~/libtest/library (400), ~/libtest/heldout (100)
    python bench/library_from.py build --out ~/libtest --kind any

The photos come from the shipped model's validation tenth (the Makefile's SHIPPED_SPLIT, 0.9,0.1,0 with
seed 0: `split_ids(frame["id"], (0.9, 0.1, 0.0), 0) == "val"`), so the shipped model trained on none
of them. `--kind nature` (the default) keeps those whose concept labels name an outdoor, natural
scene (plant_life, flower, tree, animals, bird, dog, sky, clouds, water, sea, lake, river, sunset:
562 of the 1,090), standing in for one owner's library, which is of a kind; `--kind any` keeps them
all. A seeded draw of 500 is cut into 400 library photos and 100 held out "of the same kind". Each
photo is copied and its Flickr owner's tags written into it as XMP dc:subject by exiftool, one
exiftool process for all of them, as a photo manager would have left them.

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


def pick(data: Path, kind: str, n_library: int, n_heldout: int, seed: int = 0):
    """(library rows, held-out rows) of the subset's frame: photos of the shipped model's validation tenth of `kind`."""
    from pipelines.datasets import read_dataset, split_ids

    frame = read_dataset(data)
    frame["split"] = split_ids(frame["id"], SHIPPED_SPLIT, 0)
    val = frame[frame["split"] == "val"]
    if kind == "nature":
        val = val[val["labels"].map(lambda labels: bool(labels and NATURE & set(labels)))]
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
    library, heldout = pick(args.data, args.kind, args.photos, args.heldout, args.seed)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the library and the held-out photos")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--data", type=Path, default=DATA)
    b.add_argument("--kind", choices=("nature", "any"), default="nature")
    b.add_argument("--photos", type=int, default=400)
    b.add_argument("--heldout", type=int, default=100)
    b.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="P@5 of bundles on the held-out photos against one truth")
    c.add_argument("heldout", type=Path)
    c.add_argument("models", type=Path, nargs="+")
    args = ap.parse_args()
    build(args) if args.command == "build" else compare(args)


if __name__ == "__main__":
    main()
