"""Image features for a list of photos: decode in worker processes, batch through a frozen backbone, cache.

    result = extract_features(paths, FeatureConfig(cache_dir="~/.cache/tagger/features"))
    result.features[result.ok]      # (N, D) float32, row i belongs to paths[i]

Photos that cannot be decoded are logged with their path and reason, listed in `result.errors`,
and left as NaN rows with `ok[i] = False` (NaN, not zero, so a forgotten `ok` mask shows up
loudly instead of training on blank features); the run carries on.

The cache is keyed by the photo's content (blake2b of the file bytes) and the backbone (name,
weights hash, preprocessing), so a renamed or copied photo is not extracted again and an edited
one is. Each batch is written as its own shard (an atomic `os.replace`), so an interrupted run
keeps everything it finished; a run that completes merges its batch shards into one. Beside the
features a shard keeps what the worker that decoded each photo measured of it (`pipelines.measures`:
its chroma, whether it is a blank frame, the places of its GPS EXIF), so `tagger tag` answers a cached
photo without decoding it. The cache itself is `pipelines/cache.py`.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from embeddings.files import content_hash
from pipelines.backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from pipelines.cache import FeatureCache
from pipelines.images import ImageError, cap_aspect, decode_image, read_bytes, to_rgb
from pipelines.measures import NOT_MEASURED, Measures, columns, measure

log = logging.getLogger(__name__)

def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class FeatureConfig:
    """How to extract: which backbone and weights, on what device, in what batches, cached where."""

    backbone: str = DEFAULT_BACKBONE  # a name from pipelines.backbones.list_backbones()
    weights: str | Path | None = None  # a state dict file overriding the backbone's default weights
    batch_size: int = 64  # photos per forward pass
    num_workers: int = field(default_factory=_default_workers)  # decoding processes; 0 decodes in this process
    device: str | None = None  # "cpu", "cuda", "cuda:N", "mps"; None lets choose_device pick
    runtime: str | None = None  # "torch", "onnx" or "onnx-int8"; None lets choose_runtime pick (onnx on a CPU)
    cache_dir: str | Path | None = None  # folder of the feature cache; None: no cache


@dataclass
class FeatureResult:
    """What `extract_features` returns; every array is aligned with the paths it was given."""

    features: np.ndarray  # (N, D) float32, aligned with the paths; NaN rows where ok is False
    ok: np.ndarray  # (N,) bool
    errors: dict[int, str]  # row -> "path: reason" for every photo that failed
    n_extracted: int = 0  # photos run through the backbone in this call
    n_cached: int = 0  # photos answered from the cache
    # What decoding measured of each photo (pipelines.measures), by the worker that decoded it or from the cache;
    # a photo that failed has nothing measured (NaN chroma, Blank.UNMEASURED, places None).
    measures: list[Measures] = field(default_factory=list)

    @property
    def chroma(self) -> np.ndarray:
        """(N,) each photo's mean chroma (pipelines.images.chroma), NaN where it failed."""
        return columns(self.measures)[0]

    @property
    def blank(self) -> np.ndarray:
        """(N,) int8 each photo's pipelines.images.Blank verdict."""
        return columns(self.measures)[1]

    @property
    def places(self) -> list[tuple[str, ...] | None]:
        return columns(self.measures)[2]


# --- decoding in DataLoader workers -----------------------------------------------------------------


class _PhotoDataset(Dataset):
    """Item i: (row, content hash, uint8 CHW tensor or None, failure reason or None, measures). Never raises for a bad photo."""

    def __init__(self, paths: Sequence[Path], rows: Sequence[int], transform, min_side: int, hash: bool = True):
        self.paths, self.rows, self.transform, self.min_side, self.hash = paths, rows, transform, min_side, hash

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        path = self.paths[row]
        try:
            data = read_bytes(path)
            # Hashing the bytes actually decoded keeps cache keys right even if the file changes mid-run;
            # without a cache there is nothing to key (a batch run has hashed the file already).
            digest = content_hash(data) if self.hash else None
            image = decode_image(data, path, min_side=self.min_side)
            return row, digest, self.transform(image), None, measure(image)
        except ImageError as e:
            return row, None, None, e.reason, NOT_MEASURED
        except Exception as e:  # noqa: BLE001 - one odd photo must not end a run over thousands
            return row, None, None, f"{type(e).__name__}: {e}", NOT_MEASURED


def _collate(items):
    """Split a batch into the photos that decoded (stacked) and the ones that did not."""
    good = [it for it in items if it[2] is not None]
    rows = [it[0] for it in good]
    hashes = [it[1] for it in good]
    x = torch.stack([it[2] for it in good]) if good else None
    failed = [(it[0], it[3]) for it in items if it[2] is None]
    return rows, hashes, x, failed, [it[4] for it in good]


def hash_files(paths: Sequence[Path], threads: int = 8) -> list[str | ImageError]:
    """Content hash of every file (an ImageError in place of an unreadable one); file reads overlap in threads."""

    def one(path: Path):
        try:
            return content_hash(read_bytes(path))
        except ImageError as e:
            return e

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, paths, chunksize=64))


# --- extraction -------------------------------------------------------------------------------------


def extract_features(
    paths: Sequence[str | Path],
    config: FeatureConfig = FeatureConfig(),
    progress: bool = True,
    backbone: Backbone | None = None,
    report: bool = True,
) -> FeatureResult:
    """Features for every photo in `paths`, in order; see the module docstring for failures and the cache.

    backbone: one already built, to reuse across calls (config's backbone, weights and device are
    then not consulted). report: log a warning for each photo skipped; False where the caller
    reports `errors` itself, so that no failure is said twice.
    """
    paths = [Path(p) for p in paths]
    if backbone is None:
        backbone = create_backbone(config.backbone, config.weights, config.device, config.runtime, config.cache_dir)
    n = len(paths)
    features = np.full((n, backbone.dim), np.nan, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    measures = [NOT_MEASURED] * n
    result = FeatureResult(features, ok, {}, measures=measures)

    cache = None
    if config.cache_dir is not None:
        try:
            cache = FeatureCache(config.cache_dir, backbone)
        except OSError as e:
            log.warning("feature cache %s cannot be used (%s); extracting without it", config.cache_dir, e.strerror or e)
    duplicates: dict[int, int] = {}  # row -> the row with the same content that is extracted for it
    if cache is None:
        todo = list(range(n))
    else:
        t0 = time.perf_counter()
        hashes = hash_files(paths)
        known = cache.lookup_rows({h for h in hashes if isinstance(h, str)})
        first: dict[str, int] = {}
        todo = []
        for row, h in enumerate(hashes):
            if isinstance(h, ImageError):
                reasons[row] = h.reason
                if report:
                    log.warning("skipping %s", h)
            elif h in known:
                features[row], measures[row] = known[h]
            elif h in first:
                duplicates[row] = first[h]
            else:
                first[h] = row
                todo.append(row)
        result.n_cached = n - len(todo) - len(duplicates) - len(reasons)
        log.info("feature cache %s: %d of %d photos cached (hashed in %.1fs)", cache.dir, result.n_cached, n, time.perf_counter() - t0)

    if todo:
        run = f"{time.time_ns():x}-{os.getpid()}"
        new_rows, new_hashes, batch_shards = _run(paths, todo, backbone, config, progress, features, reasons, cache, run, report,
                                                  measures_out=measures)
        result.n_extracted = len(new_rows)
        if cache is not None and new_rows:
            # One shard per completed run instead of one per batch keeps lookups quick.
            cache.write(f"{run}-all", new_hashes, features[new_rows], [measures[r] for r in new_rows])
            for name in batch_shards:
                cache.remove(name)
            cache.trim()

    for row, rep in duplicates.items():
        features[row], measures[row] = features[rep], measures[rep]
        if rep in reasons:
            reasons[row] = reasons[rep]
    ok[:] = ~np.isnan(features).any(axis=1)
    # Shards written before the cache kept a measure: measure the photo as a decoding worker does (on the photo
    # decoded for the backbone), so that every photo's evidence is measured one way.
    # Kept in a shard of their own, so that the next run takes them from the cache (lookup_rows prefers it).
    again = [int(row) for row in np.flatnonzero(ok) if not measures[row].complete]
    for row in again:
        measures[row] = _measures_of(paths[row], backbone.preprocessing.resize)
    again = list({hashes[row]: row for row in again if measures[row].complete}.values()) if cache is not None else []
    if again:
        cache.write(f"{time.time_ns():x}-{os.getpid()}-measured", [hashes[row] for row in again], features[again],
                    [measures[row] for row in again])
    for row in np.flatnonzero(~ok):
        # Only when the backbone gives NaN, or a file changed between hashing and decoding.
        reasons.setdefault(int(row), "no features (non-finite output, or the file changed during the run)")
    result.errors = {row: f"{paths[row]}: {reason}" for row, reason in sorted(reasons.items())}
    if result.errors and report:
        log.warning("%d of %d photos could not be read and have no features", len(result.errors), n)
    return result


def _measures_of(path: Path, min_side: int) -> Measures:
    """The measures `_PhotoDataset` takes of a photo (nothing measured when it no longer decodes)."""
    try:
        return measure(decode_image(read_bytes(path), path, min_side=min_side))
    except (ImageError, OSError):
        return NOT_MEASURED


@dataclass
class Batch:
    """One batch of `iter_batches`: the photos that decoded, with their features, and the ones that did not."""

    rows: list[int]  # positions in the paths given, ascending
    features: np.ndarray  # (len(rows), D) float32
    hashes: list[str | None]  # content hash of the bytes decoded (None unless hashing was asked for)
    measures: list[Measures]  # what was measured of each decoded photo (pipelines.measures)
    failed: list[tuple[int, str]]  # (position, reason) of the photos that did not decode


def iter_batches(paths: Sequence[Path], backbone: Backbone, batch_size: int = 64, num_workers: int | None = None,
                 rows: Sequence[int] | None = None, hash: bool = False) -> Iterator[Batch]:
    """Decode (in worker processes) and run the backbone over `paths` (or the `rows` of them), batch by batch, in order.

    One stream for the whole list: the decoding workers start once, and a caller sees each batch as
    soon as it is done (a batch run journals and shows progress per batch).
    """
    rows = list(range(len(paths))) if rows is None else list(rows)
    dataset = _PhotoDataset(paths, rows, backbone.pixels_transform, min_side=backbone.preprocessing.resize, hash=hash)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=_default_workers() if num_workers is None else num_workers,
                        collate_fn=_collate, pin_memory=backbone.device.type == "cuda")
    with torch.inference_mode():
        for good, hashes, x, failed, measures in loader:
            out = backbone.forward_features(x).cpu().numpy() if good else np.zeros((0, backbone.dim), dtype=np.float32)
            yield Batch(good, out, hashes, measures, failed)


def _run(paths, todo, backbone, config, progress, features, reasons, cache, run, report=True, measures_out=None):
    """Decode and forward the `todo` rows, filling `features`, `reasons` (and `measures_out`) in place; a cache shard per batch."""
    new_rows: list[int] = []
    new_hashes: list[str] = []
    shards: list[str] = []
    bar = tqdm(total=len(todo), unit="photo", desc=f"features {backbone.name}", disable=not progress, smoothing=0.1)
    with bar:
        for i, batch in enumerate(iter_batches(paths, backbone, config.batch_size, config.num_workers, todo, hash=cache is not None)):
            for row, reason in batch.failed:
                reasons[row] = reason
                if report:
                    log.warning("skipping %s: %s", paths[row], reason)
            if batch.rows:
                features[batch.rows] = batch.features
                if measures_out is not None:
                    for row, m in zip(batch.rows, batch.measures):
                        measures_out[row] = m
                new_rows += batch.rows
                new_hashes += batch.hashes
                if cache is not None:
                    shards.append(f"{run}-b{i:06d}")
                    cache.write(shards[-1], batch.hashes, batch.features, batch.measures)
            bar.update(len(batch.rows) + len(batch.failed))
    return new_rows, new_hashes, shards


def trunk_activations(backbone, paths: Sequence[Path], blocks: int, batch_size: int = 64,
                      num_workers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, h, w) float16 maps entering the last `blocks` blocks, the (N, D) features, and (N,) which photos decoded.

    `backbone`: a torch `Backbone` (the maps are read with a hook, which ONNX Runtime has not). Photos
    that do not decode get zero maps and NaN features, and False in the mask.
    """
    model = backbone.model
    kept: list[torch.Tensor] = []
    hook = model._blocks[len(model._blocks) - blocks].register_forward_pre_hook(
        lambda m, a: kept.append(a[0].float().contiguous().half().cpu()))
    acts = feats = None
    ok = np.zeros(len(paths), dtype=bool)
    try:
        for batch in iter_batches(paths, backbone, batch_size, num_workers):
            if not batch.rows:
                continue
            maps = torch.cat(kept).numpy()
            kept.clear()
            if acts is None:
                acts = np.zeros((len(paths), *maps.shape[1:]), dtype=np.float16)
                feats = np.full((len(paths), batch.features.shape[1]), np.nan, dtype=np.float32)
            acts[batch.rows], feats[batch.rows], ok[batch.rows] = maps, batch.features, True
    finally:
        hook.remove()
    if acts is None:
        raise ValueError("no photo decoded: there are no activations to train on")
    return acts, feats, ok


def extract_images(images: Sequence[Image.Image], backbone: Backbone, device: torch.device | str | None = None, batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 features for photos already in memory (e.g. uploaded ones), on the backbone's device."""
    if device is not None and torch.device(device).type != backbone.device.type:
        raise ValueError(f"backbone {backbone.name} lives on {backbone.device}, not {device}: create it there")
    out = np.zeros((len(images), backbone.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([backbone.pixels_transform(to_rgb(cap_aspect(im))) for im in chunk])
            out[start : start + len(chunk)] = backbone.forward_features(x).cpu().numpy()
    return out
