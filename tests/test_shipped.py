"""The model shipped inside the package: small, loads without --model, and tags a beach as a beach."""
import json

import pytest
from typer.testing import CliRunner

from tagger.cli import app
from tagger.model import Tagger
from tagger.shipped import SHIPPED, default_model_path

pytestmark = pytest.mark.skipif(default_model_path() is None, reason=f"no shipped model at {SHIPPED} (make model builds it)")


def test_shipped_model_is_small_and_half_precision():
    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MB"
    info = json.loads((SHIPPED / "config.json").read_text())["info"]
    assert info["split_fractions"] == [1.0, 0.0, 0.0] and info["photos"] > 10000


@pytest.mark.data
def test_predict_without_model_option(subset_dir, monkeypatch):
    monkeypatch.delenv("TAGGER_MODEL", raising=False)
    beach = subset_dir / "images" / "im5327.jpg"  # a rocky beach at dusk, tagged beach, sea, sunset
    result = CliRunner().invoke(app, ["predict", str(beach), "--top-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    tags = json.loads(result.stdout)["tags"]
    assert {"beach", "sea", "sunset", "ocean", "waves", "coast"} & set(tags), tags
    assert len(Tagger.load(SHIPPED).words) > 500
