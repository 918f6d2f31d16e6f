"""Finding the photos of a library: folders walked, files chosen, and every skipped file counted by reason.

A real library holds more than photos: NAS thumbnail folders (Synology's `@eaDir`, `.thumbnails`),
recycle bins, sidecars, videos, RAW files, the odd FIFO. A scan walks the folders (and takes files
named directly), keeps the photos Pillow can decode (HEIC/HEIF through pillow-heif), and counts the
rest by reason so a run can say what it left out and why, instead of skipping it silently.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif"})
RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".nef", ".nrw", ".arw", ".dng", ".orf", ".rw2", ".raf", ".pef", ".srw", ".raw"})
METADATA_EXTENSIONS = frozenset({".xmp", ".txt", ".json", ".aae", ".thm", ".ini", ".db", ".pp3", ".dop"})
# NAS thumbnail and recycle folders, and every hidden folder (.thumbnails, .git, .Trash-1000, ...).
DEFAULT_EXCLUDE_DIRS = ("@eaDir", "#recycle", "#snapshot", "@Recycle", "$RECYCLE.BIN", ".*")

# Reasons a file is not tagged, as a run reports them.
EXCLUDED_DIR = "excluded folder"
HIDDEN = "hidden file"
RAW = "RAW photo (tag its JPEG export, or its preview: exiftool -b -PreviewImage)"
METADATA = "sidecar or metadata file"
OTHER = "not a photo (by extension)"
NOT_REGULAR = "not a regular file (device, FIFO or socket)"
LINK_OUT = "folder link out of the folders scanned (not followed: its sidecars would be written outside them)"

log = logging.getLogger(__name__)


@dataclass
class Scan:
    photos: list[Path] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> files (folders, for EXCLUDED_DIR)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first path skipped for it

    def skip(self, reason: str, path: str | Path) -> None:
        from pipelines.images import printable_path  # numpy and Pillow, which the CLI need not import to start

        self.skipped[reason] += 1
        self.examples.setdefault(reason, printable_path(path))

    def describe(self) -> list[str]:
        """One line per reason, most common first: "3 excluded folder (e.g. lib/@eaDir)"."""
        return [f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in self.skipped.most_common()]


def scan(sources: Iterable[str | Path], exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS) -> Scan:
    """The photos in `sources` (folders, searched recursively, and photo files), sorted, without repeats.

    exclude_dirs: folder-name globs not to enter (matched against each folder's name). Symlinked
    folders are followed once each, so a link back up the tree cannot loop, and only where they lead
    inside one of the folders of `sources`: a library is a stranger's folder, and a link out of it
    (to an external drive, to /) would have tagger read, and write sidecars, elsewhere. A photo file
    that is a link is taken (its sidecar goes beside the link; `embed` writes through it only into
    the library). A folder that cannot be read is logged as a warning naming it; the rest of the
    tree is still scanned.
    """
    result = Scan()
    seen: set[tuple[int, int]] = set()
    found: dict[str, Path] = {}
    roots = [os.path.realpath(s) for s in map(Path, sources) if s.is_dir()]

    def inside(folder: Path) -> bool:
        real = os.path.realpath(folder)
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

    def unreadable(e: OSError) -> None:
        from pipelines.images import printable_path

        log.warning("%s: cannot read folder (%s); its photos are left out", printable_path(e.filename), e.strerror or e)

    for source in map(Path, sources):
        if not source.is_dir():
            if _choose(source, source.name, result):
                found.setdefault(str(source), source)
            continue
        for root, dirs, files in os.walk(source, followlinks=True, onerror=unreadable):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            for d in [d for d in dirs if any(fnmatch.fnmatchcase(d, g) for g in exclude_dirs)]:
                dirs.remove(d)
                result.skip(EXCLUDED_DIR, Path(root) / d)
            for d in [d for d in dirs if os.path.islink(os.path.join(root, d)) and not inside(Path(root) / d)]:
                dirs.remove(d)
                result.skip(LINK_OUT, Path(root) / d)
            dirs.sort()
            for name in files:
                path = Path(root) / name
                if _choose(path, name, result):
                    found.setdefault(str(path), path)
    result.photos = sorted(found.values())
    return result


def list_images(folder: str | Path) -> list[Path]:
    """Every photo under `folder`, recursively, sorted (hidden files and NAS thumbnail folders left out)."""
    if not Path(folder).is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    return scan([folder]).photos


def _choose(path: Path, name: str, result: Scan) -> bool:
    """Whether a file is a photo to tag; if not, it is counted under its reason."""
    ext = os.path.splitext(name)[1].lower()
    if name.startswith("."):
        result.skip(HIDDEN, path)  # macOS ._IMG_1.jpg shadow files, editors' temp files
    elif ext in RAW_EXTENSIONS:
        result.skip(RAW, path)
    elif ext in METADATA_EXTENSIONS:
        result.skip(METADATA, path)
    elif ext not in PHOTO_EXTENSIONS:
        result.skip(OTHER, path)
    else:
        try:
            mode = os.stat(path).st_mode  # follows links: a link to /dev/zero is a device
        except OSError:
            return True  # gone or unreadable: the tagging step reports why, under the photo's name
        if stat.S_ISREG(mode):
            return True
        if not stat.S_ISDIR(mode):
            result.skip(NOT_REGULAR, path)
    return False
