"""The local engine: tag photo files in this process, decoding in worker processes while the network runs.

`tag_paths` is what `tagger tag --engine local` and `tagger predict` run: one stream of batches
(`pipelines.features.iter_batches`: the decoding workers start once), tagged by `Tagger.tag` in
chunks of CHUNK_BATCHES batches (`tagger.library.plan`), a few seconds of work on a CPU, so a caller that records each
result loses at most one chunk when killed and shows progress every few seconds. The Ray engine's
units are the same chunks (`tagger.library.ray_engine`), so both engines tag every photo in the
same batches and give the same tags.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pipelines.cache import FeatureCache
from pipelines.features import Batch, hash_files, iter_batches
from pipelines.memory import release_free_memory
from tagger.library.plan import CHUNK_BATCHES
from tagger.model import Tagged, Tagger
from tagger.scoring.evidence import Evidence
from tagger.scoring.options import TagOptions

CACHE_SHARD = 4096  # photos per feature-cache shard tag_paths writes (20 MB at 1280-d): few shards, little lost to a kill


def tag_paths(tagger: Tagger, paths: Sequence[Path], options: TagOptions = TagOptions(), *, batch_size: int = 64,
              chunk: int | None = None, num_workers: int | None = None,
              cache_dir: str | Path | None = None) -> Iterator[tuple[Path, Tagged]]:
    """Yield (path, `Tagged`) for photo files: its tags, or tags None and the error of a photo that cannot be read,
    or no tags and a note (a blank frame).

    cache_dir: a feature cache (`pipelines.cache.FeatureCache`, shared with `tagger train` and
    `tagger features`): photos whose features and measures it holds are tagged first, without decoding,
    and the others are added to it, so tagging the same photos again with other options or another
    bundle on the same backbone does not run the network. Without it, photos are yielded in order.
    """
    tagger.method_of(options)  # an unknown method fails before the first photo
    chunk = chunk or CHUNK_BATCHES * batch_size
    paths = list(paths)
    todo = list(range(len(paths)))
    cache = FeatureCache(cache_dir, tagger.backbone) if cache_dir is not None else None
    if cache is not None:
        hashes = hash_files(paths)
        known = cache.lookup_rows({h for h in hashes if isinstance(h, str)})
        # A shard written before a measure was kept cannot say it (the photo's colour, a blank frame, its places):
        # such photos are decoded again.
        hit = [i for i, h in enumerate(hashes) if isinstance(h, str) and h in known and known[h][1].complete]
        for start in range(0, len(hit), chunk):
            rows = hit[start:start + chunk]
            cached = Batch(rows, np.stack([known[hashes[i]][0] for i in rows]), [hashes[i] for i in rows],
                           [known[hashes[i]][1] for i in rows], [])
            yield from _tag_batches(tagger, paths, rows, [cached], options)
        taken = set(hit)
        todo = [i for i in todo if i not in taken]
    pending: list[Batch] = []
    unsaved: list[Batch] = []
    done = 0  # photos of todo yielded so far: the pending batches cover the next ones, in order
    # A chunk is tagged in a thread while the network runs on the next one (numpy, faiss and torch let go of
    # the GIL): on a CPU the tagging then costs little beside extraction. One chunk in flight at a time,
    # yielded in order, so a caller that records each result still loses at most two chunks when killed.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagger-tag") as pool:
        flight: Future | None = None
        for batch in iter_batches(paths, tagger.backbone, batch_size, num_workers, rows=todo, hash=cache is not None):
            pending.append(batch)
            covered = sum(len(b.rows) + len(b.failed) for b in pending)
            if covered >= chunk or done + covered == len(todo):
                if flight is not None:
                    yield from flight.result()
                flight = pool.submit(lambda *a: list(_tag_batches(*a)), tagger, paths, todo[done:done + covered], pending, options)
                if cache is not None:
                    unsaved += pending
                    if sum(len(b.rows) for b in unsaved) >= CACHE_SHARD or done + covered == len(todo):
                        _cache_batches(cache, unsaved)
                        unsaved = []
                done, pending = done + covered, []
                release_free_memory()  # or the heap keeps every chunk's temporaries and grows with the photos
        if flight is not None:
            yield from flight.result()
    if cache is not None:
        cache.trim()


def _cache_batches(cache: FeatureCache, batches: list[Batch]) -> None:
    """One shard for the photos of `batches` that decoded to finite features."""
    rows = [(h, f, m) for b in batches for h, f, m in zip(b.hashes, b.features, b.measures) if h and np.isfinite(f).all()]
    if rows:
        cache.write(f"tag-{time.time_ns():x}-{os.getpid()}", [h for h, _, _ in rows], np.stack([f for _, f, _ in rows]),
                    [c for _, _, c in rows])


def _tag_batches(tagger: Tagger, paths: list[Path], positions: list[int], batches: list[Batch], options: TagOptions):
    """(path, Tagged) for paths[i], i in `positions`: the photos `batches` decoded or failed."""
    rows = [r for b in batches for r in b.rows]
    failed = {r: reason for b in batches for r, reason in b.failed}
    by_row: dict[int, Tagged] = {}
    if rows:
        evidence = Evidence.of(np.concatenate([b.features for b in batches]), [m for b in batches for m in b.measures])
        by_row = dict(zip(rows, tagger.tag(evidence, options)))
    for i in positions:
        yield paths[i], by_row.get(i, Tagged(None, failed.get(i, "not tagged")))
