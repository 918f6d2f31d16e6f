"""The service under hostile requests: each request is checked before it shares a batch and fails alone,
and the memory of uploads and decoded photos is bounded over all requests at once."""
import io
import logging
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.errors import OptionError  # noqa: E402
from tagger.model import Tagger  # noqa: E402
from tagger.service.app import ServiceLimits, create_app  # noqa: E402
from test_service import expected, jpeg, png, real_server, serve, tagger, upload  # noqa: E402, F401 - tagger is a fixture


def together(*calls):
    """Run the calls in threads released at once (concurrent requests); their results, in order."""
    out = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i):
        start.wait()
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def slowed(tagger, monkeypatch, seconds: float):
    """Make every forward pass take `seconds` longer, so that concurrent requests overlap for sure."""
    read = Tagger.read

    def slow(self, images):
        time.sleep(seconds)
        return read(self, images)

    monkeypatch.setattr(Tagger, "read", slow)


def noise_jpeg(seed: int, side: int = 1000) -> bytes:
    """A JPEG of random noise: over a megabyte, so the upload is spooled to disk; decoded at 1/8 scale."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def errors_logged(caplog) -> list:
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# -- 4: one request cannot break its neighbours -------------------------------------------------


def test_out_of_range_options_are_refused_before_tagging(tagger, caplog):
    vocab = len(tagger.words)
    photo = upload(("a.jpg", jpeg(1)))
    refused = [({"top_k": 0}, ["query", "top_k"]), ({"top_k": vocab + 1}, ["query", "top_k"]),
               ({"top_k": 10001}, ["query", "top_k"]), ({"top_k": 10**12}, ["query", "top_k"]),
               ({"top_k": "many"}, ["query", "top_k"]), ({"min_score": -0.1}, ["query", "min_score"]),
               ({"min_score": 1.5}, ["query", "min_score"]), ({"min_score": "nan"}, ["query", "min_score"]),
               ({"exclude": [f"tag{i}" for i in range(101)]}, ["query", "exclude"]),
               ({"exclude": ["sea", "x" * 101]}, ["query", "exclude", 1])]
    with caplog.at_level(logging.INFO), serve(tagger) as client:
        answers = [client.post("/v1/tag", params=params, files=photo) for params, _ in refused]
        passes = client.app.state.batcher.forward_passes
        most = client.post("/v1/tag", params={"top_k": vocab, "exclude": ["sea"] * 100}, files=photo)
    for (params, where), r in zip(refused, answers):
        assert r.status_code == 422, (params, r.text)
        (problem,) = r.json()["detail"]
        assert problem["loc"] == where and problem["msg"], (params, problem)
    assert "less than or equal to %d" % vocab in answers[1].json()["detail"][0]["msg"]
    assert passes == 0  # none of them reached the tagging worker
    assert not errors_logged(caplog), [r.getMessage() for r in errors_logged(caplog)]
    assert most.status_code == 200 and most.json()["results"][0]["tags"]


def test_a_bad_request_batched_with_good_ones_fails_alone(tagger, caplog):
    """`top_k=10001` once failed inside the shared forward pass: 27 of 50 innocent requests got a 500."""
    photos = [jpeg(300 + i) for i in range(6)]
    wanted = [expected(tagger, p) for p in photos]
    with caplog.at_level(logging.INFO), serve(tagger, limits=ServiceLimits(batch_wait=0.3)) as client:
        def good(i):
            return lambda: client.post("/v1/tag", files=upload((f"p{i}.jpg", photos[i])))

        *answers, bad = together(*[good(i) for i in range(6)],
                                 lambda: client.post("/v1/tag", params={"top_k": 10001}, files=upload(("bad.jpg", jpeg(1)))))
        passes = client.app.state.batcher.forward_passes
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "top_k"]
    for r, want in zip(answers, wanted):
        assert r.status_code == 200, r.text
        assert (r.json()["results"][0]["tags"], r.json()["results"][0]["scores"]) == want
    assert passes < 6  # they did share forward passes
    assert not errors_logged(caplog)


@pytest.mark.parametrize("stage, error, status", [("read", RuntimeError, 500), ("read", OptionError, 422), ("tag", RuntimeError, 500)])
def test_an_error_in_a_shared_batch_fails_only_its_own_request(tagger, monkeypatch, caplog, stage, error, status):
    """A batch that raises is tagged again request by request: the innocent ones get their tags.

    A bug of ours (RuntimeError) gives the guilty request a 500 and a traceback in the log; an error
    the user caused (a TaggerError) a 422 with its message and no traceback. Either way the photos
    counted as tagged are those that were.
    """
    photos = [jpeg(400 + i) for i in range(5)]
    wanted = [expected(tagger, p) for p in photos]
    real, read, batches = getattr(Tagger, stage), Tagger.read, []

    def counted(self, images):
        batches.append(len(images))  # photos in each backbone pass
        return read(self, images)

    def poisoned(self, *args):
        # The guilty request's photo is 13x13; in tagging, only its options (min_score=0.001) tell it apart.
        if stage == "read":
            batches.append(len(args[0]))
        guilty = any(im.size == (13, 13) for im in args[0]) if stage == "read" else args[1].min_score == 0.001
        if guilty:
            raise error("this photo breaks the network")
        return real(self, *args)

    monkeypatch.setattr(Tagger, "read", counted)
    monkeypatch.setattr(Tagger, stage, poisoned)
    # A long wait for company: on a loaded machine the six requests may take a while to arrive.
    app = create_app(tagger, limits=ServiceLimits(batch_wait=1.0))
    with caplog.at_level(logging.INFO), TestClient(app, raise_server_exceptions=False) as client:
        def good(i):
            return lambda: client.post("/v1/tag", files=upload((f"p{i}.jpg", photos[i])))

        *answers, guilty = together(*[good(i) for i in range(5)],
                                    lambda: client.post("/v1/tag", params={"min_score": 0.001},
                                                        files=upload(("poison.jpg", jpeg(9, size=13)))))
        health = client.get("/v1/health").json()
    assert max(batches) > 1  # the guilty photo shared a batch with innocent ones
    assert guilty.status_code == status
    for r, want in zip(answers, wanted):
        assert r.status_code == 200, r.text
        assert (r.json()["results"][0]["tags"], r.json()["results"][0]["scores"]) == want
    assert health["status"] == "ok" and health["photos"] == 5
    tracebacks = [r for r in caplog.records if r.exc_info]
    if status == 422:
        assert guilty.json()["detail"] == "this photo breaks the network"
        assert not tracebacks
    else:
        assert len(tracebacks) >= 1 and all("1 photo" in r.getMessage() for r in tracebacks if r.name == "tagger.service.app")


# -- 7: memory bounded across requests -----------------------------------------------------------


@pytest.mark.slow
def test_the_photos_of_a_request_are_read_one_at_a_time(tagger, tmp_path):
    """Every file of a request was read into memory at once: six 646 MB uploads took the service to 5.26 GB."""
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"p{i}.jpg")
        paths[-1].write_bytes(noise_jpeg(i))
    size = paths[0].stat().st_size
    assert size > 1024 * 1024  # past Starlette's spool: on disk until read
    client = ("import httpx, sys; paths = sys.argv[2:]; "
              "r = httpx.post(sys.argv[1], files=[('files', (p, open(p, 'rb'), 'image/jpeg')) for p in paths], timeout=120); "
              "assert r.status_code == 200, r.text; assert all(x['tags'] for x in r.json()['results']), r.text")
    with real_server(tagger) as port:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            subprocess.run([sys.executable, "-c", client, f"http://127.0.0.1:{port}/v1/tag", *map(str, paths)], check=True)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    # Reading them all at once holds 12 photos; one at a time, one (and the parser's small buffers).
    assert peak < 4 * size, (peak, size)


def test_the_upload_budget_refuses_concurrent_large_requests_with_503(tagger, monkeypatch):
    slowed(tagger, monkeypatch, 0.5)
    big = [noise_jpeg(20 + i) for i in range(2)]
    request = sum(map(len, big))
    limits = ServiceLimits(max_bytes_in_flight=int(1.5 * request), budget_wait=0)
    with serve(tagger, limits=limits) as client:
        answers = together(*[lambda: client.post("/v1/tag", files=upload(("a.jpg", big[0]), ("b.jpg", big[1])))] * 4)
        peak = client.app.state.uploads.peak
        model = client.get("/v1/model").json()
        after = client.post("/v1/tag", files=upload(("a.jpg", big[0])))
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 503 in codes, codes
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert "busy" in r.json()["detail"] and "try again" in r.json()["detail"]
    assert peak <= limits.max_bytes_in_flight
    assert model["limits"]["max_bytes_in_flight"] == limits.max_bytes_in_flight
    assert after.status_code == 200  # the budget was all given back


def test_the_upload_budget_serialises_concurrent_large_requests(tagger, monkeypatch):
    slowed(tagger, monkeypatch, 0.3)
    big = [noise_jpeg(30 + i) for i in range(2)]
    wanted = [expected(tagger, p) for p in big]
    request = sum(map(len, big))
    limits = ServiceLimits(max_bytes_in_flight=int(1.5 * request), budget_wait=60)
    with serve(tagger, limits=limits) as client:
        answers = together(*[lambda: client.post("/v1/tag", files=upload(("a.jpg", big[0]), ("b.jpg", big[1])))] * 4)
        uploads = client.app.state.uploads
    for r in answers:
        assert r.status_code == 200, r.text
        assert [(x["tags"], x["scores"]) for x in r.json()["results"]] == wanted
    assert request < uploads.peak <= limits.max_bytes_in_flight  # never two requests at once
    assert uploads.waited >= 3 and uploads.used == 0


def test_a_small_request_is_not_held_up_behind_large_ones_waiting(tagger, monkeypatch):
    """Six 600 MB uploads in a queue once kept a one-photo request waiting for their whole 10 s."""
    slowed(tagger, monkeypatch, 1.0)
    big = [noise_jpeg(40 + i) for i in range(2)]
    limits = ServiceLimits(max_bytes_in_flight=int(1.5 * sum(map(len, big))), budget_wait=60)
    with serve(tagger, limits=limits) as client:
        uploads = client.app.state.uploads
        large = [threading.Thread(target=client.post, args=("/v1/tag",), kwargs={"files": upload(("a.jpg", big[0]), ("b.jpg", big[1]))})
                 for _ in range(2)]
        large[0].start()
        while uploads.used == 0:  # the first holds its share
            time.sleep(0.01)
        large[1].start()
        while uploads.waited == 0:  # the second queues for its own
            time.sleep(0.01)
        small = client.post("/v1/tag", files=upload(("small.jpg", jpeg(5))))
        queued = uploads.waited
        for t in large:
            t.join(60)
    assert small.status_code == 200
    assert queued == 1  # it went past the queue, into the room left


def big_png(colour: tuple, side: int = 2000) -> bytes:
    """A 4 MP PNG of a few KB: decoded, and held until tagged, at full size."""
    im = Image.new("RGB", (side, side), colour)
    im.paste(Image.new("RGB", (side // 2, side // 3), colour[::-1]))
    return png(im)


@pytest.mark.slow
def test_the_pixel_budget_bounds_decoded_photos_across_requests(tagger, monkeypatch):
    slowed(tagger, monkeypatch, 0.3)
    pngs = [big_png((60 * i, 200 - 40 * i, 90)) for i in range(4)]
    wanted = [[expected(tagger, p), expected(tagger, jpeg(i))] for i, p in enumerate(pngs)]
    limits = ServiceLimits(max_pixels_in_flight=6_000_000, budget_wait=60)

    def send(i):
        return lambda: client.post("/v1/tag", files=upload((f"big{i}.png", pngs[i]), (f"small{i}.jpg", jpeg(i))))

    with serve(tagger, limits=limits) as client:
        answers = together(*[send(i) for i in range(4)])
        pixels = client.app.state.pixels
        model = client.get("/v1/model").json()
    for r, want in zip(answers, wanted):
        assert r.status_code == 200, r.text
        assert [(x["tags"], x["scores"]) for x in r.json()["results"]] == want
    assert 4_000_000 < pixels.peak <= limits.max_pixels_in_flight  # one big photo at a time
    assert pixels.used == 0 and pixels.waited >= 1
    assert model["limits"]["max_pixels_in_flight"] == 6_000_000


def test_a_request_larger_than_the_pixel_budget_is_tagged_in_parts(tagger):
    """The photos already decoded are tagged to make room for the next: a request never waits on itself."""
    pngs = [big_png((50 * i, 100, 200 - 50 * i)) for i in range(3)]
    wanted = [expected(tagger, p) for p in pngs]
    with serve(tagger, limits=ServiceLimits(max_pixels_in_flight=6_000_000, budget_wait=5)) as client:
        r = client.post("/v1/tag", files=upload(*[(f"big{i}.png", p) for i, p in enumerate(pngs)]))
        passes = client.app.state.batcher.forward_passes
    assert r.status_code == 200, r.text
    assert [(x["tags"], x["scores"]) for x in r.json()["results"]] == wanted
    assert passes == 3
    # A photo larger than the whole budget is decoded when it has the service to itself.
    with serve(tagger, limits=ServiceLimits(max_pixels_in_flight=1_000_000, budget_wait=5)) as client:
        r = client.post("/v1/tag", files=upload(("big.png", pngs[0])))
    assert r.status_code == 200 and (r.json()["results"][0]["tags"], r.json()["results"][0]["scores"]) == wanted[0]


def test_a_request_refused_before_its_body_is_read_does_not_have_to_send_it(tagger):
    """A 503 for a body waiting for the budget closes the connection: else the server reads the whole
    body only to drop it (uvicorn's default), and the client waits for the answer until it has sent it all."""
    import socket

    limits = ServiceLimits(max_bytes_in_flight=10 * 2**20, budget_wait=0.5, read_timeout=5)
    head = b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    with real_server(tagger, limits=limits) as port, socket.create_connection(("127.0.0.1", port)) as hog, \
            socket.create_connection(("127.0.0.1", port)) as late:
        hog.sendall(head % (10 * 2**20))  # holds the whole budget, sending nothing more
        time.sleep(0.2)
        late.sendall(head % (8 * 2**20) + b"x" * 65536)  # then waits for its answer before sending the rest
        start = time.monotonic()
        late.settimeout(20)
        answer = b""
        while more := late.recv(65536):  # until the server closes the connection
            answer += more
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"retry-after: 1" in answer.lower() and b"connection: close" in answer.lower()
    assert b"the service is busy" in answer
    assert waited < 4  # budget_wait, not uvicorn's keep-alive timeout of 5 s


def test_a_chunked_body_holds_the_budget_only_for_what_it_is_once_it_ends(tagger, monkeypatch):
    """A body of unknown size takes the most a request may hold, then gives back all but its size."""
    inside = threading.Event()
    read = Tagger.read

    def slow(self, images):
        inside.set()
        time.sleep(1)
        return read(self, images)

    monkeypatch.setattr(Tagger, "read", slow)
    small, big = jpeg(50), noise_jpeg(51)
    # Two requests of the most a request may send would not fit: a chunked one and the big one do, once it ended.
    most = ServiceLimits(max_photos=2, max_photo_bytes=2 * 2**20).max_request_bytes
    limits = ServiceLimits(max_photos=2, max_photo_bytes=2 * 2**20, budget_wait=0, max_bytes_in_flight=most + len(big) // 2)
    body = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="small.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + small + b"\r\n--b--\r\n")
    with serve(tagger, limits=limits) as client:
        def chunked():
            return client.post("/v1/tag", content=iter([body[:100], body[100:]]),
                               headers={"content-type": "multipart/form-data; boundary=b"})

        first = {}
        thread = threading.Thread(target=lambda: first.update(r=chunked()))
        thread.start()
        assert inside.wait(30)  # the chunked request is being tagged
        second = client.post("/v1/tag", files=upload(("big.jpg", big)))
        thread.join(30)
        uploads = client.app.state.uploads
    assert first["r"].request.headers["transfer-encoding"] == "chunked"
    assert first["r"].status_code == 200 and first["r"].json()["results"][0]["tags"]
    assert second.status_code == 200, second.text
    assert uploads.used == 0 and uploads.waited == 0 and uploads.refused == 0


def test_service_limits_refuse_counts_below_one_and_waits_that_never_end():
    """A limit of the wrong type, a count under 1 or a NaN or negative wait is one OptionError naming the limit, before
    any service starts (max_batch=0 would have left every request waiting for a batch that never closes)."""
    import math

    from pipelines.errors import OptionError
    from tagger.service.app import ServiceLimits

    assert ServiceLimits(batch_wait=0.0, max_photos=1).max_photos == 1
    for bad, name in ((dict(max_batch=0), "max_batch"), (dict(max_photos=-3), "max_photos"), (dict(batch_wait=math.nan), "batch_wait"),
                      (dict(read_timeout=-1.0), "read_timeout"), (dict(budget_wait=math.inf), "budget_wait"),
                      (dict(max_photos="32"), "max_photos"), (dict(decode_workers=True), "decode_workers")):
        with pytest.raises(OptionError, match=name):
            ServiceLimits(**bad)
