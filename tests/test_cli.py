"""The command line, end to end through typer's CliRunner: exit codes and what users read."""
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import TINY_TAGS, make_photo_files
from tagger.cli import app

runner = CliRunner()


def test_help_shows_examples():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "Example:" in result.output
    for command in ("train", "predict", "tag", "evaluate", "features", "serve"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output, command


def test_predict_text_json_and_a_bad_photo(tmp_path, tiny_bundle):
    photos = make_photo_files(tmp_path / "p", 2)
    result = runner.invoke(app, ["predict", *map(str, photos), "--model", str(tiny_bundle), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{photos[0]}: ") and lines[0].count(",") == 1
    bad = tmp_path / "p" / "notes.jpg"
    bad.write_text("not a photo")
    result = runner.invoke(app, ["predict", str(photos[0]), str(bad), "--model", str(tiny_bundle), "--json"])
    assert result.exit_code == 1
    recs = [json.loads(l) for l in result.stdout.strip().splitlines()]
    assert recs[0]["error"] == "" and len(recs[0]["tags"]) == 3 and len(recs[0]["scores"]) == 3
    assert recs[1]["path"] == str(bad) and recs[1]["error"] and recs[1]["tags"] == []
    assert "Traceback" not in result.output


def test_missing_model_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TAGGER_MODEL", raising=False)
    photo = make_photo_files(tmp_path, 1)[0]
    result = runner.invoke(app, ["predict", str(photo), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "nope: no such model folder" in result.output and "Traceback" not in result.output


def test_tag_a_folder_then_again(tmp_path, tiny_bundle):
    make_photo_files(tmp_path / "photos" / "sub", 5)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    out = tmp_path / "tags.csv"
    args = ["tag", str(tmp_path / "photos"), "--out", str(out), "--model", str(tiny_bundle), "--sidecar", "xmp"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # a photo failed in this run
    assert "5 tagged, 0 unchanged (kept), 1 failed" in result.output
    rows = pd.read_csv(out, keep_default_na=False)
    assert len(rows) == 6 and set(rows.columns) >= {"path", "tags", "scores", "error"}
    assert (rows["error"] != "").sum() == 1
    assert len(list((tmp_path / "photos" / "sub").glob("*.jpg.xmp"))) == 5
    result = runner.invoke(app, args)
    assert "0 tagged, 5 unchanged (kept), 1 failed" in result.output
    assert result.exit_code == 1, result.output  # the broken file was tried again, and failed again
    result = runner.invoke(app, args + ["--no-retry-failed"])
    assert "0 tagged, 5 unchanged (kept), 1 failed" in result.output
    assert result.exit_code == 0, result.output  # the same broken file, already reported: listed, not failed again


@pytest.mark.slow
def test_train_from_a_manifest_then_predict(tmp_path):
    photos = make_photo_files(tmp_path / "photos", 48)
    pd.DataFrame({"path": [p.name for p in photos], "tags": [",".join(TINY_TAGS[i % len(TINY_TAGS)]) for i in range(48)]}).to_csv(
        tmp_path / "photos" / "manifest.csv", index=False)
    out = tmp_path / "model"
    result = runner.invoke(app, ["train", str(tmp_path / "photos" / "manifest.csv"), "--out", str(out), "--backbone", "tiny",
                                 "--min-count", "1", "--epochs", "2", "--preset", "adam", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert f"model bundle: {out}" in result.output and "validation P@5" in result.output
    assert (out / "train_log.csv").is_file() and (out / "train_curves.png").is_file()
    info = json.loads((out / "config.json").read_text())["info"]
    assert info["epochs"] == 2 and info["pairs"] > 0 and info["preset"] == "adam"
    result = runner.invoke(app, ["predict", str(photos[0]), "--model", str(out)])
    assert result.exit_code == 0 and result.output.startswith(str(photos[0]))


def test_train_refuses_a_bad_manifest_in_one_line(tmp_path):
    make_photo_files(tmp_path / "photos", 2)
    manifest = tmp_path / "photos" / "m.csv"
    cases = [("path,keywrds\nphoto000.jpg,sea\n", "m.csv: no tags column (looked for tags, keywords, tag; columns: path, keywrds)"),
             ("path,tags\ngone1.jpg,sea\ngone2.jpg,dog\n", "m.csv: none of its 2 photos exist")]
    for text, message in cases:
        manifest.write_text(text)
        result = runner.invoke(app, ["train", str(manifest), "--out", str(tmp_path / "model"), "--backbone", "tiny",
                                     "--cache-dir", str(tmp_path / "cache")])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        [line] = result.output.splitlines()
        assert line.startswith(f"tagger: error: {manifest}") and message in line, line
    assert not (tmp_path / "model").exists()


def test_damaged_bundle_is_one_line(tmp_path, tiny_bundle):
    [photo] = make_photo_files(tmp_path / "photos", 1)
    vectors = tiny_bundle / "word_vectors.npz"
    vectors.write_bytes(vectors.read_bytes()[:100])  # used to end in a zipfile traceback
    result = runner.invoke(app, ["predict", str(photo), "--model", str(tiny_bundle)])
    assert result.exit_code == 1 and result.output.splitlines() == [
        f"tagger: error: {vectors}: cannot load the word vectors (File is not a zip file)"], result.output


def test_features_command(tmp_path):
    make_photo_files(tmp_path / "photos", 3)
    result = runner.invoke(app, ["features", str(tmp_path / "photos"), "--out", str(tmp_path / "f"), "--backbone", "tiny",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    import numpy as np

    feats = np.load(tmp_path / "f" / "features.npy")
    assert feats.shape[0] == 3 and len(pd.read_csv(tmp_path / "f" / "photos.csv")) == 3
    # --cache-dir is the cache root on every command (train keeps features in its features/ too), so
    # `train --cache-dir C` then `evaluate --cache-dir C` do not extract everything twice.
    assert list((tmp_path / "cache" / "features").iterdir()) and not list((tmp_path / "cache").glob("*.npy"))


def test_progress_lines_follow_stdout_from_one_command_to_the_next(monkeypatch):
    """Progress is written to the stdout of the command running now, not of the first one that turned it on."""
    import io
    import logging

    from tagger.cli import progress_log

    name = "tagger.test.progress"
    logger = logging.getLogger(name)
    try:
        first, second = io.StringIO(), io.StringIO()
        monkeypatch.setattr("sys.stdout", first)
        progress_log(name)
        logger.info("epoch 1")
        first.close()  # as CliRunner closes a finished command's stdout
        monkeypatch.setattr("sys.stdout", second)
        progress_log(name)
        logger.info("epoch 2")
        logger.warning("not a progress line")
        assert second.getvalue() == "epoch 2\n"
    finally:
        logger.handlers.clear()
