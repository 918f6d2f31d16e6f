"""Batch tagging of a folder: one row per photo, resumable, atomic output, sidecars, one writer."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tagger.batch import BatchError, Lock, journal_path, read_results, read_sidecar_keywords, tag_folder, write_sidecar


def make_photos(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(sub / f"p{i:03d}.jpg")


def fake_tagger(calls):
    """Tags that depend on the file only; 'bad' files fail; records which paths were tagged."""

    def tag_batch(paths):
        for p in paths:
            calls.append(str(p))
            if "bad" in p.name:
                yield p, None, "not an image"
            else:
                yield p, [(f"t{len(p.name)}", 0.5), ("photo", 0.25)], ""

    return tag_batch


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_one_row_per_photo_in_every_format(tmp_path, ext):
    make_photos(tmp_path / "photos", 6)
    (tmp_path / "photos" / "bad.jpg").write_text("no")
    out = tmp_path / f"tags{ext}"
    summary = tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert (summary.tagged, summary.failed, summary.kept) == (6, 1, 0)
    rows = read_results(out)
    assert len(rows) == 7 and rows["path"].is_unique
    good = rows[rows["error"] == ""]
    assert all(list(t) == ["t8", "photo"] for t in good["tags"])
    assert all(list(s) == [0.5, 0.25] for s in good["scores"])
    assert rows.loc[rows["path"].str.endswith("bad.jpg"), "error"].item() == "not an image"
    assert not journal_path(out).exists()


def test_second_run_tags_only_new_or_changed(tmp_path):
    make_photos(tmp_path / "photos", 4)
    out = tmp_path / "tags.csv"
    tag_folder(tmp_path / "photos", out, fake_tagger([]))
    calls = []
    summary = tag_folder(tmp_path / "photos", out, fake_tagger(calls))
    assert calls == [] and summary.kept == 4
    changed = tmp_path / "photos" / "b" / "p000.jpg"
    Image.new("RGB", (9, 9), "red").save(changed)
    Image.new("RGB", (9, 9), "blue").save(tmp_path / "photos" / "new.jpg")
    (tmp_path / "photos" / "a" / "p001.jpg").unlink()
    summary = tag_folder(tmp_path / "photos", out, fake_tagger(calls))
    assert sorted(calls) == sorted([str(changed), str(tmp_path / "photos" / "new.jpg")])
    assert (summary.tagged, summary.kept) == (2, 2)
    assert len(read_results(out)) == 4  # the deleted photo left the results


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    make_photos(tmp_path / "photos", 10)
    out = tmp_path / "tags.jsonl"

    def dies_after_four(paths):
        for i, row in enumerate(fake_tagger([])(paths)):
            if i == 4:
                raise KeyboardInterrupt  # stands in for a kill: nothing after this runs
            yield row

    with pytest.raises(KeyboardInterrupt):
        tag_folder(tmp_path / "photos", out, dies_after_four)
    assert not out.exists()
    with open(journal_path(out), "a") as f:
        f.write('{"path": "torn')  # a line cut short by the kill
    calls = []
    summary = tag_folder(tmp_path / "photos", out, fake_tagger(calls))
    assert len(calls) == 6 and summary.kept == 4 and summary.tagged == 6
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and len({r["path"] for r in rows}) == 10


def test_a_second_writer_is_refused(tmp_path):
    make_photos(tmp_path / "photos", 1)
    out = tmp_path / "tags.csv"
    # Another process holds the output's lock (the lock is per process, as a second `tagger tag` would be).
    holder = subprocess.Popen([sys.executable, "-c", f"from tagger.batch import Lock; from pathlib import Path; import time\n"
                               f"with Lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BatchError, match="another `tagger tag` run"):
            tag_folder(tmp_path / "photos", out, fake_tagger([]))
    finally:
        holder.kill()
        holder.wait()
    tag_folder(tmp_path / "photos", out, fake_tagger([]))  # free again once the holder is gone


def test_bad_output_name(tmp_path):
    make_photos(tmp_path / "photos", 1)
    with pytest.raises(BatchError, match="unknown output type"):
        tag_folder(tmp_path / "photos", tmp_path / "tags.xlsx", fake_tagger([]))
    with pytest.raises(BatchError, match="no such folder"):
        tag_folder(tmp_path / "nope", tmp_path / "tags.csv", fake_tagger([]))


def test_xmp_sidecar_is_written_and_merged(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (4, 4)).save(photo)
    side = write_sidecar(photo, ["beach", "sea"], "xmp")
    assert side.name == "p.jpg.xmp"
    assert read_sidecar_keywords(side) == ["beach", "sea"]
    text = side.read_text()
    assert "http://purl.org/dc/elements/1.1/" in text and "<rdf:Bag>" in text and "xpacket" in text
    # A sidecar written by a photo manager keeps its keywords and other fields.
    side.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="4">'
        "<dc:subject><rdf:Bag><rdf:li>holiday</rdf:li><rdf:li>sea</rdf:li></rdf:Bag></dc:subject>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    write_sidecar(photo, ["beach", "sea"], "xmp")
    assert read_sidecar_keywords(side) == ["holiday", "sea", "beach"]
    assert 'Rating="4"' in side.read_text()
    txt = write_sidecar(photo, ["beach", "sea"], "txt")
    assert txt.read_text() == "beach\nsea\n"


def test_sidecars_from_a_run(tmp_path):
    make_photos(tmp_path / "photos", 2)
    tag_folder(tmp_path / "photos", tmp_path / "tags.csv", fake_tagger([]), sidecar="txt")
    sides = sorted((tmp_path / "photos").rglob("*.jpg.txt"))
    assert len(sides) == 2 and sides[0].read_text() == "t8\nphoto\n"
