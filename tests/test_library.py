"""`tagger tag` on a photo library as people keep one: nested folders, sidecars of both namings, owner keywords, NAS clutter."""
import io
import json
import os
import shlex
import shutil
import subprocess

import numpy as np

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_TAGS, make_photo_files
from pipelines.keywords import read_sidecar
from tagger.cli import app

runner = CliRunner()
OWNER = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
         '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
         'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmp:Rating="5"><dc:subject><rdf:Bag>{}</rdf:Bag></dc:subject>'
         '<lr:hierarchicalSubject><rdf:Bag><rdf:li>People|Anna</rdf:li></rdf:Bag></lr:hierarchicalSubject>'
         '</rdf:Description></rdf:RDF></x:xmpmeta>')


def owner_xmp(keywords) -> str:
    return OWNER.format("".join(f"<rdf:li>{k}</rdf:li>" for k in keywords))


def save(path, colour=(180, 40, 40), **kw):
    """A small photo mostly of `colour`, with the texture of a scene (one colour all over is a blank frame: no tags)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(colour, dtype=np.float64) + np.random.default_rng(sum(colour)).normal(0, 40, (32, 48, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, **kw)
    return path


@pytest.fixture
def library(tmp_path):
    """A small library: what a new user's Pictures folder holds."""
    lib = tmp_path / "Pictures"
    cafe = lib / "2019" / "Café de Flore"
    save(cafe / "IMG_0001.jpg", xmp=owner_xmp(["Paris"]).encode())  # keywords embedded by the camera app
    save(cafe / "IMG_0002.jpg", (20, 90, 200))
    (cafe / "IMG_0002.xmp").write_text(owner_xmp(["holiday", "Anna"]))  # Lightroom's sidecar naming
    save(lib / "2020" / "été.png", (30, 160, 60))
    save(lib / "2020" / "w.webp", (200, 200, 30))
    save(lib / "2020" / "t.tif", (90, 90, 90))
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    save(lib / "2020" / "IMG_4242.HEIC", (250, 120, 10))  # an iPhone photo
    save(lib / "2020" / "@eaDir" / "IMG_4242.HEIC" / "SYNOPHOTO_THUMB_XL.jpg")  # Synology's thumbnails
    save(lib / "2020" / ".thumbnails" / "normal" / "abc.png")
    (lib / "2020" / "IMG_5000.CR2").write_bytes(b"II*\x00 raw data")
    (lib / "2020" / "notes.txt").write_text("trip notes")
    save(lib / "shared" / "IMG_7000.jpg", (120, 20, 160))
    return lib


def tag(*args):
    return runner.invoke(app, ["tag", *map(str, args)])


def sidecars(lib):
    return sorted(str(p.relative_to(lib)) for p in lib.rglob("*.xmp") if p.is_file())


def test_a_library_run_end_to_end(library, tmp_path, tiny_bundle):
    out = tmp_path / "tags.csv"
    shared = library / "shared"
    # The sidecar of a photo in a folder we cannot write to (a read-only share; root ignores modes, so a folder takes the place).
    blocker = shared / "IMG_7000.jpg.xmp"
    if os.geteuid() == 0:
        blocker.mkdir()
    else:
        shared.chmod(0o555)
    args = [library, "--out", out, "--model", tiny_bundle, "--sidecar", "xmp"]

    # A dry run first: it says what it would do and changes nothing.
    before = sorted(library.rglob("*"))
    r = tag(*args, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "dry run: would tag 7 photos, write 7 sidecars; nothing was changed" in r.output
    assert sorted(library.rglob("*")) == before and not out.exists() and not list(tmp_path.glob("tags.csv*"))

    r = tag(*args)
    assert r.exit_code == 1, r.output  # a sidecar could not be written: said, counted, and the exit code says so
    assert "7 photos, 0 already tagged, 7 to tag" in r.output
    assert "7 tagged, 0 unchanged (kept), 0 failed; sidecars: 6 written, 1 failed" in r.output
    assert "tagger: sidecar failed: " in r.output and "IMG_7000.jpg.xmp" in r.output
    # Every file that was not tagged is counted, by reason.
    assert "skipped 2: excluded folder" in r.output  # @eaDir and .thumbnails
    assert "skipped 2: sidecar or metadata file" in r.output  # IMG_0002.xmp, notes.txt
    assert "skipped 1: RAW photo" in r.output
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert len(rows) == 7 and (rows["error"] == "").all()
    assert str(library / "2020" / "IMG_4242.HEIC") in rows.index  # HEIC decoded, not skipped
    assert not any("@eaDir" in p or ".thumbnails" in p for p in rows.index)
    assert sidecars(library) == sorted([
        "2019/Café de Flore/IMG_0001.jpg.xmp", "2019/Café de Flore/IMG_0002.xmp", "2020/IMG_4242.HEIC.xmp",
        "2020/t.tif.xmp", "2020/w.webp.xmp", "2020/été.png.xmp"])

    # The owner's keywords stay; the tool's are recorded as its own, in both fields photo managers read.
    lr = read_sidecar(library / "2019" / "Café de Flore" / "IMG_0002.xmp")
    tags = json.loads(rows.loc[str(library / "2019" / "Café de Flore" / "IMG_0002.jpg"), "tags"])
    assert lr.subject[:2] == ["holiday", "Anna"] and lr.machine == [t for t in tags if t not in ("holiday", "Anna")]
    assert lr.hierarchical == ["People|Anna", "holiday"] + [f"tagger|{t}" for t in lr.machine]  # holiday as a top-level keyword
    assert 'xmp:Rating="5"' in (library / "2019" / "Café de Flore" / "IMG_0002.xmp").read_text()
    embedded = read_sidecar(library / "2019" / "Café de Flore" / "IMG_0001.jpg.xmp")
    assert embedded.subject[0] == "Paris" and "Paris" not in embedded.machine

    # The folder becomes writable; a sidecar is deleted: the next run, with nothing to tag, puts both right.
    if os.geteuid() == 0:
        blocker.rmdir()
    else:
        shared.chmod(0o755)
    (library / "2020" / "w.webp.xmp").unlink()
    r = tag(*args)
    assert r.exit_code == 0, r.output
    assert "0 tagged, 7 unchanged (kept), 0 failed; sidecars: 2 written, 0 failed" in r.output
    assert (library / "2020" / "w.webp.xmp").is_file() and (shared / "IMG_7000.jpg.xmp").is_file()
    r = tag(*args)
    assert "sidecars: 0 written" in r.output  # in step: nothing rewritten

    # Other options re-tag every photo, and the machine tags are replaced, not piled up.
    r = tag(*args, "--top-k", "2")
    assert r.exit_code == 0, r.output
    assert "7 to tag (7 tagged with another model or options)" in r.output
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert (rows["tags"].map(lambda t: len(json.loads(t))) == 2).all()  # a JSON array a cell
    lr = read_sidecar(library / "2019" / "Café de Flore" / "IMG_0002.xmp")
    tags = json.loads(rows.loc[str(library / "2019" / "Café de Flore" / "IMG_0002.jpg"), "tags"])
    assert lr.subject == ["holiday", "Anna"] + [t for t in tags if t not in ("holiday", "Anna")]
    assert lr.hierarchical == ["People|Anna", "holiday"] + [f"tagger|{t}" for t in tags if t not in ("holiday", "Anna")]
    for side in library.rglob("*.jpg.xmp"):
        kw = read_sidecar(side)
        assert len([h for h in kw.hierarchical if h.startswith("tagger|")]) == 2

    # --exclude-dir adds to the defaults.
    r = tag(*args, "--top-k", "2", "--exclude-dir", "shar*", "--dry-run")
    assert "skipped 3: excluded folder" in r.output and "would tag 0 photos" in r.output


def test_options_are_checked_before_any_scan_or_file(library, tmp_path, tiny_bundle):
    out = tmp_path / "tags.csv"
    r = tag(library, "--out", out, "--model", tiny_bundle, "--method", "clip")
    assert r.exit_code == 1 and "unknown tagging method 'clip'" in r.output and "photos" not in r.output
    assert not list(tmp_path.glob("tags.csv*"))
    r = tag(library, "--out", tmp_path / "tags.xlsx", "--model", tiny_bundle)
    assert r.exit_code == 1 and "unknown output type" in r.output
    r = tag(library, "--out", out, "--model", tiny_bundle, "--sidecar", "json")
    assert r.exit_code == 2  # Typer's own choice check
    r = tag(library, "--out", out, "--model", tiny_bundle, "--sidecar", "xmp", "--keyword-root", "a|b")
    assert r.exit_code == 1 and "keyword root" in r.output
    assert not list(tmp_path.glob("tags.csv*"))


def test_tag_photo_files_named_directly(library, tmp_path, tiny_bundle):
    out = tmp_path / "some.jsonl"
    photos = [library / "2020" / "été.png", library / "2020" / "IMG_4242.HEIC", library / "2020" / "notes.txt"]
    r = tag(*photos, "--out", out, "--model", tiny_bundle)
    assert r.exit_code == 0, r.output
    assert "2 tagged" in r.output and "skipped 1: sidecar or metadata file" in r.output
    assert {json.loads(line)["path"] for line in out.read_text().splitlines()} == {str(p) for p in photos[:2]}
    r = tag(library / "nope.jpg", "--out", out, "--model", tiny_bundle)
    assert r.exit_code == 1 and "nope.jpg: no such file or folder" in r.output


def test_skip_owner_tagged_and_predict_shows_existing(library, tmp_path, tiny_bundle):
    r = tag(library, "--out", tmp_path / "t.csv", "--model", tiny_bundle, "--skip-owner-tagged")
    assert r.exit_code == 0, r.output
    assert "5 tagged" in r.output and "skipped 2: has its owner's keywords" in r.output
    r = runner.invoke(app, ["predict", str(library / "2019" / "Café de Flore" / "IMG_0002.jpg"), "--model", str(tiny_bundle), "--json"])
    assert json.loads(r.output)["existing"] == ["holiday", "Anna"]


def test_help_examples_run_as_written():
    """Every "Example:" line in the help parses against its command (arguments, options, values)."""
    import typer.main

    group = typer.main.get_command(app)
    examples = [group.help] + [cmd.help for cmd in group.commands.values()]
    lines = [line.split("Example:", 1)[1].strip() for text in examples for line in (text or "").splitlines() if "Example:" in line]
    assert len(lines) >= len(group.commands)
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "tagger", line
        command = group.commands[words[1]]
        command.make_context(words[1], words[2:])  # raises on an unknown option or a missing argument
        assert "models/mirflickr" not in line or words[1] in ("train", "serve", "evaluate"), line


def write_owner_library(folder, n):
    """n photos whose keywords live in Lightroom-style sidecars (IMG.xmp) or embedded XMP."""
    photos = make_photo_files(folder, n)
    for i, p in enumerate(photos):
        xmp = owner_xmp(TINY_TAGS[i % len(TINY_TAGS)]).replace("<rdf:li>People|Anna</rdf:li>", "")
        if i % 2:
            p.with_suffix(".xmp").write_text(xmp)
        else:
            Image.open(p).save(p, xmp=xmp.encode())
    return photos


@pytest.mark.slow
def test_train_on_your_own_library(tmp_path):
    lib = tmp_path / "lib"
    photos = write_owner_library(lib, 50)
    out = tmp_path / "model"
    base = ["train", str(lib), "--out", str(out), "--backbone", "tiny", "--cache-dir", str(tmp_path / "cache"), "--epochs", "2"]
    r = runner.invoke(app, base)
    assert r.exit_code == 1 and "--min-count 10" in r.output and "lower --min-count (e.g. --min-count 2)" in r.output
    r = runner.invoke(app, base + ["--min-count", "2", "--split", "0.6,0.4,0"])
    assert r.exit_code == 0, r.output
    assert "WARNING: only 19 tags occur on 2 or more training photos" in r.output  # a small vocabulary, said loudly
    info = json.loads((out / "config.json").read_text())["info"]
    assert info["preset"] == "votes" and info["photos"] == 50 and info["photos_untagged"] == 0
    r = runner.invoke(app, ["predict", str(photos[0]), "--model", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["existing"] == TINY_TAGS[0]


def test_a_collapsed_model_is_said_loudly():
    import numpy as np
    import torch

    from conftest import build_tiny_tagger
    from tagger.training.fit import collapse_warnings

    tagger = build_tiny_tagger()
    features = np.random.default_rng(0).normal(size=(20, tagger.feature_dim)).astype(np.float32)
    assert collapse_warnings(tagger, features, 0.3, "votes") == []
    with torch.no_grad():
        for p in tagger.generator.parameters():
            p.zero_()  # a generator that ignores its input: the same tags for every photo
    warnings = collapse_warnings(tagger, features, 0.0, "paper")
    assert len(warnings) == 2 and "validation P@5 is 0" in warnings[0] and "--preset (this run: paper)" in warnings[0]
    assert "the same tags" in warnings[1] and "collapsed" in warnings[1]


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_embed_writes_into_the_photo_and_keeps_originals_only_where_asked(tmp_path, tiny_bundle):
    lib = tmp_path / "lib"
    photo = save(lib / "IMG_1.jpg", xmp=owner_xmp(["Paris"]).encode())
    plain = save(lib / "sub" / "IMG_2.png", (20, 200, 90))
    originals = {p: p.read_bytes() for p in (photo, plain)}
    out, backups = tmp_path / "tags.csv", tmp_path / "originals"
    r = tag(lib, "--out", out, "--model", tiny_bundle, "--embed", "--top-k", "3", "--backup", backups)
    assert r.exit_code == 0, r.output
    assert "keywords written into 2 photos" in r.output
    for p, data in originals.items():
        assert (backups / p.relative_to(lib)).read_bytes() == data  # the untouched original, kept outside the library
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(io.BytesIO(data))))  # pixels untouched
    assert sorted(p.name for p in lib.rglob("*") if p.is_file()) == ["IMG_1.jpg", "IMG_2.png"]  # no PHOTO_original in the library
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    tags = json.loads(rows.loc[str(photo), "tags"])
    rec = json.loads(subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-xmp:Rating", str(photo)],
                                    capture_output=True, text=True, check=True).stdout)[0]
    assert rec["Subject"] == ["Paris", "Anna"] + [t for t in tags if t not in ("Paris", "Anna")] and rec["Rating"] == 5
    assert rec["HierarchicalSubject"] == ["People|Anna", "Paris"] + [f"tagger|{t}" for t in tags if t not in ("Paris", "Anna")]
    # The rewritten photo is not taken for a changed one, and nothing is written again.
    r = tag(lib, "--out", out, "--model", tiny_bundle, "--embed", "--top-k", "3", "--backup", backups)
    assert "0 tagged, 2 unchanged (kept)" in r.output and "keywords written into 0 photos" in r.output
    # New options replace the machine tags inside the photo too; the backup stays the first original.
    r = tag(lib, "--out", out, "--model", tiny_bundle, "--embed", "--top-k", "1", "--backup", backups)
    assert "keywords written into 2 photos" in r.output
    rec = json.loads(subprocess.run(["exiftool", "-j", "-XMP-lr:HierarchicalSubject", str(photo)],
                                    capture_output=True, text=True, check=True).stdout)[0]
    assert len([h for h in rec["HierarchicalSubject"] if h.startswith("tagger|")]) == 1
    assert (backups / "IMG_1.jpg").read_bytes() == originals[photo]
    # Without --backup (or with --no-backup) no original is kept anywhere; a backup folder inside the library is refused.
    r = tag(lib, "--out", out, "--model", tiny_bundle, "--embed", "--top-k", "2", "--no-backup")
    assert r.exit_code == 0 and "keywords written into 2 photos" in r.output, r.output
    assert sorted(p.name for p in lib.rglob("*") if p.is_file()) == ["IMG_1.jpg", "IMG_2.png"]
    r = tag(lib, "--out", out, "--model", tiny_bundle, "--embed", "--backup", lib / "originals")
    assert r.exit_code == 1 and "originals: --backup is inside the library" in r.output and not (lib / "originals").exists()
    for bad, said in ((["--embed", "--backup", backups, "--no-backup"], "contradict"), (["--backup", backups], "without --embed")):
        r = tag(lib, "--out", out, "--model", tiny_bundle, *bad)
        assert r.exit_code != 0 and said in r.output, r.output


@pytest.fixture
def kinds_bundle(tiny_bundle):
    """The tiny bundle with the word kinds `tagger train` gives it where WordNet is: each tag filed under its category."""
    from embeddings.kinds import WordKinds
    from embeddings.tags import Vocabulary
    from embeddings.wordnet import WordNetMissing, wordnet

    try:
        wordnet()
    except WordNetMissing as e:
        pytest.skip(f"WordNet not installed: {e}")
    WordKinds.build(list(Vocabulary.load(tiny_bundle / "vocabulary.json").words)).save(tiny_bundle / "kinds.json")
    return tiny_bundle


def machine_paths(kw):
    return [h for h in kw.hierarchical if h.startswith("tagger|")], [t for t in kw.tags_list if t.startswith("tagger/")]


def test_sidecars_file_keywords_under_their_category_and_flat_switches_without_tagging_again(tmp_path, kinds_bundle):
    from embeddings.kinds import WordKinds

    categories = WordKinds.load(kinds_bundle / "kinds.json").keyword_categories()
    lib = tmp_path / "lib"
    photos = make_photo_files(lib, 4, size=48)
    (lib / "photo000.jpg.xmp").write_text(owner_xmp(["Anna"]))
    out = tmp_path / "tags.csv"
    args = [lib, "--out", out, "--model", kinds_bundle, "--sidecar", "xmp", "--top-k", "3"]

    def check(flat: bool):
        rows = pd.read_csv(out, keep_default_na=False).set_index("path")
        for p in photos:
            tags = json.loads(rows.loc[str(p), "tags"])
            kw = read_sidecar(p.with_name(p.name + ".xmp"))
            want = [["tagger", t] if flat else ["tagger", categories[t], t] for t in tags]
            assert machine_paths(kw) == (["|".join(w) for w in want], ["/".join(w) for w in want])
            assert kw.subject[-len(tags):] == tags  # dc:subject stays flat
        assert read_sidecar(lib / "photo000.jpg.xmp").hierarchical[0] == "People|Anna"
        return sum(map(len, (json.loads(t) for t in rows["tags"])))

    r = tag(*args)
    assert r.exit_code == 0 and "sidecars: 4 written" in r.output, r.output
    assert check(flat=False) > 0
    r = tag(*args, "--flat")  # no setting of the rows: nothing tagged again, every sidecar rewritten to the flat form
    assert r.exit_code == 0 and "0 tagged, 4 unchanged (kept), 0 failed; sidecars: 4 written" in r.output, r.output
    check(flat=True)
    r = tag(*args, "--flat")
    assert "sidecars: 0 written" in r.output, r.output
    r = tag(*args)
    assert "sidecars: 4 written" in r.output, r.output
    check(flat=False)
    assert "sidecars: 0 written" in tag(*args).output


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_embed_files_keywords_under_their_category_and_the_root_given(tmp_path, kinds_bundle):
    """--embed alone (no --sidecar) once wrote under `tagger` whatever --keyword-root said."""
    from embeddings.kinds import WordKinds

    categories = WordKinds.load(kinds_bundle / "kinds.json").keyword_categories()
    lib = tmp_path / "lib"
    photo = save(lib / "IMG_1.jpg", xmp=owner_xmp(["Paris"]).encode())
    out = tmp_path / "tags.csv"

    def hierarchy():
        rec = json.loads(subprocess.run(["exiftool", "-j", "-XMP-lr:HierarchicalSubject", "-XMP-digiKam:TagsList", str(photo)],
                                        capture_output=True, text=True, check=True).stdout)[0]
        return rec["HierarchicalSubject"], rec.get("TagsList")

    args = [lib, "--out", out, "--model", kinds_bundle, "--embed", "--top-k", "3", "--keyword-root", "auto"]
    r = tag(*args)
    assert r.exit_code == 0 and "keywords written into 1 photos" in r.output, r.output
    tags = json.loads(pd.read_csv(out, keep_default_na=False)["tags"][0])
    # The owner's keywords in both trees too: People|Anna, and Paris (flat in dc:subject) as a top-level keyword.
    assert hierarchy() == (["People|Anna", "Paris"] + [f"auto|{categories[t]}|{t}" for t in tags],
                           ["People/Anna", "Paris"] + [f"auto/{categories[t]}/{t}" for t in tags])
    r = tag(*args, "--flat")
    assert "0 tagged, 1 unchanged (kept)" in r.output and "keywords written into 1 photos" in r.output, r.output
    assert hierarchy() == (["People|Anna", "Paris"] + [f"auto|{t}" for t in tags], ["People/Anna", "Paris"] + [f"auto/{t}" for t in tags])
    assert "keywords written into 0 photos" in tag(*args, "--flat").output


def test_untag_says_in_one_line_what_is_wrong(tmp_path):
    r = runner.invoke(app, ["untag", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "nowhere: no such file or folder" in r.output, r.output
    lib = tmp_path / "lib"
    save(lib / "p.jpg")
    r = runner.invoke(app, ["untag", str(lib), "--backup", str(tmp_path / "b")])
    assert r.exit_code == 1 and "without --embed" in r.output, r.output
    r = runner.invoke(app, ["untag", str(lib), "--embed", "--backup", str(lib / "b")])
    assert r.exit_code == 1 and "--backup is inside the library" in r.output, r.output
    (lib / "p.jpg.xmp").write_text(owner_xmp(["Anna"]))  # the owner's sidecar, nothing of tagger's: not touched
    before = (lib / "p.jpg.xmp").read_bytes()
    r = runner.invoke(app, ["untag", str(lib)])
    assert r.exit_code == 0 and "1 photos: took out 0 machine keywords: 0 sidecars rewritten, 0 deleted" in r.output, r.output
    assert (lib / "p.jpg.xmp").read_bytes() == before
    (lib / "p.jpg.xmp").write_text("<x:xmpmeta><unclosed>")
    r = runner.invoke(app, ["untag", str(lib)])
    assert r.exit_code == 1 and "p.jpg.xmp: existing sidecar is not valid XMP, left untouched" in r.output, r.output
