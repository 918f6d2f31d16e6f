"""Batch tagging of a folder: one row per photo, resumable, atomic output, sidecars, one writer."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tagger.library.batch import tag_folder

from tagger.library.results import BatchError, failures_path, journal_path, read_results
from tagger.model import Tagged


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
                yield p, Tagged(None, "not an image")
            else:
                yield p, Tagged([(f"t{len(p.name)}", 0.5), ("photo", 0.25)])

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
    holder = subprocess.Popen([sys.executable, "-c", f"from tagger.library.batch import Lock; from pathlib import Path; import time\n"
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


LOCK_WORKER = """
import os, sys, time
from pathlib import Path
from tagger.library.batch import Lock
from tagger.library.results import BatchError
out = Path(sys.argv[1])
inside = out.with_name("inside")
end = time.time() + float(sys.argv[2])
held = clashes = 0
while time.time() < end:
    try:
        with Lock(out):
            held += 1
            try:
                os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                clashes += 1  # another process is inside too
                continue
            os.unlink(inside)
    except BatchError:
        pass
print(held, clashes)
"""


def test_lock_excludes_under_contention(tmp_path):
    # Three processes take and drop the lock as fast as they can. The lock file is removed at every release,
    # so a process that opened it just before could lock a file no longer at the path while a third locks the
    # new one: both would be inside. That happened thousands of times a second before the inode check.
    out = tmp_path / "tags.csv"
    procs = [subprocess.Popen([sys.executable, "-c", LOCK_WORKER, str(out), "1.5"], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    counts = [tuple(map(int, p.communicate(timeout=60)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(held for held, _ in counts) > 100, counts  # they did contend
    assert all(clashes == 0 for _, clashes in counts), counts
    assert not out.with_name("tags.csv.lock").exists()


def test_failures_file_lists_every_failed_photo(tmp_path):
    make_photos(tmp_path / "photos", 3)
    for name in ("bad1.jpg", "bad 2.jpg"):
        (tmp_path / "photos" / name).write_text("no")
    out = tmp_path / "tags.csv"
    summary = tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert summary.failures_file == failures_path(out) == tmp_path / "tags.csv.failed.tsv"
    expected = pd.DataFrame({"path": [str(tmp_path / "photos" / n) for n in ("bad 2.jpg", "bad1.jpg")], "error": ["not an image"] * 2})
    pd.testing.assert_frame_equal(pd.read_csv(summary.failures_file, sep="\t"), expected)
    # A second run keeps the failures (not retried) and lists them again; a fixed photo leaves the list.
    summary = tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert summary.failed == 2 and summary.tagged == 0
    pd.testing.assert_frame_equal(pd.read_csv(summary.failures_file, sep="\t"), expected)
    (tmp_path / "photos" / "bad1.jpg").unlink()
    summary = tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert pd.read_csv(summary.failures_file, sep="\t")["path"].tolist() == [str(tmp_path / "photos" / "bad 2.jpg")]
    (tmp_path / "photos" / "bad 2.jpg").unlink()
    summary = tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert summary.failures_file is None and not failures_path(out).exists()


def test_temporaries_of_a_killed_run_are_removed(tmp_path):
    make_photos(tmp_path / "photos", 2)
    out = tmp_path / "tags.csv"
    dead = 99_999_999  # above any pid_max: no such process
    stale = [tmp_path / f".tags.csv.{dead}.abcd1234.tmp", tmp_path / f".tags.csv.failed.tsv.{dead}.abcd1234.tmp"]
    live = tmp_path / f".tags.csv.{os.getppid()}.abcd1234.tmp"  # a writer that still runs (here: our parent) keeps its file
    other = tmp_path / f".other.csv.{dead}.abcd1234.tmp"  # another output's: not ours to judge
    for f in [*stale, live, other]:
        f.write_text("half")
    tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert not any(f.exists() for f in stale) and live.exists() and other.exists()
    assert len(read_results(out)) == 2


def test_bad_output_name(tmp_path):
    make_photos(tmp_path / "photos", 1)
    with pytest.raises(BatchError, match="unknown output type"):
        tag_folder(tmp_path / "photos", tmp_path / "tags.xlsx", fake_tagger([]))
    with pytest.raises(BatchError, match="no such file or folder"):
        tag_folder(tmp_path / "nope", tmp_path / "tags.csv", fake_tagger([]))




def test_a_photo_read_while_rewritten_is_retried_when_whole_again(tmp_path):
    """Its failure is stored under the hash taken before it was read; the file ends up with those same bytes."""
    make_photos(tmp_path / "photos", 2)
    out = tmp_path / "tags.csv"
    flaky = {"first": True}

    def rewritten_once(paths):
        for p in paths:
            if p.name == "p001.jpg" and flaky.pop("first", False):
                yield p, Tagged(None, "corrupt or truncated: image file is truncated")  # caught mid-copy
            else:
                yield p, Tagged([("t", 0.5)])

    assert tag_folder(tmp_path / "photos", out, rewritten_once).failed_now == 1
    calls = []
    summary = tag_folder(tmp_path / "photos", out, fake_tagger(calls), retry_failed=False)
    assert calls == [] and summary.failed == 1  # not retried: still listed as failed
    summary = tag_folder(tmp_path / "photos", out, fake_tagger(calls))
    assert [os.path.basename(c) for c in calls] == ["p001.jpg"] and (summary.tagged, summary.failed) == (1, 0)
    assert (read_results(out)["error"] == "").all()


def test_write_errors_are_one_line_and_lose_nothing(tmp_path, monkeypatch):
    import errno

    import tagger.library.results as results

    make_photos(tmp_path / "photos", 4)
    out = tmp_path / "tags.csv"
    real = results.atomic_write

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(results, "atomic_write", disk_full)
    with pytest.raises(BatchError, match=r"tags.csv: cannot write \(No space left on device\); photos tagged so far are kept"):
        tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert len(read_results(out)) == 4  # in the journal
    monkeypatch.setattr(results, "atomic_write", real)
    calls = []
    summary = tag_folder(tmp_path / "photos", out, fake_tagger(calls))
    assert calls == [] and summary.kept == 4 and out.is_file()


def test_an_output_that_is_not_ours_is_refused_and_left_alone(tmp_path):
    make_photos(tmp_path / "photos", 2)
    out = tmp_path / "people.csv"
    out.write_text("name,email\nanna,anna@example.org\n")
    with pytest.raises(BatchError, match="people.csv: not a results file of `tagger tag` \\(no path, tags, scores column"):
        tag_folder(tmp_path / "photos", out, fake_tagger([]))
    assert out.read_text() == "name,email\nanna,anna@example.org\n"
    bad = tmp_path / "t.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(BatchError, match="t.parquet: cannot read it as earlier results"):
        tag_folder(tmp_path / "photos", bad, fake_tagger([]))
    (tmp_path / "results.csv").mkdir()
    with pytest.raises(BatchError, match="results.csv: is a folder; --out names the results file"):
        tag_folder(tmp_path / "photos", tmp_path / "results.csv", fake_tagger([]))
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    with pytest.raises(BatchError, match="a-file.*cannot write"):
        tag_folder(tmp_path / "photos", blocked / "tags.csv", fake_tagger([]))


def test_folders_tagged_into_one_output_keep_each_others_rows(tmp_path):
    """Tagging 2020/ into the output of 2019/ removed every row of 2019's (the output held one source only); now a
    run answers for the photos under its own folders: their removed photos still leave the output, others' stay."""
    make_photos(tmp_path / "2019", 4)
    make_photos(tmp_path / "2020", 2)
    make_photos(tmp_path / "2019b", 1)  # a folder whose name starts as 2019's does: not under it
    out = tmp_path / "tags.parquet"
    for folder in ("2019", "2020", "2019b"):
        tag_folder(tmp_path / folder, out, fake_tagger([]))
    assert len(read_results(out)) == 7
    (tmp_path / "2019" / "a" / "p001.jpg").unlink()
    calls = []
    summary = tag_folder(tmp_path / "2019", out, fake_tagger(calls))
    assert calls == [] and (summary.kept, summary.tagged) == (3, 0)
    rows = read_results(out)
    assert len(rows) == 6 and str(tmp_path / "2019" / "a" / "p001.jpg") not in set(rows["path"])
    assert sum(p.startswith(str(tmp_path / "2020") + os.sep) for p in rows["path"]) == 2
    (tmp_path / "2020" / "bad.jpg").write_text("no")
    tag_folder(tmp_path / "2020", out, fake_tagger([]))
    tag_folder(tmp_path / "2019", out, fake_tagger([]))  # the other folder's failure stays listed as failed
    assert pd.read_csv(failures_path(out), sep="\t")["path"].tolist() == [str(tmp_path / "2020" / "bad.jpg")]
