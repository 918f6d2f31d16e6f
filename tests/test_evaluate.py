"""Evaluation: every method on the same photos, label mapping, the printed table and the HTML report."""
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import TINY_TAGS, build_tiny_tagger, make_photo_files
from tagger.scoring.knn import KNNConfig, KNNTagger
from tagger.cli import app
from tagger.evaluation.evaluate import evaluate, label_table
from tagger.scoring.options import TagOptions
from tagger.scoring.evidence import Evidence
from tagger.bundle import save


def manifest(tmp_path, n=24):
    photos = make_photo_files(tmp_path / "photos", n)
    tags = [TINY_TAGS[i % len(TINY_TAGS)] for i in range(n)]
    labels = [["sea"] if "sea" in t else ["dog"] if "dog" in t else [] for t in tags]
    pd.DataFrame({"path": [p.name for p in photos], "tags": [",".join(t) for t in tags],
                  "labels": [",".join(l) for l in labels]}).to_csv(tmp_path / "photos" / "m.csv", index=False)
    return tmp_path / "photos" / "m.csv", tags


def tiny_tagger_with_knn(tmp_path, tags, k):
    """The tiny tagger with a kNN baseline fitted on the manifest's photos."""
    tagger = build_tiny_tagger()
    feats = tagger.read(sorted((tmp_path / "photos").glob("*.jpg"))).features
    pos = {w: i for i, w in enumerate(tagger.words)}
    ids = [[pos[w] for w in tagger.vocabulary.normalize(t) if w in pos] for t in tags]
    tagger = tagger.replace(knn=KNNTagger.fit(feats, ids, len(pos), KNNConfig(k=k)))
    return tagger


def test_label_table_takes_the_best_naming_word():
    words = ["beach", "sea", "dog", "sky"]
    table = np.array([[0.2, 0.7, 0.1, 0.0]])
    lt, labels, used = label_table(table, words)
    col = dict(zip(labels, lt[0]))
    assert col["sea"] == pytest.approx(0.7) and col["dog"] == pytest.approx(0.1) and col["water"] == pytest.approx(0.7)
    assert "car" not in col and used["sea"] == ["sea", "beach"]


def test_every_method_on_the_same_photos(tmp_path):
    data, tags = manifest(tmp_path)
    tagger = tiny_tagger_with_knn(tmp_path, tags, k=1)
    ev = evaluate(tagger, data, split="all", progress=False)
    assert set(ev.tags) == {"cgan", "knn", "cgan+knn", "prior"} and ev.photos == 24 and ev.left_out == 0
    # The prior ranks the most frequent word first for every photo: P@1 is the share of photos with it.
    top = tagger.words[int(np.argmax(tagger.prior))]
    share = np.mean([top in tagger.vocabulary.normalize(t) for t in tags])
    assert ev.tags["prior"]["P@1"] == pytest.approx(share)
    # Each photo is its own nearest neighbour, so kNN recovers training tags well.
    assert ev.tags["knn"]["P@1"] == pytest.approx(1.0)
    assert set(ev.labels) == set(ev.tags) and ev.samples
    # Every other method is compared with kNN photo by photo; the prior loses to a perfect kNN.
    assert set(ev.versus_knn) == {"cgan", "cgan+knn", "prior"}
    vs = ev.versus_knn["prior"]
    assert vs["diff"] == pytest.approx(ev.tags["prior"]["P@5"] - ev.tags["knn"]["P@5"]) and vs["high"] < 0
    # What the default rule shows: at most top_k tags a photo; kNN's shown tags are its own photo's tags.
    shown = ev.shown["knn"]
    assert 0 < shown["tags/photo"] <= shown["top_k"] and sum(k["share"] for k in shown["kinds"].values()) == pytest.approx(1)
    assert ev.shown["knn"]["owners"] > ev.shown["prior"]["owners"]
    assert ev.tags["knn"]["shown P@5"] == pytest.approx(ev.tags["knn"]["P@5"])  # no kinds, no keyword groups: the same truth


def test_cli_prints_and_writes_reports(tmp_path):
    data, tags = manifest(tmp_path)
    tagger = tiny_tagger_with_knn(tmp_path, tags, k=3)
    bundle = save(tagger, tmp_path / "bundle")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(data), "--model", str(bundle), "--split", "all", "--out", str(out),
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "P@5" in result.output and "cgan" in result.output and "prior" in result.output
    assert "P@5 minus kNN's" in result.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["photos"] == 24 and "MiAP" in rep["tags"]["cgan"]
    page = (out / "report.html").read_text()
    assert page.count("<img") >= 13 and "concept labels" in page and "paired-bootstrap" in page
    assert set(rep["versus_knn"]) == {"cgan", "cgan+knn", "prior"}


def test_several_bundles_side_by_side(tmp_path):
    from tagger.scoring.calibration import Calibration

    data, tags = manifest(tmp_path)
    a = tiny_tagger_with_knn(tmp_path, tags, k=3)
    b = tiny_tagger_with_knn(tmp_path, tags, k=3)
    b = b.replace(generator=build_tiny_tagger(seed=5).generator)  # another generator, the same kNN and vocabulary
    feats = a.read(sorted((tmp_path / "photos").glob("*.jpg"))).features
    pos = {w: i for i, w in enumerate(a.words)}
    truth = [{pos[w] for w in a.vocabulary.normalize(t) if w in pos} for t in tags]
    b = b.replace(calibration={"cgan": Calibration.fit(b.score(Evidence(feats, None), TagOptions(), calibrated=False).order, truth)})
    ev = evaluate({"a": a, "b": b}, data, split="all", progress=False)
    # The second bundle's kNN and prior tag exactly as the first's: one row each.
    assert list(ev.tags) == ["a/cgan", "a/knn", "a/cgan+knn", "a/prior", "b/cgan", "b/cgan+knn"]
    assert set(ev.versus_knn) == {"a/cgan", "a/cgan+knn", "a/prior", "b/cgan", "b/cgan+knn"}
    assert ev.tags["a/cgan"]["P@5"] != ev.tags["b/cgan"]["P@5"] or ev.tags["a/cgan"]["MiAP"] != ev.tags["b/cgan"]["MiAP"]
    # Only the calibrated row has an ECE, and its reliability bins count each photo's 10 best tags.
    assert "ECE" in ev.tags["b/cgan"] and "ECE" not in ev.tags["a/cgan"]
    assert sum(bin["count"] for bin in ev.calibration["b/cgan"]["bins"]) == 10 * ev.photos

    paths = [save(a, tmp_path / "A"), save(b, tmp_path / "B")]
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(data), "--model", str(paths[0]), "--model", str(paths[1]), "--split", "all",
                                      "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "A/cgan" in result.output and "B/cgan" in result.output and "B/knn" not in result.output and "ECE" in result.output
    page = (out / "report.html").read_text()
    assert "Calibration" in page and "B/cgan (ECE" not in page  # the legend is inside the plot image, not the text
    assert json.loads((out / "report.json").read_text())["calibration"]["B/cgan"]["ece"] >= 0


def test_evaluation_sees_blank_frames_as_tagging_does(tmp_path):
    """A lens-cap frame among the photos: evaluate measures it as `tag` does, and shows it no tags."""
    from PIL import Image

    data, tags = manifest(tmp_path)
    tagger = tiny_tagger_with_knn(tmp_path, tags, k=3)
    frame = pd.read_csv(data)
    Image.new("RGB", (64, 64), (3, 3, 3)).save(tmp_path / "photos" / "black.jpg")
    frame = pd.concat([frame, pd.DataFrame({"path": ["black.jpg"], "tags": ["sea,beach"], "labels": ["sea"]})])
    frame.to_csv(data, index=False)
    ev = evaluate(tagger, data, split="all", progress=False)
    for row, shown in ev.shown.items():
        assert shown["blank frames"] == 1 and shown["tags on blank frames"] == 0, row
    assert ev.shown["knn"]["none"] >= 1 / 25


def test_each_method_is_scored_once(tmp_path):
    """The table a method is judged on and the tags its default rule shows come from one scoring, and those tags
    are the ones `tag` gives on its own."""
    data, tags = manifest(tmp_path)
    tagger = tiny_tagger_with_knn(tmp_path, tags, k=3)
    calls = []
    real = type(tagger).score

    def counting(self, evidence, options=TagOptions(), calibrated=True):
        calls.append(self.method_of(options) + ("/all" if "all" in (options.kinds or ()) else ""))
        return real(self, evidence, options, calibrated)

    from tagger.model import Tagger
    try:
        Tagger.score = counting
        ev = evaluate(tagger, data, split="all", progress=False)
    finally:
        Tagger.score = real
    methods = [m for m in calls if not m.endswith("/all")]  # the one kinds=all table is the visualness study's
    assert sorted(methods) == sorted(ev.tags) and len(calls) == len(methods) + 1
    # Tagged from scratch, the same photos get as many tags as the evaluation says its rule showed.
    fresh = tagger.tag(tagger.read([tmp_path / "photos" / n for n in pd.read_csv(data)["path"]]), TagOptions(method="cgan"))
    assert np.mean([len(r.tags) for r in fresh]) == pytest.approx(ev.shown["cgan"]["tags/photo"])


def test_tag_refuses_scores_of_other_photos(tmp_path):
    data, tags = manifest(tmp_path)
    tagger = tiny_tagger_with_knn(tmp_path, tags, k=3)
    x = tagger.read(sorted((tmp_path / "photos").glob("*.jpg")))
    scores = tagger.score(x.take(np.arange(3)))
    with pytest.raises(ValueError, match="for 24 photos"):
        tagger.tag(x, scores=scores)
    assert [r.tags for r in tagger.tag(x.take(np.arange(3)), scores=scores)] == [r.tags for r in tagger.tag(x.take(np.arange(3)))]
