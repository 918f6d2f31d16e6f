"""`tagger tag`: tag every photo of a library into one results file, resumably, and keep its sidecars in step.

Results go first to a journal beside the output (`OUT.journal.jsonl`), one JSON line per photo,
flushed to the OS as soon as the photo is tagged; a torn last line from a kill is ignored on
reading. When the run ends the output (CSV, JSONL or Parquet, by extension) is written atomically
from the previous output plus the journal, and the journal is removed. A run after an
interruption, or on a folder that gained or changed photos, reads both back and tags only photos
whose content hash is new, or whose row was made with another model or other options (the
`settings` column), so nothing is lost and nothing is tagged twice. A lock file keeps two runs off
the same output: the second is refused at once. Photos that could not be tagged are listed, with
the reason, in `OUT.failed.tsv` (as well as in the output's `error` column); a blank frame is tagged
with no tags and a `note` saying why, which is not a failure. The output, journal,
lock and failures file are never written through a symlink: a run with one of them a link is refused.

In CSV the tags and scores cells are JSON arrays (a word may hold `;` or `,`; outputs from before,
joined with `;`, still read), and a cell that a spreadsheet would take for a formula (`=`, `+`,
`-`, `@`, tab, CR) starts with `'`, as does one that starts with `'` itself; reading takes it off.

Sidecars are state of their own, reconciled on every run (`tagger.library.sidecar.sync`): a missing,
stale or earlier-failed sidecar is written whether or not its photo needed tagging. They are
synced before the output is committed, while the journal still holds every tag list this run and
the run before gave a photo, so a .txt sidecar tagger wrote is known for its own even after a kill.
A tag the owner rejected for a photo (removed it; `tagger:Rejected` of its XMP sidecar or, with
--embed, its own XMP) is left out of its row as well as of its keywords. With --embed, the originals
are kept only where --backup names a folder, outside the library (`check_backup`, `backup_path`).
"""
from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from embeddings.files import content_hash, remove_stale, stale_pattern
from pipelines.images import printable_path as path_key
from pipelines.keywords import KeywordError, embedded_fields, read_sidecar, same_keyword, sidecar_path
from pipelines.scan import DEFAULT_EXCLUDE_DIRS
from tagger.library.plan import LISTING, Plan, Scope, Summary, decide, listing_of, listing_table, select_photos
from tagger.library.results import (BatchError, failures_path, journal_path, latest, lock_path, output_format, read_rows, text,
                                    write_failures, write_results)
from tagger.library.keyword_tree import KeywordTree
from tagger.library.sidecar import SidecarConfig, SidecarError, embed, sync

if TYPE_CHECKING:
    from tagger.model import Tagged

class Lock:
    """An exclusive lock on the output, held for the run; a second run is refused, not queued.

    A POSIX record lock (lockf), not flock: it belongs to this process alone, so decoding workers
    forked while it is held do not keep it alive after a kill, and the kernel drops it when we die.
    The lock file is removed at the end while still locked; a run that opened it just before then
    finds its lock on a file no longer at the path and tries again, so two runs never both hold one.
    """

    def __init__(self, out: Path):
        self.path = lock_path(out)
        self.fd = None

    def __enter__(self):
        import fcntl

        while True:
            fd = _open_own(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise BatchError(f"{self.path}: another `tagger tag` run is writing this output; wait for it or choose another --out")
            if _same_file(fd, self.path):
                self.fd = fd
                return self
            os.close(fd)  # the previous holder removed that file as it finished: lock the new one

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)  # before unlocking: nobody can lock this file and believe it is the current one
        except FileNotFoundError:
            pass
        os.close(self.fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _refuse_links(out: Path) -> None:
    """A run whose output, journal, failures file or lock is a symlink is refused: tagger writes those itself, never through a link."""
    for path in (out, journal_path(out), failures_path(out), lock_path(out)):
        if path.is_symlink():
            raise BatchError(f"{path}: is a symlink (to {path_key(os.readlink(path))}); tagger writes this file itself and never through a link: "
                             "remove the link, or give --out a path that is not one")


def _open_own(path: Path, flags: int) -> int:
    """os.open of a file tagger keeps beside the output: never through a symlink (one made since the check too), a regular file only."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BatchError(f"{path}: is a symlink; tagger writes this file itself and never through a link: remove the link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BatchError(f"{path}: is not a regular file; remove it, or choose another --out")
    return fd


def tag_folder(
    sources: str | Path | Sequence[str | Path],
    out: Path,
    tag_batch: Callable[[list[Path]], Iterator[tuple[Path, Tagged]]],
    *,
    settings: str = "",
    sidecar: SidecarConfig | None = None,
    embed: bool = False,
    backup: Path | None = None,
    tree: KeywordTree = KeywordTree(),
    exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
    skip_owner_tagged: bool = False,
    retry_failed: bool = True,
    rehash: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> Summary:
    """Tag the photos of `sources` (folders and files) that `out` does not already hold, write `out`, then sync sidecars.

    `tag_batch(paths)` yields (path, `tagger.model.Tagged`) per photo in batches of its choosing; the
    journal is flushed after every photo it yields, so a kill loses at most the photos in flight.
    settings: the model and options the tags come from; rows made with other settings are tagged again.
    embed: also write the tags into each photo's own XMP and IPTC (`tagger.library.sidecar.embed`); the
    row then holds the rewritten file's hash, so the next run does not take it for a changed photo.
    backup: a folder outside the library where each photo's original is kept before its first rewrite
    (`backup_path`); None keeps none.
    tree: where XMP sidecars and embedded XMP file the tags (root, categories, flat); it is no setting of
    the rows, so a run with another tree rewrites the sidecars and tags nothing again.
    retry_failed: try photos that failed in an earlier run again, changed or not (False: only if changed).
    rehash: read and hash every photo that has a row, even where its size and mtime say it is unchanged.
    dry_run: scan, hash and plan, but tag nothing and write nothing (no lock, journal or output).
    """
    sources = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    out = Path(out)
    output_format(out)
    for source in sources:
        if not source.exists() and not source.is_symlink():
            raise BatchError(f"{source}: no such file or folder")
        if source.is_dir():
            try:
                os.scandir(source).close()
            except OSError as e:
                raise BatchError(f"{source}: cannot read folder ({e.strerror or e})") from None
    if out.is_dir():
        raise BatchError(f"{out}: is a folder; --out names the results file (.csv, .jsonl or .parquet)")
    if backup is not None:
        check_backup(backup, sources)
    _refuse_links(out)
    if dry_run:
        return _run(sources, out, tag_batch, settings, sidecar, embed, backup, tree, exclude_dirs, skip_owner_tagged, retry_failed, True,
                    progress, on_plan, rehash)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with Lock(out):
            # A run killed while writing the output left its temporary files behind (the lock says no other run is writing).
            for name in (out.name, failures_path(out).name):
                remove_stale(out.parent, stale_pattern(name))
            return _run(sources, out, tag_batch, settings, sidecar, embed, backup, tree, exclude_dirs, skip_owner_tagged, retry_failed,
                        False, progress, on_plan, rehash)
    except OSError as e:
        # Disk full, a read-only or missing folder: what was tagged is in the journal, and the next run goes on from it.
        where = e.filename or out
        raise BatchError(f"{where}: cannot write ({e.strerror or e}); photos tagged so far are kept in "
                         f"{journal_path(out).name} for the next run") from None


def _run(sources, out, tag_batch, settings, sidecar, embed, backup, tree, exclude_dirs, skip_owner_tagged, retry_failed, dry_run, progress,
         on_plan, rehash=False) -> Summary:
    every = read_rows(out)
    previous = latest(every)
    naming = sidecar.naming if sidecar and sidecar.kind == "xmp" else "auto"
    backups = backup_path(backup, sources)
    found = select_photos(sources, exclude_dirs, skip_owner_tagged, naming, tree.root)
    library = [s if s.is_dir() else s.parent for s in sources]  # where a sidecar's symlink may lead
    photos = found.photos
    listing = {key: listing_of(p) for key, p in photos.items()}  # before any read: a photo changed while read is seen next run
    decision = decide(listing_table(list(listing), list(listing.values())), previous,
                      lambda rows: [_hash(photos[key]) for key in rows["key"].to_pylist()], settings, retry_failed, rehash)
    hashes = dict(zip(decision.todo["key"].to_pylist(), decision.todo["hash"].to_pylist()))  # "": not read to plan
    todo = [photos[key] for key in hashes]
    unchanged, retag = decision.unchanged, decision.retag
    summary = Summary.planned(decision, skipped=found.skipped, examples=found.examples, dry_run=dry_run)
    if on_plan:
        on_plan(Plan(photos=len(photos), todo=len(todo), retag=retag, skipped=sum(found.skipped.values())))
    if dry_run:
        summary.to_tag = [path_key(p) for p in todo]
        rows = previous[previous["path"].isin(unchanged) & (previous["error"] == "")]
        if sidecar:
            summary.sidecars_written = len(todo) + _sync_sidecars(rows, photos, sidecar, tree, summary, library, every, dry_run=True)
        if embed:
            summary.embedded = len(todo) + len(_embed_all(rows, photos, tree, summary, naming, backups, library, dry_run=True))
        return summary
    journal = journal_path(out)
    for key, digest in hashes.items():
        hashes[key] = digest or _hash(photos[key])  # a new photo's row keeps its hash too
    if todo:
        with os.fdopen(_open_own(journal, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+", encoding="utf-8") as jf:
            if jf.tell() > 0:
                jf.seek(jf.tell() - 1)
                if jf.read(1) != "\n":
                    jf.write("\n")  # end a line torn by a kill, or our first row would join it
            for path, result in tag_batch(todo):
                error = text(result.error or "")
                rec = {
                    "path": path_key(path),
                    "tags": [t for t, _ in result.tags or []],
                    "scores": [round(float(s), 4) for _, s in result.tags or []],
                    "error": error,
                    "hash": hashes.get(path_key(path), ""),
                    "settings": settings,
                    "note": result.note,
                    "size": listing[path_key(path)][0],
                    "mtime": listing[path_key(path)][1],
                }
                jf.write(json.dumps(rec, ensure_ascii=False) + "\n")
                jf.flush()
                summary.record(path_key(path), error, result.note)
                if progress:
                    progress(1)
            os.fsync(jf.fileno())
    every = read_rows(out)
    # Photos that left the folders leave the results too; rows of other photos (another folder's) stay as they are.
    rows = latest(every)
    listed = rows["path"].isin(set(photos)).to_numpy()
    others = rows[~listed & ~Scope.of(sources).covers(pa.array(rows["path"], pa.string()))]
    rows = rows[listed].copy()

    def whole(rows: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([rows, others], ignore_index=True) if len(others) else rows

    def save(rows: pd.DataFrame) -> None:
        write_results(whole(rows), out)

    if decision.relisted.num_rows:  # unchanged in content, not in listing (touched, copied): the row takes the new listing
        relisted = rows["path"].isin(set(decision.relisted["key"].to_pylist()))
        rows.loc[relisted, list(LISTING)] = [listing[key] for key in rows.loc[relisted, "path"]]
    # The journal is safe on disk: a sidecar that cannot be written costs the run nothing, and the next run retries it.
    # Synced before the journal goes, so a run killed among them still knows every tag list it gave a .txt sidecar.
    if sidecar:
        summary.sidecars_written = _sync_sidecars(rows[rows["error"] == ""], photos, sidecar, tree, summary, library, every)
    save(rows)
    summary.failures_file = write_failures(whole(rows), out)
    journal.unlink(missing_ok=True)
    if embed:
        rewritten = _embed_all(rows[rows["error"] == ""], photos, tree, summary, naming, backups, library)
        summary.embedded = len(rewritten)
        if rewritten:
            rows = rows.assign(hash=[rewritten.get(p, h) for p, h in zip(rows["path"], rows["hash"])])
            save(rows)
    xmp = sidecar is not None and sidecar.kind == "xmp"
    if xmp or embed:
        kept = _without_rejected(rows, photos, naming if xmp else None, embed)
        if kept is not None:
            save(kept)
    return summary


def _hash(path: Path) -> str:
    try:
        return content_hash(path)
    except OSError:
        return ""  # unreadable: the tagging step reports why


def _sync_sidecars(rows: pd.DataFrame, photos: dict[str, Path], config: SidecarConfig, tree: KeywordTree, summary: Summary,
                   library: list[Path], every: pd.DataFrame, dry_run: bool = False) -> int:
    """Make every tagged photo's sidecar match its row; the number written (or that would be).

    every: all rows the output and journal hold, several for a photo tagged again: the tag lists a
    .txt sidecar tagger wrote may hold (it has no room to say it is tagger's, as an XMP one does).
    """
    earlier = {}
    if config.kind == "txt":
        for key, tags in zip(every["path"], every["tags"]):
            earlier.setdefault(key, []).append(list(tags))
    written = 0
    for key, tags in zip(rows["path"], rows["tags"]):
        try:
            written += sync(photos[key], list(tags), config, dry_run=dry_run, library=library, earlier=earlier.get(key, ()), tree=tree)
        except SidecarError as e:
            summary.sidecar_errors.append(path_key(str(e)))  # names the sidecar as results name its photo
    return written


def _embed_all(rows: pd.DataFrame, photos: dict[str, Path], tree: KeywordTree, summary: Summary, naming: str,
               backups: Callable[[Path], Path | None], library: Sequence[Path], dry_run: bool = False) -> dict[str, str]:
    """Write every tagged photo's tags into the photo itself; {path: its new content hash} of those rewritten."""
    rewritten = {}
    for key, tags in zip(rows["path"], rows["tags"]):
        try:
            if embed(photos[key], list(tags), tree, dry_run=dry_run, naming=naming, backup=backups(photos[key]), library=library):
                rewritten[key] = "" if dry_run else content_hash(photos[key])
        except (SidecarError, OSError) as e:
            summary.sidecar_errors.append(path_key(str(e)))
    return rewritten


def _without_rejected(rows: pd.DataFrame, photos: dict[str, Path], naming: str | None, embedded: bool) -> pd.DataFrame | None:
    """The rows without the tags the owner rejected for their photo (tagger:Rejected of its sidecar, or of its own XMP
    when embedded), so the results propose them no more than the photo does; None when no row holds one."""
    tags_col, scores_col, changed = [], [], False
    for key, tags, scores in zip(rows["path"], rows["tags"], rows["scores"]):
        rejected = []
        if key in photos and len(tags):
            if naming is not None:
                try:
                    rejected += read_sidecar(sidecar_path(photos[key], naming)).rejected
                except KeywordError:
                    pass  # a broken sidecar: its sync said so already
            if embedded:
                rejected += embedded_fields(photos[key]).rejected
        keep = [i for i, t in enumerate(tags) if not any(same_keyword(t, r) for r in rejected)]
        changed |= len(keep) < len(tags)
        tags_col.append([tags[i] for i in keep])
        scores_col.append([scores[i] for i in keep])
    return rows.assign(tags=tags_col, scores=scores_col) if changed else None


def check_backup(backup: Path, sources: Sequence[Path]) -> None:
    """A backup folder inside the library is refused: its copies would be scanned and tagged as photos, and the library doubled."""
    where = os.path.realpath(backup)
    for source in sources:
        root = os.path.realpath(source if source.is_dir() else source.parent)
        if where == root or where.startswith(root.rstrip(os.sep) + os.sep):
            raise BatchError(f"{backup}: --backup is inside the library ({source}); choose a folder outside it, "
                             "or the originals kept there would be tagged as photos")
    if backup.exists() and not backup.is_dir():
        raise BatchError(f"{backup}: --backup names a folder, and this is a file")


def backup_path(backup: Path | None, sources: Sequence[Path]) -> Callable[[Path], Path | None]:
    """Where each photo's original goes: its path below the folders given (their common folder), under `backup`."""
    if backup is None:
        return lambda photo: None
    roots = [os.path.abspath(s if s.is_dir() else s.parent) for s in sources]
    common = os.path.commonpath(roots) if roots else os.sep
    return lambda photo: Path(backup) / os.path.relpath(os.path.abspath(photo), common)
