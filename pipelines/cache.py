"""The feature cache: a photo's backbone features (and what decoding measured of it) kept by content hash, per backbone.

`FeatureCache(root, backbone)` is one folder per backbone, weights and preprocessing (their hash is
in its name), of shards: `NAME.features.npy` (n, D), `NAME.hashes.npy` (n,), the measures of each
photo (`pipelines.measures`: `NAME.chroma.npy`, `NAME.blank.npy`, `NAME.places.npy`, each (n,)) and
`NAME.sum`, a checksum of the others written last, which makes the shard visible. A shard written
before a measure was kept lacks its file and still loads: its photos have that measure "not
measured", and the engines decode them again to measure it. `tagger train`, `tagger features` and
`tagger tag` share it, and the ONNX exports of the backbones live beside it
(pipelines/backbones/onnx_backbone.py). Past `MAX_CACHE_BYTES` per backbone the oldest shards are
removed (`FeatureCache.trim`).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from embeddings.files import atomic_write, content_hash, remove_stale
from pipelines.images import Blank
from pipelines.measures import NOT_MEASURED, Measures, columns, join_places, split_places

if TYPE_CHECKING:
    from pipelines.backbones.torch_backbone import Backbone

log = logging.getLogger(__name__)

# Bump when decoding changes, so old entries are not reused. A new measure needs no bump (old shards lack its
# file); changing how one is measured (pipelines.images.blank_frame's thresholds, the gazetteer's rules) does.
CACHE_VERSION = 1
# The files of a shard, the sum first: removed in this order, a shard disappears whole.
SUFFIXES = (".sum", ".hashes.npy", ".features.npy", ".chroma.npy", ".blank.npy", ".places.npy")
# Per backbone folder: 4 GB holds the features of about 800,000 photos at 1280-d; past it the oldest shards go.
MAX_CACHE_BYTES = int(os.environ.get("TAGGER_CACHE_MAX_BYTES", 4 << 30))



def default_cache_dir() -> Path:
    """The tool's cache folder: $TAGGER_CACHE, else ~/.cache/tagger. Features live in its `features/`."""
    return Path(os.environ.get("TAGGER_CACHE", Path.home() / ".cache" / "tagger"))



class FeatureCache:
    """A folder of shards per backbone; a shard is `NAME.features.npy` (n, D) + `NAME.hashes.npy` (n,) + `NAME.sum`,
    and `NAME.chroma.npy`, `NAME.blank.npy`, `NAME.places.npy` (n,) where the shard was written with those measures.

    `NAME.sum` holds a checksum of the others and is written last: it is what makes a shard
    visible, so a crash mid-write leaves nothing half-read, and a shard whose files were damaged or
    edited since (random bytes, plausible floats, two rows swapped) no longer matches its sum and is
    ignored: its photos are extracted again. A shard is checked once per process (by size and time).
    Shards written before sums existed are trusted once and given one.
    """

    def __init__(self, root: str | Path, backbone: Backbone, max_bytes: int | None = None):
        pre = backbone.preprocessing
        key = content_hash(repr((CACHE_VERSION, backbone.name, backbone.weights_id, pre)).encode())[:12]
        self.dir = Path(root).expanduser() / f"{backbone.name}-{key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dim = backbone.dim
        self.max_bytes = MAX_CACHE_BYTES if max_bytes is None else max_bytes
        self.read_only = False
        # Writers killed mid-save left their temporary files (this writer's pid is alive: its own are kept).
        remove_stale(self.dir, r"\..+\.(?P<pid>\d+)\.\w+\.tmp")

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("*.hashes.npy"))

    def lookup(self, wanted: set[str]) -> dict[str, np.ndarray]:
        """hash -> features of the wanted photos the cache holds."""
        return {h: f for h, (f, _) in self.lookup_rows(wanted).items()}

    def lookup_rows(self, wanted: set[str]) -> dict[str, tuple[np.ndarray, Measures]]:
        """hash -> (features, measures) of the wanted photos the cache holds; a measure its shard lacks is not measured.

        A photo in several shards (cached again once it was measured more fully) is taken from one that measured it all.
        """
        found: dict[str, tuple[np.ndarray, Measures]] = {}
        for hashes_file in self.shards():
            name = hashes_file.name.removesuffix(".hashes.npy")
            try:
                # The hashes alone say whether a shard is wanted; only a wanted one is read whole and checked.
                hashes = np.load(hashes_file, allow_pickle=False)
                idx = [i for i, h in enumerate(hashes.tolist()) if h in wanted and not (h in found and found[h][1].complete)]
                if not idx:
                    continue
                hashes, feats, kept = self._open(name)
                rows = np.asarray(feats[idx], dtype=np.float32)
                measures = [_measures(kept, i) for i in idx]
            except Exception as e:  # noqa: BLE001 - a damaged shard fails in numpy's many ways (EOFError for an empty one)
                # A damaged shard costs a re-extraction, never a wrong feature.
                log.warning("feature cache: ignoring shard %s (%s); its photos are extracted again", hashes_file, e)
                continue
            for i, r, m in zip(idx, rows, measures):
                if hashes[i] not in found or m.complete:
                    found[hashes[i]] = (r, m)
        return found

    def write(self, name: str, hashes: Sequence[str], features: np.ndarray, measures: Sequence[Measures] | None = None) -> None:
        """Save a shard; a cache that cannot be written (disk full, read-only) is said once and then left alone.

        measures: each photo's (`pipelines.measures`); the blank-frame verdicts and places are kept when every photo has them.
        """
        assert features.shape == (len(hashes), self.dim)
        if self.read_only:
            return
        parts = {".features.npy": _npy(np.ascontiguousarray(features, dtype=np.float32)),
                 ".hashes.npy": _npy(np.asarray(hashes, dtype="U32"))}
        if measures is not None:
            assert len(measures) == len(hashes)
            chroma, blank, places = columns(measures)
            parts[".chroma.npy"] = _npy(chroma)
            if len(measures) and (blank != Blank.UNMEASURED).all() and all(p is not None for p in places):
                parts[".blank.npy"] = _npy(blank)
                parts[".places.npy"] = _npy(np.asarray([join_places(p) for p in places], dtype=str))
        try:
            for suffix, data in parts.items():
                atomic_write(self.dir / f"{name}{suffix}", data)
            atomic_write(self.dir / f"{name}.sum", _checksum(parts).encode())  # last: this commits the shard
        except OSError as e:
            self.read_only = True
            log.warning("feature cache %s cannot be written (%s); features of this run are not cached", self.dir, e.strerror or e)

    def remove(self, name: str) -> None:
        for suffix in SUFFIXES:
            (self.dir / f"{name}{suffix}").unlink(missing_ok=True)

    def trim(self) -> list[str]:
        """Remove the oldest shards until the folder is within `max_bytes`; the names removed."""
        sizes = {}
        for hashes_file in self.shards():
            name = hashes_file.name.removesuffix(".hashes.npy")
            try:
                stats = [os.stat(self.dir / f"{name}{s}") for s in (".features.npy", ".hashes.npy")]
            except FileNotFoundError:
                continue
            sizes[name] = (max(st.st_mtime_ns for st in stats), sum(st.st_size for st in stats))
        total, removed = sum(size for _, size in sizes.values()), []
        for name, (_, size) in sorted(sizes.items(), key=lambda kv: kv[1][0]):
            if total <= self.max_bytes:
                break
            self.remove(name)
            total -= size
            removed.append(name)
        return removed

    def _open(self, name: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """A shard's hashes, (memory-mapped) features and the measures it has (suffix -> (n,) array), once checked against its sum."""
        paths = {suffix: self.dir / f"{name}{suffix}" for suffix in SUFFIXES}
        files = {suffix: path for suffix, path in paths.items() if suffix != ".sum" and
                 (suffix in (".features.npy", ".hashes.npy") or path.is_file())}
        stamp = tuple((st.st_size, st.st_mtime_ns) for st in map(os.stat, files.values()))
        if _VERIFIED.get(str(paths[".hashes.npy"])) != stamp:
            parts = {suffix: path.read_bytes() for suffix, path in files.items()}
            if paths[".sum"].is_file():
                if paths[".sum"].read_text().strip() != _checksum(parts):
                    raise ValueError("its files do not match their checksum (damaged or edited)")
            else:
                atomic_write(paths[".sum"], _checksum(parts).encode())  # a shard from before the sums
            _VERIFIED[str(paths[".hashes.npy"])] = stamp
        hashes = np.load(files[".hashes.npy"], allow_pickle=False)
        feats = np.load(files[".features.npy"], mmap_mode="r", allow_pickle=False)
        if hashes.ndim != 1 or feats.shape != (len(hashes), self.dim):
            raise ValueError(f"shape {feats.shape} does not match {len(hashes)} hashes of {self.dim}-d features")
        kept = {suffix: np.load(path, allow_pickle=False) for suffix, path in files.items() if suffix not in (".features.npy", ".hashes.npy")}
        for suffix, values in kept.items():
            if values.shape != hashes.shape:
                raise ValueError(f"{len(values)} values in {name}{suffix} for {len(hashes)} photos")
        return hashes, feats, kept


def _measures(kept: dict[str, np.ndarray], i: int) -> Measures:
    """Photo i's measures from a shard's files (a file it lacks: that measure not measured)."""
    if not kept:
        return NOT_MEASURED
    has_all = ".blank.npy" in kept and ".places.npy" in kept
    return Measures(float(kept[".chroma.npy"][i]) if ".chroma.npy" in kept else float("nan"),
                    Blank(int(kept[".blank.npy"][i])) if has_all else Blank.UNMEASURED,
                    split_places(str(kept[".places.npy"][i])) if has_all else None)


_VERIFIED: dict[str, tuple] = {}  # shard -> (size, mtime) of its files when they last matched their sum


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _checksum(parts: dict[str, bytes]) -> str:
    """The sum of a shard's files: features and hashes, then each measure it has (shards from before one keep their sums)."""
    h = hashlib.blake2b(parts[".features.npy"], digest_size=16)
    h.update(b"\0" + parts[".hashes.npy"])
    for mark, suffix in ((b"\1", ".chroma.npy"), (b"\2", ".blank.npy"), (b"\3", ".places.npy")):
        if parts.get(suffix):
            h.update(mark + parts[suffix])
    return h.hexdigest()
