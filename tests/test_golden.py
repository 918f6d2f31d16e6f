"""The shipped model's tags of 1,000 subset photos, stored before the tagging code was restructured.

`tests/data/tags_1000.tsv` holds every 10th photo of the subset (by file name) tagged with the
shipped model and its defaults. Any change to decoding, features, scoring or the batch job that
moves one tag of one photo fails here; a change meant to move tags regenerates the table and says so
in its commit.
"""
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tagger.cli import app

TABLE = Path(__file__).parent / "data" / "tags_1000.tsv"


@pytest.mark.slow
def test_tag_gives_the_stored_tags_of_1000_subset_photos(subset_dir, tmp_path):
    stored = pd.read_csv(TABLE, sep="\t", dtype=str, keep_default_na=False)
    photos = [subset_dir / "images" / name for name in stored["photo"]]
    out = tmp_path / "tags.parquet"
    result = CliRunner().invoke(app, ["tag", *map(str, photos), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    got = pd.read_parquet(out)
    got = got.assign(photo=got["path"].map(lambda p: p.rsplit("/", 1)[-1])).set_index("photo").loc[stored["photo"]]
    assert (got["error"] == "").all()
    assert [list(t) for t in got["tags"]] == [json.loads(t) for t in stored["tags"]]
    for mine, theirs in zip(got["scores"], stored["scores"]):
        assert list(mine) == pytest.approx(json.loads(theirs), abs=2e-4)
