"""Files: atomic writes (a crash while saving leaves the old file or folder, or none, never half of one) and content hashes.

Temporary files and folders get the permissions a plain open() or mkdir() would give (mkstemp and
mkdtemp make them private to the owner), so a saved model can be shared like any other file.
A process killed mid-save leaves its temporary folder behind; `remove_stale` clears such leftovers
by the writer's process id, which their names carry.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def content_hash(source: bytes | str | Path, digest_size: int = 16) -> str:
    """The BLAKE2b hash (hex) of bytes, or of a file's contents read in chunks: the one content hash of the project
    (photos in results and the feature cache, weights and bundles in cache keys)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.blake2b(source, digest_size=digest_size).hexdigest()
    with open(source, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=digest_size)).hexdigest()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None] | bytes, parents: bool = True) -> None:
    """Write a file through a temporary file in the same folder, then rename it over `path`.

    The temporary file is `.NAME.PID.XXXXXXXX.tmp`; `stale_pattern(NAME)` finds those of killed writers.
    The rename replaces a symlink at `path` rather than writing through it. parents: make the missing
    folders above `path` (False: a missing folder is a FileNotFoundError, and nothing is made).
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_temp_stem(path.name)}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` as a whole.

    A folder cannot be renamed over a non-empty one, so an old `path` is first moved aside and
    removed only after the new folder is in place. The temporary names are `.NAME.PID.XXXXXXXX.tmp`
    (and `.old`); those of writers that no longer run are removed first, except an `.old` folder
    while `path` is missing (a kill between the two renames: it is the only copy of the old one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, stale_pattern(path.name))
    if path.exists():
        remove_stale(path.parent, stale_pattern(path.name, "old"))
    prefix = f".{_temp_stem(path.name)}.{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".old"))
            os.rmdir(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stale_pattern(name: str, suffix: str = "tmp") -> str:
    """The `remove_stale` pattern of the temporary names atomic_write and atomic_dir give for `name`."""
    return re.escape(f".{_temp_stem(name)}.") + r"(?P<pid>\d+)\.\w+\." + suffix


def _temp_stem(name: str, limit: int = 200) -> str:
    """`name`, cut to `limit` bytes: with the pid and random part a temporary name stays within a file system's 255."""
    raw = os.fsencode(name)
    return name if len(raw) <= limit else os.fsdecode(raw[:limit])


def pid_running(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 probes without sending anything)."""
    if pid <= 0:
        return True  # not a writer's id: never treat as gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


def remove_stale(folder: str | Path, pattern: str) -> list[Path]:
    """Remove the files and folders in `folder` that killed writers left: names matching `pattern` (a
    regex whose group "pid" is the writer's process id) whose writer no longer runs. Returns them.

    Process ids mean something on this machine only: a temporary file that a writer on another
    machine has in a shared network folder could be removed (that save then fails; nothing is corrupted).
    """
    regex = re.compile(pattern)
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        found = regex.fullmatch(entry.name)
        if not found or pid_running(int(found.group("pid"))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
