"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright, against the real server.

The server runs uvicorn in a thread on a free loopback port with a tiny random model, so the tags
are random: the tests check that tags and scores appear for the uploaded photo, not which.
Set TAGGER_SCREENSHOT=docs/service.png to keep a screenshot of the page for the README.
"""
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install -e .[dev])")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (pip install -e .[dev])")

CHROMIUM = os.environ.get("TAGGER_CHROMIUM", "/usr/bin/chromium")
# Flags for a root user on a machine without a network: no sandbox, no GPU, no background calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")


class Server:
    """The app under uvicorn in a thread, on a free 127.0.0.1 port."""

    def __init__(self, app):
        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """The tiny test tagger, its features standardized as training does so that photos differ in tags."""
    import torch

    from conftest import build_tiny_tagger, make_photo_files
    from tagger.bundle import load, save

    tmp = tmp_path_factory.mktemp("model")
    t = build_tiny_tagger()
    f = t.read(make_photo_files(tmp / "photos", 32, size=64, seed=1)).features
    t.generator.set_feature_stats(torch.from_numpy(f.mean(0)), torch.from_numpy(f.std(0) + 1e-6))
    return load(save(t, tmp / "bundle"))  # through a saved bundle, as `tagger serve` loads it


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 900})  # fresh localStorage per test
    page = context.new_page()
    yield page
    context.close()


def card(page, name: str):
    return page.locator(".card", has=page.locator(".name", has_text=name))


def test_page_tags_a_real_photo(page, tagger, subset_dir, tmp_path):
    from tagger.service.app import create_app

    photos = [subset_dir / "images" / f"im{i}.jpg" for i in (4, 1, 7)]
    photos = [p for p in photos if p.is_file()]
    assert photos and photos[0].name == "im4.jpg", f"{subset_dir}/images/im4.jpg is missing"
    with Server(create_app(tagger)) as server:
        page.goto(server.url)
        sync_api.expect(page.locator("#model")).to_contain_text(f"tiny · {len(tagger.words)} tags")
        page.set_input_files("#picker", [str(p) for p in photos])
        beach = card(page, "im4.jpg")
        sync_api.expect(beach.locator(".tag").first).to_be_visible(timeout=20_000)
        sync_api.expect(page.locator(".card .tag")).not_to_have_count(0)
        for p in photos[1:]:
            sync_api.expect(card(page, p.name).locator(".tag").first).to_be_visible(timeout=20_000)
        words = beach.locator(".word").all_inner_texts()
        scores = [float(s) for s in beach.locator(".score").all_inner_texts()]
        # The thumbnail is the photo itself, decoded by the browser from an object URL.
        width = beach.locator("img").evaluate("img => img.complete ? img.naturalWidth : 0")
        shot = tmp_path / "service.png"
        page.screenshot(path=str(shot), full_page=True)

    assert words and set(words) <= set(tagger.words)
    assert len(words) <= tagger.sampling.top_k
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert width > 0
    assert shot.stat().st_size > 10_000
    if os.environ.get("TAGGER_SCREENSHOT"):
        target = Path(os.environ["TAGGER_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_page_asks_for_the_token_and_reports_a_bad_photo(page, tagger, tmp_path):
    from conftest import make_photo_files
    from tagger.service.app import create_app

    (good,) = make_photo_files(tmp_path, 1, size=96)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a photo at all")
    with Server(create_app(tagger, token="s3cret")) as server:
        page.goto(server.url)
        form = page.locator("#token-form")
        sync_api.expect(form).to_be_visible()  # the API refused the page: it asks for the token
        page.fill("#token", "wrong")
        page.click("#token-form button")
        sync_api.expect(page.locator("#token-error")).to_have_text("that token was refused")
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        sync_api.expect(form).to_be_hidden()
        sync_api.expect(page.locator("#model")).to_contain_text("tiny")
        page.set_input_files("#picker", [str(good), str(bad)])
        sync_api.expect(card(page, good.name).locator(".tag").first).to_be_visible(timeout=20_000)
        sync_api.expect(card(page, "broken.jpg").locator(".state")).to_have_text("not an image (unknown format)")
        # The token is kept: a reload needs no second asking.
        page.reload()
        sync_api.expect(page.locator("#model")).to_contain_text("tiny")
        assert form.is_hidden()
