"""The judged figure: a person looks at photos and their shown tags and says which tags are sensible.

    python bench/judge.py sheets --model tagger/assets/model --out /tmp/sheets   # contact sheets to look at, and
                                                                                # docs/judged/verdicts.tsv with a row per shown tag
    (fill the verdict column: y sensible, n not; a photo shown no tags has one row, tag empty: y for a
    blank frame, n for a scene it missed; docs/judged/README.md)
    python bench/judge.py score docs/judged/verdicts.tsv                         # the figures
    python bench/judge.py sheets --model OTHER --out /tmp/s --verdicts other.tsv # another bundle: its own table, the
                                                                                # shipped model's verdicts filled in

The photos (`photos()`): 30 MIRFLICKR photos of the shipped model's validation tenth (it never trained
on them; a seeded draw) and 30 from elsewhere: scikit-image's and matplotlib's sample photos, crops
of them at another framing, and four blank frames.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "datasets" / "mirflickr25k_subset"
VERDICTS = REPO / "docs" / "judged" / "verdicts.tsv"
OTHER_FILES = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
               "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg", "grass.png", "gravel.png", "brick.png", "page.png",
               "text.png", "clock_motion.png", "cell.png", "color.png"]
CROPS = {"astronaut_face.png": ("astronaut.png", (150, 20, 330, 220)), "chelsea_face.png": ("chelsea.png", (60, 20, 300, 250)),
         "coffee_cup.png": ("coffee.png", (150, 40, 470, 330)), "rocket_top.png": ("rocket.jpg", (200, 0, 480, 280)),
         "motorcycle_wheel.png": ("motorcycle_left.png", (0, 200, 350, 500))}
BLANKS = {"blank_black.png": 4, "blank_white.png": 252, "blank_grey.png": 128}


def photos(folder: Path) -> list[tuple[str, Path]]:
    """(source, path) of the 60 photos; the other sources' files are written into `folder`."""
    import matplotlib
    import skimage
    import pandas as pd

    from pipelines.datasets import read_dataset, split_ids

    frame = read_dataset(DATA)
    frame["split"] = split_ids(frame["id"], (0.9, 0.1, 0.0), 0)
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    picked = np.random.default_rng(2026).choice(len(val), 30, replace=False)
    out = [("mirflickr", Path(val["path"][i])) for i in sorted(picked)]
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(skimage.__file__).parent / "data"
    for name in OTHER_FILES:
        target = folder / Path(name).with_suffix(".png").name
        Image.open(data / name).convert("RGB").save(target)
        out.append(("other", target))
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    Image.open(hopper).convert("RGB").save(folder / "grace_hopper.png")
    out.append(("other", folder / "grace_hopper.png"))
    for name, (source, box) in CROPS.items():
        Image.open(data / source).convert("RGB").crop(box).save(folder / name)
        out.append(("other", folder / name))
    for name, level in BLANKS.items():
        Image.new("RGB", (320, 240), (level,) * 3).save(folder / name)
        out.append(("other", folder / name))
    gradient = np.tile(np.linspace(90, 110, 320, dtype=np.uint8), (240, 1))
    Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(folder / "blank_gradient.png")
    out.append(("other", folder / "blank_gradient.png"))
    return out


def sheets(model: str, out: Path, verdicts: Path = VERDICTS, known: tuple[Path, ...] = ()) -> None:
    import tagger
    from pipelines.images import load_image

    t = tagger.load(model)
    items = photos(out / "photos")
    # A verdict is about a photo and a word, whatever model showed it: earlier verdicts (of `verdicts` itself and of
    # the `known` files) are kept, only new pairs are left empty.
    judged = {}
    for file in (*known, verdicts):
        if file.is_file():
            with open(file, encoding="utf-8") as f:
                judged.update({(r["photo"], r["tag"]): r["verdict"] for r in csv.DictReader(f, delimiter="\t") if r["verdict"]})
    rows, cells = [], []
    for source, path in items:
        result = t.tag(t.read([path]), tagger.TagOptions())[0]
        tags = result.tags or []
        note = getattr(result, "note", "") or result.error
        for tag, score in tags or [("", float("nan"))]:
            rows.append({"photo": path.name if source == "other" else path.name, "source": source, "tag": tag,
                         "score": f"{score:.2f}" if tag else "", "note": note if not tag else "",
                         "verdict": judged.get((path.name, tag), "")})
        cells.append((path, tags, note))
    for page in range(0, len(cells), 6):
        sheet = Image.new("RGB", (3 * 340, 2 * 330), "white")
        draw = ImageDraw.Draw(sheet)
        for j, (path, tags, note) in enumerate(cells[page:page + 6]):
            im = ImageOps.contain(load_image(path), (320, 240))  # the subset's photos are 128 px: shown larger
            x, y = (j % 3) * 340 + 10, (j // 3) * 330 + 5
            sheet.paste(im, (x, y))
            text = f"{path.name}\n" + ("\n".join(f"{a} {b:.2f}" for a, b in tags[:5]) + (f" (+{len(tags) - 5})" if len(tags) > 5 else "")
                                       if tags else note or "no tags")
            draw.multiline_text((x, y + 245), text, fill="black")
        sheet.save(out / f"sheet_{page // 6 + 1:02d}.png")
    verdicts.parent.mkdir(parents=True, exist_ok=True)
    with open(verdicts, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(cells)} photos, {sum(1 for r in rows if r['tag'])} shown tags, {sum(1 for r in rows if not r['verdict'])} to judge: "
          f"{out}/sheet_*.png, {verdicts}")


def score(file: Path) -> None:
    with open(file, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for source in ("mirflickr", "other", None):
        part = [r for r in rows if source is None or r["source"] == source]
        photos_ = {r["photo"] for r in part}
        tags = [r for r in part if r["tag"]]
        sensible = sum(r["verdict"] == "y" for r in tags)
        firsts = {}
        for r in tags:
            firsts.setdefault(r["photo"], r)
        best = sum(r["verdict"] == "y" for r in firsts.values())
        blank = [p for p in photos_ if p.startswith("blank_")]
        print(f"{source or 'all'}: {len(photos_)} photos, {len(tags)} tags ({len(tags) / len(photos_):.2f} per photo), "
              f"sensible {sensible} ({sensible / max(len(tags), 1):.0%}), best tag right on {best} of {len(firsts)} photos with tags "
              f"({best / max(len(firsts), 1):.0%}), no tags on {len(photos_) - len(firsts)} (of them blank frames {len(blank)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("sheets")
    a.add_argument("--model", default=str(REPO / "tagger" / "assets" / "model"))
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--verdicts", type=Path, default=VERDICTS, help="the table to write (default: the shipped model's, docs/judged/verdicts.tsv)")
    a.add_argument("--known", type=Path, nargs="*", default=[VERDICTS], help="more verdict files to fill verdicts from")
    b = sub.add_parser("score")
    b.add_argument("file", type=Path, nargs="?", default=VERDICTS)
    args = parser.parse_args()
    sheets(args.model, args.out, args.verdicts, tuple(args.known)) if args.command == "sheets" else score(args.file)
