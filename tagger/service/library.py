"""The review API of `tagger serve --library DIR`: the library's photos, their thumbnails, and decisions on their tags.

    GET  /v1/library              the library: its photos, and how many are not reviewed yet
    GET  /v1/library/photos       photos in path order, a page at a time (offset, limit), filtered by tag and "not reviewed"
    GET  /v1/library/photo        one photo (?path=)
    GET  /v1/library/tags         every tag of the library: photos carrying it, on how many it is pending
    GET  /v1/library/thumbnail    a photo's thumbnail, a JPEG made here (?path=&size=), never the original
    POST /v1/library/accept       {"tag": "dog", "paths": [...]}: the tag becomes the owner's keyword on those photos
    POST /v1/library/reject       {"tag": "dog", "paths": [...]}: the tag is rejected there, never proposed again

A photo is named by its path relative to the library, as listed; any other path is refused (404)
before anything is read or written. Decisions are written into the sidecars before the answer, so
a restarted server (or digiKam) reads them back. The token and host rules are the app's (`Guard`).
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field, StringConstraints

from pipelines.errors import OptionError
from pipelines.images import ImageError
from tagger.library.review import Library, NotInLibrary
from tagger.library.thumbnails import SIZES, Thumbnails
from tagger.scoring.options import MAX_TAG_CHARS

Tag = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_CHARS, strip_whitespace=True)]


class Decision(BaseModel):
    tag: Tag  # a machine tag of those photos
    paths: list[str] = Field(min_length=1)  # photos relative to the library, as listed


def library_router(library: Library, dependencies: list) -> APIRouter:
    """The /v1/library routes for one library; `dependencies` are the app's /v1 ones (the token in /docs)."""
    router = APIRouter(prefix="/v1/library", dependencies=dependencies, tags=["library"])
    thumbnails = Thumbnails()
    most = library.config.max_page

    def found(path: str):
        try:
            return library.path_of(path)
        except NotInLibrary as e:
            raise HTTPException(404, str(e)) from None

    @router.get("")
    def summary() -> dict:
        """The library: its folder's name, its photos, and how many still have a machine tag to decide on."""
        photos = library.photos()
        return {"folder": library.folder.name, "photos": len(photos), "unreviewed": sum(1 for p in photos if p.tags)}

    @router.get("/photos")
    def photos(
        offset: Annotated[int, Query(ge=0, description="photos to skip")] = 0,
        limit: Annotated[int, Query(ge=1, le=most, description="photos in this page")] = 100,
        tag: Annotated[str | None, Query(max_length=MAX_TAG_CHARS, description="only photos carrying this tag (any state)")] = None,
        unreviewed: Annotated[bool, Query(description="only photos with a machine tag not decided on (with tag: that one)")] = False,
    ) -> dict:
        """A page of the library's photos, in path order, each with its pending machine tags, its keywords and its rejected tags."""
        chosen = library.photos(tag=(tag or "").strip() or None, unreviewed=unreviewed)
        return {"total": len(chosen), "offset": offset, "limit": limit, "photos": [p.as_dict() for p in chosen[offset:offset + limit]]}

    @router.get("/photo")
    def photo(path: Annotated[str, Query(description="the photo, relative to the library")]) -> dict:
        """One photo's tags."""
        found(path)
        return library.photo(path).as_dict()

    @router.get("/tags")
    def tags() -> dict:
        """Every tag in the library, with the photos carrying it and on how many it is still pending."""
        return {"tags": library.tag_counts()}

    @router.get("/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(path: Annotated[str, Query(description="the photo, relative to the library")],
                        size: Annotated[int, Query(ge=SIZES[0], le=SIZES[1], description="longest side, in pixels")] = 256) -> Response:
        """A JPEG of the photo at most `size` pixels on a side."""
        file = found(path)
        try:
            data = await run_in_threadpool(thumbnails.get, file, size)
        except ImageError as e:
            raise HTTPException(422, str(e)) from None
        except OSError as e:
            raise HTTPException(404, f"{path}: cannot read ({e.strerror or e})") from None
        # private: the page's own; a photo edited since gets a new one on the next load.
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    def decide(body: Decision, decision: str) -> dict:
        try:
            done = library.decide(body.paths, body.tag, decision)
        except NotInLibrary as e:
            raise HTTPException(404, str(e)) from None
        except OptionError as e:
            raise HTTPException(422, str(e)) from None
        results = [{**p.as_dict(), "ok": why is None, "reason": why} for p, why in done]
        return {"tag": body.tag, "decision": decision, "done": sum(r["ok"] for r in results), "results": results}

    @router.post("/accept")
    def accept(body: Decision) -> dict:
        """Make the tag the owner's keyword on each photo (written into its sidecar now); per photo, whether it was done and why not."""
        return decide(body, "accept")

    @router.post("/reject")
    def reject(body: Decision) -> dict:
        """Reject the tag on each photo (tagger:Rejected in its sidecar: never proposed for it again); per photo, whether it was done and why not."""
        return decide(body, "reject")

    return router
