"""The HTTP tagging service: a FastAPI app around one loaded `Tagger`, and a web page to try it.

    POST /v1/tag      photos as multipart uploads (field `files`, repeatable) -> tags and scores per photo
    GET  /v1/model    backbone, generator family, vocabulary size, sampling defaults, limits, training summary
    GET  /v1/health   liveness, with counters of photos tagged and forward passes run
    GET  /            a page to drop photos on and see their tags (tagger/static/)
    GET  /review      with a library (`tagger serve --library DIR`): the review page, and /v1/library/... (tagger/service/library.py)
    GET  /docs        the OpenAPI docs (FastAPI's default)

A photo that does not decode does not fail the request: its result carries an `error` (the reason)
and no tags, and the other photos are tagged, as `tagger predict` does. A blank frame is no error:
it gets no tags and a `note` saying why; a photo with GPS EXIF gets its city and country first. Limits refuse the whole
request instead (413): a photo over the size limit, or too many photos. Query parameters out of
range are refused (422) before the request goes near a batch.

Requests arriving within a few milliseconds of each other share one forward pass: handlers decode
their photos in threads and queue them; a single worker task gathers queued photos (up to
`max_batch`) and tags them in its own thread, so the event loop never waits on torch and torch runs
one batch at a time. Tags do not depend on which photos share a batch (see tagger/scoring/sampling.py). A
batch that fails is tagged again request by request, so that only the request at fault fails.

Memory is bounded over all requests at once by two budgets (`Budget`): the bytes of the request
bodies the service holds (in memory, or in the parser's temporary files), taken in whole when a
request starts, and the decoded pixels of the photos waiting for their tags, taken photo by photo.
A request short of room waits for it, at most `budget_wait` seconds, then gets a 503 with
Retry-After. Each request reads its photos one at a time (read, decode, drop the bytes).

With a token (`--token` or $TAGGER_TOKEN), every /v1 request needs `Authorization: Bearer TOKEN`.
The page and the docs are served without it; the page asks for the token when the API refuses.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time, and the
# bound on top_k is the loaded model's vocabulary size, a local that a string annotation cannot name.
import asyncio
import enum
import functools
import hmac
import logging
import math
import os
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from pydantic import BaseModel, StringConstraints

from embeddings.checks import check_fields
from pipelines.errors import OptionError, TaggerError
from pipelines.images import MAX_PIXELS, ImageError, declared_pixels, decode_image
from pipelines.memory import release_free_memory
from tagger.bundle import config_dict, load
from tagger.library.review import Library
from tagger.model import Tagged, Tagger
from embeddings.kinds import Kind
from tagger.scoring.options import ALL_KINDS, MAX_EXCLUDE, MAX_TAG_CHARS, TagOptions
from tagger.scoring.voting import MAX_COUNT

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")  # Host header values of a loopback service
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
    # Over all requests at once. Bytes: the bodies of the requests in progress, in memory or spooled to
    # temporary files (a request larger than this runs alone). Pixels: photos decoded and waiting for
    # their tags, about 3 bytes each (a photo larger than this is decoded alone).
    max_bytes_in_flight: int = 1024 * 1024 * 1024
    max_pixels_in_flight: int = 300_000_000
    budget_wait: float = 10.0  # seconds a request waits for room in those budgets before a 503 with Retry-After

    def __post_init__(self):
        check_fields(self, OptionError)  # by their declared types: a count of "32" or True is refused
        for f in fields(self):
            value = getattr(self, f.name)
            # A count of 0 would refuse every request (or hang the batcher); a NaN or negative wait never ends.
            if (value < 1) if f.type in ("int", int) else not (math.isfinite(value) and value >= 0):
                raise OptionError(f"service limit {f.name} must be {'1 or more' if f.type in ('int', int) else 'a finite 0 or more'}, "
                                  f"got {value!r}")

    @property
    def max_request_bytes(self) -> int:
        """The most a request body may hold: its photos plus room for the multipart headers around each."""
        return self.max_photos * (self.max_photo_bytes + 64 * 1024)


class PhotoTags(BaseModel):
    filename: str
    tags: list[str]  # best first
    scores: list[float]  # vote shares in 0..1, one per tag
    error: str | None = None  # why the photo could not be tagged; then tags and scores are empty
    note: str | None = None  # why a photo that did not fail has no tags ("no tags: near-black frame")


class TagResponse(BaseModel):
    results: list[PhotoTags]  # in upload order


class Budget:
    """An amount (bytes, pixels) shared by every request: each takes what it needs and gives it back.

    When it is short, requests queue for it, and as room is given back each one that fits goes, in
    the order they came. A request that fits goes at once, even past others queueing: a one-photo
    request sent among six 581 MB uploads was answered in 0.12 s, where queueing behind them it took
    9.8 s; what that costs a large one is at most its wait, then a 503. An amount is at most `total`
    (callers clip it: what is larger goes once it has the budget to itself). Used from the event loop
    only, so it needs no lock.
    """

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self.peak = 0  # the most ever in use at once
        self.waited = 0  # takes that had to queue
        self.refused = 0  # takes that found no room in time
        self._queue: deque[tuple[int, asyncio.Future]] = deque()

    def try_take(self, amount: int) -> bool:
        """Take `amount` now if there is room."""
        if amount > 0 and self.used + amount > self.total:
            return False
        self._grant(amount)
        return True

    async def take(self, amount: int, wait: float) -> bool:
        """Take `amount`, queueing for at most `wait` seconds; False if there was no room in that time."""
        if self.try_take(amount):
            return True
        self.waited += 1
        future = asyncio.get_running_loop().create_future()
        self._queue.append((amount, future))
        try:
            await asyncio.wait_for(future, wait)
        except asyncio.TimeoutError:
            self.refused += 1
            return False
        except asyncio.CancelledError:  # the client went away
            if future.done() and not future.cancelled():
                self.give(amount)
            raise
        return True

    def give(self, amount: int) -> None:
        """Give back what was taken (a negative amount takes more, without waiting: a photo larger than declared)."""
        self.used -= amount
        self.peak = max(self.peak, self.used)
        self._wake()

    def _grant(self, amount: int) -> None:
        self.used += amount
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        waiting = deque()
        for amount, future in self._queue:
            if future.done():  # gave up waiting
                continue
            if self.used + amount <= self.total:
                self._grant(amount)
                future.set_result(None)
            else:
                waiting.append((amount, future))
        self._queue = waiting


@dataclass
class _Job:
    images: list  # decoded photos of one request
    options: TagOptions  # the request's top_k, min_score, exclude
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

    async def tag(self, images: list, options: TagOptions) -> list[Tagged]:
        """`Tagger.tag`'s result for each image (decoded PIL images)."""
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
        evidence = self.tagger.read([im for job in jobs for im in job.images])
        self.forward_passes += 1
        starts = np.cumsum([0] + [len(job.images) for job in jobs])
        groups = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.options].append(i)
        out: list = [None] * len(jobs)
        for options, members in groups.items():
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
            tags = self.tagger.tag(evidence.take(rows), options)
            for i in members:
                out[i], tags = tags[: len(jobs[i].images)], tags[len(jobs[i].images):]
        self.photos += len(evidence)  # here, not before sampling: a failed batch is tagged again, and counted then
        return out


def create_app(tagger: Tagger, token: str | None = None, limits: ServiceLimits = ServiceLimits(),
               allowed_hosts: tuple[str, ...] | None = None, library: Library | None = None) -> FastAPI:
    """The service app for a loaded tagger; `token`, when given, is required on every /v1 request.

    allowed_hosts: the Host header values accepted (None: any); `serve` sets the loopback names when it
    listens on loopback. library: a folder to review, at /review and /v1/library/... (None: none).
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
        if library is not None:
            # Read every photo's tags now, in a thread: the review page's first listing should not wait for 2,000 sidecars.
            asyncio.get_running_loop().run_in_executor(None, library.photos)
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
    app.state.uploads, app.state.pixels = Budget(limits.max_bytes_in_flight), Budget(limits.max_pixels_in_flight)

    app.add_middleware(Guard, token=token, limits=limits, uploads=app.state.uploads)
    if allowed_hosts:
        # A page on another site cannot reach a loopback service through a DNS name it controls (DNS rebinding).
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    # The token is checked by the middleware above; this dependency only shows it in /docs (the Authorize button).
    v1 = [Depends(HTTPBearer(auto_error=False))] if token is not None else []

    most_tags = min(len(tagger.words), MAX_COUNT)
    Tag = Annotated[str, StringConstraints(max_length=MAX_TAG_CHARS)]
    Kinds = enum.Enum("Kinds", {k: k for k in [*(k.value for k in Kind), ALL_KINDS]}, type=str)

    @app.post("/v1/tag", response_model=TagResponse, dependencies=v1)
    async def tag(
        request: Request,
        files: Annotated[list[UploadFile], File(description="photos (JPEG, PNG, WebP, GIF, TIFF, BMP); repeat the field for several")],
        top_k: Annotated[int | None, Query(ge=1, le=most_tags, description="tags per photo (default: the model's)")] = None,
        min_score: Annotated[float | None, Query(ge=0.0, le=1.0, description="leave out tags scoring below this")] = None,
        exclude: Annotated[list[Tag], Query(max_length=MAX_EXCLUDE, description="a tag never to return (repeatable)")] = [],  # noqa: B006 - FastAPI copies it
        kinds: Annotated[list[Kinds] | None, Query(description="a kind of word to show (repeatable; default: content and style)")] = None,
    ) -> TagResponse:
        """Tags with scores for each uploaded photo, best first; a photo that cannot be read gets an `error` instead."""
        try:
            options = TagOptions(top_k=top_k, min_score=min_score, exclude=tuple(exclude), kinds=tuple(k.value for k in kinds) if kinds else None)
            tagger.sampling_for(options)  # the model's own checks, here, before the request can join a batch
        except OptionError as e:
            raise HTTPException(422, str(e)) from None
        if len(files) > limits.max_photos:
            raise HTTPException(413, f"{len(files)} photos in one request; at most {limits.max_photos}")
        names = [f.filename or f"photo {i + 1}" for i, f in enumerate(files)]
        for name, f in zip(names, files):
            if f.size is not None and f.size > limits.max_photo_bytes:
                raise HTTPException(413, f"{name}: {_mb(f.size)} is over the limit of {_mb(limits.max_photo_bytes)} per photo")
        loop, pixels = asyncio.get_running_loop(), request.app.state.pixels
        results: list[PhotoTags | None] = [None] * len(files)
        pending = []  # (index, decoded photo, pixels it holds) waiting for their tags
        held = 0  # pixels this request holds in the budget
        left = limits.max_request_pixels

        async def flush():
            nonlocal pending, held
            if not pending:
                return
            batch, pending = pending, []
            try:
                tagged = await request.app.state.batcher.tag([im for _, im, _ in batch], options)
            except TaggerError as e:
                raise HTTPException(422, str(e)) from None
            finally:
                freed = sum(n for _, _, n in batch)
                held -= freed
                pixels.give(freed)
            for (i, _, _), result in zip(batch, tagged):
                t = result.tags or []
                results[i] = PhotoTags(filename=names[i], tags=[w for w, _ in t], scores=[round(x, 4) for _, x in t],
                                       error=result.error or None, note=result.note or None)

        try:
            for i, (name, f) in enumerate(zip(names, files)):
                # One photo at a time: its bytes are read from the parser's spool, decoded and dropped.
                data, declared = await loop.run_in_executor(decoder, _read_upload, f, min_side)
                if left < declared <= MAX_PIXELS:
                    results[i] = PhotoTags(filename=name, tags=[], scores=[], error=(
                        f"{declared / 1e6:.0f} MP is past this request's budget of {limits.max_request_pixels / 1e6:.0f} MP "
                        "of decoded pixels; send it in a request of its own"))
                    continue
                # Over MAX_PIXELS, decode_image refuses it from its header: nothing to hold. Over the whole
                # budget, it waits until it has the budget to itself.
                need = min(declared if declared <= MAX_PIXELS else 0, pixels.total)
                if not pixels.try_take(need):
                    await flush()  # tag what this request holds first: it never waits on itself
                    if not await pixels.take(need, limits.budget_wait):
                        raise _busy(f"{name}: no room for its {declared / 1e6:.0f} MP of decoded pixels in the "
                                    f"{pixels.total / 1e6:.0f} MP shared by all requests", limits)
                held += need
                try:
                    image = await loop.run_in_executor(decoder, functools.partial(decode_image, data, name, min_side=min_side))
                except ImageError as e:
                    results[i] = PhotoTags(filename=name, tags=[], scores=[], error=e.reason)
                    held -= need
                    pixels.give(need)
                    continue
                finally:
                    del data
                size = image.width * image.height  # what it holds until tagged: a huge photo is reduced while decoding
                pixels.give(need - size)
                held += size - need
                left -= declared
                pending.append((i, image, size))
            await flush()
        finally:
            pixels.give(held)  # a request that failed or whose client went away gives back what it held
            _release_later(decoder)
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

    if library is not None:
        from tagger.service.library import library_router

        app.include_router(library_router(library, v1))

        @app.get("/review", include_in_schema=False)
        def review_page() -> FileResponse:
            return FileResponse(STATIC / "review.html")

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
          runtime: str | None = None, library: Library | None = None) -> None:
    """Load the model once and serve it until interrupted; `model` and `token` as the CLI resolves them
    (`tagger.shipped.resolve_model`: $TAGGER_MODEL, else the shipped model; `resolve_token`: $TAGGER_TOKEN).

    runtime: what runs the backbone (torch, onnx, onnx-int8; None: onnx on a CPU where onnxruntime is installed).
    """
    import uvicorn

    from tagger.shipped import resolve_model

    token = resolve_token(token)
    tagger = model if isinstance(model, Tagger) else load(resolve_model(model), device=device, runtime=runtime)
    loopback = host in LOOPBACK
    if token is None and not loopback:
        log.warning("serving on %s without a token: anyone who can reach the port can use it", host)
    app = create_app(tagger, token=token, limits=limits, allowed_hosts=LOOPBACK_HOSTS if loopback else None, library=library)
    # timeout_keep_alive: an idle connection is closed after this long, so idle clients cannot hold sockets.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)


def _read_upload(upload: UploadFile, min_side: int) -> tuple[bytes, int]:
    """An uploaded photo's bytes and the pixels decoding it will make (`declared_pixels`; min_side lets big
    JPEGs decode at a reduced scale, as batch tagging does).

    Read from where the multipart parser spooled it (memory up to 1 MB, else a temporary file), which
    is then closed: its memory or disk is freed at once, not when the response is sent.
    """
    upload.file.seek(0)
    data = upload.file.read()
    upload.file.close()
    return data, declared_pixels(data, min_side)


def _release_later(executor: ThreadPoolExecutor) -> None:
    """Hand the freed memory of a request back to the system, in a worker thread, without waiting for it.

    Or a burst's decoding buffers and uploads stay in the heap: its high-water mark would be the
    service's size from then on.
    """
    try:
        executor.submit(release_free_memory)
    except RuntimeError:  # shutting down
        pass


def _busy(what: str, limits: ServiceLimits) -> HTTPException:
    wait = max(1, math.ceil(limits.budget_wait))
    return HTTPException(503, f"the service is busy: {what}; try again in {wait} s", headers={"Retry-After": str(wait)})


class Guard:
    """ASGI middleware in front of every /v1 request: the token, then the body as it streams in.

    Checked here rather than in a dependency: FastAPI reads the whole upload before it runs
    dependencies, and a refused client should not get to send 640 MB first. A declared
    Content-Length over the limit is refused at once; otherwise the body is counted as it arrives,
    chunked or not, and refused (413) at the limit, before the multipart parser has spooled more
    than that to temporary files; a client that sends nothing for `read_timeout` seconds gets a 408.
    The errors are raised from `receive`, inside FastAPI's form parsing, which passes HTTPExceptions on.
    (FastAPI's own `max_body_size` answers a declared size in plain text, which the page cannot show.)

    Before any of the body is read, the request takes its size from the service's budget of upload
    bytes, in whole (its Content-Length; a chunked body, whose size is unknown, the most a request may
    hold, and gives back the rest once it ends), and holds it until it is answered. Taking it in
    whole means no request ever holds part of the budget while waiting for more, so concurrent huge
    uploads run one after another instead of each stalling the others. Starlette's multipart parser
    keeps every part under 1 MB in memory (and every text field), so a body's memory is not bounded by
    its spooling: this budget is what bounds it.
    """

    def __init__(self, app, token: str | None, limits: ServiceLimits, uploads: Budget):
        self.app, self.token, self.limits, self.uploads = app, token, limits, uploads

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
            return await _unread(413, _too_large(int(declared), self.limits))(scope, receive, send)
        if declared.isdigit():
            held = int(declared)
        else:
            held = self.limits.max_request_bytes if "chunked" in headers.get("transfer-encoding", "").lower() else 0
        held = min(held, self.uploads.total)  # a body larger than the whole budget waits to have it to itself
        if held and not await self.uploads.take(held, self.limits.budget_wait):
            error = _busy(f"other uploads hold its {_mb(self.uploads.total)} budget for request bodies", self.limits)
            return await _unread(error.status_code, error.detail, error.headers)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen, held
            try:
                message = await asyncio.wait_for(receive(), self.limits.read_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"no data from the client for {self.limits.read_timeout:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limits.max_request_bytes:
                    raise HTTPException(413, _too_large(seen, self.limits, so_far=True))
                if not message.get("more_body", False) and held > seen:
                    self.uploads.give(held - seen)  # a chunked body ended: keep only what it is
                    held = seen
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.uploads.give(held)


def _unread(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    """An answer given before the body is read, closing the connection: else uvicorn would read the rest
    of the body only to drop it, and a client that waits for the answer would send it all first."""
    return JSONResponse({"detail": detail}, status, {**(headers or {}), "Connection": "close"})


def _too_large(size: int, limits: ServiceLimits, so_far: bool = False) -> str:
    return (f"request of {'over ' if so_far else ''}{_mb(size)} is over the limit of {limits.max_photos} photos of "
            f"{_mb(limits.max_photo_bytes)} each")


def _token_ok(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    # Constant-time comparison, so the answer time does not leak how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"
