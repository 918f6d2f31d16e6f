"""The shipped model's tags of 1,000 subset photos, stored: any change that moves one tag of one photo shows here.

`tests/data/tags_1000.tsv` holds every 10th photo of the subset (by file name) tagged by `tagger tag`
with the shipped model and its defaults. It was first written before the tagging code was
restructured into one tagging function and one batch job (which moved no tag), then again when the
default became content and style words with synonyms merged (issue "tags a library owner keeps").
A change meant to move tags rewrites it, and says so in its commit:

    python tests/test_golden.py          # with the subset beside the checkout, or TAGGER_SUBSET set
"""
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tagger.cli import app

TABLE = Path(__file__).parent / "data" / "tags_1000.tsv"


def photos_of(subset: Path) -> list[Path]:
    return sorted((subset / "images").glob("*.jpg"), key=lambda p: p.name)[::10][:1000]


def tag(photos: list[Path], work: Path) -> pd.DataFrame:
    """`tagger tag` on the photos: one row per photo (photo, tags, scores, error), in the order given."""
    out = work / "tags.parquet"
    result = CliRunner().invoke(app, ["tag", *map(str, photos), "--out", str(out), "--cache-dir", str(work / "cache")])
    assert result.exit_code == 0, result.output
    got = pd.read_parquet(out)
    got = got.assign(photo=got["path"].map(lambda p: p.rsplit("/", 1)[-1])).set_index("photo")
    return got.loc[[p.name for p in photos]].reset_index()[["photo", "tags", "scores", "error"]]


@pytest.mark.slow
def test_tag_gives_the_stored_tags_of_1000_subset_photos(subset_dir, tmp_path):
    stored = pd.read_csv(TABLE, sep="\t", dtype=str, keep_default_na=False)
    got = tag([subset_dir / "images" / name for name in stored["photo"]], tmp_path)
    assert (got["error"] == "").all()
    assert [list(t) for t in got["tags"]] == [json.loads(t) for t in stored["tags"]]
    for mine, theirs in zip(got["scores"], stored["scores"]):
        assert list(mine) == pytest.approx(json.loads(theirs), abs=2e-4)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import SUBSET

    with tempfile.TemporaryDirectory() as work:
        rows = tag(photos_of(SUBSET), Path(work))
    with open(TABLE, "w", encoding="utf-8") as f:
        f.write("photo\ttags\tscores\terror\n")
        for r in rows.itertuples():
            f.write(f"{r.photo}\t{json.dumps(list(r.tags))}\t{json.dumps([round(float(s), 4) for s in r.scores])}\t{r.error}\n")
    print(f"{TABLE}: {len(rows)} photos")
