"""What a batch run will do, the same for both engines: which photos to tag, re-tag, retry or keep.

A photo is tagged when the results have no row for it, when its content hash changed, when its row
was made with other settings (another model or other options: `Tagger.settings`), or when it
failed before (unless retry_failed is off: then an unchanged photo keeps its failure). Everything
else keeps its row. Whether a photo changed is first asked of its listing, as rsync's quick check
does: a size and modification time equal to its row's mean unchanged, without reading the photo;
only the others are read and hashed (all of them with rehash). `Summary` is what a run reports,
whichever engine ran it.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.images import printable_path as path_key
from pipelines.keywords import DEFAULT_ROOT, owner_keywords
from pipelines.scan import DEFAULT_EXCLUDE_DIRS, scan

OWNER_TAGGED = "has its owner's keywords (--skip-owner-tagged)"
# Photos are tagged in chunks of this many batches, in the listing's order, on both engines (the ray engine's units
# are the same chunks): the batches around each photo, and so its scores to the last bit, are the same.
CHUNK_BATCHES = 2


@dataclass
class Plan:
    """What a run is about to do, known once the library is scanned and hashed."""

    photos: int  # photos found
    todo: int  # to tag: new, changed, or tagged with other settings
    retag: int  # of todo: unchanged photos whose model or options changed
    skipped: int  # files not taken (see Summary.skipped)


@dataclass
class Selection:
    """The photos of a run's sources, by key (the path as the results print it), and the files left out, by reason."""

    photos: dict[str, Path]
    skipped: Counter = field(default_factory=Counter)  # reason -> files not taken (pipelines.scan reasons, OWNER_TAGGED)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first file skipped for it
    scope: "Scope" = field(default_factory=lambda: Scope())  # the output's rows the run answers for (a manifest: its photos')


def select_photos(sources: Sequence[Path], exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS, skip_owner_tagged: bool = False,
                  naming: str = "auto", root: str = DEFAULT_ROOT) -> Selection:
    """The photos a run takes from local folders and files: `pipelines.scan`'s, less those already carrying their
    owner's keywords when skip_owner_tagged (naming and root: how the run's XMP sidecars are named and rooted)."""
    found = scan(sources, exclude_dirs)
    chosen = Selection({path_key(p): p for p in found.photos}, found.skipped, found.examples, Scope.of(sources))
    if skip_owner_tagged:
        for key, p in list(chosen.photos.items()):
            if owner_keywords(p, naming, root):
                del chosen.photos[key]
                chosen.skipped[OWNER_TAGGED] += 1
                chosen.examples.setdefault(OWNER_TAGGED, key)
    return chosen


LISTING = ("size", "mtime")  # what a listing says of a photo without reading it: bytes, and modification time (ns)
UNKNOWN = -1  # a listing field not known (a manifest's URI not listed, a row from before the columns): the photo is hashed


def listing_of(path: str | Path) -> tuple[int, int]:
    """(size, mtime in ns) of a local file, what its folder's listing says; (UNKNOWN, UNKNOWN) where it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return UNKNOWN, UNKNOWN
    return st.st_size, st.st_mtime_ns


def listing_table(keys: Sequence[str], listings: Sequence[tuple[int, int]], **more: Sequence) -> pa.Table:
    """A listing as `decide` takes it: key, size, mtime, and any other columns (carried to Decision.todo)."""
    sizes, mtimes = zip(*listings) if listings else ((), ())
    return pa.table({"key": pa.array(keys, pa.string()), "size": pa.array(sizes, pa.int64()), "mtime": pa.array(mtimes, pa.int64()),
                     **{name: values if isinstance(values, pa.Array) else pa.array(values) for name, values in more.items()}})


@dataclass
class Decision:
    """The plan itself: the photos to tag (in the order given) and what happens to the rest."""

    todo: pa.Table  # the listing's rows of the photos to tag, in order, with `hash`: read while planning, else ""
    retag: int  # of todo: unchanged photos whose model or options changed
    kept_mask: np.ndarray  # for each photo of the listing: its row is kept (a mask, not a copy of the keys)
    listing_keys: pa.ChunkedArray | pa.Array  # the listing's keys, in its order
    old_failed: pd.DataFrame  # path and error of the kept photos that failed before and are not retried
    relisted: pa.Table  # key, size, mtime of kept photos whose listing changed (their content did not): rows to update
    hashed: int  # photos read and hashed to decide (a listing that matched its row spares the read)

    @property
    def kept(self) -> int:
        return int(self.kept_mask.sum())

    @property
    def unchanged(self) -> set[str]:
        return set(self.listing_keys.filter(pa.array(self.kept_mask)).to_pylist())


def common_prefix(keys: pa.ChunkedArray | pa.Array) -> str:
    """The longest start all `keys` share: the least and the greatest of them share it with every other."""
    if not len(keys) or not pc.count(keys).as_py():
        return ""
    least, greatest = pc.min_max(keys).values()
    return os.path.commonprefix([least.as_py(), greatest.as_py()])


def tails(values, prefix: str):
    """What follows `prefix` in each of `values` (text, or a `pyarrow.dataset` field), null where it does not start so.

    An archive's paths share a long start (a mount point, a bucket, a year's folder): matched on what
    follows it, a rerun of 2M photos holds and hashes 60 MB of text where the whole paths took 180.
    """
    if not prefix:
        return values
    return pc.if_else(pc.starts_with(values, pattern=prefix), pc.utf8_slice_codeunits(values, len(prefix)), pa.scalar(None, pa.string()))


@dataclass(frozen=True)
class Scope:
    """The rows of an output a run answers for: its listed photos' and, under each of its folders, every photo's.

    A row of a photo gone from one of those folders leaves the output with it; any other row (another
    folder's or manifest's photos tagged into the same output) is kept as it is. Tagging 2019/ and
    then 2020/ into one output lost every row of 2019's when an output held one source only. A
    manifest is a list, not a folder: it answers for the photos it lists.
    """

    folders: tuple[str, ...] = ()  # what the keys under each folder start with, "/" last; "./" for ".": the relative keys

    @classmethod
    def of(cls, sources: Sequence[str | Path]) -> "Scope":
        """The scope of local folders and photo files (as the keys print them: `printable_path`)."""
        return cls(tuple(path_key(Path(s)).rstrip("/") + "/" for s in sources if Path(s).is_dir()))

    def covers(self, paths: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Flags of the `paths` under one of the folders (nulls: not)."""
        flags = np.zeros(len(paths), bool)
        for folder in self.folders:
            if folder == "./":  # keys under "." print without it: every relative path
                under = pc.invert(pc.or_(pc.starts_with(paths, pattern="/"), pc.match_substring(paths, pattern="://")))
            else:
                under = pc.starts_with(paths, pattern=folder)
            flags |= _flags(under)
        return flags


KEYS_PER_LOOKUP = 1 << 19  # keys per hash table in latest_rows: ~50 MB of table, however many photos


def latest_rows(paths: pa.ChunkedArray | pa.Array, keys: pa.ChunkedArray | pa.Array, step: int = KEYS_PER_LOOKUP,
                rows_found: np.ndarray | None = None) -> np.ndarray:
    """For each of `keys` (distinct), the position in `paths` of its last row (a later row is a later run's), -1 where
    it has none. rows_found (a flag per row of `paths`, if given): set where the row's path is one of `keys`.

    A hash table over `step` keys at a time, looked up by every row: no table of the distinct paths,
    nor a copy of the rows, is made, and the table stays the same size for 2M photos as for 500,000
    (one over 2M keys took ~300 MB of the driver's peak).
    """
    n = len(keys)
    where = np.full(n, -1, dtype=np.int64)
    if not len(paths) or not n:
        return where
    for start in range(0, n, step):
        place = pc.fill_null(pc.index_in(paths, value_set=keys.slice(start, step)), -1).to_numpy(zero_copy_only=False)
        hit = place >= 0
        np.maximum.at(where, start + place[hit], np.flatnonzero(hit))
        if rows_found is not None:
            rows_found |= hit
    return where


def decide(listing: pa.Table, previous: pd.DataFrame | pa.Table, hash_photos: Callable[[pa.Table], Sequence[str]], settings: str,
           retry_failed: bool = True, rehash: bool = False, old_hashes: Callable[[], pa.ChunkedArray] | None = None,
           prefix: str = "") -> Decision:
    """Which photos of `listing` (key, size, mtime, ...) to tag, given the rows of earlier runs (`previous`: path, hash,
    settings, error, size, mtime; a photo's last row is its latest). prefix: previous's paths are given without it
    (`tails`), as the ray engine reads them; the keys are matched on what follows it too.

    rsync's quick check: a photo whose size and modification time equal its row's (both known) is
    taken as unchanged without reading it; the others with a row are hashed, `hash_photos(rows of the
    listing)` giving their content hashes ("" where unreadable: tagged, and the tagging step says
    why), and compared with the row's. rehash: hash every photo with a row, whatever its listing.
    old_hashes: previous's hash column, read only if a row's hash is needed (previous then lacks it):
    a rerun with nothing to do never holds one. Column by column (Arrow and numpy), not photo by photo.
    """
    if isinstance(previous, pd.DataFrame):
        previous = pa.Table.from_pandas(_previous_columns(previous), preserve_index=False)
    keys, n = listing["key"], listing.num_rows
    # Each photo's row by position (-1: no row); the listing keeps its order, the tagging order.
    where = latest_rows(previous["path"].cast(pa.string()), tails(keys, prefix))
    has_row = where >= 0
    at = np.where(has_row, where, 0)
    hash_column = []

    def per_photo(per_row: np.ndarray) -> np.ndarray:
        """A flag of each previous row, for each photo of the listing (False where it has no row)."""
        return has_row & per_row[at] if len(per_row) else np.zeros(n, bool)

    def old_text(column: str, rows: np.ndarray) -> pa.Array:
        if column == "hash" and "hash" not in previous.column_names:
            if not hash_column:
                hash_column.append(old_hashes())
            values = hash_column[0]
        else:
            values = previous[column]
        return pc.fill_null(values.take(pa.array(at[rows])), "").cast(pa.string())

    size, mtime = (listing[c].to_numpy(zero_copy_only=False) for c in LISTING)
    # Only a listing that says both can match: an object store that gives no mtime (UNKNOWN) is hashed every run.
    same = per_photo(np.zeros(0, bool) if not previous.num_rows else np.ones(previous.num_rows, bool)) & (size >= 0) & (mtime >= 0) \
        & (not rehash)
    if same.any():
        same &= (size == _ints(previous["size"])[at]) & (mtime == _ints(previous["mtime"])[at])
    need = has_row & ~same
    changed = ~has_row
    fresh = pa.array([], pa.string())
    if need.any():
        fresh = pa.array(list(hash_photos(listing.filter(pa.array(need)))), pa.string())
        changed[need] = _flags(pc.or_(pc.equal(fresh, ""), pc.not_equal(fresh, old_text("hash", need))))
    failed_before = per_photo(~_is(previous["error"], ""))
    # A failure is retried even when the hash is the same: the photo may have been read while being
    # copied or rewritten (its hash taken before), or from a share that was briefly away.
    todo = changed | (failed_before if retry_failed else False)
    retag = ~todo & per_photo(~_is(previous["settings"], settings))
    todo |= retag
    kept = ~todo
    # The hash each photo to tag is known by: read now, its row's (unchanged, tagged again), or "" (new).
    if previous.num_rows and (has_row & todo).any():
        hashes = pc.if_else(pa.array(has_row[todo]), old_text("hash", todo), "")
    else:
        hashes = pa.nulls(int(todo.sum()), pa.string())
    hashes = pc.fill_null(hashes, "")
    if need.any():
        hashes = pc.replace_with_mask(hashes, pa.array(need[todo]), fresh.filter(pa.array(todo[need])))
    gone = kept & failed_before
    chosen = listing if todo.all() else listing.filter(pa.array(todo))  # a first run: the listing itself, not a copy
    return Decision(todo=chosen.append_column("hash", hashes), retag=int(retag.sum()), kept_mask=kept, listing_keys=keys,
                    old_failed=pd.DataFrame({"path": keys.filter(pa.array(gone)).to_pylist(), "error": old_text("error", gone).to_pylist()}),
                    relisted=listing.filter(pa.array(kept & ~same)).select(["key", *LISTING]), hashed=int(need.sum()))


def _is(column: pa.ChunkedArray | pa.Array, value: str) -> np.ndarray:
    """Flags of the rows equal to `value` (a null as ""). A dictionary-encoded column is compared on its dictionary:
    decoded, 2M rows of one run's settings were ~260 MB of text on the driver."""
    parts = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if pa.types.is_dictionary(chunk.type):
            same = np.append(_flags(pc.equal(chunk.dictionary, value)), value == "")  # index -1 (a null row) takes the last
            parts.append(same[pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False)])
        else:
            parts.append(_flags(pc.equal(pc.fill_null(chunk, ""), value)))
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def _flags(expr) -> np.ndarray:
    return pc.fill_null(expr, False).to_numpy(zero_copy_only=False)


def _ints(column) -> np.ndarray:
    return pc.fill_null(column, UNKNOWN).to_numpy(zero_copy_only=False)


def _previous_columns(previous: pd.DataFrame) -> pd.DataFrame:
    """The columns `decide` reads, from results of any age (no listing columns: UNKNOWN, so those photos are hashed)."""
    frame = pd.DataFrame({c: previous[c].astype(str) if c in previous else pd.Series([""] * len(previous), dtype=str)
                          for c in ("path", "hash", "settings", "error")})
    for c in LISTING:
        frame[c] = previous[c].astype("int64") if c in previous else pd.Series([UNKNOWN] * len(previous), dtype="int64")
    return frame


@dataclass
class Summary:
    tagged: int = 0  # tagged in this run
    kept: int = 0  # unchanged since an earlier run: its row was kept
    failed: int = 0  # could not be read as a photo (reported with the reason), in this run or before on the same file
    failed_now: int = 0  # of failed: in this run
    failures: list[str] = field(default_factory=list)
    untagged: int = 0  # of tagged: photos given no tags, with a note why (blank frames), in this run
    failures_file: Path | None = None  # OUT.failed.tsv: every photo of the folder that could not be tagged, with why
    skipped: Counter = field(default_factory=Counter)  # reason -> files not taken (pipelines.scan reasons, OWNER_TAGGED)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first file skipped for it
    sidecars_written: int = 0
    embedded: int = 0  # photos whose own XMP was rewritten (--embed)
    sidecar_errors: list[str] = field(default_factory=list)
    dry_run: bool = False
    to_tag: list[str] = field(default_factory=list)  # dry run: the photos a run would tag
    missing: list[str] = field(default_factory=list)  # planned to be tagged, but no row of theirs came back: a failed run
    hashed: int = 0  # photos read and hashed to plan (the others' listing matched their row)

    @property
    def total(self) -> int:
        return self.tagged + self.kept + self.failed + len(self.missing)

    @property
    def ok(self) -> bool:
        """No photo failed or went missing in this run and every sidecar is in step (the exit code of a run).

        A file that failed before and has not changed is still listed, but does not fail every later run.
        """
        return not self.failed_now and not self.sidecar_errors and not self.missing

    @classmethod
    def planned(cls, decision: Decision, **fields) -> "Summary":
        """The summary before any photo is tagged: kept rows and earlier failures counted."""
        old = decision.old_failed
        return cls(kept=decision.kept - len(old), failed=len(old), hashed=decision.hashed,
                   failures=[f"{p}: {e}" for p, e in zip(old["path"], old["error"])], **fields)

    def record(self, key: str, error: str, note: str = "") -> None:
        """One photo tagged in this run (error "" when it got its tags; a note when it got none, as a blank frame)."""
        if error:
            self.failed += 1
            self.failed_now += 1
            self.failures.append(f"{key}: {error}")
        else:
            self.tagged += 1
            self.untagged += bool(note)
