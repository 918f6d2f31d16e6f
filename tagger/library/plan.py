"""What a batch run will do, the same for both engines: which photos to tag, re-tag, retry or keep.

A photo is tagged when the results have no row for it, when its content hash changed, when its row
was made with other settings (another model or other options: `Tagger.settings`), or when it
failed before (unless retry_failed is off: then an unchanged photo keeps its failure). Everything
else keeps its row. `Summary` is what a run reports, whichever engine ran it.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.images import printable_path as path_key
from pipelines.keywords import DEFAULT_ROOT, owner_keywords
from pipelines.scan import DEFAULT_EXCLUDE_DIRS, scan

OWNER_TAGGED = "has its owner's keywords (--skip-owner-tagged)"


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


def select_photos(sources: Sequence[Path], exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS, skip_owner_tagged: bool = False,
                  naming: str = "auto", root: str = DEFAULT_ROOT) -> Selection:
    """The photos a run takes from local folders and files: `pipelines.scan`'s, less those already carrying their
    owner's keywords when skip_owner_tagged (naming and root: how the run's XMP sidecars are named and rooted)."""
    found = scan(sources, exclude_dirs)
    chosen = Selection({path_key(p): p for p in found.photos}, found.skipped, found.examples)
    if skip_owner_tagged:
        for key, p in list(chosen.photos.items()):
            if owner_keywords(p, naming, root):
                del chosen.photos[key]
                chosen.skipped[OWNER_TAGGED] += 1
                chosen.examples.setdefault(OWNER_TAGGED, key)
    return chosen


@dataclass
class Decision:
    """The plan itself: the photos to tag (in the order given) and what happens to the rest."""

    todo: list[str]  # keys of the photos to tag
    retag: int  # of todo: unchanged photos whose model or options changed
    unchanged: set[str]  # keys whose rows are kept
    old_failed: pd.DataFrame  # rows of unchanged photos that failed before and are not retried


def decide(keys: Sequence[str], previous: pd.DataFrame, hashes: Mapping[str, str], settings: str,
           retry_failed: bool = True) -> Decision:
    """Which of `keys` to tag, given the latest row of each photo (`previous`) and the current content
    hashes of the photos that have one ("" or missing: unreadable now, so tagged, and the tagging step says why)."""
    done = {path: (h, s) for path, h, s in zip(previous["path"], previous["hash"], previous["settings"])}
    failed_before = set(previous.loc[previous["error"] != "", "path"])
    todo, retag = [], 0
    for key in keys:
        old, now = done.get(key), hashes.get(key, "")
        if old is None or not now or old[0] != now or (retry_failed and key in failed_before):
            # A failure is retried even when the hash is the same: the photo may have been read while
            # being copied or rewritten (its hash taken before), or from a share that was briefly away.
            todo.append(key)
        elif old[1] != settings:
            todo.append(key)
            retag += 1
    unchanged = set(keys) - set(todo)
    old_failed = previous[(previous["error"] != "") & previous["path"].isin(unchanged)]
    return Decision(todo, retag, unchanged, old_failed)


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

    @property
    def total(self) -> int:
        return self.tagged + self.kept + self.failed

    @property
    def ok(self) -> bool:
        """No photo failed in this run and every sidecar is in step (the exit code of a run).

        A file that failed before and has not changed is still listed, but does not fail every later run.
        """
        return not self.failed_now and not self.sidecar_errors

    @classmethod
    def planned(cls, decision: Decision, **fields) -> "Summary":
        """The summary before any photo is tagged: kept rows and earlier failures counted."""
        old = decision.old_failed
        return cls(kept=len(decision.unchanged) - len(old), failed=len(old),
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
