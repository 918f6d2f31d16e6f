"""The model shipped inside the package: small, loads without --model, and tags a beach as a beach."""
import json

import pytest
from typer.testing import CliRunner

from tagger.cli import app
from tagger.shipped import SHIPPED, default_model_path
from tagger.bundle import load

pytestmark = pytest.mark.skipif(default_model_path() is None, reason=f"no shipped model at {SHIPPED} (make model builds it)")


def test_shipped_model_is_small_half_precision_and_calibrated():
    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size <= 31_000_000, f"{size / 1e6:.1f} MB"  # 24 MB, and the retrained tail (float16) with its word layer
    from safetensors import safe_open

    with safe_open(str(SHIPPED / "generator.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    config = json.loads((SHIPPED / "config.json").read_text())
    info = config["info"]
    # A tenth of the photos held out to choose the epoch, kNN's K and the default method, and to calibrate.
    assert info["split_fractions"] == [0.9, 0.1, 0.0] and info["photos"] > 10000
    assert config["method"] == info["method"] == max(info["method_val_p5"], key=info["method_val_p5"].get)
    assert config["method"] in json.loads((SHIPPED / "calibration.json").read_text())


@pytest.mark.data
def test_predict_without_model_option(subset_dir, monkeypatch):
    monkeypatch.delenv("TAGGER_MODEL", raising=False)
    beach = subset_dir / "images" / "im5327.jpg"  # a rocky beach at dusk, tagged beach, sea, sunset
    result = CliRunner().invoke(app, ["predict", str(beach), "--top-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    tags = json.loads(result.stdout)["tags"]
    assert {"beach", "sea", "sunset", "ocean", "waves", "coast"} & set(tags), tags
    assert len(load(SHIPPED).words) > 500
