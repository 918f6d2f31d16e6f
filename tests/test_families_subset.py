"""Every generator family trained by `tagger train --generator NAME` on a slice of the real MIRFLICKR subset."""
import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tagger.cli import app
from tagger.evaluation.evaluate import evaluate
from tagger.bundle import load
from tagger.scoring.options import TagOptions

pytestmark = [pytest.mark.slow, pytest.mark.data]


@pytest.fixture(scope="module")
def slice_manifest(subset_dir, tmp_path_factory):
    """The first 800 photos of the subset as a CSV manifest, and a feature cache the families share."""
    folder = tmp_path_factory.mktemp("slice")
    with open(subset_dir / "annotations.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(800), f)]
    with open(folder / "photos.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "tags"])
        writer.writerows([str(subset_dir / r["file"]), " ".join(r["tags"])] for r in rows)
    return folder / "photos.csv", folder / "cache"


@pytest.mark.parametrize("family", ["cgan", "cvae", "caae"])
def test_each_family_trains_saves_loads_and_tags_real_photos(slice_manifest, subset_dir, tmp_path, family):
    manifest, cache = slice_manifest
    preset = ["--preset", "adam"] if family == "cgan" else []
    result = CliRunner().invoke(app, ["train", str(manifest), "--out", str(tmp_path / "m"), "--generator", family, *preset,
                                      "--epochs", "3", "--min-count", "5", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert f"{family}: " in result.output and "validation P@5" in result.output
    tagger = load(tmp_path / "m")
    assert tagger.family == family and tagger.info["generator"] == family and set(tagger.calibration) == set(tagger.methods)
    # The default method is the generator alone or with kNN, whichever did better on the validation photos.
    val = tagger.info["method_val_p5"]
    heads = {f"{family}+knn+head"} if tagger.head is not None else set()  # the ImageNet head's sum, where the backbone has one
    assert set(val) == {family, f"{family}+knn"} | heads and tagger.default_method == max(val, key=val.get)
    assert f"default method: {tagger.default_method}" in result.output
    # On the slice's validation photos the family does far better than tagging every photo by tag frequency.
    ev = evaluate(tagger, manifest, split="val", cache_dir=cache / "features", progress=False)
    assert ev.tags[family]["P@5"] > 1.25 * ev.tags["prior"]["P@5"], {m: r["P@5"] for m, r in ev.tags.items()}
    tags = tagger.predict([subset_dir / "images" / "im4484.jpg"], TagOptions(top_k=10))[0]  # a beach
    assert len(tags) == 10 and all(0 <= s <= 1 for _, s in tags)
    assert np.all(np.diff([s for _, s in tags]) <= 1e-9)  # calibrated scores keep the ranking's order


def test_training_with_concept_labels_fits_acceptance_and_the_threshold(subset_dir, tmp_path):
    """Real photos with their 24 concept labels: `train` fits what a person accepts and the default rule on them,
    and both survive the bundle's round trip."""
    with open(subset_dir / "annotations.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(600), f)]
    with open(tmp_path / "photos.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "tags", "labels"])
        writer.writerows([str(subset_dir / r["file"]), " ".join(r["tags"]), ",".join(r["labels24"] or [])] for r in rows)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "photos.csv"), "--out", str(tmp_path / "m"), "--preset", "adam",
                                      "--epochs", "3", "--min-count", "5", "--precision", "0.7", "--split", "0.6,0.4,0",
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "acceptance.json").is_file()
    tagger = load(tmp_path / "m")
    s = tagger.summary
    assert tagger.default_method in tagger.acceptance and s.accepted_photos >= 200  # every validation photo has labels
    # The threshold is the bundle's default rule, and at or above it the validation concept tags were mostly right.
    assert 0 < s.threshold < 1 and tagger.sampling.min_score == s.threshold
    assert s.threshold_precision >= 0.6 and 0 < s.threshold_tags <= tagger.sampling.top_k
    tags = tagger.predict([subset_dir / "images" / "im4484.jpg"])[0]  # a beach: the default rule, shown as probabilities
    assert all(s.threshold <= score <= 1 for _, score in tags)
