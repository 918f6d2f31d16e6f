"""A library under review: its photos, the machine tags their sidecars hold, and the owner's decisions on them.

`tagger serve --library DIR` reviews the photos `tagger tag DIR --sidecar xmp` (or `--embed`) tagged.
Nothing is kept here but a cache: a photo's machine tags are read from its XMP sidecar and its own
XMP, each time either file changes, and a decision is written into the sidecar at once
(`tagger.library.sidecar.decide`), so what the page shows after a restart is what the files say,
and a change made meanwhile in digiKam or by another `tagger tag` run shows too.

A photo's tags are in one of three states: pending (a machine tag the owner has not decided on),
the owner's keyword (accepted here, or the owner's before), or rejected (`tagger:Rejected`, here or
by removing it in a photo manager). A photo is reviewed when none of its machine tags is pending.

The library is the photos under DIR (the scan of `tagger tag`, hidden and NAS folders left out),
scanned again when a listing comes `rescan` seconds after the last scan, so photos added or removed
while the server runs show within that time; and only those whose real file is inside DIR: a photo
reached through a symlink out of DIR is not the library's. The API names a photo by its path
relative to DIR, and a path that is not one of those photos is refused before anything is read, so
no request reaches another file.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import OptionError, TaggerError
from pipelines.keywords import DEFAULT_ROOT, KeywordError, KeywordIndex, embedded_fields, read_sidecar, same_keyword, sidecar_path, unique_keywords
from pipelines.scan import DEFAULT_EXCLUDE_DIRS, scan
from tagger.library.merge import owner_of, rejected_now
from tagger.library.sidecar import SidecarError, decide

DECISIONS = ("accept", "reject")


class NotInLibrary(TaggerError, LookupError):
    """A path that is not one of the library's photos; the message names it."""


@dataclass(frozen=True)
class ReviewConfig:
    root: str = DEFAULT_ROOT  # the keyword root `tagger tag` wrote under (--keyword-root)
    exclude_dirs: tuple[str, ...] = DEFAULT_EXCLUDE_DIRS  # folder-name globs not entered, as `tagger tag` skips them
    max_page: int = 500  # photos in one listing
    max_paths: int = 2000  # photos in one decision request
    # Seconds a listing trusts what the last one read: checking 2,000 photos' files takes 0.1 s, too long
    # to pay for every page of a scroll; a decision made here updates its photo at once either way.
    recheck: float = 2.0
    # Seconds a listing trusts the last scan of the folder: photos copied in (or deleted) while the server
    # runs show within this; a scan of 2,000 photos takes ~20 ms, of 100,000 about a second.
    rescan: float = 30.0

    def __post_init__(self):
        if not isinstance(self.root, str) or not self.root.strip() or any(s in self.root for s in "|/"):
            raise OptionError(f"keyword root must be one non-empty word without '|' or '/', not {self.root!r}")
        if self.max_page < 1 or self.max_paths < 1 or self.recheck < 0 or self.rescan < 0:
            raise OptionError(f"max_page and max_paths must be at least 1, recheck and rescan at least 0, not {self.max_page}, "
                              f"{self.max_paths}, {self.recheck} and {self.rescan}")


@dataclass
class Photo:
    """One photo as the page shows it."""

    path: str  # relative to the library, '/'-separated: the photo's name in the API
    tags: list[str] = field(default_factory=list)  # machine tags not decided on yet, best first
    keywords: list[str] = field(default_factory=list)  # the owner's keywords, accepted ones among them
    rejected: list[str] = field(default_factory=list)  # machine tags the owner rejected
    error: str | None = None  # why its keywords could not be read (a broken sidecar); then it cannot be decided on

    @property
    def reviewed(self) -> bool:
        return not self.tags

    def has(self, tag: str) -> bool:
        """Whether the photo carries the tag in any state (pending, the owner's, rejected)."""
        return any(same_keyword(tag, t) for t in self.tags + self.keywords + self.rejected)

    def as_dict(self) -> dict:
        return {"path": self.path, "tags": self.tags, "keywords": self.keywords, "rejected": self.rejected,
                "reviewed": self.reviewed, "error": self.error}


class Library:
    """The photos of one folder and their review state; safe to use from several threads."""

    def __init__(self, folder: str | Path, config: ReviewConfig = ReviewConfig()):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise OptionError(f"{folder}: not a folder (--library takes the folder of photos `tagger tag --sidecar xmp` tagged)")
        self.folder, self.config = folder, config
        self.real = Path(os.path.realpath(folder))
        self._cache: dict[str, tuple[tuple, Photo]] = {}
        self._scan()
        self._checked = -math.inf  # when every photo's files were last checked (time.monotonic)
        self._checking = threading.Lock()
        self._lock = threading.Lock()  # one decision written at a time: two on one sidecar must not lose one

    def __len__(self) -> int:
        return len(self.photo_paths)

    def path_of(self, name: str) -> Path:
        """The file of a photo named as the API names it; NotInLibrary for any other name."""
        try:
            return self.photo_paths[name]
        except (KeyError, TypeError):
            raise NotInLibrary(f"{name!r}: not one of the library's photos (a path relative to the library, as listed)") from None

    def photo(self, name: str) -> Photo:
        """The photo's state as its files say now (read again only when one of them changed)."""
        path = self.path_of(name)
        side = sidecar_path(path, "auto")
        key = (_stamp(path), str(side), _stamp(side))
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        photo = self._read(name, path, side)
        self._cache[name] = (key, photo)
        return photo

    def photos(self, tag: str | None = None, unreviewed: bool = False) -> list[Photo]:
        """The photos in path order; tag: only those carrying it (with unreviewed: still pending); unreviewed: with a pending tag."""
        out = []
        for p in self._all():
            if unreviewed and p.reviewed:
                continue
            if tag and not (any(same_keyword(tag, t) for t in p.tags) if unreviewed else p.has(tag)):
                continue
            out.append(p)
        return out

    def tag_counts(self) -> list[dict]:
        """Every tag of the library: photos carrying it, and on how many it is pending; most pending first."""
        counts: dict[str, dict] = {}
        for p in self._all():
            for tag in unique_keywords(p.tags + p.keywords + p.rejected):
                entry = counts.setdefault(tag.casefold(), {"tag": tag, "photos": 0, "pending": 0})
                entry["photos"] += 1
                entry["pending"] += any(same_keyword(tag, t) for t in p.tags)
        return sorted(counts.values(), key=lambda c: (-c["pending"], -c["photos"], c["tag"].casefold()))

    def decide(self, names: Sequence[str], tag: str, decision: str) -> list[tuple[Photo, str | None]]:
        """Accept or reject `tag` on each photo: (its state after, None or why not) per photo, in order.

        Every name is checked first (NotInLibrary, nothing written). A photo the tag is not on, or
        whose sidecar cannot be written, gets its reason and the others are still decided. Rejecting
        one of the owner's keywords is refused: a decision never takes a keyword of theirs away.
        """
        if decision not in DECISIONS:
            raise OptionError(f"unknown decision {decision!r}; choose from {', '.join(DECISIONS)}")
        if len(names) > self.config.max_paths:
            raise OptionError(f"{len(names)} photos in one decision; at most {self.config.max_paths}")
        paths = [self.path_of(n) for n in names]
        out = []
        with self._lock:
            for name, path in zip(names, paths):
                before = self.photo(name)
                why = _refusal(before, tag, decision)
                if why is None:
                    word = next((t for t in before.tags + before.rejected if same_keyword(tag, t)), None)
                    if word is not None and not (decision == "reject" and word in before.rejected):
                        try:
                            decide(path, accept=[word] if decision == "accept" else [], reject=[word] if decision == "reject" else [],
                                   library=[self.folder], root=self.config.root)
                        except SidecarError as e:
                            why = str(e)
                out.append((self.photo(name), why))
        return out

    def _scan(self) -> None:
        """The folder's photos now; a photo gone leaves the cache with its name."""
        found: dict[str, Path] = {}
        for p in scan([self.folder], self.config.exclude_dirs).photos:
            if Path(os.path.realpath(p)).is_relative_to(self.real):  # a link out of the library is not its photo
                found[p.relative_to(self.folder).as_posix()] = p
        self.photo_paths = found  # one assignment: a request in another thread sees the old photos or the new
        self._scanned = time.monotonic()
        for name in [n for n in self._cache if n not in found]:
            self._cache.pop(name, None)

    def _all(self) -> list[Photo]:
        """Every photo's state: as last read if the files were checked within `recheck` seconds, else checked now (the
        folder scanned again first when its last scan is `rescan` seconds old)."""
        with self._checking:  # one check at a time: a listing that comes during one waits for it, and does not do it again
            if time.monotonic() - self._scanned >= self.config.rescan:
                self._scan()
                self._checked = -math.inf
            names = list(self.photo_paths)
            if time.monotonic() - self._checked < self.config.recheck and all(n in self._cache for n in names):
                return [self._cache[name][1] for name in names]
            photos = [self.photo(name) for name in names]
            self._checked = time.monotonic()
            return photos

    def _read(self, name: str, path: Path, side: Path) -> Photo:
        root = self.config.root
        try:
            if side.is_symlink() and not Path(os.path.realpath(side)).is_relative_to(self.real):
                raise KeywordError(f"{side}: a symlink to {os.path.realpath(side)}, outside the library; left alone")
            sidecar = read_sidecar(side)
        except KeywordError as e:
            return Photo(name, error=str(e))
        embedded = embedded_fields(path)
        owner = owner_of([sidecar, embedded], root)
        rejected = [r for kw in (sidecar, embedded) for r in (*kw.rejected, *rejected_now(kw, owner, root))]
        rejected = [r for r in unique_keywords(rejected) if not owner.has(r)]  # one the owner gave back is theirs
        machine = unique_keywords(sidecar.machine_words(root) + embedded.machine_words(root))
        said_no = KeywordIndex(rejected)
        tags = [m for m in machine if not owner.has(m) and m not in said_no]
        return Photo(name, tags, unique_keywords(owner.flat + [p[-1] for p in owner.paths]), rejected)


def _refusal(photo: Photo, tag: str, decision: str) -> str | None:
    """Why the decision cannot be made on this photo, or None."""
    if photo.error:
        return photo.error
    owners = any(same_keyword(tag, k) for k in photo.keywords)
    if decision == "reject" and owners:
        return f"{tag!r} is the owner's keyword of {photo.path}; the review never removes the owner's keywords (remove it in your photo manager)"
    if not owners and not any(same_keyword(tag, t) for t in photo.tags + photo.rejected):
        return f"{photo.path} has no machine tag {tag!r}"
    return None


def _stamp(path: Path) -> tuple | None:
    """What tells that a file changed: its size and modification time (None: there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino
