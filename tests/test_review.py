"""Reviewing a library (`tagger serve --library DIR`): the /v1/library API through FastAPI's TestClient, and the sidecars it writes.

The library is small generated photos whose XMP sidecars `sync` wrote, as `tagger tag DIR --sidecar
xmp` does, some with the owner's own keywords; what is checked is what lands in the files.
"""
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import build_tiny_tagger, make_photo_files  # noqa: E402
from pipelines.errors import OptionError  # noqa: E402
from pipelines.keywords import read_sidecar, sidecar_path  # noqa: E402
from tagger.library.keyword_tree import KeywordTree  # noqa: E402
from tagger.library.review import Library, ReviewConfig  # noqa: E402
from tagger.library.sidecar import embed, sync  # noqa: E402
from tagger.service.app import create_app  # noqa: E402

TREE = KeywordTree(categories={"dog": "animal", "grass": "plant", "sky": "nature"})
TAGS = {"2019/photo000.jpg": ["dog", "grass", "sky"], "2019/photo001.jpg": ["dog", "sky"], "2019/photo002.jpg": ["sky", "grass"],
        "2020/photo000.jpg": ["dog"], "2020/photo001.jpg": ["grass"]}
UNTAGGED = "2020/photo002.jpg"
LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4">
  <dc:subject><rdf:Bag><rdf:li>Family</rdf:li><rdf:li>Paris</rdf:li></rdf:Bag></dc:subject>
  <lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Paris</rdf:li></rdf:Bag></lr:hierarchicalSubject>
 </rdf:Description></rdf:RDF></x:xmpmeta>"""


@pytest.fixture(scope="module")
def tagger():
    return build_tiny_tagger()


@pytest.fixture
def lib(tmp_path) -> Path:
    """Pictures/2019 and 2020, three photos each; five tagged into sidecars, 2019/photo000.jpg's one the owner's Lightroom sidecar first."""
    root = tmp_path / "Pictures"
    for year in ("2019", "2020"):
        make_photo_files(root / year, 3, seed=int(year))
    (root / "2019" / "photo000.jpg.xmp").write_text(LIGHTROOM)
    for name, tags in TAGS.items():
        sync(root / name, tags, tree=TREE, library=[root])
    return root


@pytest.fixture
def client(tagger, lib):
    with TestClient(create_app(tagger, library=Library(lib))) as c:
        yield c


def listed(client, **params) -> dict:
    r = client.get("/v1/library/photos", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def decide(client, decision: str, tag: str, *paths: str) -> dict:
    r = client.post(f"/v1/library/{decision}", json={"tag": tag, "paths": list(paths)})
    assert r.status_code == 200, r.text
    return r.json()


def test_lists_the_library_with_its_machine_tags_a_page_at_a_time(client):
    body = listed(client)
    assert body["total"] == 6
    assert [p["path"] for p in body["photos"]] == sorted([*TAGS, UNTAGGED])  # in path order
    by_path = {p["path"]: p for p in body["photos"]}
    for name, tags in TAGS.items():
        assert by_path[name]["tags"] == tags  # best first, as tag wrote them
    assert by_path["2019/photo000.jpg"]["keywords"] == ["Family", "Paris"]  # the owner's, not the machine's
    assert by_path[UNTAGGED] == {"path": UNTAGGED, "tags": [], "keywords": [], "rejected": [], "reviewed": True, "error": None}
    first, second = listed(client, offset=0, limit=4), listed(client, offset=4, limit=4)
    assert [p["path"] for p in first["photos"] + second["photos"]] == [p["path"] for p in body["photos"]]
    assert len(first["photos"]) == 4 and len(second["photos"]) == 2 and second["total"] == 6
    assert client.get("/v1/library/photos", params={"limit": 501}).status_code == 422
    assert client.get("/v1/library").json() == {"folder": "Pictures", "photos": 6, "unreviewed": 5}


def test_filters_by_tag_and_by_not_reviewed(client):
    dogs = [p["path"] for p in listed(client, tag="dog")["photos"]]
    assert dogs == ["2019/photo000.jpg", "2019/photo001.jpg", "2020/photo000.jpg"]
    assert [p["path"] for p in listed(client, tag="Dogs")["photos"]] == dogs  # one keyword whatever its case or plural
    decide(client, "accept", "dog", "2019/photo001.jpg")
    decide(client, "reject", "dog", "2020/photo000.jpg")
    # Tagged dog in any state; not reviewed: dog still to decide on.
    assert [p["path"] for p in listed(client, tag="dog")["photos"]] == dogs
    assert [p["path"] for p in listed(client, tag="dog", unreviewed=True)["photos"]] == ["2019/photo000.jpg"]
    # 2020/photo000.jpg had dog only: it is reviewed now, and the untagged photo has nothing to review.
    assert [p["path"] for p in listed(client, unreviewed=True)["photos"]] == ["2019/photo000.jpg", "2019/photo001.jpg",
                                                                             "2019/photo002.jpg", "2020/photo001.jpg"]
    counts = {c["tag"]: (c["photos"], c["pending"]) for c in client.get("/v1/library/tags").json()["tags"]}
    assert counts["dog"] == (3, 1) and counts["sky"] == (3, 3) and counts["Family"] == (1, 0)


def test_accepting_makes_the_tag_the_owners_keyword_and_keeps_the_rest(client, lib):
    side = lib / "2019" / "photo000.jpg.xmp"
    body = decide(client, "accept", "dog", "2019/photo000.jpg")
    assert body["done"] == 1
    assert body["results"][0] == {"path": "2019/photo000.jpg", "tags": ["grass", "sky"], "keywords": ["Family", "Paris", "dog"],
                                       "rejected": [], "reviewed": False, "error": None, "ok": True, "reason": None}
    kw = read_sidecar(side)
    assert kw.subject[:2] == ["Family", "Paris"] and "dog" in kw.subject  # the owner's first, unchanged
    assert kw.machine == ["grass", "sky"]  # out of tagger's record: the owner's now
    assert "Places|Paris" in kw.hierarchical and "tagger|animal|dog" not in kw.hierarchical and "dog" in kw.hierarchical
    assert "tagger|plant|grass" in kw.hierarchical and "tagger/nature/sky" in kw.tags_list  # the others filed where they were
    assert 'xmp:Rating="4"' in side.read_text()  # every other field of the owner's sidecar kept
    # The next `tagger tag` run keeps it the owner's, and does not write the sidecar again.
    assert sync(lib / "2019" / "photo000.jpg", TAGS["2019/photo000.jpg"], tree=TREE, library=[lib]) is False
    assert decide(client, "accept", "dog", "2019/photo000.jpg")["results"][0]["ok"]  # again: nothing to do, no error


def test_rejecting_records_the_tag_and_no_later_run_writes_it(client, lib):
    photo = lib / "2019" / "photo001.jpg"
    body = decide(client, "reject", "sky", "2019/photo001.jpg")
    assert body["results"][0]["tags"] == ["dog"] and body["results"][0]["rejected"] == ["sky"]
    kw = read_sidecar(sidecar_path(photo))
    assert kw.rejected == ["sky"] and "sky" not in kw.subject and not any("sky" in h for h in kw.hierarchical + kw.tags_list)
    assert sync(photo, TAGS["2019/photo001.jpg"], tree=TREE, library=[lib]) is False
    assert read_sidecar(sidecar_path(photo)).rejected == ["sky"]
    # Accepting a rejected tag takes it back.
    body = decide(client, "accept", "sky", "2019/photo001.jpg")
    assert body["results"][0]["keywords"] == ["sky"] and body["results"][0]["rejected"] == []


def test_one_decision_on_many_photos_says_which_it_could_not_make(client, lib):
    paths = ["2019/photo000.jpg", "2019/photo002.jpg", "2020/photo001.jpg", UNTAGGED]
    body = decide(client, "reject", "grass", *paths)
    assert body["done"] == 3
    assert [r["ok"] for r in body["results"]] == [True, True, True, False]
    assert body["results"][3]["reason"] == f"{UNTAGGED} has no machine tag 'grass'"
    assert not sidecar_path(lib / UNTAGGED).exists()  # nothing written where there was nothing to decide
    for p in paths[:3]:
        assert read_sidecar(sidecar_path(lib / p)).rejected == ["grass"]
    # The owner's keywords are never taken away.
    body = decide(client, "reject", "Family", "2019/photo000.jpg")
    assert not body["results"][0]["ok"] and "the owner's keyword" in body["results"][0]["reason"]
    assert "Family" in read_sidecar(lib / "2019" / "photo000.jpg.xmp").subject
    r = client.post("/v1/library/accept", json={"tag": "", "paths": ["2019/photo000.jpg"]})
    assert r.status_code == 422
    assert client.post("/v1/library/maybe", json={"tag": "dog", "paths": ["2019/photo000.jpg"]}).status_code == 404


def test_decisions_are_read_back_from_the_sidecars_after_a_restart(tagger, lib):
    with TestClient(create_app(tagger, library=Library(lib))) as client:
        decide(client, "accept", "dog", "2019/photo000.jpg", "2019/photo001.jpg")
        decide(client, "reject", "grass", "2019/photo002.jpg", "2020/photo001.jpg")
        before = listed(client)["photos"]
    with TestClient(create_app(tagger, library=Library(lib))) as client:  # a new app, a new Library: only the files remember
        after = listed(client)["photos"]
        assert [p["path"] for p in listed(client, unreviewed=True)["photos"]] == ["2019/photo000.jpg", "2019/photo001.jpg",
                                                                                 "2019/photo002.jpg", "2020/photo000.jpg"]
    assert after == before
    by_path = {p["path"]: p for p in after}
    assert by_path["2019/photo001.jpg"]["keywords"] == ["dog"] and by_path["2019/photo001.jpg"]["tags"] == ["sky"]
    assert by_path["2020/photo001.jpg"] == {"path": "2020/photo001.jpg", "tags": [], "keywords": [], "rejected": ["grass"],
                                           "reviewed": True, "error": None}


def test_a_path_must_be_one_of_the_librarys_photos(client, lib, tmp_path):
    outside = tmp_path / "outside.jpg"
    shutil.copyfile(lib / "2019" / "photo000.jpg", outside)
    sync(outside, ["dog"], tree=TREE)
    os.symlink(outside, lib / "2020" / "linked.jpg")  # a photo that is a link out of the library is not its photo
    (lib / "2020" / "linked.jpg.xmp").write_bytes(outside.with_name("outside.jpg.xmp").read_bytes())
    snapshot = {p: p.read_bytes() for p in [*lib.rglob("*.xmp"), outside.with_name("outside.jpg.xmp")]}
    bad = ["../outside.jpg", str(outside), str(lib / "2019" / "photo000.jpg"), "2019/../2019/photo000.jpg", "2019//photo000.jpg",
           "./2019/photo000.jpg", "2020/linked.jpg", "2019/photo000.jpg.xmp", "2019", "", "2019/photo000.jpg\x00"]
    for path in bad:
        for r in (client.get("/v1/library/thumbnail", params={"path": path}), client.get("/v1/library/photo", params={"path": path}),
                  client.post("/v1/library/reject", json={"tag": "dog", "paths": ["2019/photo001.jpg", path]})):
            assert r.status_code == 404, (path, r.status_code, r.text)
            assert "not one of the library's photos" in r.json()["detail"]
    assert "2020/linked.jpg" not in [p["path"] for p in listed(client)["photos"]]
    assert {p: p.read_bytes() for p in snapshot} == snapshot  # a refused request wrote nothing, not even for the good path


def test_a_sidecar_linked_out_of_the_library_is_left_alone(client, lib, tmp_path):
    photo = lib / "2020" / "photo000.jpg"
    theirs = tmp_path / "elsewhere.xmp"
    theirs.write_bytes(sidecar_path(photo).read_bytes())
    sidecar_path(photo).unlink()
    os.symlink(theirs, photo.with_name("photo000.jpg.xmp"))
    before = theirs.read_bytes()
    shown = client.get("/v1/library/photo", params={"path": "2020/photo000.jpg"}).json()
    assert "outside the library" in shown["error"] and shown["tags"] == []
    body = decide(client, "reject", "dog", "2020/photo000.jpg")
    assert not body["results"][0]["ok"] and "outside the library" in body["results"][0]["reason"]
    assert theirs.read_bytes() == before


def test_a_broken_sidecar_is_reported_and_never_replaced(client, lib):
    side = lib / "2020" / "photo001.jpg.xmp"
    side.write_text("<x:xmpmeta this is not XML")
    shown = client.get("/v1/library/photo", params={"path": "2020/photo001.jpg"}).json()
    assert str(side) in shown["error"] and "not valid XMP" in shown["error"]
    body = decide(client, "accept", "grass", "2020/photo001.jpg")
    assert not body["results"][0]["ok"]
    assert side.read_text() == "<x:xmpmeta this is not XML"


def test_thumbnails_are_made_by_the_server_never_the_original(lib):
    import io

    import numpy as np
    from PIL import Image

    big = lib / "2019" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(big, quality=95)
    with TestClient(create_app(build_tiny_tagger(), library=Library(lib))) as c:  # a new scan, which finds big.jpg
        r = c.get("/v1/library/thumbnail", params={"path": "2019/big.jpg", "size": 200})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        im = Image.open(io.BytesIO(r.content))
        assert im.size == (200, 150) and len(r.content) < big.stat().st_size / 10
        assert c.get("/v1/library/thumbnail", params={"path": "2019/big.jpg", "size": 5000}).status_code == 422
        (lib / "2019" / "big.jpg").write_bytes(b"not a photo any more")
        r = c.get("/v1/library/thumbnail", params={"path": "2019/big.jpg"})
        assert r.status_code == 422 and "not an image" in r.json()["detail"]


def test_the_token_guards_the_library_api_and_the_page_asks_for_it(tagger, lib):
    with TestClient(create_app(tagger, token="s3cret", library=Library(lib))) as c:
        assert c.get("/v1/library/photos").status_code == 401
        assert c.post("/v1/library/reject", json={"tag": "dog", "paths": ["2020/photo000.jpg"]}).status_code == 401
        assert read_sidecar(sidecar_path(lib / "2020" / "photo000.jpg")).rejected == []
        assert c.get("/v1/library/photos", headers={"Authorization": "Bearer s3cret"}).json()["total"] == 6
        assert c.get("/review").status_code == 200 and "review.js" in c.get("/review").text


def test_without_a_library_there_is_no_review(tagger):
    with TestClient(create_app(tagger)) as c:
        assert c.get("/review").status_code == 404 and c.get("/v1/library/photos").status_code == 404


def test_photos_added_or_removed_while_serving_show_within_the_rescan_time(tagger, lib):
    """The library was the photos there when the server started: one copied in later never showed until a restart."""
    import time

    library = Library(lib, ReviewConfig(rescan=0.5))
    with TestClient(create_app(tagger, library=library)) as client:
        assert listed(client)["total"] == 6
        (new,) = make_photo_files(lib / "2021", 1, seed=9)
        sync(new, ["dog"], tree=TREE, library=[lib])
        (lib / "2020" / "photo001.jpg").unlink()
        assert listed(client)["total"] == 6  # within the rescan time: the last scan still holds
        time.sleep(0.6)
        page = listed(client)
        names = [p["path"] for p in page["photos"]]
        assert page["total"] == 6 and "2021/photo000.jpg" in names and "2020/photo001.jpg" not in names
        assert client.get("/v1/library/photo", params={"path": "2020/photo001.jpg"}).status_code == 404
        assert decide(client, "accept", "dog", "2021/photo000.jpg")["results"][0]["keywords"] == ["dog"]
    with pytest.raises(OptionError, match="rescan"):
        ReviewConfig(rescan=-1)


def test_a_library_is_a_folder_and_its_root_one_word(tmp_path):
    with pytest.raises(OptionError, match=f"{tmp_path / 'nope'}: not a folder"):
        Library(tmp_path / "nope")
    with pytest.raises(OptionError, match="keyword root"):
        ReviewConfig(root="a|b")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("exiftool") is None, reason="writing keywords into photos needs exiftool")
def test_a_library_tagged_into_the_photos_keeps_decisions_in_sidecars_that_the_next_embed_carries_in(tagger, tmp_path):
    from pipelines.keywords import embedded_fields

    root = tmp_path / "Pictures"
    photos = make_photo_files(root, 2)
    for p in photos:
        embed(p, ["dog", "sky"], TREE)
    library = Library(root)
    assert [p.tags for p in library.photos()] == [["dog", "sky"], ["dog", "sky"]]  # read from the photos' own XMP
    library.decide(["photo000.jpg"], "dog", "accept")
    library.decide(["photo001.jpg"], "dog", "reject")
    assert [(p.tags, p.keywords, p.rejected) for p in Library(root).photos()] == [(["sky"], ["dog"], []), (["sky"], [], ["dog"])]
    for p in photos:  # `tagger tag --embed` again, with the same tags
        embed(p, ["dog", "sky"], TREE)
    first, second = embedded_fields(photos[0]), embedded_fields(photos[1])
    assert "dog" in first.subject and "dog" not in first.machine
    assert "dog" not in second.subject and second.rejected == ["dog"]


def test_serve_refuses_a_library_that_is_no_folder_before_loading_a_model(tmp_path):
    from typer.testing import CliRunner

    from tagger.cli import app

    done = CliRunner().invoke(app, ["serve", "--library", str(tmp_path / "nope"), "--model", str(tmp_path / "no-model")])
    assert done.exit_code != 0
    assert f"{tmp_path / 'nope'}: not a folder" in done.output
