"""The review page (`tagger serve --library DIR`, /review) in headless Chromium against the real server, as test_browser.py does.

A library of real subset photos tagged by `tagger tag --sidecar xmp` (the tiny random model: which
tags appear is not checked, only what the page does with them), reviewed with the mouse and the
keyboard and read back from the sidecars, and by a new server after a restart; and a 2,000-photo
library scrolled to its end, a page of photos at a time with only the thumbnails near the screen
alive; and the loop, a word rejected in the page on every photo it shows it on, `train --from`, the grown
model. Set TAGGER_SCREENSHOT=docs/review.png to keep a screenshot of the page for the README
(TAGGER_SCREENSHOT_MODEL=shipped tags its photos with the shipped model instead of the tiny one).
"""
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install -e .[dev])")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (pip install -e .[dev])")

from test_browser import CHROMIUM, CHROMIUM_ARGS, Server  # noqa: E402

from conftest import build_tiny_tagger, make_photo_files  # noqa: E402
from pipelines.keywords import read_sidecar, sidecar_path  # noqa: E402
from tagger.library.review import Library  # noqa: E402
from tagger.library.sidecar import sync  # noqa: E402
from tagger.service.app import create_app  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
expect = sync_api.expect
FAMILY = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <dc:subject><rdf:Bag><rdf:li>Family</rdf:li><rdf:li>Holiday 2019</rdf:li></rdf:Bag></dc:subject>
 </rdf:Description></rdf:RDF></x:xmpmeta>"""


@pytest.fixture(scope="module")
def tagger():
    return build_tiny_tagger()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def real_library(tmp_path, subset_dir, tagger) -> Path:
    """12 subset photos in Pictures/2019, tagged by `tagger tag --sidecar xmp`; the first with the owner's keywords before."""
    from typer.testing import CliRunner

    from tagger.bundle import save
    from tagger.cli import app

    folder = tmp_path / "Pictures" / "2019"
    folder.mkdir(parents=True)
    ids = [4, 1, 7, 10, 13, 15, 16, 18, 21, 23, 27, 30]
    for i in ids:
        source = subset_dir / "images_fullres" / f"im{i}.jpg"
        if not source.is_file():
            source = subset_dir / "images" / f"im{i}.jpg"
        assert source.is_file(), f"{source} is missing"
        shutil.copyfile(source, folder / f"im{i}.jpg")
    (folder / "im4.jpg.xmp").write_text(FAMILY)
    shipped = os.environ.get("TAGGER_SCREENSHOT_MODEL") == "shipped"
    model = [] if shipped else ["--model", str(save(tagger, tmp_path / "bundle"))]
    done = CliRunner().invoke(app, ["tag", str(tmp_path / "Pictures"), "--out", str(tmp_path / "tags.csv"), "--sidecar", "xmp",
                                    "--no-feature-cache", *model])
    assert done.exit_code == 0, done.output
    return tmp_path / "Pictures"


def cards(page):
    return page.locator("#grid .photo")


def card(page, name: str):
    return page.locator("#grid .photo", has=page.locator(".name", has_text=name))


def pending(page, name: str) -> list[str]:
    return card(page, name).locator(".chip.pending .word").all_inner_texts()


def state(library: Path, name: str):
    return read_sidecar(sidecar_path(library / "2019" / name))


def test_review_with_the_mouse_and_the_keyboard_written_into_the_sidecars(page, tagger, real_library, tmp_path):
    originals = []
    page.on("request", lambda r: originals.append(r.url) if urlparse(r.url).path.endswith(".jpg") else None)
    with Server(create_app(tagger, library=Library(real_library))) as server:
        page.goto(server.url + "review")
        expect(page.locator("#summary")).to_have_text("Pictures · 12 photos · 12 not reviewed")
        expect(cards(page)).to_have_count(12)
        names = cards(page).locator(".name").all_inner_texts()
        assert names == sorted(names) and names[0] == "im1.jpg"  # in path order
        first = card(page, "im4.jpg")
        expect(first.locator(".chip.kept")).to_have_text(["✓ Family", "✓ Holiday 2019"])  # the owner's keywords, shown as theirs
        img = first.locator("img")
        img.scroll_into_view_if_needed()
        page.wait_for_function("() => document.querySelector('#grid .photo img[alt=\"2019/im4.jpg\"]')?.naturalWidth > 0", timeout=20_000)
        width, height = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert max(width, height) <= 256  # the server's thumbnail, not the 500-pixel original
        assert originals == []  # no photo file was asked for by its name

        # Mouse: accept im4's first tag, reject im1's first.
        page.mouse.wheel(0, -10**6)
        word = pending(page, "im4.jpg")[0]
        first.locator(".chip.pending").first.locator(".yes").click()
        expect(first.locator(".chip.kept", has_text=word)).to_be_visible()
        kw = state(real_library, "im4.jpg")
        assert word in kw.subject and word not in kw.machine and kw.subject[:2] == ["Family", "Holiday 2019"]
        gone = pending(page, "im1.jpg")[0]
        card(page, "im1.jpg").locator(".chip.pending").first.locator(".no").click()
        expect(card(page, "im1.jpg").locator(".chip.rejected")).to_have_text([gone])
        assert state(real_library, "im1.jpg").rejected == [gone] and gone not in state(real_library, "im1.jpg").subject

        # Keyboard: to the third photo (or the next with two tags), its second tag, reject; then its (new) first tag, accept.
        k = next(i for i in range(2, 8) if len(pending(page, names[i])) >= 2)
        third = names[k]
        page.keyboard.press("Home")
        for _ in range(k):
            page.keyboard.press("ArrowRight")
        expect(card(page, third)).to_have_class("photo focused")
        tags3 = pending(page, third)
        page.keyboard.press("2")
        page.keyboard.press("r")
        expect(card(page, third).locator(".chip.rejected")).to_have_text([tags3[1]])
        page.keyboard.press("1")
        page.keyboard.press("a")
        expect(card(page, third).locator(".chip.kept")).to_have_text([f"✓ {tags3[0]}"])
        kw = state(real_library, third)
        assert kw.rejected == [tags3[1]] and tags3[0] in kw.subject and tags3[0] not in kw.machine

        # Many at once: select the next two photos with Space, reject the tag the bar offers on both.
        page.keyboard.press("ArrowRight")
        page.keyboard.press(" ")
        page.keyboard.press("ArrowRight")
        page.keyboard.press(" ")
        expect(page.locator("#bulk-count")).to_have_text("2 selected")
        bulk = page.locator("#bulk-tag").input_value()
        having = [n for n in names[k + 1:k + 3] if bulk in pending(page, n)]
        assert having
        shot = tmp_path / "review.png"
        page.evaluate("() => window.scrollTo(0, 0)")  # the whole grid under the bar, every thumbnail shown
        page.wait_for_function("() => [...document.querySelectorAll('#grid img')].every(i => i.naturalWidth > 0)", timeout=20_000)
        page.screenshot(path=str(shot), full_page=True)
        page.keyboard.press("r")
        expect(page.locator("#status")).to_contain_text(f"“{bulk}” rejected on")
        for n in having:
            assert bulk in state(real_library, n).rejected
        page.keyboard.press("Escape")
        expect(page.locator("#bulk")).to_be_hidden()

        # The bar's buttons do the same with the mouse: accept on the two photos after them.
        card(page, names[k + 3]).locator(".pick").click()
        card(page, names[k + 4]).locator(".pick").click()
        bulk = page.locator("#bulk-tag").input_value()
        having = [n for n in names[k + 3:k + 5] if bulk in pending(page, n)]
        page.locator("#bulk-accept").click()
        expect(page.locator("#status")).to_contain_text(f"“{bulk}” accepted on")
        for n in having:
            assert bulk in state(real_library, n).subject and bulk not in state(real_library, n).machine

        # Filters: a tag, then only what is still to review.
        page.fill("#tag", gone)
        page.keyboard.press("Enter")
        api = page.request.get(server.url + f"v1/library/photos?tag={gone}").json()
        expect(cards(page)).to_have_count(api["total"])
        assert "im1.jpg" in cards(page).locator(".name").all_inner_texts()
        page.keyboard.press("u")
        api = page.request.get(server.url + f"v1/library/photos?tag={gone}&unreviewed=true").json()
        expect(cards(page)).to_have_count(api["total"])
        assert "im1.jpg" not in cards(page).locator(".name").all_inner_texts()  # its one is decided

    # A new server on the same library: the page shows what the sidecars say.
    with Server(create_app(tagger, library=Library(real_library))) as server:
        page.goto(server.url + "review")
        expect(card(page, "im4.jpg").locator(".chip.kept", has_text=word)).to_be_visible()
        expect(card(page, "im1.jpg").locator(".chip.rejected")).to_have_text([gone])
        expect(card(page, third).locator(".chip.kept")).to_have_text([f"✓ {tags3[0]}"])
        assert word not in pending(page, "im4.jpg") and gone not in pending(page, "im1.jpg")

    assert shot.stat().st_size > 10_000
    if os.environ.get("TAGGER_SCREENSHOT"):
        target = Path(os.environ["TAGGER_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_the_page_asks_for_the_token(page, tagger, tmp_path):
    (photo,) = make_photo_files(tmp_path / "lib", 1)
    sync(photo, ["dog", "sky"])
    with Server(create_app(tagger, token="s3cret", library=Library(tmp_path / "lib"))) as server:
        page.goto(server.url + "review")
        expect(page.locator("#token-form")).to_be_visible()
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        expect(page.locator("#summary")).to_have_text("lib · 1 photos · 1 not reviewed")
        page.wait_for_function("() => document.querySelector('#grid .photo img')?.naturalWidth > 0", timeout=20_000)
        page.locator(".chip.pending", has_text="sky").locator(".no").click()
        expect(page.locator(".chip.rejected")).to_have_text(["sky"])
    assert read_sidecar(sidecar_path(photo)).rejected == ["sky"]


@pytest.mark.slow
def test_a_2000_photo_library_pages_smoothly_and_50_photos_are_rejected_at_once(page, tagger, tmp_path):
    library = tmp_path / "Pictures"
    photos = [p for year in range(4) for p in make_photo_files(library / str(2020 + year), 500, size=48, seed=year)]
    for i, p in enumerate(photos):  # dog on exactly 50 photos
        sync(p, ["sky", "grass"] + (["dog"] if i % 40 == 0 else []))
    thumbs, listings = [], []
    page.on("request", lambda r: thumbs.append(r.url) if "/v1/library/thumbnail" in r.url else None)
    page.on("requestfinished", lambda r: listings.append(r.timing["responseEnd"]) if "/v1/library/photos" in r.url else None)
    with Server(create_app(tagger, library=Library(library))) as server:
        page.goto(server.url + "review")
        expect(page.locator("#summary")).to_have_text("Pictures · 2,000 photos · 2,000 not reviewed")
        expect(page.locator("#count")).to_contain_text("of 2,000 photos")
        assert cards(page).count() <= 180  # a few pages, not the library
        live, steps, started = 0, 0, time.monotonic()
        while cards(page).count() < 2000:
            before = cards(page).count()
            page.mouse.wheel(0, 4000)
            page.wait_for_function(f"() => document.querySelectorAll('#grid .photo').length > {before}", timeout=10_000)
            live = max(live, page.evaluate("() => document.querySelectorAll('#grid img[src]').length"))
            steps += 1
        took = time.monotonic() - started
        names = cards(page).evaluate_all("cs => cs.map(c => c.dataset.path)")
        assert len(names) == 2000 and len(set(names)) == 2000 and names == sorted(names)
        assert steps >= 10  # it came a page at a time
        assert live <= 120, f"{live} thumbnails alive at once"
        assert len(thumbs) < 1000, f"{len(thumbs)} thumbnails fetched while scrolling past 2,000 photos"
        assert max(listings) < 1000, f"a page of photos took {max(listings):.0f} ms (all: {listings})"
        assert took < 120, f"scrolling to the end took {took:.0f} s"
        page.mouse.wheel(0, -10**6)  # back to the top: its thumbnails come back
        page.wait_for_function("() => document.querySelector('#grid .photo img')?.naturalWidth > 0", timeout=20_000)

        page.fill("#tag", "dog")
        page.keyboard.press("Enter")
        expect(page.locator("#count")).to_have_text("50 of 50 photos tagged “dog”")
        page.locator("#grid .photo").first.click()
        page.keyboard.press("Control+A")
        expect(page.locator("#bulk-count")).to_have_text("50 selected")
        expect(page.locator("#bulk-tag")).to_have_value("dog")
        page.keyboard.press("r")
        expect(page.locator("#status")).to_have_text("“dog” rejected on 50 photos", timeout=30_000)
        page.keyboard.press("u")
        expect(page.locator("#count")).to_have_text("0 of 0 photos tagged “dog” not reviewed")
    rejected = [p for p in photos if read_sidecar(sidecar_path(p)).rejected == ["dog"]]
    assert rejected == photos[::40]


@pytest.mark.slow
def test_the_loop_a_word_rejected_in_the_page_is_not_proposed_again_by_the_model_trained_from_it(page, tmp_path):
    """Review and learn, end to end: `tagger tag --sidecar xmp`, the owner rejects a word on every photo the page
    shows it on, `tagger train --from`, and the grown model proposes it on at most a fifth of those photos."""
    import json
    from collections import Counter

    from typer.testing import CliRunner

    from test_from import write_library
    from tagger.bundle import load, save
    from tagger.cli import app
    from tagger.scoring.evidence import Evidence
    from tagger.scoring.options import TagOptions

    runner = CliRunner()
    base = save(build_tiny_tagger(unit=True, heads=2, scoring="softmax", knn_photos=40, neighbour_votes=5), tmp_path / "base")
    library = tmp_path / "lib"
    photos, owner = write_library(library, 60)
    cache = str(tmp_path / "cache")
    done = runner.invoke(app, ["tag", str(library), "--out", str(tmp_path / "before.jsonl"), "--model", str(base), "--sidecar", "xmp",
                               "--method", "cgan", "--top-k", "3", "--min-score", "0", "--cache-dir", cache])
    assert done.exit_code == 0, done.output
    machine = {p: read_sidecar(sidecar_path(p)).machine for p in photos}
    word, count = Counter(w for p in photos for w in machine[p]).most_common(1)[0]
    shown = [p for p in photos if word in machine[p]]
    assert count >= 10 and len(shown) == count
    owners = [p for p in photos if word in read_sidecar(sidecar_path(p)).subject and word not in machine[p]]
    total = count + len(owners)  # the filter shows the photos whose owner gave the word too

    with Server(create_app(load(base), library=Library(library))) as server:
        page.goto(server.url + "review")
        page.fill("#tag", word)
        page.keyboard.press("Enter")
        expect(page.locator("#count")).to_have_text(f"{total} of {total} photos tagged “{word}”")
        cards(page).first.click()
        page.keyboard.press("Control+A")
        expect(page.locator("#bulk-count")).to_have_text(f"{total} selected")
        expect(page.locator("#bulk-tag")).to_have_value(word)
        page.keyboard.press("r")
        expect(page.locator("#status")).to_have_text(f"“{word}” rejected on {count} photos", timeout=30_000)
    assert [p for p in photos if read_sidecar(sidecar_path(p)).rejected == [word]] == shown

    # The generator's settings of the --from loop test (tests/test_from.py): a tiny library moves a tiny model.
    from tagger.training.extend import ExtendConfig, extend
    result = extend(library, tmp_path / "grown", load(base), ExtendConfig(min_count=3, split=(1.0, 0.0, 0.0), epochs=30, lr=3e-3,
                                                                          cache_dir=tmp_path / "cache"), progress=False)
    assert result.rejected == count
    grown = load(tmp_path / "grown")
    feats = grown.read(shown).features
    again = grown.tag(Evidence(feats, None), TagOptions(method="cgan", top_k=3, min_score=0))
    still = [p.name for p, row in zip(shown, again) if word in [w for w, _ in row.tags]]
    assert len(still) <= count // 5, still
    # Tagging again with the grown model writes the word on none of them, and the owner's decisions stay.
    done = runner.invoke(app, ["tag", str(library), "--out", str(tmp_path / "after.jsonl"), "--model", str(tmp_path / "grown"),
                               "--sidecar", "xmp", "--cache-dir", cache])
    assert done.exit_code == 0, done.output
    after = {Path(json.loads(line)["path"]).name: json.loads(line)["tags"] for line in (tmp_path / "after.jsonl").read_text().splitlines()}
    assert all(word not in after[p.name] for p in shown)
    assert all(read_sidecar(sidecar_path(p)).rejected == [word] for p in shown)
