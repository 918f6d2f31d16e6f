"""The HTTP tagging service: a FastAPI app around one loaded `Tagger`, and a web page to try it.

    POST /v1/tag      photos as multipart uploads (field `files`, repeatable) -> tags and scores per photo
    GET  /v1/model    backbone, generator family, vocabulary size, sampling defaults, limits, training summary
    GET  /v1/health   liveness, with counters of photos tagged and forward passes run
    GET  /            a page to drop photos on and see their tags (tagger/static/)
    GET  /docs        the OpenAPI docs (FastAPI's default)

A photo that does not decode does not fail the request: its result carries an `error` (the reason)
and no tags, and the other photos are tagged, as `tagger predict` does. Limits refuse the whole
request instead (413): a photo over the size limit, or too many photos. Query parameters out of
range are refused (422) before the request goes near a batch.

Requests arriving within a few milliseconds of each other share one forward pass: handlers decode
their photos in threads and queue them; a single worker task gathers queued photos (up to
`max_batch`) and tags them in its own thread, so the event loop never waits on torch and torch runs
one batch at a time. Tags do not depend on which photos share a batch (see tagger/sampling.py). A
batch that fails is tagged again request by request, so that only the request at fault fails.

With a token (`--token` or $TAGGER_TOKEN), every /v1 request needs `Authorization: Bearer TOKEN`.
The page and the docs are served without it; the page asks for the token when the API refuses.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time, and the
# bound on top_k is the loaded model's vocabulary size, a local that a string annotation cannot name.
import asyncio
import hmac
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from pydantic import BaseModel, StringConstraints

from pipelines.errors import OptionError, TaggerError
from pipelines.images import MAX_PIXELS, ImageError, declared_pixels, decode_image, is_colour
from pipelines.memory import release_free_memory
from tagger.bundle import config_dict
from tagger.model import Tagger
from tagger.voting import MAX_COUNT

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")  # Host header values of a loopback service
MAX_EXCLUDE = 100  # tags one request may exclude
MAX_TAG_CHARS = 100  # characters of one excluded tag
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceLimits:
    max_photo_bytes: int = 20 * 1024 * 1024  # per uploaded photo; larger ones are refused with 413
    max_photos: int = 32  # photos in one request; more are refused with 413
    max_batch: int = 32  # photos per forward pass; a batch closes once it holds this many
    batch_wait: float = 0.005  # seconds a lone request waits for others to share its forward pass
    # Decoded pixels one request may ask for (the sizes its photos declare); photos past it get an error
    # and are not decoded. One 128 MP photo (MAX_PIXELS) always fits.
    max_request_pixels: int = 150_000_000
    decode_workers: int = 2  # photos decoded at once, over all requests: bounds the memory of decoding
    read_timeout: float = 30.0  # seconds a client may take to send the next part of its upload (slow clients: 408)

    @property
    def max_request_bytes(self) -> int:
        """The most a request body may hold: its photos plus room for the multipart headers around each."""
        return self.max_photos * (self.max_photo_bytes + 64 * 1024)


class PhotoTags(BaseModel):
    filename: str
    tags: list[str]  # best first
    scores: list[float]  # vote shares in 0..1, one per tag
    error: str | None = None  # why the photo could not be tagged; then tags and scores are empty


class TagResponse(BaseModel):
    results: list[PhotoTags]  # in upload order


@dataclass
class _Job:
    images: list  # decoded photos of one request
    options: dict  # top_k, min_score, exclude for Tagger.predict_features
    future: asyncio.Future  # set to the tags of each photo, or to the error of the batch


class Batcher:
    """Tags the photos of concurrent requests in shared forward passes, one pass at a time, off the event loop."""

    def __init__(self, tagger: Tagger, max_batch: int = 32, wait: float = 0.005):
        self.tagger, self.max_batch, self.wait = tagger, max_batch, wait
        self.forward_passes = 0  # backbone passes run; fewer than requests means batching merged some
        self.photos = 0  # photos tagged
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        # One thread: torch already uses every core inside a pass, and one pass at a time bounds memory.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagger-batch")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tagger-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def tag(self, images: list, **options) -> list[list[tuple[str, float]]]:
        """Tags with scores for each image (decoded PIL images), as `Tagger.predict` gives them."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(images, options, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].images)
            if size < self.max_batch and self.wait > 0:
                await asyncio.sleep(self.wait)  # let requests arriving just after this one join it
            while size < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                size += len(jobs[-1].images)
            jobs = [j for j in jobs if not j.future.done()]  # callers that disconnected meanwhile
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._tag, jobs)
            except Exception as e:  # noqa: BLE001 - the worker goes on whatever a batch does
                if len(jobs) == 1:
                    self._fail(jobs[0], e)
                    continue
                # One request's photos or options may be what failed: tag each request on its own, so
                # that the others get their tags and only that one gets the error.
                for job in jobs:
                    if job.future.done():
                        continue
                    try:
                        (tags,) = await loop.run_in_executor(self._executor, self._tag, [job])
                    except Exception as e:  # noqa: BLE001 - this request's own error
                        self._fail(job, e)
                    else:
                        if not job.future.done():
                            job.future.set_result(tags)
            else:
                for job, tags in zip(jobs, results):
                    if not job.future.done():
                        job.future.set_result(tags)

    @staticmethod
    def _fail(job: _Job, e: Exception) -> None:
        # A TaggerError is the user's (the handler answers it with its message); anything else is a bug of ours.
        if not isinstance(e, TaggerError):
            n = len(job.images)
            log.error("tagging a request of %d photo%s failed", n, "" if n == 1 else "s", exc_info=e)
        if not job.future.done():
            job.future.set_exception(e)

    def _tag(self, jobs: list[_Job]) -> list[list[list[tuple[str, float]]]]:
        """One backbone pass for every photo, then one sampling pass per distinct set of options."""
        images = [im for job in jobs for im in job.images]
        features = self.tagger.features(images)
        colour = np.array([is_colour(im) for im in images], dtype=bool)
        self.forward_passes += 1
        starts = np.cumsum([0] + [len(job.images) for job in jobs])
        groups = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[tuple(sorted(job.options.items()))].append(i)
        out: list = [None] * len(jobs)
        for members in groups.values():
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
            tags = self.tagger.predict_features(features[rows], colour=colour[rows], **jobs[members[0]].options)
            for i in members:
                out[i], tags = tags[: len(jobs[i].images)], tags[len(jobs[i].images):]
        self.photos += len(images)  # here, not before sampling: a failed batch is tagged again, and counted then
        return out


def create_app(tagger: Tagger, token: str | None = None, limits: ServiceLimits = ServiceLimits(),
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The service app for a loaded tagger; `token`, when given, is required on every /v1 request.

    allowed_hosts: the Host header values accepted (None: any); `serve` sets the loopback names when it
    listens on loopback.
    """
    if token is not None and not token.strip():
        raise OptionError("the API token is empty: give a token, or none to serve without one")
    decoder = ThreadPoolExecutor(max_workers=limits.decode_workers, thread_name_prefix="tagger-decode")
    # Build the backbone now: the first request should not pay for it, and a bundle whose backbone
    # does not match fails at start, not on a user's photo.
    min_side = tagger.backbone.preprocessing.resize

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = Batcher(tagger, limits.max_batch, limits.batch_wait)
        app.state.batcher.start()
        yield
        await app.state.batcher.stop()
        decoder.shutdown(wait=False)

    app = FastAPI(
        title="tagger",
        summary="Tag photos with a conditional GAN over a word2vec tag space (Mirza & Osindero 2014).",
        version="1",
        lifespan=lifespan,
    )
    app.state.limits = limits

    app.add_middleware(Guard, token=token, limits=limits)
    if allowed_hosts:
        # A page on another site cannot reach a loopback service through a DNS name it controls (DNS rebinding).
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    # The token is checked by the middleware above; this dependency only shows it in /docs (the Authorize button).
    v1 = [Depends(HTTPBearer(auto_error=False))] if token is not None else []

    most_tags = min(len(tagger.words), MAX_COUNT)
    Tag = Annotated[str, StringConstraints(max_length=MAX_TAG_CHARS)]

    @app.post("/v1/tag", response_model=TagResponse, dependencies=v1)
    async def tag(
        request: Request,
        files: Annotated[list[UploadFile], File(description="photos (JPEG, PNG, WebP, GIF, TIFF, BMP); repeat the field for several")],
        top_k: Annotated[int | None, Query(ge=1, le=most_tags, description="tags per photo (default: the model's)")] = None,
        min_score: Annotated[float | None, Query(ge=0.0, le=1.0, description="leave out tags scoring below this")] = None,
        exclude: Annotated[list[Tag], Query(max_length=MAX_EXCLUDE, description="a tag never to return (repeatable)")] = [],  # noqa: B006 - FastAPI copies it
    ) -> TagResponse:
        """Tags with scores for each uploaded photo, best first; a photo that cannot be read gets an `error` instead."""
        options = dict(top_k=top_k, min_score=min_score, exclude=tuple(exclude))
        try:
            tagger.options(**options)  # the model's own checks, here, before the request can join a batch
        except OptionError as e:
            raise HTTPException(422, str(e)) from None
        if len(files) > limits.max_photos:
            raise HTTPException(413, f"{len(files)} photos in one request; at most {limits.max_photos}")
        names = [f.filename or f"photo {i + 1}" for i, f in enumerate(files)]
        for name, f in zip(names, files):
            if f.size is not None and f.size > limits.max_photo_bytes:
                raise HTTPException(413, f"{name}: {_mb(f.size)} is over the limit of {_mb(limits.max_photo_bytes)} per photo")
        blobs = [await f.read() for f in files]
        decoded = await asyncio.get_running_loop().run_in_executor(decoder, _decode_all, blobs, names, min_side,
                                                                   limits.max_request_pixels)
        del blobs
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
        tags = {}
        if ok:
            try:
                tags = dict(zip(ok, await request.app.state.batcher.tag([decoded[i] for i in ok], **options)))
            except TaggerError as e:
                raise HTTPException(422, str(e)) from None
        results = []
        for i, (name, d) in enumerate(zip(names, decoded)):
            if isinstance(d, ImageError):
                results.append(PhotoTags(filename=name, tags=[], scores=[], error=d.reason))
            else:
                results.append(PhotoTags(filename=name, tags=[t for t, _ in tags[i]], scores=[round(s, 4) for _, s in tags[i]]))
        return TagResponse(results=results)

    @app.get("/v1/model", dependencies=v1)
    def model() -> dict:
        """The loaded model: backbone, vocabulary size, sampling defaults, the service limits and the training summary."""
        config = config_dict(tagger)
        return {
            "backbone": tagger.backbone_name,
            "runtime": tagger.backbone.runtime,
            "feature_dim": config["backbone"]["feature_dim"],
            "generator": tagger.family,
            "calibrated": tagger.default_method in tagger.calibration,
            "vocabulary_size": len(tagger.words),
            "sampling": config["sampling"],
            "limits": {**asdict(limits), "max_request_bytes": limits.max_request_bytes},
            "info": config["info"],
        }

    @app.get("/v1/health", dependencies=v1)
    def health(request: Request) -> JSONResponse:
        """"ok" while the tagging worker runs (503 if it stopped), with counters of the work done."""
        batcher = request.app.state.batcher
        body = {"status": "ok" if batcher.running else "stopped", "photos": batcher.photos, "forward_passes": batcher.forward_passes}
        return JSONResponse(body, status_code=200 if batcher.running else 503)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def resolve_token(token: str | None) -> str | None:
    """The API token: `token`, else $TAGGER_TOKEN, else None (no token); an empty one is refused, never taken as none."""
    if token is None:
        token = os.environ.get("TAGGER_TOKEN")
    if token is not None and not token.strip():
        raise OptionError("the API token is empty (--token or $TAGGER_TOKEN): give a token, or leave both unset to serve without one")
    return token


def serve(model: Tagger | str | Path | None = None, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str | None = None, limits: ServiceLimits = ServiceLimits(), log_level: str = "info",
          runtime: str | None = None) -> None:
    """Load the model once and serve it until interrupted; `model` and `token` as the CLI resolves them
    (`tagger.shipped.resolve_model`: $TAGGER_MODEL, else the shipped model; `resolve_token`: $TAGGER_TOKEN).

    runtime: what runs the backbone (torch, onnx, onnx-int8; None: onnx on a CPU where onnxruntime is installed).
    """
    import uvicorn

    from tagger.shipped import resolve_model

    token = resolve_token(token)
    tagger = model if isinstance(model, Tagger) else Tagger.load(resolve_model(model), device=device, runtime=runtime)
    loopback = host in LOOPBACK
    if token is None and not loopback:
        log.warning("serving on %s without a token: anyone who can reach the port can use it", host)
    app = create_app(tagger, token=token, limits=limits, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    # timeout_keep_alive: an idle connection is closed after this long, so idle clients cannot hold sockets.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)


def _decode_all(blobs: list[bytes], names: list[str], min_side: int, max_pixels: int) -> list:
    """Decoded images, or the ImageError of each photo that does not decode or is past the request's pixel budget."""
    out, budget = [], max_pixels
    for data, name in zip(blobs, names):
        pixels = declared_pixels(data, min_side)
        if pixels > budget and pixels <= MAX_PIXELS:
            out.append(ImageError(name, f"{pixels / 1e6:.0f} MP is past this request's budget of {max_pixels / 1e6:.0f} MP "
                                        "of decoded pixels; send it in a request of its own"))
            continue
        try:
            # min_side lets big JPEGs decode at a reduced scale, as batch tagging does.
            out.append(decode_image(data, name, min_side=min_side))
            budget -= pixels
        except ImageError as e:
            out.append(e)
    release_free_memory()  # a large decode's buffers go back to the system, not to the heap's high-water mark
    return out


class Guard:
    """ASGI middleware in front of every /v1 request: the token, then the body as it streams in.

    Checked here rather than in a dependency: FastAPI reads the whole upload before it runs
    dependencies, and a refused client should not get to send 640 MB first. A declared
    Content-Length over the limit is refused at once; otherwise the body is counted as it arrives,
    chunked or not, and refused (413) at the limit, before the multipart parser has spooled more
    than that to temporary files; a client that sends nothing for `read_timeout` seconds gets a 408.
    The errors are raised from `receive`, inside FastAPI's form parsing, which passes HTTPExceptions on.
    (FastAPI's own `max_body_size` answers a declared size in plain text, which the page cannot show.)
    """

    def __init__(self, app, token: str | None, limits: ServiceLimits):
        self.app, self.token, self.limits = app, token, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None and not _token_ok(headers.get("authorization", ""), self.token):
            response = JSONResponse({"detail": "missing or wrong API token (send Authorization: Bearer TOKEN)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_request_bytes:
            return await JSONResponse({"detail": _too_large(int(declared), self.limits)}, status_code=413)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), self.limits.read_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"no data from the client for {self.limits.read_timeout:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limits.max_request_bytes:
                    raise HTTPException(413, _too_large(seen, self.limits, so_far=True))
            return message

        await self.app(scope, limited_receive, send)


def _too_large(size: int, limits: ServiceLimits, so_far: bool = False) -> str:
    return (f"request of {'over ' if so_far else ''}{_mb(size)} is over the limit of {limits.max_photos} photos of "
            f"{_mb(limits.max_photo_bytes)} each")


def _token_ok(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    # Constant-time comparison, so the answer time does not leak how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"
