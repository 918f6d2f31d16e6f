"""The feature cache: a photo's backbone features (and its chroma) kept by content hash, per backbone.

`FeatureCache(root, backbone)` is one folder per backbone, weights and preprocessing (their hash is
in its name), of shards: `NAME.features.npy` (n, D), `NAME.hashes.npy` (n,), `NAME.chroma.npy` (n,)
and `NAME.sum`, a checksum of the others written last, which makes the shard visible. `tagger
train`, `tagger features` and `tagger tag` share it, and the ONNX exports of the backbones live
beside it (pipelines/backbones/onnx_backbone.py). Past `MAX_CACHE_BYTES` per backbone the oldest
shards are removed (`FeatureCache.trim`).
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

if TYPE_CHECKING:
    from pipelines.backbones.torch_backbone import Backbone

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when decoding or the cache layout changes, so old entries are not reused
# Per backbone folder: 4 GB holds the features of about 800,000 photos at 1280-d; past it the oldest shards go.
MAX_CACHE_BYTES = int(os.environ.get("TAGGER_CACHE_MAX_BYTES", 4 << 30))



def default_cache_dir() -> Path:
    """The tool's cache folder: $TAGGER_CACHE, else ~/.cache/tagger. Features live in its `features/`."""
    return Path(os.environ.get("TAGGER_CACHE", Path.home() / ".cache" / "tagger"))



class FeatureCache:
    """A folder of shards per backbone; a shard is `NAME.features.npy` (n, D) + `NAME.hashes.npy` (n,) + `NAME.sum`,
    and `NAME.chroma.npy` (n,) where the shard was written with each photo's chroma.

    `NAME.sum` holds a checksum of the other two and is written last: it is what makes a shard
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

    def lookup_rows(self, wanted: set[str]) -> dict[str, tuple[np.ndarray, float]]:
        """hash -> (features, chroma) of the wanted photos the cache holds; chroma NaN where its shard has none."""
        found: dict[str, tuple[np.ndarray, float]] = {}
        for hashes_file in self.shards():
            name = hashes_file.name.removesuffix(".hashes.npy")
            try:
                # The hashes alone say whether a shard is wanted; only a wanted one is read whole and checked.
                hashes = np.load(hashes_file, allow_pickle=False)
                idx = [i for i, h in enumerate(hashes.tolist()) if h in wanted and h not in found]
                if not idx:
                    continue
                hashes, feats, chroma = self._open(name)
                rows = np.asarray(feats[idx], dtype=np.float32)
                chromas = chroma[idx] if chroma is not None else np.full(len(idx), np.nan, dtype=np.float32)
            except Exception as e:  # noqa: BLE001 - a damaged shard fails in numpy's many ways (EOFError for an empty one)
                # A damaged shard costs a re-extraction, never a wrong feature.
                log.warning("feature cache: ignoring shard %s (%s); its photos are extracted again", hashes_file, e)
                continue
            for i, r, c in zip(idx, rows, chromas.tolist()):
                found[hashes[i]] = (r, c)
        return found

    def write(self, name: str, hashes: Sequence[str], features: np.ndarray, chroma: Sequence[float] | None = None) -> None:
        """Save a shard; a cache that cannot be written (disk full, read-only) is said once and then left alone."""
        assert features.shape == (len(hashes), self.dim)
        if self.read_only:
            return
        feats = _npy(np.ascontiguousarray(features, dtype=np.float32))
        keys = _npy(np.asarray(hashes, dtype="U32"))
        colour = b"" if chroma is None else _npy(np.asarray(chroma, dtype=np.float32).reshape(len(hashes)))
        try:
            atomic_write(self.dir / f"{name}.features.npy", feats)
            atomic_write(self.dir / f"{name}.hashes.npy", keys)
            if colour:
                atomic_write(self.dir / f"{name}.chroma.npy", colour)
            atomic_write(self.dir / f"{name}.sum", _checksum(feats, keys, colour).encode())  # last: this commits the shard
        except OSError as e:
            self.read_only = True
            log.warning("feature cache %s cannot be written (%s); features of this run are not cached", self.dir, e.strerror or e)

    def remove(self, name: str) -> None:
        for suffix in (".sum", ".hashes.npy", ".features.npy", ".chroma.npy"):  # the sum first: the shard disappears whole
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

    def _open(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A shard's hashes, (memory-mapped) features and chroma (None if it has none), once checked against its sum."""
        feats_file, hashes_file, sum_file, chroma_file = (self.dir / f"{name}{s}" for s in (".features.npy", ".hashes.npy", ".sum",
                                                                                          ".chroma.npy"))
        has_chroma = chroma_file.is_file()
        files = (feats_file, hashes_file) + ((chroma_file,) if has_chroma else ())
        stamp = tuple((st.st_size, st.st_mtime_ns) for st in map(os.stat, files))
        if _VERIFIED.get(str(hashes_file)) != stamp:
            feats, keys = feats_file.read_bytes(), hashes_file.read_bytes()
            colour = chroma_file.read_bytes() if has_chroma else b""
            if sum_file.is_file():
                if sum_file.read_text().strip() != _checksum(feats, keys, colour):
                    raise ValueError("its files do not match their checksum (damaged or edited)")
            else:
                atomic_write(sum_file, _checksum(feats, keys, colour).encode())  # a shard from before the sums
            _VERIFIED[str(hashes_file)] = stamp
        hashes = np.load(hashes_file, allow_pickle=False)
        feats = np.load(feats_file, mmap_mode="r", allow_pickle=False)
        if hashes.ndim != 1 or feats.shape != (len(hashes), self.dim):
            raise ValueError(f"shape {feats.shape} does not match {len(hashes)} hashes of {self.dim}-d features")
        chroma = np.load(chroma_file, allow_pickle=False) if has_chroma else None
        if chroma is not None and chroma.shape != hashes.shape:
            raise ValueError(f"{len(chroma)} chroma values for {len(hashes)} photos")
        return hashes, feats, chroma


_VERIFIED: dict[str, tuple] = {}  # shard -> (size, mtime) of its files when they last matched their sum


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _checksum(features: bytes, hashes: bytes, chroma: bytes = b"") -> str:
    h = hashlib.blake2b(features, digest_size=16)
    h.update(b"\0" + hashes)
    if chroma:  # shards without chroma keep the sums they were written with
        h.update(b"\1" + chroma)
    return h.hexdigest()
