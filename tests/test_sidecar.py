"""Sidecars and keywords: machine tags replaced, never piled up; the owner's keywords and fields never touched."""
import json
import shutil
import subprocess

import pytest
from PIL import Image

from pipelines.keywords import KeywordError, embedded_keywords, owner_keywords, read_sidecar, sidecar_path
from tagger.library.keyword_tree import KeywordTree
from tagger.library.sidecar import SidecarConfig, SidecarError, embed, sync

XMP = SidecarConfig("xmp")
RDF_HEAD = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:digiKam="http://www.digikam.org/ns/1.0/" xmp:Rating="4">')
RDF_TAIL = "</rdf:Description></rdf:RDF></x:xmpmeta>"


def owner_sidecar(subject, hierarchical=()):
    """An XMP sidecar as a photo manager writes it: keywords, a rating, and a field of its own."""
    bag = lambda items: "<rdf:Bag>" + "".join(f"<rdf:li>{i}</rdf:li>" for i in items) + "</rdf:Bag>"  # noqa: E731
    hier = f"<lr:hierarchicalSubject>{bag(hierarchical)}</lr:hierarchicalSubject>" if hierarchical else ""
    return (RDF_HEAD + f"<dc:subject>{bag(subject)}</dc:subject>{hier}"
            "<digiKam:ColorLabel>3</digiKam:ColorLabel>" + RDF_TAIL)


def xmp_packet(subject):
    return (RDF_HEAD + "<dc:subject><rdf:Bag>" + "".join(f"<rdf:li>{s}</rdf:li>" for s in subject)
            + "</rdf:Bag></dc:subject>" + RDF_TAIL).encode()


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "IMG_1005.jpg"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(p)
    return p


def test_a_new_sidecar_holds_the_tags_in_both_fields_and_records_them(photo):
    assert sync(photo, ["beach", "sea"], XMP)
    side = photo.with_name("IMG_1005.jpg.xmp")
    kw = read_sidecar(side)
    assert kw.subject == ["beach", "sea"] and kw.hierarchical == ["tagger|beach", "tagger|sea"] and kw.machine == ["beach", "sea"]
    assert kw.tags_list == ["tagger/beach", "tagger/sea"]
    assert kw.owner() == []
    before = side.read_bytes()
    assert not sync(photo, ["beach", "sea"], XMP)  # already in step: not rewritten
    assert side.read_bytes() == before and before.startswith(b"<?xpacket")


def test_retagging_replaces_machine_tags_and_keeps_the_owners(photo):
    side = photo.with_suffix(".xmp")  # Lightroom's naming: IMG_1005.xmp
    side.write_text(owner_sidecar(["holiday", "sea"], ["People|Anna"]))
    assert sidecar_path(photo) == side
    sync(photo, ["beach", "sea", "sand"], XMP)
    assert not photo.with_name("IMG_1005.jpg.xmp").exists()  # no second sidecar beside the library's own
    kw = read_sidecar(side)
    # "sea" was already the owner's: it is not recorded as ours, so it can never be taken away, and not filed under tagger|.
    # The owner's keywords are in every field, each in its form (Anna, a leaf of their tree, in dc:subject too).
    assert kw.subject == ["holiday", "sea", "Anna", "beach", "sand"] and kw.machine == ["beach", "sand"]
    assert kw.hierarchical == ["People|Anna", "holiday", "sea", "tagger|beach", "tagger|sand"]
    assert kw.tags_list == ["People/Anna", "holiday", "sea", "tagger/beach", "tagger/sand"]
    text = side.read_text()
    assert 'xmp:Rating="4"' in text and "<digiKam:ColorLabel>3</digiKam:ColorLabel>" in text  # its prefixes kept, too
    for tags in (["dog", "grass"], ["cat"], ["dog", "grass"]):  # the photo changed, and changed back
        sync(photo, tags, XMP)
        kw = read_sidecar(side)
        assert kw.subject == ["holiday", "sea", "Anna"] + tags and kw.machine == tags
        assert kw.hierarchical == ["People|Anna", "holiday", "sea"] + [f"tagger|{t}" for t in tags]
    assert kw.owner() == ["holiday", "sea", "Anna"]


def test_digikam_tags_list_is_kept_in_step(photo):
    side = photo.with_name("IMG_1005.jpg.xmp")
    side.write_text(RDF_HEAD + "<digiKam:TagsList><rdf:Seq><rdf:li>People/Anna</rdf:li></rdf:Seq></digiKam:TagsList>"
                    "<dc:subject><rdf:Bag><rdf:li>Anna</rdf:li></rdf:Bag></dc:subject>" + RDF_TAIL)
    sync(photo, ["beach"], XMP)
    sync(photo, ["dog"], XMP)
    kw = read_sidecar(side)
    assert kw.tags_list == ["People/Anna", "tagger/dog"] and kw.subject == ["Anna", "dog"] and kw.owner() == ["Anna"]
    assert "<rdf:Seq>" in side.read_text()


def test_a_machine_tag_the_owner_filed_is_theirs(photo):
    sync(photo, ["beach", "dog"], XMP)
    side = photo.with_name("IMG_1005.jpg.xmp")
    # In digiKam the owner drags tagger|beach into their own tree: Places|beach.
    side.write_text(side.read_text().replace("tagger|beach", "Places|beach"))
    assert "beach" in read_sidecar(side).owner()
    sync(photo, ["cat"], XMP)
    kw = read_sidecar(side)
    assert "beach" in kw.subject and "dog" not in kw.subject and "Places|beach" in kw.hierarchical
    assert kw.machine == ["cat"]


def test_a_new_sidecar_starts_with_the_photos_embedded_keywords(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (16, 16)).save(photo, xmp=xmp_packet(["Anna", "wedding"]))
    assert embedded_keywords(photo).subject == ["Anna", "wedding"]
    sync(photo, ["wedding", "dress"], XMP)
    kw = read_sidecar(photo.with_name("p.jpg.xmp"))
    assert kw.subject == ["Anna", "wedding", "dress"] and kw.machine == ["dress"]
    assert owner_keywords(photo) == ["Anna", "wedding"]


def test_a_broken_sidecar_is_left_untouched_and_named(photo):
    side = photo.with_name("IMG_1005.jpg.xmp")
    side.write_text("<x:xmpmeta><unclosed>")
    with pytest.raises(SidecarError, match="IMG_1005.jpg.xmp: existing sidecar is not valid XMP"):
        sync(photo, ["beach"], XMP)
    assert side.read_text() == "<x:xmpmeta><unclosed>"


def test_entity_tricks_are_refused(photo):
    side = photo.with_name("IMG_1005.jpg.xmp")
    side.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
                    '<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>')
    with pytest.raises(KeywordError, match="not valid XMP"):
        read_sidecar(side)
    with pytest.raises(SidecarError):
        sync(photo, ["beach"], XMP)


def test_a_symlinked_sidecar_is_written_through(photo, tmp_path):
    real = tmp_path / "elsewhere.xmp"
    real.write_text(owner_sidecar(["holiday"]))
    link = photo.with_name("IMG_1005.jpg.xmp")
    link.symlink_to(real)
    sync(photo, ["beach"], XMP)
    assert link.is_symlink() and read_sidecar(real).subject == ["holiday", "beach"]


def test_txt_sidecar_is_just_the_tags(photo):
    cfg = SidecarConfig("txt")
    assert sync(photo, ["beach", "sea"], cfg)
    assert photo.with_name("IMG_1005.jpg.txt").read_text() == "beach\nsea\n"
    assert not sync(photo, ["beach", "sea"], cfg)
    with pytest.raises(SidecarError, match="IMG_1005.jpg.txt: not written by tagger"):
        sync(photo, ["beach"], cfg)  # nothing says these lines are tagger's: they may be the owner's notes
    assert sync(photo, ["beach"], cfg, dry_run=True, earlier=[["beach", "sea"]])
    assert photo.with_name("IMG_1005.jpg.txt").read_text() == "beach\nsea\n"
    assert sync(photo, ["beach"], cfg, earlier=[["dog"], ["beach", "sea"]])
    assert photo.with_name("IMG_1005.jpg.txt").read_text() == "beach\n"


def test_config_is_checked():
    with pytest.raises(ValueError, match="sidecar kind"):
        SidecarConfig("json")
    with pytest.raises(ValueError, match="naming"):
        SidecarConfig("xmp", naming="lightroom")
    for root in ("auto|tags", "auto/tags", "", " tagger"):
        with pytest.raises(ValueError, match="keyword root"):
            KeywordTree(root)
    for category in ("pets|cats", "pets/cats", ""):
        with pytest.raises(ValueError, match="keyword category"):
            KeywordTree(categories={"cat": category})


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_exiftool_reads_what_we_write_and_we_read_what_it_writes(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (16, 16), (10, 120, 200)).save(photo)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-IPTC:Keywords=holiday", "-IPTC:Keywords=Zürich",
                    "-XMP-dc:Subject=Anna", "-XMP-lr:HierarchicalSubject=People|Anna", str(photo)], check=True)
    assert set(embedded_keywords(photo).subject) == {"Anna", "holiday", "Zürich"}
    sync(photo, ["lake", "boat"], XMP)
    out = subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-digiKam:TagsList", "-validate", "-warning",
                          str(photo.with_name("p.jpg.xmp"))], check=True, capture_output=True, text=True).stdout
    rec = json.loads(out)[0]
    assert set(rec["Subject"]) == {"Anna", "holiday", "Zürich", "lake", "boat"}
    assert rec["HierarchicalSubject"] == ["People|Anna", "holiday", "Zürich", "tagger|lake", "tagger|boat"]
    assert rec["TagsList"] == ["People/Anna", "holiday", "Zürich", "tagger/lake", "tagger/boat"]
    assert rec["Validate"] == "OK", rec


def test_a_sidecar_that_rebinds_our_prefixes_does_not_change_how_later_sidecars_are_written(tmp_path):
    """ElementTree's prefix map is global: one odd sidecar binding rdf: elsewhere once made every later one say ns1:."""
    odd, plain = tmp_path / "odd.jpg", tmp_path / "plain.jpg"
    for p in (odd, plain):
        Image.new("RGB", (16, 16), (200, 30, 30)).save(p)
    odd.with_name("odd.jpg.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:x2="urn:other">'
        '<x2:note xmlns:rdf="urn:not-rdf" xmlns:dc="urn:not-dc">hi</x2:note></rdf:Description></rdf:RDF></x:xmpmeta>')
    sync(odd, ["sea"], XMP)
    sync(plain, ["beach"], XMP)
    text = plain.with_name("plain.jpg.xmp").read_text()
    assert "<rdf:RDF" in text and "<dc:subject>" in text and "ns0:" not in text and "ns1:" not in text


# Categories as a model bundle's word kinds give them (WordKinds.keyword_categories); which word gets which is
# embeddings.kinds' to decide and test_kinds' to check: here only where they are written.
CATEGORIES = {"cat": "animal", "pizza": "food", "paris": "place", "blackandwhite": "style"}
TREE = KeywordTree(categories=CATEGORIES)


def machine_entries(kw):
    return [h for h in kw.hierarchical if h.startswith("tagger|")], [t for t in kw.tags_list if t.startswith("tagger/")]


def test_keywords_go_under_their_category_and_flat_right_under_the_root(tmp_path):
    photo = tmp_path / "IMG_1.jpg"
    Image.new("RGB", (16, 16)).save(photo)
    side = photo.with_name("IMG_1.jpg.xmp")
    side.write_text(owner_sidecar(["Anna"], ["People|Anna"]))
    tags = ["cat", "pizza", "unknownword", "blackandwhite"]
    assert sync(photo, tags, XMP, tree=TREE)
    kw = read_sidecar(side)
    # A keyword the tree has no category for (a bundle from before categories) goes right under the root.
    path = lambda t, sep: sep.join(["tagger", CATEGORIES[t], t] if t in CATEGORIES else ["tagger", t])  # noqa: E731
    assert kw.hierarchical == ["People|Anna"] + [path(t, "|") for t in tags]
    assert kw.tags_list == ["People/Anna"] + [path(t, "/") for t in tags]
    assert kw.subject == ["Anna"] + tags and kw.machine == tags and kw.owner() == ["Anna"]  # dc:subject stays flat
    assert not sync(photo, tags, XMP, tree=TREE)  # in step: not rewritten
    assert sync(photo, tags, XMP, tree=KeywordTree(flat=True, categories=CATEGORIES))
    kw = read_sidecar(side)
    assert machine_entries(kw) == ([f"tagger|{t}" for t in tags], [f"tagger/{t}" for t in tags])


@pytest.mark.parametrize("first, then", [(KeywordTree(flat=True), TREE), (TREE, KeywordTree(flat=True)),
                                         (KeywordTree(flat=True, categories=CATEGORIES), TREE)])
def test_switching_forms_leaves_one_form_only(tmp_path, first, then):
    photo = tmp_path / "IMG_2.jpg"
    Image.new("RGB", (16, 16)).save(photo)
    side = photo.with_name("IMG_2.jpg.xmp")
    side.write_text(owner_sidecar(["Anna", "cat"], ["People|Anna", "Pets|cat"]))
    sync(photo, ["cat", "paris"], XMP, tree=first)
    sync(photo, ["cat", "paris"], XMP, tree=then)
    written = side.read_bytes()
    kw = read_sidecar(side)
    # `cat` was the owner's before tagger came (Pets|cat): it is not filed under tagger| beside it.
    assert machine_entries(kw) == ([then.path("paris")], [then.path("paris", "/")])
    assert kw.hierarchical[:2] == ["People|Anna", "Pets|cat"]  # the owner's, untouched
    assert kw.subject == ["Anna", "cat", "paris"] and kw.machine == ["paris"]
    assert not sync(photo, ["cat", "paris"], XMP, tree=then) and side.read_bytes() == written  # a no-op re-run: same bytes


def test_an_old_flat_sidecar_is_taken_over_by_the_hierarchy(tmp_path):
    """What an earlier version wrote (tagger|cat, tagger/cat, written by hand here as it was then) is tagger's own."""
    photo = tmp_path / "IMG_3.jpg"
    Image.new("RGB", (16, 16)).save(photo)
    side = photo.with_name("IMG_3.jpg.xmp")
    side.write_text(RDF_HEAD.replace('xmp:Rating="4">', 'xmlns:tagger="urn:tagger:xmp:1.0/" xmp:Rating="4">')
                    + "<dc:subject><rdf:Bag><rdf:li>Anna</rdf:li><rdf:li>cat</rdf:li><rdf:li>sofa</rdf:li></rdf:Bag></dc:subject>"
                    "<lr:hierarchicalSubject><rdf:Bag><rdf:li>People|Anna</rdf:li><rdf:li>tagger|cat</rdf:li><rdf:li>tagger|sofa</rdf:li>"
                    "</rdf:Bag></lr:hierarchicalSubject><digiKam:TagsList><rdf:Seq><rdf:li>tagger/cat</rdf:li><rdf:li>tagger/sofa</rdf:li>"
                    "</rdf:Seq></digiKam:TagsList><tagger:Keywords><rdf:Bag><rdf:li>cat</rdf:li><rdf:li>sofa</rdf:li></rdf:Bag>"
                    "</tagger:Keywords>" + RDF_TAIL)
    assert sync(photo, ["cat", "pizza"], XMP, tree=TREE)
    kw = read_sidecar(side)
    assert kw.hierarchical == ["People|Anna", TREE.path("cat"), TREE.path("pizza")]
    assert kw.tags_list == ["People/Anna", TREE.path("cat", "/"), TREE.path("pizza", "/")]
    assert kw.subject == ["Anna", "cat", "pizza"] and kw.machine == ["cat", "pizza"]  # sofa, tagger's, is gone
    assert 'xmp:Rating="4"' in side.read_text()


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_exiftool_reads_the_hierarchy(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (16, 16), (10, 120, 200)).save(photo)
    side = photo.with_name("p.jpg.xmp")

    def exiftool():
        out = subprocess.run(["exiftool", "-j", "-s", "-HierarchicalSubject", "-TagsList", "-Subject", "-validate", "-warning", str(side)],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)[0]

    sync(photo, ["cat", "paris"], XMP, tree=TREE)
    rec = exiftool()
    assert rec["HierarchicalSubject"] == [f"tagger|{CATEGORIES['cat']}|cat", f"tagger|{CATEGORIES['paris']}|paris"]
    assert rec["TagsList"] == [f"tagger/{CATEGORIES['cat']}/cat", f"tagger/{CATEGORIES['paris']}/paris"]
    assert rec["Subject"] == ["cat", "paris"] and rec["Validate"] == "OK", rec
    sync(photo, ["cat", "paris"], XMP, tree=KeywordTree(flat=True, categories=CATEGORIES))
    rec = exiftool()
    assert rec["HierarchicalSubject"] == ["tagger|cat", "tagger|paris"] and rec["TagsList"] == ["tagger/cat", "tagger/paris"]


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_embed_writes_the_hierarchy_into_the_photo_and_switches_forms(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (16, 16), (10, 120, 200)).save(photo)

    def hierarchy():
        out = subprocess.run(["exiftool", "-j", "-HierarchicalSubject", "-TagsList", str(photo)], check=True, capture_output=True,
                             text=True).stdout
        rec = json.loads(out)[0]
        return rec.get("HierarchicalSubject"), rec.get("TagsList")

    assert embed(photo, ["cat", "pizza"], TREE)
    assert hierarchy() == ([TREE.path("cat"), TREE.path("pizza")], [TREE.path("cat", "/"), TREE.path("pizza", "/")])
    before = photo.read_bytes()
    assert not embed(photo, ["cat", "pizza"], TREE) and photo.read_bytes() == before  # in step: not rewritten
    assert embed(photo, ["cat", "pizza"], KeywordTree(flat=True, categories=CATEGORIES))
    assert hierarchy() == (["tagger|cat", "tagger|pizza"], ["tagger/cat", "tagger/pizza"])


# -- one story in every field; the owner's decisions (issue 27) ----------------------------------------


def test_keywords_are_one_whatever_their_case_or_plural():
    from pipelines.keywords import same_keyword, unique_keywords

    for a, b in (("Car", "car"), ("Cats", "cat"), ("boxes", "box"), ("cities", "city"), ("buses", "bus"), ("glasses", "glass"),
                 ("Tante Rose", "tante rose"), ("holidays", "Holiday")):
        assert same_keyword(a, b) and same_keyword(b, a), (a, b)
    for a, b in (("cat", "car"), ("sea", "seas of green"), ("bus", "bu"), ("as", "a"), ("dress", "dres")):
        assert not same_keyword(a, b), (a, b)
    assert unique_keywords(["Car", "Auto", "Cats", "car", "auto", "cat", "dog"]) == ["Car", "Auto", "Cats", "dog"]


def test_the_owners_spelling_stands_for_the_machines(photo):
    side = photo.with_name("IMG_1005.jpg.xmp")
    side.write_text(owner_sidecar(["Car", "Auto", "Cats"]))
    sync(photo, ["car", "auto", "cat", "dog"], XMP)
    kw = read_sidecar(side)
    assert kw.subject == ["Car", "Auto", "Cats", "dog"] and kw.machine == ["dog"]
    assert kw.hierarchical == ["Car", "Auto", "Cats", "tagger|dog"] and kw.tags_list == ["Car", "Auto", "Cats", "tagger/dog"]
    assert kw.copied_hierarchical == ["Car", "Auto", "Cats"] and kw.copied_subject == []


def test_a_removed_machine_tag_is_rejected_and_never_written_again(photo):
    side = photo.with_name("IMG_1005.jpg.xmp")
    sync(photo, ["me", "beach", "sea"], XMP)
    text = side.read_text()
    for entry in ("<rdf:li>me</rdf:li>", "<rdf:li>tagger|me</rdf:li>", "<rdf:li>tagger/me</rdf:li>"):
        text = text.replace(entry, "", 1)  # the owner removes `me` from the three fields (tagger's record still lists it)
    side.write_text(text)
    for tags in (["me", "beach", "sea"], ["sea", "me", "Me"], ["me"]):
        sync(photo, tags, XMP)
        kw = read_sidecar(side)
        assert "me" not in kw.subject and not [h for h in kw.hierarchical + kw.tags_list if h.endswith("me")] and kw.rejected == ["me"]


def test_a_tool_that_drops_a_whole_field_rejects_nothing(photo):
    """A manager that does not know digiKam:TagsList may drop it: that is no decision of the owner's."""
    side = photo.with_name("IMG_1005.jpg.xmp")
    sync(photo, ["beach", "sea"], XMP)
    text = side.read_text()
    side.write_text(text[:text.index("<digiKam:TagsList>")] + text[text.index("</digiKam:TagsList>") + len("</digiKam:TagsList>"):])
    assert read_sidecar(side).tags_list == []
    sync(photo, ["beach", "sea"], XMP)
    kw = read_sidecar(side)
    assert kw.rejected == [] and kw.machine == ["beach", "sea"] and kw.tags_list == ["tagger/beach", "tagger/sea"]


def test_without_the_record_the_root_tells_the_machine_tags(photo):
    side = photo.with_name("IMG_1005.jpg.xmp")
    side.write_text(owner_sidecar(["Anna", "beach", "sea"], ["People|Anna", "tagger|beach", "tagger|nature|sea"]))  # no tagger:Keywords
    assert read_sidecar(side).owner() == ["Anna"]
    sync(photo, ["dog"], XMP)
    kw = read_sidecar(side)
    assert kw.subject == ["Anna", "dog"] and kw.hierarchical == ["People|Anna", "tagger|dog"] and kw.machine == ["dog"]


def test_a_stem_sidecar_is_the_photos_only_when_no_other_file_shares_the_stem(tmp_path):
    jpg = tmp_path / "IMG_9.jpg"
    Image.new("RGB", (8, 8)).save(jpg)
    (tmp_path / "IMG_9.xmp").write_text(owner_sidecar(["mine"]))
    assert sidecar_path(jpg) == tmp_path / "IMG_9.xmp"
    (tmp_path / "IMG_9.txt").write_text("notes")  # a metadata file owns no sidecar
    (tmp_path / ".IMG_9.jpg").write_text("")
    assert sidecar_path(jpg) == tmp_path / "IMG_9.xmp"
    (tmp_path / "IMG_9.NEF").write_bytes(b"raw")
    assert sidecar_path(jpg) == tmp_path / "IMG_9.jpg.xmp"
    assert owner_keywords(jpg) == []  # the RAW's keywords are not the JPEG's


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_embed_keeps_iptc_in_step_where_there_is_iptc_and_makes_none(tmp_path):
    with_iptc, without, png = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.png"
    for p in (with_iptc, without, png):
        Image.new("RGB", (16, 16), (10, 120, 200)).save(p)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-IPTC:Keywords=Zürich", "-IPTC:Keywords=Cats", str(with_iptc)], check=True)
    (tmp_path / "a.jpg.xmp").write_text(owner_sidecar(["Tante Rose", "東京"]))  # the sidecar's keywords go into the photo too
    for p in (with_iptc, without, png):
        assert embed(p, ["lake", "cat"])
        assert not embed(p, ["lake", "cat"])  # in step: not rewritten
    rec = json.loads(subprocess.run(["exiftool", "-j", "-IPTC:all", "-XMP-dc:Subject", str(with_iptc), str(without), str(png)],
                                    capture_output=True, text=True, check=True).stdout)
    assert rec[0]["Keywords"] == ["Zürich", "Cats", "Tante Rose", "東京", "lake"] and rec[0]["CodedCharacterSet"] == "UTF8"
    assert rec[0]["Subject"] == ["Zürich", "Cats", "Tante Rose", "東京", "lake"]
    assert "Keywords" not in rec[1] and "Keywords" not in rec[2] and rec[2]["Subject"] == ["lake", "cat"]
    assert embedded_keywords(with_iptc).iptc == ["Zürich", "Cats", "Tante Rose", "東京", "lake"]
    assert not list(tmp_path.glob("*_original"))


def test_untag_goes_through_no_link_out_of_the_library(tmp_path):
    from tagger.library.sidecar import unsync

    lib, outside = tmp_path / "lib", tmp_path / "outside.xmp"
    lib.mkdir()
    p = lib / "p.jpg"
    Image.new("RGB", (8, 8)).save(p)
    sync(p, ["beach"], XMP)
    outside.write_bytes((lib / "p.jpg.xmp").read_bytes())
    (lib / "p.jpg.xmp").unlink()
    (lib / "p.jpg.xmp").symlink_to(outside)
    with pytest.raises(SidecarError, match="outside the library"):
        unsync(p, lib / "p.jpg.xmp", library=[lib])
    assert read_sidecar(outside).machine == ["beach"]


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_embed_and_unembed_leave_a_photo_with_nothing_to_say_as_it_is(tmp_path):
    from tagger.library.sidecar import unembed

    p = tmp_path / "blank.jpg"
    Image.new("RGB", (16, 16)).save(p)
    before = p.read_bytes()
    assert not embed(p, [])  # a blank frame's empty tag list: no empty packet is added
    assert unembed(p) == ([], False) and p.read_bytes() == before


def test_keyword_indexes_answer_as_comparing_each_with_each():
    """unique_keywords, KeywordIndex and PathIndex (linear: a stranger's sidecar may hold 100,000 keywords, and comparing
    each with each never finished on one) say what same_keyword and same_path say of every pair."""
    import random

    from pipelines.keywords import KeywordIndex, PathIndex, same_keyword, same_path, unique_keywords

    rng = random.Random(0)
    words = ["cat", "Cats", "box", "boxes", "boxe", "city", "cities", "City", "glass", "glasses", "bus", "buses", "news", "a", "",
             "Dog", "dogs", "series", "serie", "ies", "y"]
    for _ in range(3000):
        ks, probe = [rng.choice(words) for _ in range(rng.randint(0, 10))], rng.choice(words[:-7] + words[-6:])
        kept = []
        for k in ks:
            if k and not any(same_keyword(k, o) for o in kept):
                kept.append(k)
        assert unique_keywords(ks) == kept, ks
        present = [k for k in ks if k]
        assert (probe in KeywordIndex(present)) == any(same_keyword(probe, k) for k in present), (probe, ks)
        paths = [tuple(rng.choice(words[:-7]) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 6))]
        query = tuple(rng.choice(words[:-7]) for _ in range(rng.randint(1, 3)))
        assert (query in PathIndex(paths)) == any(same_path(query, p) for p in paths), (query, paths)
