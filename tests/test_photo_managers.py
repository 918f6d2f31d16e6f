"""tagger beside digiKam, Lightroom and Immich: every keyword field tells one story, never another photo's sidecar, the owner's decisions kept, and an undo.

The library is made as those managers leave one, by exiftool: a digiKam-style `photo.jpg.xmp`
(TagsList, hierarchy, rating, labels, a face region), a Lightroom-style `photo.xmp` (dc:subject,
hierarchy, crs settings, title), JPEGs with embedded IPTC and XMP keywords, a RAW+JPEG pair with the
RAW's Lightroom sidecar, and a JPEG and a PNG of one stem beside a stem sidecar. What was written is
read back with exiftool and with exiv2 (the library digiKam reads metadata with).
"""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipelines.keywords import read_sidecar
from tagger.cli import app
from tagger.library.batch import tag_folder
from tagger.library.sidecar import SidecarConfig
from tagger.model import Tagged

pytestmark = [
    pytest.mark.slow,  # a minute: exiftool and exiv2 run a few hundred times
    pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)"),
    pytest.mark.skipif(shutil.which("exiv2") is None, reason="the exiv2 command not installed (Debian: exiv2)"),
]
runner = CliRunner()
XMP = SidecarConfig("xmp")
# What the "model" proposes for each photo (by name): words the owner has in another case or plural, and one they will reject.
PROPOSED = {
    "IMG_1010.jpg": ["selfportrait", "me", "family", "beach"],
    "IMG_1020.jpg": ["car", "auto", "cat", "me", "myself", "beach"],
    "IMG_1030.jpg": ["lake", "boat", "holidays"],
    "IMG_2000.JPG": ["bird", "tree"],
    "IMG_3000.jpg": ["sea", "wave"],
    "IMG_3000.png": ["dog", "grass"],
}


def exiftool(*args):
    return subprocess.run(["exiftool", *map(str, args)], check=True, capture_output=True, text=True).stdout


def read_json(path, *tags):
    return json.loads(exiftool("-j", "-struct", "-G1", "-a", *tags, path))[0]


def keywords(path):
    """(dc:subject, lr:hierarchicalSubject, digiKam:TagsList) as exiftool reads them, and the same as exiv2 reads them."""
    rec = read_json(path, "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-digiKam:TagsList")
    as_list = lambda v: v if isinstance(v, list) else [] if v is None else [v]  # noqa: E731
    by_exiftool = tuple(as_list(rec.get(k)) for k in ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList"))
    by_exiv2 = []
    for key in ("Xmp.dc.subject", "Xmp.lr.hierarchicalSubject", "Xmp.digiKam.TagsList"):
        out = subprocess.run(["exiv2", "-q", "-K", key, "-Pv", str(path)], capture_output=True, text=True).stdout.strip()
        by_exiv2.append(out.split(", ") if out else [])  # a bag is one line, its items joined by ", " (no keyword here holds one)
    return by_exiftool, tuple(by_exiv2)


def new_xmp(path, *assignments):
    """A sidecar as a photo manager writes it, made by exiftool from nothing."""
    path.write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    exiftool("-q", "-overwrite_original", *assignments, path)


def photo(path, colour, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(colour, dtype=np.float64) + np.random.default_rng(sum(colour)).normal(0, 30, (16, 24, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, fmt)
    return path


@pytest.fixture
def library(tmp_path):
    lib = tmp_path / "Pictures"
    digikam = photo(lib / "digikam" / "IMG_1010.jpg", (200, 40, 40))
    new_xmp(digikam.with_name("IMG_1010.jpg.xmp"), "-XMP-digiKam:TagsList=People/Tante Rose", "-XMP-digiKam:TagsList=Family",
            "-XMP-lr:HierarchicalSubject=People|Tante Rose", "-XMP-lr:HierarchicalSubject=Family",
            "-XMP-dc:Subject=Tante Rose", "-XMP-dc:Subject=Family", "-XMP-xmp:Rating=4", "-XMP-xmp:Label=Red",
            "-XMP-digiKam:ColorLabel=1", "-XMP-digiKam:PickLabel=2",
            "-RegionInfo={AppliedToDimensions={W=24,H=16,Unit=pixel},RegionList=[{Area={X=0.5,Y=0.4,W=0.2,H=0.3,Unit=normalized},"
            "Name=Tante Rose,Type=Face}]}")
    lightroom = photo(lib / "lightroom" / "IMG_1020.jpg", (40, 200, 40))
    new_xmp(lightroom.with_suffix(".xmp"), "-XMP-dc:Subject=Tante Rose", "-XMP-dc:Subject=Car", "-XMP-dc:Subject=Auto",
            "-XMP-dc:Subject=Cats", "-XMP-dc:Subject=Paris", "-XMP-lr:HierarchicalSubject=Places|Paris",
            "-XMP-crs:Exposure2012=+0.50", "-XMP-crs:Temperature=5200", "-XMP-dc:Title=Sommer in Paris", "-XMP-xmp:Rating=5")
    embedded = photo(lib / "embedded" / "IMG_1030.jpg", (40, 40, 200))
    exiftool("-q", "-overwrite_original", "-IPTC:Keywords=holiday", "-IPTC:Keywords=Zürich", "-XMP-dc:Subject=Anna",
             "-XMP-lr:HierarchicalSubject=People|Anna", embedded)
    raw = lib / "raw"
    photo(raw / "IMG_2000.JPG", (120, 120, 40))
    (raw / "IMG_2000.CR2").write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00 not a real raw")
    new_xmp(raw / "IMG_2000.xmp", "-XMP-dc:Subject=RAW edit", "-XMP-crs:Exposure2012=-0.30", "-XMP-xmp:Rating=3")
    pair = lib / "pair"
    photo(pair / "IMG_3000.jpg", (200, 200, 40))
    photo(pair / "IMG_3000.png", (40, 200, 200), "PNG")
    new_xmp(pair / "IMG_3000.xmp", "-XMP-dc:Subject=Which one", "-XMP-xmp:Rating=2")
    return lib


def tag_batch(paths):
    for p in paths:
        yield p, Tagged([(t, round(0.9 - 0.05 * i, 4)) for i, t in enumerate(PROPOSED[p.name])])


def run_tag(lib, tmp_path, embed=True, batch=tag_batch, settings="m1"):
    return tag_folder(lib, tmp_path / "tags.csv", batch, settings=settings, sidecar=XMP, embed=embed)


def snapshot(lib):
    """Every file's metadata as exiftool reports it, without what changes when any byte is written (sizes, dates, digests)."""
    out = {}
    for path in sorted(p for p in lib.rglob("*") if p.is_file()):
        rec = read_json(path)
        out[str(path.relative_to(lib))] = {k: v for k, v in rec.items()
                                           if not k.startswith(("System:", "File:", "ExifTool:", "XMP-tagger:", "SourceFile"))}
    return out


def flat_of(tree_entries, sep):
    return [e.rsplit(sep, 1)[-1] for e in tree_entries]


def test_every_keyword_field_tells_one_story(library, tmp_path):
    summary = run_tag(library, tmp_path)
    assert not summary.sidecar_errors, summary.sidecar_errors
    owners = {
        "digikam/IMG_1010.jpg.xmp": ["Tante Rose", "Family"],
        "lightroom/IMG_1020.xmp": ["Tante Rose", "Car", "Auto", "Cats", "Paris"],
        "embedded/IMG_1030.jpg.xmp": ["Anna", "holiday", "Zürich"],  # a new sidecar: the photo's embedded XMP and IPTC keywords
        "embedded/IMG_1030.jpg": ["Anna", "holiday", "Zürich"],
    }
    for name, owner in owners.items():
        (subject, hierarchy, tags_list), by_exiv2 = keywords(library / name)
        assert (subject, hierarchy, tags_list) == by_exiv2, name  # exiftool and exiv2 read the same keywords
        for field, flat in ((subject, subject), (hierarchy, flat_of(hierarchy, "|")), (tags_list, flat_of(tags_list, "/"))):
            assert sorted(k for k in flat if k in owner) == sorted(owner), (name, field)  # every owner keyword, once, in the owner's spelling
        machine = [h for h in hierarchy if h.startswith("tagger|")]
        assert [t for t in tags_list if t.startswith("tagger/")] == [m.replace("|", "/") for m in machine]
        # Only under the root: the owner's tree keeps its own entries, and the hierarchy's top level is the owner's flat keywords.
        assert all("tagger" not in h for h in hierarchy if not h.startswith("tagger|"))
    # Case and plural: the owner's Car, Auto, Cats stand for the machine's car, auto, cat, in no second spelling.
    subject, hierarchy, tags_list = keywords(library / "lightroom" / "IMG_1020.xmp")[0]
    assert [s for s in subject if s.casefold() in ("car", "auto", "cat", "cats")] == ["Car", "Auto", "Cats"]
    assert not {"tagger|car", "tagger|auto", "tagger|cat"} & set(hierarchy) and "Places|Paris" in hierarchy and "Paris" not in hierarchy
    assert "tagger|me" in hierarchy and "me" in subject and "tagger/beach" in tags_list
    # "holidays" proposed for a photo whose IPTC says "holiday": the owner's word only.
    subject = keywords(library / "embedded" / "IMG_1030.jpg")[0][0]
    assert "holidays" not in subject and subject.count("holiday") == 1
    # --embed: IPTC Keywords in step with the XMP (the owner's and the machine's, flat), no backup inside the library.
    rec = read_json(library / "embedded" / "IMG_1030.jpg", "-IPTC:Keywords", "-XMP-dc:Subject")
    assert rec["IPTC:Keywords"] == ["holiday", "Zürich", "Anna", "lake", "boat"]
    assert rec["XMP-dc:Subject"] == ["Anna", "holiday", "Zürich", "lake", "boat"]
    assert not [p for p in library.rglob("*_original")]
    # The Lightroom sidecar's keywords, inside its JPEG too (Lightroom reads the JPEG's own XMP).
    subject = keywords(library / "lightroom" / "IMG_1020.jpg")[0][0]
    assert subject[:5] == ["Tante Rose", "Car", "Auto", "Cats", "Paris"]
    # The rating, labels, face region, crs settings and title are as they were.
    rec = read_json(library / "digikam" / "IMG_1010.jpg.xmp")
    assert rec["XMP-xmp:Rating"] == 4 and rec["XMP-xmp:Label"] == "Red" and rec["XMP-digiKam:PickLabel"] == 2
    assert rec["XMP-mwg-rs:RegionInfo"]["RegionList"][0]["Name"] == "Tante Rose"
    rec = read_json(library / "lightroom" / "IMG_1020.xmp")
    assert rec["XMP-crs:Exposure2012"] == "+0.50" and rec["XMP-dc:Title"] == "Sommer in Paris"
    # A second run writes nothing.
    again = run_tag(library, tmp_path)
    assert again.sidecars_written == 0 and again.embedded == 0


def test_a_stem_sidecar_another_file_may_own_is_left_alone(library, tmp_path):
    raw_side, pair_side = library / "raw" / "IMG_2000.xmp", library / "pair" / "IMG_3000.xmp"
    before = {p: p.read_bytes() for p in (raw_side, pair_side)}
    first = run_tag(library, tmp_path)
    for _ in range(2):
        assert run_tag(library, tmp_path).sidecars_written == 0  # the choice is stable: nothing moves between runs
    assert {p: p.read_bytes() for p in before} == before  # Lightroom's sidecar of the RAW, and the pair's, byte for byte
    jpg, png = read_sidecar(library / "pair" / "IMG_3000.jpg.xmp"), read_sidecar(library / "pair" / "IMG_3000.png.xmp")
    assert jpg.machine == ["sea", "wave"] and png.machine == ["dog", "grass"]
    assert read_sidecar(library / "raw" / "IMG_2000.JPG.xmp").machine == ["bird", "tree"]
    assert "RAW edit" not in read_sidecar(library / "raw" / "IMG_2000.JPG.xmp").subject  # the RAW's keywords are not the JPEG's
    assert first.sidecars_written == 6


def test_forced_stem_naming_refuses_a_shared_stem(library, tmp_path):
    summary = tag_folder(library / "pair", tmp_path / "tags.csv", tag_batch, sidecar=SidecarConfig("xmp", "stem"))
    assert len(summary.sidecar_errors) == 2 and all("may be the sidecar of IMG_3000." in e for e in summary.sidecar_errors)
    assert read_sidecar(library / "pair" / "IMG_3000.xmp").subject == ["Which one"]


def test_the_owners_decisions_are_remembered(library, tmp_path):
    run_tag(library, tmp_path)
    side = library / "lightroom" / "IMG_1020.xmp"
    # The owner removes `me` and `myself` everywhere with exiftool, and files `beach` in their own tree.
    exiftool("-q", "-overwrite_original", "-XMP-dc:Subject-=me", "-XMP-lr:HierarchicalSubject-=tagger|me", "-XMP-digiKam:TagsList-=tagger/me",
             "-XMP-dc:Subject-=myself", "-XMP-lr:HierarchicalSubject-=tagger|myself", "-XMP-digiKam:TagsList-=tagger/myself",
             "-XMP-lr:HierarchicalSubject-=tagger|beach", "-XMP-lr:HierarchicalSubject+=Places|beach",
             "-XMP-digiKam:TagsList-=tagger/beach", "-XMP-digiKam:TagsList+=Places/beach", side)
    assert read_sidecar(side).machine  # exiftool kept tagger's record
    for _ in range(3):
        assert not run_tag(library, tmp_path).sidecar_errors
        for path in (side, library / "lightroom" / "IMG_1020.jpg"):
            subject, hierarchy, tags_list = keywords(path)[0]
            assert "me" not in subject and "myself" not in subject and not [h for h in hierarchy if h.endswith(("|me", "|myself"))], path
            assert subject.count("beach") == 1 and "tagger|beach" not in hierarchy and "Places|beach" in hierarchy, path
            assert "tagger/beach" not in tags_list and "Places/beach" in tags_list, path
    kw = read_sidecar(side)
    assert kw.rejected == ["me", "myself"] and "beach" not in kw.machine
    rows = pd.read_csv(tmp_path / "tags.csv", keep_default_na=False).set_index("path")
    assert json.loads(rows.loc[str(library / "lightroom" / "IMG_1020.jpg"), "tags"]) == ["car", "auto", "cat", "beach"]  # nor in the results
    assert read_json(side, "-XMP-tagger:all")["XMP-tagger:Rejected"] == ["me", "myself"]  # in tagger's namespace, for exiftool too
    # Re-tagged with other options that propose `me` again: still not written.
    retag = lambda paths: ((p, Tagged([("me", 0.9), ("sky", 0.8)])) for p in paths)  # noqa: E731
    run_tag(library, tmp_path, batch=retag, settings="m2")
    subject = keywords(side)[0][0]
    assert "me" not in subject and "sky" in subject and "beach" in subject


def test_machine_tags_are_known_by_the_root_when_the_record_is_gone(library, tmp_path):
    run_tag(library, tmp_path)
    side = library / "digikam" / "IMG_1010.jpg.xmp"
    exiftool("-q", "-overwrite_original", "-XMP-tagger:all=", side)  # another tool drops tagger's namespace
    assert not read_sidecar(side).recorded
    run_tag(library, tmp_path, batch=lambda paths: ((p, Tagged([("sky", 0.9)])) for p in paths), settings="m2")
    subject, hierarchy, tags_list = keywords(side)[0]
    assert subject == ["Tante Rose", "Family", "sky"]  # selfportrait, me, beach were tagger's: replaced, not the owner's now
    assert hierarchy == ["People|Tante Rose", "Family", "tagger|sky"] and tags_list == ["People/Tante Rose", "Family", "tagger/sky"]


def test_tag_then_untag_leaves_every_owner_field_as_it_was(library, tmp_path):
    before = snapshot(library)
    run_tag(library, tmp_path)
    assert snapshot(library) != before
    r = runner.invoke(app, ["untag", str(library), "--embed", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would delete" in r.output and "would untag" in r.output and "nothing was changed" in r.output
    assert "IMG_2000.xmp" not in r.output and "pair/IMG_3000.xmp" not in r.output  # nothing of tagger's there: not touched
    r = runner.invoke(app, ["untag", str(library), "--embed"])
    assert r.exit_code == 0, r.output
    assert snapshot(library) == before  # the sidecars tagger made are gone, every other field is as it was
    assert not [p for p in library.rglob("*") if p.is_file() and b"urn:tagger" in p.read_bytes()]
    r = runner.invoke(app, ["untag", str(library), "--embed"])
    assert r.exit_code == 0 and "took out 0 machine keywords: 0 sidecars rewritten, 0 deleted (made by tagger, nothing else in them), 0 photos rewritten" in r.output, r.output


def test_untag_keeps_what_the_owner_added_to_a_sidecar_tagger_made(library, tmp_path):
    run_tag(library, tmp_path, embed=False)
    side = library / "pair" / "IMG_3000.jpg.xmp"
    exiftool("-q", "-overwrite_original", "-XMP-xmp:Rating=5", "-XMP-dc:Subject+=Strand", side)  # the owner rates it, adds a keyword
    r = runner.invoke(app, ["untag", str(library / "pair")])
    assert r.exit_code == 0, r.output
    assert "delete" in r.output and "IMG_3000.png.xmp" in r.output
    assert not (library / "pair" / "IMG_3000.png.xmp").exists()
    rec = read_json(side, "-XMP-xmp:Rating", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject")
    assert rec["XMP-xmp:Rating"] == 5 and rec["XMP-dc:Subject"] == ["Strand"] and "XMP-lr:HierarchicalSubject" not in rec


def test_a_tag_removed_from_the_photo_leaves_its_sidecar_in_the_same_run(library, tmp_path):
    run_tag(library, tmp_path)
    jpg = library / "embedded" / "IMG_1030.jpg"
    # In a manager that writes into the photo (Lightroom, for a JPEG), the owner removes `boat` from its XMP.
    exiftool("-q", "-overwrite_original", "-XMP-dc:Subject-=boat", "-XMP-lr:HierarchicalSubject-=tagger|boat",
             "-XMP-digiKam:TagsList-=tagger/boat", jpg)
    run_tag(library, tmp_path)
    for path in (jpg, jpg.with_name("IMG_1030.jpg.xmp")):
        subject, hierarchy, tags_list = keywords(path)[0]
        assert "boat" not in subject and "tagger|boat" not in hierarchy and "tagger/boat" not in tags_list, path
    assert read_json(jpg, "-IPTC:Keywords")["IPTC:Keywords"] == ["holiday", "Zürich", "Anna", "lake"]
