"""The service under hostile requests: each request is checked before it shares a batch and fails alone."""
import logging
import threading

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402

from pipelines.errors import OptionError  # noqa: E402
from tagger.service import ServiceLimits, create_app  # noqa: E402
from test_service import expected, jpeg, serve, tagger, upload  # noqa: E402, F401 - tagger is a fixture


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


@pytest.mark.parametrize("stage, error, status", [("features", RuntimeError, 500), ("features", OptionError, 422),
                                                   ("predict_features", RuntimeError, 500)])
def test_an_error_in_a_shared_batch_fails_only_its_own_request(tagger, monkeypatch, caplog, stage, error, status):
    """A batch that raises is tagged again request by request: the innocent ones get their tags.

    A bug of ours (RuntimeError) gives the guilty request a 500 and a traceback in the log; an error
    the user caused (a TaggerError) a 422 with its message and no traceback. Either way the photos
    counted as tagged are those that were.
    """
    photos = [jpeg(400 + i) for i in range(5)]
    wanted = [expected(tagger, p) for p in photos]
    real, batches = getattr(tagger, stage), []

    def poisoned(*args, **kwargs):
        # The guilty request's photo is 13x13; in sampling, only its options (min_score=0.001) tell it apart.
        guilty = any(im.size == (13, 13) for im in args[0]) if stage == "features" else kwargs["min_score"] == 0.001
        batches.append(len(args[0]))
        if guilty:
            raise error("this photo breaks the network")
        return real(*args, **kwargs)

    monkeypatch.setattr(tagger, stage, poisoned)
    app = create_app(tagger, limits=ServiceLimits(batch_wait=0.3))
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
        assert len(tracebacks) >= 1 and all("1 photo" in r.getMessage() for r in tracebacks if r.name == "tagger.service")
