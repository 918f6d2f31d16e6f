"""The HTTP service through FastAPI's TestClient: tags, limits, bad photos, the token, batching."""
import io
import threading
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import build_tiny_tagger  # noqa: E402
from pipelines.images import load_image  # noqa: E402
from tagger.model import Tagger  # noqa: E402
from tagger.scoring.options import TagOptions
from tagger.service.app import ServiceLimits, create_app  # noqa: E402
from tagger.bundle import load


def jpeg(seed: int, size: int = 64) -> bytes:
    """A small random JPEG; different seeds give photos with different tags (mostly)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def upload(*photos: tuple[str, bytes]) -> list:
    return [("files", (name, data, "image/jpeg")) for name, data in photos]


def expected(tagger: Tagger, data: bytes, **options) -> tuple[list[str], list[float]]:
    """What tagging the photo alone, in process, gives: the service must answer the same."""
    tags = tagger.predict([load_image(data)], TagOptions(**options))[0]
    return [t for t, _ in tags], [round(s, 4) for _, s in tags]


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    """The tiny tagger with its features standardized as training does, so that different photos get different tags."""
    import torch

    t = build_tiny_tagger()
    f = t.read([load_image(jpeg(seed)) for seed in range(1000, 1032)]).features
    t.generator.set_feature_stats(torch.from_numpy(f.mean(0)), torch.from_numpy(f.std(0) + 1e-6))
    t = t.replace(info={"photos": 8, "val_p5": 0.25})
    return t


@contextmanager
def serve(tagger, **kwargs):
    # The context manager runs the app's lifespan, which starts the batching worker.
    with TestClient(create_app(tagger, **kwargs)) as client:
        yield client


def test_tags_one_photo_from_a_saved_bundle(tiny_bundle):
    tagger = load(tiny_bundle)
    photo = jpeg(1)
    with serve(tagger) as client:
        r = client.post("/v1/tag", files=upload(("beach.jpg", photo)))
    assert r.status_code == 200
    (result,) = r.json()["results"]
    tags, scores = expected(tagger, photo)
    assert result == {"filename": "beach.jpg", "tags": tags, "scores": scores, "error": None, "note": None}
    assert 0 < len(tags) <= tagger.sampling.top_k
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)


def test_several_photos_keep_their_order_and_their_own_tags(tagger):
    photos = [(f"p{i}.jpg", jpeg(i)) for i in range(5)]
    with serve(tagger) as client:
        r = client.post("/v1/tag", files=upload(*photos))
        passes = client.app.state.batcher.forward_passes
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [name for name, _ in photos]
    for (_, data), result in zip(photos, results):
        assert (result["tags"], result["scores"]) == expected(tagger, data)
    assert len({tuple(x["tags"]) for x in results}) > 2  # so a mix-up of photos would show
    assert passes == 1  # one request, one forward pass


def test_query_options_top_k_exclude_min_score(tagger):
    photo = jpeg(3)
    best, scores = expected(tagger, photo, top_k=5)
    with serve(tagger) as client:
        one = client.post("/v1/tag", params={"top_k": 1}, files=upload(("a.jpg", photo))).json()["results"][0]
        without = client.post("/v1/tag", params={"top_k": 5, "exclude": [best[0], best[1]]}, files=upload(("a.jpg", photo))).json()["results"][0]
        high = client.post("/v1/tag", params={"top_k": 5, "min_score": scores[0]}, files=upload(("a.jpg", photo))).json()["results"][0]
        bad = client.post("/v1/tag", params={"top_k": 0}, files=upload(("a.jpg", photo)))
    assert one["tags"] == best[:1]
    assert best[0] not in without["tags"] and best[1] not in without["tags"] and without["tags"]
    assert without["tags"] == expected(tagger, photo, top_k=5, exclude=best[:2])[0]
    assert high["tags"] and all(s >= scores[0] for s in high["scores"]) and len(high["tags"]) < len(best)
    assert bad.status_code == 422


def test_a_bad_photo_is_reported_and_the_others_are_tagged(tagger):
    good = jpeg(4)
    truncated = good[: len(good) // 3]
    with serve(tagger) as client:
        r = client.post("/v1/tag", files=upload(("good.jpg", good), ("notes.jpg", b"shopping list: milk"), ("cut.jpg", truncated)))
        alone = client.post("/v1/tag", files=upload(("notes.jpg", b"shopping list: milk")))
    assert r.status_code == 200
    ok, text, cut = r.json()["results"]
    assert ok["error"] is None and (ok["tags"], ok["scores"]) == expected(tagger, good)
    assert text == {"filename": "notes.jpg", "tags": [], "scores": [], "error": "not an image (unknown format)", "note": None}
    assert cut["filename"] == "cut.jpg" and cut["tags"] == [] and "truncated" in cut["error"]
    # A request whose photos all fail still answers per photo, and runs no forward pass for them.
    assert alone.status_code == 200 and alone.json()["results"][0]["error"] == "not an image (unknown format)"


def test_a_photo_over_the_size_limit_is_refused_by_name(tagger):
    small, big = jpeg(5, size=16), jpeg(6, size=256)
    limits = ServiceLimits(max_photo_bytes=len(small) + 100)
    with serve(tagger, limits=limits) as client:
        r = client.post("/v1/tag", files=upload(("small.jpg", small), ("huge.jpg", big)))
        fine = client.post("/v1/tag", files=upload(("small.jpg", small)))
    assert r.status_code == 413
    assert r.json()["detail"].startswith("huge.jpg: ") and "over the limit" in r.json()["detail"]
    assert fine.status_code == 200 and fine.json()["results"][0]["tags"]


def test_a_body_larger_than_any_allowed_request_is_refused_before_reading():
    limits = ServiceLimits(max_photo_bytes=1000, max_photos=1)
    with serve(build_tiny_tagger(), limits=limits) as client:
        r = client.post("/v1/tag", files=upload(("a.jpg", b"x" * 200_000)))
    assert r.status_code == 413 and r.json()["detail"].startswith("request of ")


def test_too_many_photos_are_refused(tagger):
    with serve(tagger, limits=ServiceLimits(max_photos=2)) as client:
        r = client.post("/v1/tag", files=upload(*[(f"p{i}.jpg", jpeg(i)) for i in range(3)]))
        two = client.post("/v1/tag", files=upload(*[(f"p{i}.jpg", jpeg(i)) for i in range(2)]))
    assert r.status_code == 413 and r.json()["detail"] == "3 photos in one request; at most 2"
    assert two.status_code == 200 and len(two.json()["results"]) == 2


def test_no_photos_is_a_validation_error(tagger):
    with serve(tagger) as client:
        r = client.post("/v1/tag")
    assert r.status_code == 422


def test_token_is_required_on_every_v1_request_when_set(tagger):
    photo = upload(("a.jpg", jpeg(7)))
    with serve(tagger, token="s3cret") as client:
        for method, path, kwargs in [("get", "/v1/health", {}), ("get", "/v1/model", {}), ("post", "/v1/tag", {"files": photo})]:
            missing = client.request(method, path, **kwargs)
            wrong = client.request(method, path, headers={"Authorization": "Bearer s3cre"}, **kwargs)
            basic = client.request(method, path, headers={"Authorization": "Basic s3cret"}, **kwargs)
            right = client.request(method, path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
            assert (missing.status_code, wrong.status_code, basic.status_code, right.status_code) == (401, 401, 401, 200), path
            assert missing.headers["www-authenticate"] == "Bearer" and "token" in missing.json()["detail"]
        # The page, its files and the docs are public: the page asks for the token itself.
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/docs").status_code == 200
        assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_without_a_token_the_api_is_open(tagger):
    with serve(tagger) as client:
        assert client.get("/v1/health").status_code == 200
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_health_and_model(tagger):
    with serve(tagger, limits=ServiceLimits(max_photos=7)) as client:
        before = client.get("/v1/health").json()
        client.post("/v1/tag", files=upload(("a.jpg", jpeg(8)), ("b.jpg", jpeg(9))))
        after = client.get("/v1/health").json()
        model = client.get("/v1/model").json()
    assert before == {"status": "ok", "photos": 0, "forward_passes": 0}
    assert after == {"status": "ok", "photos": 2, "forward_passes": 1}
    assert model["backbone"] == "tiny" and model["feature_dim"] == tagger.generator.config.feature_dim
    assert model["vocabulary_size"] == len(tagger.words)
    assert model["info"] == {"photos": 8, "val_p5": 0.25}
    assert model["sampling"]["top_k"] == tagger.sampling.top_k
    assert model["limits"]["max_photos"] == 7


def test_page_and_docs_are_served(tagger):
    with serve(tagger) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # Relative links, so the page also works behind a path prefix.
        for asset in ("static/style.css", "static/app.js"):
            assert f'"{asset}"' in page.text
            assert client.get("/" + asset).status_code == 200
        assert client.get("/docs").status_code == 200
        assert {"/v1/tag", "/v1/model", "/v1/health"} <= set(client.get("/openapi.json").json()["paths"])


def test_concurrent_requests_are_answered_correctly_and_share_forward_passes(tagger):
    n = 12
    photos = [jpeg(100 + i) for i in range(n)]
    answers: dict[int, dict] = {}
    start = threading.Barrier(n)
    # A long gathering window makes the merging certain on a slow machine; it only delays the first request.
    with serve(tagger, limits=ServiceLimits(batch_wait=0.3)) as client:

        def send(i: int):
            start.wait()
            r = client.post("/v1/tag", params={"top_k": 2 + i % 2}, files=upload((f"p{i}.jpg", photos[i])))
            answers[i] = r.json() if r.status_code == 200 else {"status": r.status_code}

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        batcher = client.app.state.batcher
        passes, tagged = batcher.forward_passes, batcher.photos
    assert sorted(answers) == list(range(n))
    assert len({tuple(a["results"][0]["tags"]) for a in answers.values()}) > 3  # so a mix-up would show
    for i in range(n):
        (result,) = answers[i]["results"]
        assert result["filename"] == f"p{i}.jpg"
        # Each answer is its own photo's, with its own request's options, though batched with others.
        assert (result["tags"], result["scores"]) == expected(tagger, photos[i], top_k=2 + i % 2)
    assert tagged == n
    assert passes < n  # some requests were merged into one forward pass


def test_a_failing_batch_fails_its_requests_and_the_service_goes_on(tagger, monkeypatch):
    calls = {"n": 0}
    read = Tagger.read

    def flaky(self, images):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return read(self, images)

    monkeypatch.setattr(Tagger, "read", flaky)
    with TestClient(create_app(tagger), raise_server_exceptions=False) as client:
        first = client.post("/v1/tag", files=upload(("a.jpg", jpeg(10))))
        second = client.post("/v1/tag", files=upload(("a.jpg", jpeg(10))))
        health = client.get("/v1/health")
    assert first.status_code == 500
    assert second.status_code == 200 and second.json()["results"][0]["tags"]
    assert health.status_code == 200 and health.json()["status"] == "ok"


# -- hardening: memory per photo and per request, uploads limited while they stream, hosts, tokens ----


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_a_thin_image_fails_nobody(tagger):
    """A 100000x1 PNG (a few hundred bytes) once gave a MemoryError and a 500 to every photo batched with it."""
    thin = png(Image.new("L", (100_000, 1), 128))
    with serve(tagger) as client:
        r = client.post("/v1/tag", files=upload(("thin.png", thin), ("ok.jpg", jpeg(3))))
    assert r.status_code == 200, r.text
    thin_result, ok = r.json()["results"]
    # Grey all over, it is a blank frame: no tags and the reason, not an error; the photo beside it is tagged.
    assert thin_result["error"] is None and thin_result["note"] == "no tags: uniform frame" and ok["tags"]


def test_decoded_pixels_per_request_are_bounded(tagger):
    """Six 11000x11000 1-bit PNGs (87 KB in all) once took the server to 5.4 GB."""
    big = png(Image.new("1", (11000, 11000), 1))
    assert len(big) < 100_000
    limits = ServiceLimits(max_request_pixels=150_000_000)
    with serve(tagger, limits=limits) as client:
        r = client.post("/v1/tag", files=upload(*[(f"big{i}.png", big) for i in range(3)], ("ok.jpg", jpeg(3))))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    # The first big one fits (white all over: a blank frame, so no tags and the reason), and so does the small photo after it.
    assert results[0]["error"] is None and results[0]["note"] == "no tags: near-white frame" and results[3]["tags"]
    for res in results[1:3]:
        assert not res["tags"] and "past this request's budget of 150 MP" in res["error"]


@contextmanager
def real_server(tagger, **kwargs):
    """The app under uvicorn on a free loopback port, in a thread: what a client on a socket meets."""
    import socket
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(tagger, **kwargs), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_upload_is_cut_off_at_the_limit_while_it_streams(tagger):
    """A chunked 1 GB upload once put 943 MB in the server's temporary files before the 413."""
    import select
    import socket

    limits = ServiceLimits(max_photos=2, max_photo_bytes=1024 * 1024)
    with real_server(tagger, limits=limits) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        sock.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        chunk = b"%x\r\n" % (256 * 1024) + b"x" * (256 * 1024) + b"\r\n"
        sent = 0
        while sent < 1 << 30:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server closed the connection
            sent += 256 * 1024
        sock.settimeout(10)
        answer = b""
        while b"}" not in answer:  # the status line and headers, then the JSON body
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the limit of 2 photos of 1.0 MB each" in answer
    # The server stopped reading at its 2.1 MB limit; the rest is what socket buffers took in meanwhile.
    assert sent < limits.max_request_bytes + 16 * 2**20, sent


def test_a_client_that_stops_sending_is_timed_out(tagger):
    """300 clients trickling their uploads once kept their connections for good."""
    import socket

    limits = ServiceLimits(read_timeout=0.5)
    with real_server(tagger, limits=limits) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")  # then nothing more
        sock.settimeout(10)
        answer = b""
        while b"}" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 408") and b"no data from the client for 0.5 s" in answer, answer


def test_loopback_service_checks_the_host_header(tagger):
    from tagger.service.app import LOOPBACK_HOSTS

    with serve(tagger, allowed_hosts=LOOPBACK_HOSTS) as client:
        assert client.get("/v1/health", headers={"host": "localhost:8000"}).status_code == 200
        assert client.get("/v1/health", headers={"host": "127.0.0.1:8000"}).status_code == 200
        # DNS rebinding: a page of evil.example, its name now resolving to 127.0.0.1, calls the service.
        assert client.get("/v1/health", headers={"host": "evil.example:8000"}).status_code == 400


def test_an_empty_token_is_refused(tagger):
    with pytest.raises(ValueError, match="token is empty"):
        create_app(tagger, token="")
    from typer.testing import CliRunner

    from tagger.cli import app

    result = CliRunner().invoke(app, ["serve", "--token", ""])
    assert result.exit_code == 1 and "the API token is empty (--token or $TAGGER_TOKEN)" in result.output
    result = CliRunner().invoke(app, ["serve"], env={"TAGGER_TOKEN": " "})
    assert result.exit_code == 1 and "the API token is empty" in result.output
