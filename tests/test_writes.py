"""Writes stay where they belong: sidecars, journals, locks and outputs never follow a link out of the library,
never replace a file tagger did not write, and what they hold reads back as it was written."""
import csv
import errno
import os
import subprocess
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embeddings.files import atomic_write
from pipelines.images import printable_path
from pipelines.keywords import embedded_keywords, read_sidecar
from tagger.library.batch import tag_folder
from tagger.library.results import BatchError, failures_path, journal_path, read_results
from tagger.model import Tagged
from tagger.library.sidecar import SidecarConfig, SidecarError, sync

XMP, TXT = SidecarConfig("xmp"), SidecarConfig("txt")
HEAD = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag>')
TAIL = "</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"


def packet(*keywords) -> str:
    return HEAD + "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords) + TAIL


def photo(path, seed=0, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path, "JPEG", **save)
    return path


def tagger_of(tags=("beach", "sea"), calls=None):
    """A tag_batch giving every photo `tags` (scores falling from 0.9); files named 'bad...' fail."""

    def tag_batch(paths):
        for p in paths:
            if calls is not None:
                calls.append(p)
            if p.name.startswith("bad"):
                yield p, Tagged(None, "not an image")
            else:
                yield p, Tagged([(t, round(0.9 - 0.05 * i, 4)) for i, t in enumerate(tags)])

    return tag_batch


# -- 1. a sidecar link out of the library; keywords with control characters ------------------------


def test_a_dangling_sidecar_link_out_of_the_library_is_refused(tmp_path):
    lib = tmp_path / "lib"
    beach = photo(lib / "beach.jpg", xmp=packet("holiday&#10;import os; os.system('touch pwned')").encode())
    photo(lib / "dune.jpg", seed=1)
    site = tmp_path / "home" / ".local" / "lib" / "python3.11" / "site-packages"
    (lib / "beach.jpg.xmp").symlink_to(site / "zz.pth")  # dangling: the folders do not exist either
    summary = tag_folder(lib, tmp_path / "o.csv", tagger_of(), sidecar=XMP)
    assert not (tmp_path / "home").exists()  # nothing written, no folder made
    assert (lib / "beach.jpg.xmp").is_symlink()  # the link is left as it was, too
    assert summary.sidecars_written == 1 and len(summary.sidecar_errors) == 1 and not summary.ok
    assert "beach.jpg.xmp" in summary.sidecar_errors[0] and "symlink" in summary.sidecar_errors[0]
    assert read_sidecar(lib / "dune.jpg.xmp").subject == ["beach", "sea"]
    assert embedded_keywords(beach).subject == ["holiday import os; os.system('touch pwned')"]


def test_a_sidecar_link_is_followed_only_to_a_regular_file_inside_the_library(tmp_path):
    lib = tmp_path / "lib"
    inside, outside = photo(lib / "a" / "in.jpg"), photo(lib / "a" / "out.jpg", seed=1)
    kept = lib / "b" / "in.xmp"
    kept.parent.mkdir()
    kept.write_text(packet("Anna"))
    (lib / "a" / "in.jpg.xmp").symlink_to(kept)
    stranger = tmp_path / "elsewhere.xmp"  # a valid XMP file, but not the library's
    stranger.write_text(packet("secret"))
    (lib / "a" / "out.jpg.xmp").symlink_to(stranger)
    (lib / "a" / "dir.jpg.xmp").mkdir()
    photo(lib / "a" / "dir.jpg", seed=2)
    summary = tag_folder(lib, tmp_path / "o.csv", tagger_of(), sidecar=XMP)
    assert read_sidecar(kept).subject == ["Anna", "beach", "sea"] and (lib / "a" / "in.jpg.xmp").is_symlink()
    assert stranger.read_text() == packet("secret")
    assert summary.sidecars_written == 1 and len(summary.sidecar_errors) == 2
    errors = " ".join(summary.sidecar_errors)
    assert "out.jpg.xmp" in errors and "outside the library" in errors and "dir.jpg.xmp" in errors
    # A direct call knows no library: the photo's own folder is it.
    with pytest.raises(SidecarError, match="outside the library"):
        sync(outside, ["beach"], XMP)
    assert sync(inside, ["cat"], XMP, library=[lib]) and read_sidecar(kept).subject == ["Anna", "cat"]


def test_a_folder_link_out_of_the_library_is_not_followed_and_nothing_is_written_there(tmp_path):
    lib, drive = tmp_path / "lib", tmp_path / "drive"
    photo(lib / "beach.jpg")
    photo(drive / "stranger.jpg", seed=1)
    (lib / "drive").symlink_to(drive, target_is_directory=True)
    summary = tag_folder(lib, tmp_path / "o.csv", tagger_of(), sidecar=XMP)
    assert sorted(p.name for p in drive.iterdir()) == ["stranger.jpg"]  # no sidecar beside the stranger's photo
    assert summary.tagged == 1 and read_sidecar(lib / "beach.jpg.xmp").subject == ["beach", "sea"]


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_embed_writes_through_a_photo_link_only_into_the_library_and_keeps_the_link(tmp_path):
    lib = tmp_path / "lib"
    kept = photo(lib / "originals" / "a.jpg")
    stranger = photo(tmp_path / "elsewhere" / "b.jpg", seed=1)
    before = stranger.read_bytes()
    (lib / "album").mkdir()
    (lib / "album" / "a.jpg").symlink_to(kept)
    (lib / "album" / "b.jpg").symlink_to(stranger)
    summary = tag_folder(lib / "album", tmp_path / "o.csv", tagger_of(), embed=True)
    assert (lib / "album" / "a.jpg").is_symlink() and (lib / "album" / "b.jpg").is_symlink()  # exiftool would replace a link
    assert stranger.read_bytes() == before
    # The album alone is the library here, so a.jpg's file (in originals/) is out of it too; tagging the whole library writes it.
    assert len(summary.sidecar_errors) == 2 and all("outside the library" in e for e in summary.sidecar_errors)
    assert embedded_keywords(kept).subject == []
    summary = tag_folder(lib, tmp_path / "o2.csv", tagger_of(), embed=True)
    assert embedded_keywords(kept).subject == ["beach", "sea"] and (lib / "album" / "a.jpg").is_symlink()
    assert stranger.read_bytes() == before and len(summary.sidecar_errors) == 1 and "b.jpg" in summary.sidecar_errors[0]


def test_keywords_are_read_and_written_without_control_characters(tmp_path):
    p = photo(tmp_path / "p.jpg", xmp=packet("New&#10;York", "a&#9;b&#13;&#10;import os", "\u2028x").encode())
    assert embedded_keywords(p).subject == ["New York", "a b import os", "x"]
    side = tmp_path / "q.jpg.xmp"
    side.write_text(packet("one&#10;two"))
    assert read_sidecar(side).subject == ["one two"]
    q = photo(tmp_path / "q.jpg")
    sync(q, ["sea\nimport os", "\x00tab\tbed", "\x07"], XMP)
    text = side.read_text()
    assert not any(line.lstrip().startswith("import") for line in text.splitlines()), text
    assert not any(c in text for c in "\x00\t\x07")
    kw = read_sidecar(side)
    assert kw.subject == ["one two", "sea import os", "tab bed"] and kw.machine == ["sea import os", "tab bed"]
    assert not sync(q, ["sea\nimport os", "\x00tab\tbed"], XMP)  # in step: what was written is what is asked
    sync(q, ["a\nb"], TXT)
    assert (tmp_path / "q.jpg.txt").read_text() == "a b\n"


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_iptc_keywords_are_cleaned_too(tmp_path):
    p = photo(tmp_path / "p.jpg")
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-IPTC:Keywords=line\nimport os", "-IPTC:Keywords=nul\x01x", str(p)], check=True)
    assert embedded_keywords(p).subject == ["line import os", "nul x"]


def test_the_atomic_writer_makes_folders_only_when_asked(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "a" / "b" / "f.txt", b"x", parents=False)
    assert not (tmp_path / "a").exists()
    atomic_write(tmp_path / "a" / "b" / "f.txt", b"x")
    assert (tmp_path / "a" / "b" / "f.txt").read_bytes() == b"x"


# -- 2. --sidecar txt never replaces a file tagger did not write ------------------------------------


def test_txt_sidecars_leave_the_owners_files_alone(tmp_path):
    lib = tmp_path / "lib"
    for name in ("notes.jpg", "linked.jpg", "fresh.jpg"):
        photo(lib / name, seed=len(name))
    (lib / "notes.jpg.txt").write_text("our trip to the sea, with Anna\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not touch\n")
    (lib / "linked.jpg.txt").symlink_to(secret)
    out = tmp_path / "o.csv"
    summary = tag_folder(lib, out, tagger_of(), sidecar=TXT)
    assert (lib / "notes.jpg.txt").read_text() == "our trip to the sea, with Anna\n"
    assert secret.read_text() == "do not touch\n" and (lib / "linked.jpg.txt").is_symlink()
    assert (lib / "fresh.jpg.txt").read_text() == "beach\nsea\n"
    assert summary.sidecars_written == 1 and not summary.ok
    errors = sorted(summary.sidecar_errors)
    assert len(errors) == 2 and "linked.jpg.txt" in errors[0] and "notes.jpg.txt" in errors[1]
    assert "not written by tagger" in errors[1]
    # Other options: the .txt tagger wrote is updated; the owner's stays theirs.
    summary = tag_folder(lib, out, tagger_of(("dog",)), sidecar=TXT, settings="other")
    assert (lib / "fresh.jpg.txt").read_text() == "dog\n" and summary.sidecars_written == 1
    assert (lib / "notes.jpg.txt").read_text() == "our trip to the sea, with Anna\n" and len(summary.sidecar_errors) == 2


def test_txt_sidecars_of_a_run_killed_while_syncing_are_still_ours(tmp_path, monkeypatch):
    import tagger.library.batch as batch

    lib = tmp_path / "lib"
    for i in range(4):
        photo(lib / f"p{i}.jpg", seed=i)
    out = tmp_path / "o.jsonl"
    tag_folder(lib, out, tagger_of(("beach",)), sidecar=TXT, settings="one")
    real, done = batch.sync, []

    def killed_after_two(*args, **kw):
        if len(done) == 2:
            raise KeyboardInterrupt  # stands in for a kill in the middle of the sidecars
        done.append(real(*args, **kw))
        return done[-1]

    monkeypatch.setattr(batch, "sync", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        tag_folder(lib, out, tagger_of(("dog",)), sidecar=TXT, settings="two")
    monkeypatch.setattr(batch, "sync", real)
    assert sorted(p.read_text() for p in lib.glob("*.txt")) == ["beach\n", "beach\n", "dog\n", "dog\n"]
    summary = tag_folder(lib, out, tagger_of(("cat",)), sidecar=TXT, settings="three")
    assert summary.sidecar_errors == [] and summary.sidecars_written == 4
    assert [p.read_text() for p in lib.glob("*.txt")] == ["cat\n"] * 4


# -- 3. journal, lock, failures and output are never written through a link ------------------------


@pytest.mark.parametrize("which", ["journal", "out", "lock", "failed"])
def test_a_symlinked_journal_lock_or_output_is_refused(tmp_path, which):
    lib = tmp_path / "lib"
    photo(lib / "a.jpg")
    photo(lib / "bad.jpg")
    out = tmp_path / "o.csv"
    link = {"journal": journal_path(out), "out": out, "lock": out.with_name("o.csv.lock"), "failed": failures_path(out)}[which]
    other = tmp_path / "other.txt"
    other.write_text("keep me\n")
    link.symlink_to(other)
    with pytest.raises(BatchError, match=f"{link.name}: is a symlink"):
        tag_folder(lib, out, tagger_of())
    assert other.read_text() == "keep me\n" and link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p not in (lib, other, link)]


def test_the_journal_is_opened_without_following_a_link(tmp_path, monkeypatch):
    """Checked again as it is opened: a link made after the check is not followed either."""
    import tagger.library.plan as plan

    lib = tmp_path / "lib"
    photo(lib / "a.jpg")
    out = tmp_path / "o.csv"
    other = tmp_path / "other.txt"
    other.write_text("keep me\n")
    real = plan.scan

    def then_link(*args):
        found = real(*args)
        journal_path(out).symlink_to(other)
        return found

    monkeypatch.setattr(plan, "scan", then_link)
    with pytest.raises(BatchError, match="o.csv.journal.jsonl"):
        tag_folder(lib, out, tagger_of())
    assert other.read_text() == "keep me\n"


# -- 9. file names: too long for a sidecar; two names that once printed the same ------------------


def test_a_sidecar_name_too_long_is_one_failed_sidecar(tmp_path):
    lib = tmp_path / "lib"
    for i in range(4):
        photo(lib / f"p{i}.jpg", seed=i)
    try:
        photo(lib / ("x" * 251 + ".jpg"))  # 255 bytes: the longest name; its sidecar's would be 259
        photo(lib / ("y" * 245 + ".jpg"))  # its sidecar's name fits (253), if its temporary file's name is kept short
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            pytest.skip("this filesystem's names are shorter")
        raise
    out = tmp_path / "o.csv"
    for _ in range(2):
        summary = tag_folder(lib, out, tagger_of(), sidecar=XMP)
        assert len(summary.sidecar_errors) == 1 and "File name too long" in summary.sidecar_errors[0], summary.sidecar_errors
        assert "journal" not in summary.sidecar_errors[0]
    assert len(list(lib.glob("*.xmp"))) == 5 and (lib / ("y" * 245 + ".jpg.xmp")).is_file()
    assert not list(lib.glob(".*.tmp"))


def test_printable_path_tells_every_name_apart():
    names = [os.fsdecode(b"bad\xff.jpg"), "bad\\xff.jpg", "bad\\\\xff.jpg", os.fsdecode(b"bad\\\xff.jpg"), "bad.jpg", "caf\u00e9.jpg"]
    shown = [printable_path(n) for n in names]
    assert len(set(shown)) == len(names), shown
    assert shown[0] == "bad\\xff.jpg" and shown[4:] == ["bad.jpg", "caf\u00e9.jpg"]
    assert all(s.encode("utf-8") for s in shown)  # printable and storable: no lone surrogates


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_names_that_printed_the_same_are_six_photos(tmp_path, ext):
    lib = tmp_path / "lib"
    lib.mkdir()
    try:
        for i, name in enumerate([b"bad\xff.jpg", b"bad\\xff.jpg", b"p\xe9.jpg", b"p\\xe9.jpg", b"a.jpg", b"b.jpg"]):
            with open(os.path.join(os.fsencode(lib), name), "wb") as f:
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(f, "JPEG")
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    out = tmp_path / f"o{ext}"
    dry = tag_folder(lib, out, tagger_of(), dry_run=True)
    assert len(dry.to_tag) == len(set(dry.to_tag)) == 6
    summary = tag_folder(lib, out, tagger_of(), sidecar=XMP)
    assert (summary.tagged, summary.failed) == (4, 2) and summary.sidecars_written == 4 and not summary.sidecar_errors
    rows = read_results(out)
    assert len(rows) == 6 and rows["path"].is_unique
    failed = pd.read_csv(failures_path(out), sep="\t", keep_default_na=False)
    assert sorted(failed["path"]) == sorted([str(lib / "bad\\xff.jpg"), str(lib / "bad\\\\xff.jpg")])
    assert len({line.split(": ")[0] for line in summary.failures}) == 2
    calls = []
    summary = tag_folder(lib, out, tagger_of(calls=calls), sidecar=XMP, retry_failed=False)
    assert calls == [] and (summary.kept, summary.failed, summary.sidecars_written) == (4, 2, 0)


# -- 10. CSV: words with ';' and newlines; formulas ----------------------------------------------------


def test_csv_tags_read_back_as_written(tmp_path):
    lib = tmp_path / "lib"
    photo(lib / "a.jpg")
    tags = ["rock;roll", "new\nline", "plain", "a,b", 'say "hi"', "[not json", "semi;;colon", "x", "y", "z"]
    out = tmp_path / "o.csv"
    tag_folder(lib, out, tagger_of(tags), sidecar=TXT)
    rows = read_results(out)
    assert list(rows["tags"][0]) == tags and len(rows["scores"][0]) == 10
    calls = []
    summary = tag_folder(lib, out, tagger_of(tags, calls), sidecar=TXT)
    assert calls == [] and summary.kept == 1 and summary.sidecars_written == 0 and not summary.sidecar_errors


def test_csv_cells_are_never_formulas_and_paths_still_match(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    names = ["=1+2.jpg", "+cmd.jpg", "-x.jpg", "@SUM(A1).jpg", "'quoted.jpg", "''=twice.jpg", "\tt.jpg", "plain.jpg"]
    for i, name in enumerate(names):
        photo(lib / name, seed=i)
    monkeypatch.chdir(lib)  # relative paths: the path cells start with the names
    tags = ['=HYPERLINK("http://example.org","x")', "+1", "-1", "@a", "ok"]
    out = tmp_path / "o.csv"
    tag_folder(".", out, tagger_of(tags))
    with open(out, newline="", encoding="utf-8") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    assert "'=1+2.jpg" in cells and "'''=twice.jpg" in cells and "''quoted.jpg" in cells
    rows = read_results(out)
    assert sorted(rows["path"]) == sorted(names) and all(list(t) == tags for t in rows["tags"])
    calls = []
    summary = tag_folder(".", out, tagger_of(tags, calls))
    assert calls == [] and summary.kept == len(names)


def test_failures_file_cells_are_never_formulas(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    photo(lib / "bad=1.jpg")
    (lib / "=bad.jpg").write_text("no")
    monkeypatch.chdir(lib)
    error = "=cmd|' /C calc'!A0"

    def fails(paths):
        for p in paths:
            yield p, Tagged(None, error)

    out = tmp_path / "o.csv"
    tag_folder(".", out, fails)
    with open(failures_path(out), newline="", encoding="utf-8") as f:
        cells = [c for row in csv.reader(f, delimiter="\t") for c in row]
    assert cells == ["path", "error", "'=bad.jpg", "'" + error, "bad=1.jpg", "'" + error]
    rows = read_results(out)
    assert sorted(rows["path"]) == ["=bad.jpg", "bad=1.jpg"] and (rows["error"] == error).all()
    assert pd.read_csv(out, keep_default_na=False)["tags"].tolist() == ["", ""]  # no tags: an empty cell, as before


def test_an_old_csv_with_semicolons_still_reads_back(tmp_path, monkeypatch):
    from embeddings.files import content_hash

    lib = tmp_path / "lib"
    a, b = photo(lib / "a.jpg"), photo(lib / "'b.jpg", seed=1)
    monkeypatch.chdir(lib)
    out = tmp_path / "o.csv"
    # As tagger wrote it before: ';' joined, and cells as they were (a path starting with ' too).
    pd.DataFrame({"path": ["a.jpg", "'b.jpg"], "tags": ["beach;sea", ""], "scores": ["0.9000;0.8500", ""], "error": ["", ""],
                  "hash": [content_hash(a), content_hash(b)], "settings": ["s", "s"]}).to_csv(out, index=False)
    rows = read_results(out)
    assert list(rows["path"]) == ["a.jpg", "'b.jpg"]
    assert list(rows["tags"][0]) == ["beach", "sea"] and list(rows["scores"][0]) == [0.9, 0.85] and list(rows["tags"][1]) == []
    calls = []
    summary = tag_folder(".", out, tagger_of(calls=calls), settings="s")
    assert calls == [] and summary.kept == 2
    rows = read_results(out)
    assert list(rows["path"]) == ["'b.jpg", "a.jpg"] and list(rows["tags"][1]) == ["beach", "sea"]


@pytest.mark.slow
def test_the_cli_names_a_photo_as_the_results_do(tmp_path, tiny_bundle):
    from typer.testing import CliRunner

    from tagger.cli import app

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "bad\\x.jpg").write_text("no")  # a name with a backslash: printed with it doubled, as stored
    photo(lib / "ok\\y.jpg")
    (lib / "ok\\y.jpg.xmp").symlink_to(tmp_path / "gone.xmp")
    out = tmp_path / "o.csv"
    r = CliRunner().invoke(app, ["tag", str(lib), "--out", str(out), "--model", str(tiny_bundle), "--sidecar", "xmp"])
    assert r.exit_code == 1, r.output
    key = printable_path(lib / "bad\\x.jpg")
    assert pd.read_csv(failures_path(out), sep="\t")["path"].tolist() == [key]
    assert [line for line in r.stderr.splitlines() if line.startswith("tagger: failed:")] == [f"tagger: failed: {key}: not an image (unknown format)"]
    side = [line for line in r.stderr.splitlines() if line.startswith("tagger: sidecar failed:")]
    link = printable_path(lib / "ok\\y.jpg.xmp")
    assert len(side) == 1 and side[0].startswith(f"tagger: sidecar failed: {link}: a symlink"), side
