"""`tagger untag`: take every machine tag tagger wrote out of a library again, and nothing else.

For each photo of the library its XMP sidecars (`IMG_1.jpg.xmp` and `IMG_1.xmp`) and, with
`embed`, the photo's own XMP and IPTC lose what tagger wrote: the machine keywords in `dc:subject`
and IPTC, every entry under the root of `lr:hierarchicalSubject` and `digiKam:TagsList`, the owner's
keywords tagger copied into a field from another (`tagger:Copied...`), and tagger's record. The
owner's keywords, ratings, labels, face regions, edits and every other field stay as they were. A
sidecar tagger created (`tagger:Created`) that then holds nothing else is deleted. A file with
nothing of tagger's in it is not touched; a machine keyword the owner moved into their own tree is
theirs and stays. `.txt` sidecars hold nothing to say they are tagger's, so they are left alone.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.images import printable_path
from pipelines.scan import DEFAULT_EXCLUDE_DIRS, scan
from tagger.library.keyword_tree import KeywordTree
from tagger.library.sidecar import SidecarError, unembed, unsync


@dataclass
class UntagSummary:
    photos: int = 0
    done: list[str] = field(default_factory=list)  # one line per file changed (or, dry, that would be)
    errors: list[str] = field(default_factory=list)  # one line per file that could not be read or written
    sidecars: int = 0  # sidecars rewritten without tagger's keywords
    deleted: int = 0  # sidecars tagger created, deleted
    embedded: int = 0  # photos rewritten
    keywords: int = 0  # machine keywords taken out, over all files


def untag(sources: Sequence[str | Path], *, embed: bool = False, tree: KeywordTree = KeywordTree(),
          exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS, backups: Callable[[Path], Path | None] = lambda p: None,
          dry_run: bool = False) -> UntagSummary:
    """Take tagger's keywords out of the sidecars (and with embed the photos) of `sources`; dry_run: only say what it would do.

    backups: where a photo's original goes before its first rewrite (None: nowhere), as for `tagger tag --embed`.
    """
    sources = [Path(s) for s in sources]
    library = [s if s.is_dir() else s.parent for s in sources]
    found = scan(sources, exclude_dirs)
    summary = UntagSummary(photos=len(found.photos))
    would = "would " if dry_run else ""
    seen: set[Path] = set()
    for photo in found.photos:
        # Both namings: a stem sidecar shared with a RAW or another photo may hold what an earlier version wrote there.
        for side in (photo.with_name(photo.name + ".xmp"), photo.with_suffix(".xmp")):
            if side in seen or not (side.exists() or side.is_symlink()):
                continue
            seen.add(side)
            try:
                removed, changed, deleted = unsync(photo, side, tree, dry_run, library=library)
            except SidecarError as e:
                summary.errors.append(printable_path(str(e)))
                continue
            if deleted:
                summary.deleted += 1
                summary.done.append(f"{would}delete {printable_path(side)} (tagger made it; nothing else was in it)")
            elif changed:
                summary.sidecars += 1
                summary.done.append(f"{would}untag {printable_path(side)}: {_words(removed)}")
            summary.keywords += len(removed)
        if embed:
            try:
                removed, changed = unembed(photo, tree, dry_run, backup=backups(photo), library=library)
            except (SidecarError, OSError) as e:
                summary.errors.append(printable_path(str(e)))
                continue
            if changed:
                summary.embedded += 1
                summary.keywords += len(removed)
                summary.done.append(f"{would}untag {printable_path(photo)} (embedded): {_words(removed)}")
    return summary


def _words(removed: list[str]) -> str:
    shown = ", ".join(removed[:10]) + (f" and {len(removed) - 10} more" if len(removed) > 10 else "")
    return f"{len(removed)} machine keywords ({shown})" if removed else "tagger's record and copies"
