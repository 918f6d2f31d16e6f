"""The Ray engine: `tagger tag SOURCE --engine ray` and `tagger features --engine ray` across machines.

    tag_source("photos/", "tags.parquet", model_path, RayOptions(workers=2))

The driver lists the photos (a local folder, a CSV/Parquet manifest with a path column, or any URI
that `pyarrow.fs` reads: s3://, gs://, file://), with each one's size and modification time, and
plans the run as the local engine does (`tagger.library.plan.decide`: a photo whose listing matches
its row is not read again). Before any photo is read, a probe task on every node checks that it
reaches SOURCE (and can use `--device`): a run that would fail on one node is refused in one line
naming the node. The photos to tag are cut into units of 2 x batch_size photos, in the order the
local engine tags them. Ray Data hands each unit to a `TagWorker` actor (one model per actor, a GPU
each where there are GPUs), which reads the bytes, hashes and decodes them with the project's own
decoder, runs the backbone in batches of batch_size and tags the unit with the model. These are the
chunks and batches of `tagger.library.local.tag_paths`, so every photo meets the same arithmetic and
gets the same tags and scores as with `--engine local` (CPU convolutions give results that differ
in the last bits when the batch around a photo differs).

The rows come back to the driver, which counts them into the summary (so it reports what every
node did, and a progress line every few minutes) and writes them to the output, a Parquet dataset:
a folder of `part-RUN-N.parquet` files of up to `rows_per_file` rows each (or `bytes_per_file`, or
what `file_seconds` gathered), with the local engine's columns. Only the driver writes: OUT need not
be shared by the nodes. After the run the files are read back, and a photo planned but without a
row is named and fails the run. Photos that could not be tagged get a row with the reason and are
listed in `OUT.failed.tsv`, a blank frame a row with no tags and the note why. A worker killed
mid-run is restarted by Ray and its unit tried again; a killed driver loses the rows not yet in a
file (at most `file_seconds` of work). `compact` merges a finished output's files. Ray is imported
only here and only when used: `pip install "tagger[ray]"`.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.datasets import PATH_COLUMNS
from pipelines.images import printable_path
from pipelines.scan import DEFAULT_EXCLUDE_DIRS, PHOTO_EXTENSIONS
from tagger.library.batch import Lock
from tagger.library.results import COLUMNS, BatchError, failures_tsv, output_format, write_failures
# A unit is CHUNK_BATCHES x batch_size photos: the chunk of the local engine's tag_paths, so the batches match.
from tagger.library.plan import (CHUNK_BATCHES, LISTING, UNKNOWN, Plan, Scope, Selection, Summary, common_prefix, decide, latest_rows,
                                 listing_of, listing_table, select_photos, tails)
from tagger.scoring.options import TagOptions

log = logging.getLogger(__name__)

INSTALL_HINT = 'the ray engine needs Ray: pip install "tagger[ray]" (or pip install "ray[data]")'
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
MANIFEST_BATCH = 65_536  # manifest rows read at a time: the driver holds the listing in Arrow, never a Python object per photo
SCHEMA = pa.schema([("path", pa.string()), ("tags", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())), ("error", pa.string()),
                    ("hash", pa.string()), ("settings", pa.string()), ("note", pa.string()), ("size", pa.int64()), ("mtime", pa.int64())])
CODED = ("settings", "error", "note")  # few distinct values over millions of rows: read dictionary-encoded to plan
DEVICES = re.compile(r"^(cpu|cuda|mps)$")  # on Ray each actor is given its GPU: cuda:N means nothing there


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs, and how it writes and reports."""

    address: str | None = None  # "auto" or host:port of a running cluster; None: start a local Ray
    workers: int | None = None  # model actors; None: one per GPU with a GPU device, else one per CPU of the cluster
    cpus_per_worker: int = 1  # CPUs (and torch threads) each actor holds
    device: str | None = None  # "cpu", "cuda", "mps"; None: "cuda" where the cluster has GPUs, else "cpu"
    batch_size: int = 64  # photos per backbone forward pass (as `tagger tag --batch-size`)
    read_threads: int = 4  # threads reading and decoding a unit's photos inside each actor
    runtime: str | None = None  # what runs the backbone in each actor (torch, onnx, onnx-int8; None: the device's default)
    progress: bool = False  # Ray Data's progress bars
    progress_every: float = 300.0  # seconds between the progress lines (done, rate, ETA) on stderr; 0: none
    rows_per_file: int = 100_000  # rows of an output file: 100M photos make 1,000 files
    bytes_per_file: int = 64 * 2**20  # ... or fewer, once the rows held for a file reach this size in memory
    file_seconds: float = 600.0  # ... or fewer, once the oldest row held is this old: what a killed driver can lose

    def __post_init__(self):
        for name in ("cpus_per_worker", "batch_size", "read_threads", "rows_per_file", "bytes_per_file"):
            if getattr(self, name) < 1:
                raise BatchError(f"ray options: {name} must be at least 1, not {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise BatchError(f"--workers must be at least 1, not {self.workers}")
        if self.progress_every < 0 or self.file_seconds <= 0:
            raise BatchError("ray options: progress_every must be 0 or more, file_seconds more than 0")
        if self.device is not None and not DEVICES.match(self.device):
            hint = "; on Ray each worker is given a GPU of its own: use --device cuda" if self.device.startswith("cuda:") else ""
            raise BatchError(f"--device {self.device}: the ray engine runs on cpu, cuda or mps{hint}")


# -- Ray itself ----------------------------------------------------------------------------------


def import_ray():
    """The ray module, or a BatchError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BatchError(INSTALL_HINT) from None
    return ray


@contextmanager
def ray_session(address: str | None = None):
    """Join the cluster at `address`, or start a local Ray with this machine's CPUs; left as found."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray  # the caller's Ray (a test's, a notebook's): not ours to stop
        return
    kwargs = {"include_dashboard": False, "log_to_driver": False}
    if address:
        if address.startswith("ray://"):
            raise BatchError(f"--address {address}: the Ray client (ray://) is not supported; run tagger on a node of the cluster "
                             "with --address auto (or HEAD_IP:6379)")
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BatchError(f"cannot join the Ray cluster at {address} ({str(e).splitlines()[0]}); on a node of the cluster, "
                             "`ray status` says whether it runs (README: Starting a cluster)") from None
    else:
        # "local": a Ray of our own even where `ray start` left a cluster (or RAY_ADDRESS names one), which
        # ray.init would otherwise join, and refuse to, since num_cpus is given.
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def driver_memory_pool():
    """The driver's Arrow buffers from jemalloc while a run plans and collects, where pyarrow has it and the user chose
    no pool (ARROW_DEFAULT_MEMORY_POOL): planning a rerun of 2M photos peaked ~250 MB higher with pyarrow's default
    (mimalloc), which keeps memory freed between steps instead of handing it back. Freed pages go back at once, not
    after jemalloc's decay of a second: the plan's steps follow each other faster than that, and the pages each had
    freed were still held when the next allocated (2M photos: the rerun peaked at 870-950 MB with the decay, 750 without)."""
    try:
        pool = None if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") else pa.jemalloc_memory_pool()
        if pool is not None:
            pa.jemalloc_set_decay_ms(0)  # for the arenas made from now on: the driver's allocations are few and large
    except NotImplementedError:
        pool = None
    if pool is None:
        yield
        return
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(before)


def _placement(ray, options: RayOptions) -> tuple[int, str, dict]:
    """(workers, device, resources per actor) for the cluster at hand."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    device = options.device or ("cuda" if gpus else "cpu")
    if device == "cuda":
        if not gpus:
            raise BatchError(f"--device {device}: the Ray cluster has no GPUs")
        return options.workers or gpus, device, {"num_gpus": 1, "num_cpus": options.cpus_per_worker}
    workers = options.workers or max(1, cpus // options.cpus_per_worker)
    return workers, device, {"num_cpus": options.cpus_per_worker}


def _check_runtime(device: str, runtime: str | None) -> None:
    """The runtime for the device, checked on the driver (ONNX Runtime on a GPU is refused) before any actor starts;
    by name: the driver never imports torch (its workers do)."""
    from pipelines.device import choose_runtime

    choose_runtime(runtime, device)


# -- the probe: what every node must reach, checked before any work ---------------------------------


def probe_node(samples: list[tuple[str, bytes]], device: str) -> str:
    """Ray task, on one node: "" when it reads the sample photos and has the device, else what is wrong (one line)."""
    from pipelines.images import ImageError

    reader = Reader()
    for key, location in samples:
        try:
            reader.read(location, key)
        except ImageError as e:
            return f"{key}: {e.reason}; SOURCE must be at the same path on every node, or in object storage"
    if device != "cpu":
        from pipelines.device import choose_device
        from pipelines.errors import OptionError

        try:
            choose_device(device)
        except OptionError as e:
            return f"--device {device}: {e}"
    return ""


PROBE_SECONDS = 120.0  # a probe is a few reads and imports; a node that has not answered by then will not run the work either


def probe_nodes(ray, samples: list[tuple[str, bytes]], device: str, timeout: float = PROBE_SECONDS, check=probe_node) -> None:
    """Run `check` (`probe_node`) on every node that can run a worker, and refuse the run in one line if one of them
    fails, or has not answered in `timeout` seconds.

    The samples are photos the driver has just read: a node that cannot read them does not see SOURCE
    as the driver does (a folder on the driver only, another mount), and every photo it was given
    would fail with "no such file". A node that never answers (its raylet gone, no worker process it
    can start) would otherwise hold the run at this step forever, saying nothing.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    resource = "GPU" if device == "cuda" else "CPU"
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource, 0) > 0]
    task = ray.remote(num_cpus=0, max_retries=0)(check)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(samples, device)
            for n in nodes]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    answered = set(done)
    silent = [n for n, ref in zip(nodes, refs) if ref not in answered]
    if silent:
        for ref in refs:
            if ref not in answered:
                ray.cancel(ref, force=True)
        names = ", ".join(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in silent)
        raise BatchError(f"node{'s' * (len(silent) > 1)} {names}: no answer to the probe in {timeout:.0f} s; "
                         "`ray status` on the head says whether every node is up")
    for node, problem in zip(nodes, ray.get(refs)):
        if problem:
            raise BatchError(f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): {problem}")


def _samples(photos: pa.Table, reader: "Reader", most: int = 3) -> list[tuple[str, bytes]]:
    """Up to `most` of the first photos that the driver itself reads: what the probe asks each node for."""
    found = []
    for key, location in zip(photos["key"].to_pylist()[: 4 * most], photos["location"].to_pylist()[: 4 * most]):
        try:
            reader.read(location, key)
        except Exception:  # noqa: BLE001 - a photo the driver cannot read says nothing about the nodes
            continue
        found.append((key, location))
        if len(found) == most:
            break
    return found


# -- sources ---------------------------------------------------------------------------------------


def is_uri(source: str | Path) -> bool:
    return "://" in str(source)


def list_photos(source: str | Path, exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
                skip_owner_tagged: bool = False) -> tuple[pa.Table, Selection]:
    """The photos of a folder, a manifest (CSV/Parquet with a path column) or a URI (pyarrow.fs), in tagging order, and
    what was left out: a table of key (what the results call it), location (what a worker opens: a local path's bytes
    or the URI), size and mtime (ns; UNKNOWN where the listing does not say). A local folder is scanned as the local
    engine scans it (`tagger.library.plan.select_photos`)."""
    if is_uri(source):
        if skip_owner_tagged:
            raise BatchError(f"{source}: --skip-owner-tagged reads each photo's keywords on this machine; it takes a local folder")
        listing, folder = _list_uri(str(source), exclude_dirs)
        return listing, Selection({}, scope=Scope((folder,) if folder else ()))
    source = Path(source)
    if source.is_dir():
        chosen = select_photos([source], exclude_dirs, skip_owner_tagged)
        paths = list(chosen.photos.values())
        return listing_table(list(chosen.photos), [listing_of(p) for p in paths], location=[os.fsencode(p) for p in paths]), chosen
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        if skip_owner_tagged:
            raise BatchError(f"{source}: --skip-owner-tagged takes a folder of photos, not a manifest")
        with open(source, "rb") as f:
            return _read_manifest(f, str(source), base=str(source.parent)), Selection({})
    raise BatchError(f"{source}: no such folder or manifest (a .csv or .parquet file with a path column)")


def _list_uri(uri: str, exclude_dirs: Sequence[str] = ()) -> tuple[pa.Table, str]:
    """The listing of a URI's folder or manifest, and what the keys under that folder start with ("": a manifest)."""
    from pyarrow import fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as e:
        raise BatchError(f"{uri}: cannot open ({e})") from None
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.File:
        if Path(root).suffix.lower() not in MANIFEST_SUFFIXES:
            raise BatchError(f"{uri}: not a folder or a manifest (.csv or .parquet)")
        with filesystem.open_input_file(root) as f:
            return _read_manifest(f, uri, base=uri.rsplit("/", 1)[0]), ""
    if info.type != pafs.FileType.Directory:
        raise BatchError(f"{uri}: no such folder or manifest")
    found = []
    for entry in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = entry.path[len(root.rstrip("/")) + 1 :]
        folders = rel.split("/")[:-1]
        if entry.type == pafs.FileType.File and not any(part.startswith(".") for part in rel.split("/")) \
                and not any(fnmatch.fnmatch(f, pattern) for f in folders for pattern in exclude_dirs) \
                and os.path.splitext(entry.path)[1].lower() in PHOTO_EXTENSIONS:
            # The object store's listing gives size and modification time with the name: nothing more to ask.
            found.append((f"{scheme}://{entry.path}", entry.size, entry.mtime_ns if entry.mtime_ns is not None else UNKNOWN))
    found.sort()
    listing = listing_table([u for u, _, _ in found], [(s, m) for _, s, m in found], location=[u.encode() for u, _, _ in found])
    return listing, f"{scheme}://{root.rstrip('/')}/"


def _manifest_batches(file, name: str):
    """The manifest's record batches, MANIFEST_BATCH rows at a time (CSV cells as text)."""
    if name.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(file).iter_batches(batch_size=MANIFEST_BATCH)
        return
    from pyarrow import csv

    parse = csv.ParseOptions(delimiter="\t" if name.lower().endswith(".tsv") else ",")
    names = csv.open_csv(file, parse_options=parse).schema.names
    file.seek(0)
    # Every column as text, as a manifest is a list of names: the types of its first block would decide the rest.
    yield from csv.open_csv(file, read_options=csv.ReadOptions(block_size=1 << 20), parse_options=parse,
                            convert_options=csv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False))


def _read_manifest(file, name: str, base: str) -> pa.Table:
    """A manifest's photos as a listing (see `list_photos`): relative paths taken from `base`; size and mtime from the
    manifest's own columns where it has them, else from a stat of each local path (a URI's: UNKNOWN, so it is hashed)."""
    parts, columns = [], None
    try:
        for batch in _manifest_batches(file, name):
            if columns is None:
                columns = batch.schema.names
                column = next((c for c in PATH_COLUMNS if c in columns), None)
                if column is None:
                    raise BatchError(f"{name}: manifest has no path column (one of {', '.join(PATH_COLUMNS)}); it has {', '.join(columns)}")
            parts.append(_manifest_part(batch, column, base))
    except pa.ArrowInvalid as e:
        raise BatchError(f"{name}: cannot read the manifest ({str(e).splitlines()[0]})") from None
    if not parts:
        return listing_table([], [], location=pa.array([], pa.binary()))
    listing = pa.concat_tables(parts)
    # A photo listed twice is one photo: its first line is kept (a run tags it once, and finds its row by its key).
    keys = tails(listing["key"], common_prefix(listing["key"]))
    first = pc.index_in(keys, value_set=keys).to_numpy(zero_copy_only=False)
    del keys
    repeated = first != np.arange(listing.num_rows)
    return listing.filter(pa.array(~repeated)) if repeated.any() else listing


def _manifest_part(batch: pa.RecordBatch, column: str, base: str) -> pa.Table:
    """One batch of a manifest as a listing, column by column: names trimmed, blanks dropped, relative paths joined to
    `base`; a local path's key is its printable form (`printable_path`: a backslash doubled), its location its bytes."""
    values = pc.utf8_trim_whitespace(batch.column(column).cast(pa.string()))
    given = [batch.column(c) for c in LISTING if c in batch.schema.names]
    keep = pc.not_equal(values, "")
    values = values.filter(keep)
    relative = pc.invert(pc.or_(pc.match_substring(values, "://"), pc.starts_with(values, "/")))
    values = pc.if_else(relative, pc.binary_join_element_wise(base.rstrip("/"), values, "/"), values)
    uri = pc.match_substring(values, "://")
    escaped = pc.any(pc.match_substring(values, "\\")).as_py()
    # Without a backslash a key is its path's text, and the location the same buffers seen as bytes (no copy).
    keys = pc.if_else(uri, values, pc.replace_substring(values, "\\", "\\\\")) if escaped else values
    if len(given) == 2:  # the manifest says each photo's size and mtime (ns): as a listing would
        size, mtime = (_ints(c.filter(keep)) for c in given)
    else:  # a stat of each local path (no read); a URI's listing is not asked for, one request a photo: hashed instead
        listed = [(UNKNOWN, UNKNOWN) if u else listing_of(v) for v, u in zip(values.to_pylist(), uri.to_pylist())]
        size, mtime = (pa.array([x[i] for x in listed], pa.int64()) for i in (0, 1))
    return pa.table({"key": keys, "size": size, "mtime": mtime, "location": values.cast(pa.binary())})


def _ints(column: pa.Array) -> pa.Array:
    """A manifest's size or mtime column as int64, UNKNOWN where a cell is not a whole number."""
    if pa.types.is_integer(column.type):
        return pc.fill_null(column.cast(pa.int64()), UNKNOWN)
    text = pc.utf8_trim_whitespace(column.cast(pa.string()))
    return pc.if_else(pc.fill_null(pc.match_substring_regex(text, r"^-?[0-9]+$"), False), text, str(UNKNOWN)).cast(pa.int64())


# -- reading photos (in workers) ------------------------------------------------------------------


class Reader:
    """Reads photo bytes from local paths or URIs; errors read like the local engine's (`pipelines.images.read_bytes`)."""

    def __init__(self):
        self.filesystems = {}

    def read(self, location: bytes, key: str) -> bytes:
        from pipelines.images import ImageError, read_bytes

        if b"://" not in location:
            return read_bytes(os.fsdecode(location))
        from pyarrow import fs as pafs

        uri = location.decode()
        head = uri.split("/", 3)[:3]  # scheme://bucket: one filesystem object per bucket
        try:
            if tuple(head) not in self.filesystems:
                self.filesystems[tuple(head)] = pafs.FileSystem.from_uri(uri)[0]
            filesystem = self.filesystems[tuple(head)]
            path = pafs.FileSystem.from_uri(uri)[1] if uri.startswith("file:") else uri.split("://", 1)[1]
            with filesystem.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise ImageError(key, "no such file") from None
        except (OSError, ValueError) as e:
            raise ImageError(key, f"cannot read: {e}") from None


def _units(photos: pa.Table, size: int) -> pa.Table:
    """The photos cut into units of `size`: one row per unit, each column a list (keys, locations, sizes, mtimes)."""
    n = photos.num_rows
    offsets = pa.array(np.append(np.arange(0, n, size), n).astype(np.int32)) if n else pa.array([0], pa.int32())
    return pa.table({name: pa.ListArray.from_arrays(offsets, photos[column].combine_chunks())
                     for name, column in (("keys", "key"), ("locations", "location"), ("sizes", "size"), ("mtimes", "mtime"))})


def _dataset(ray, photos: pa.Table, unit: int):
    """A Ray dataset of `photos` in units, one block per unit: a task's one output is one unit, so a retried task gives
    no row twice. Each block is cut from its slice of `photos`: no second copy of the list is made."""
    # Each block into the object store as it is cut: the driver never holds the units all at once.
    return ray.data.from_arrow_refs([ray.put(_units(photos.slice(i, unit), unit)) for i in range(0, photos.num_rows, unit)])


def _unit_lists(batch: pa.Table) -> tuple[list[str], list[bytes]]:
    """The one unit in a Ray batch of size 1."""
    return batch.column("keys")[0].as_py(), batch.column("locations")[0].as_py()


def hash_unit(batch: pa.Table) -> pa.Table:
    """Ray task: the content hash of each photo of a unit ("" where it cannot be read)."""
    from embeddings.files import content_hash
    from pipelines.images import ImageError

    keys, locations = _unit_lists(batch)
    reader = Reader()

    def one(key_location):
        try:
            return content_hash(reader.read(key_location[1], key_location[0]))
        except ImageError:
            return ""

    with ThreadPoolExecutor(8) as pool:
        hashes = list(pool.map(one, zip(keys, locations)))
    return pa.table({"path": pa.array(keys, pa.string()), "hash": pa.array(hashes, pa.string())})


class FeatureWorker:
    """Ray actor: one backbone, reading, decoding and extracting one unit of photos per call, in the local engine's batches."""

    def __init__(self, backbone: str, weights: str | None, device: str, batch_size: int, read_threads: int = 4, threads: int = 1,
                 runtime: str | None = None):
        import torch

        from pipelines.backbones import create_backbone

        torch.set_num_threads(max(1, threads))
        self.backbone = create_backbone(backbone, weights=weights, device=device, runtime=runtime) if backbone else None
        self.batch_size = batch_size
        self.reader = Reader()
        self.pool = ThreadPoolExecutor(max(1, read_threads))

    def decode(self, key_location: tuple[str, bytes]):
        """(hash, pixels, measures, error) of one photo; never raises (the local engine's `_PhotoDataset` item)."""
        from embeddings.files import content_hash
        from pipelines.images import ImageError, decode_image
        from pipelines.measures import NOT_MEASURED, measure

        key, location = key_location
        digest = ""
        try:
            data = self.reader.read(location, key)
            digest = content_hash(data)
            image = decode_image(data, key, min_side=self.backbone.preprocessing.resize)
            return digest, self.backbone.pixels_transform(image), measure(image), ""
        except ImageError as e:
            return digest, None, NOT_MEASURED, e.reason
        except Exception as e:  # noqa: BLE001 - one odd photo must not end a run over millions
            return digest, None, NOT_MEASURED, f"{type(e).__name__}: {e}"

    def features(self, keys: list[str], locations: list[bytes]):
        """Features (n, D), NaN where a photo failed, with hashes, measures and errors; batched as the local DataLoader batches."""
        import torch

        decoded = list(self.pool.map(self.decode, zip(keys, locations)))
        n = len(keys)
        features = np.full((n, self.backbone.dim), np.nan, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                rows = [i for i in range(start, min(start + self.batch_size, n)) if decoded[i][1] is not None]
                if rows:
                    features[rows] = self.backbone.forward_features(torch.stack([decoded[i][1] for i in rows])).cpu().numpy()
        hashes = [d[0] for d in decoded]
        measures = [d[2] for d in decoded]
        errors = [d[3] for d in decoded]  # decoding's; a non-finite output is the caller's to report
        return features, hashes, measures, errors

    def __call__(self, batch):
        import pyarrow as pa

        from tagger.model import NON_FINITE

        from pipelines.measures import columns, join_places

        keys, locations = _unit_lists(batch)
        features, hashes, measures, errors = self.features(keys, locations)
        errors = [e or ("" if np.isfinite(f).all() else NON_FINITE) for e, f in zip(errors, features)]
        chroma, blank, places = columns(measures)
        return pa.table({"path": pa.array(keys, pa.string()), "hash": pa.array(hashes, pa.string()), "error": pa.array(errors, pa.string()),
                         "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel(), pa.float32()), features.shape[1]),
                         # What decoding measured, for the feature cache (a failed photo's are never kept).
                         "chroma": pa.array(chroma, pa.float32()), "blank": pa.array(blank, pa.int8()),
                         "places": pa.array([join_places(p or ()) for p in places], pa.string())})


class TagWorker(FeatureWorker):
    """Ray actor: one model, tagging one unit of photos per call, exactly as `tagger.library.local.tag_paths` tags one chunk."""

    def __init__(self, bundle: list, device: str, options: TagOptions, batch_size: int, read_threads: int = 4,
                 threads: int = 1, settings: str = "", runtime: str | None = None):
        import ray

        from tagger.bundle import load

        super().__init__("", None, device, batch_size, read_threads, threads, runtime)
        # The bundle travels as bytes through Ray's object store, so nodes need no shared disk. It comes as
        # [reference] so that Ray hands over the reference, not its 20 MB, as a constructor argument.
        self.dir = tempfile.mkdtemp(prefix="tagger-bundle-")
        for name, data in ray.get(bundle[0]).items():
            Path(self.dir, name).write_bytes(data)
        self.tagger = load(self.dir, device=device, runtime=runtime)
        self.tagger.method_of(options)  # an unknown method fails here, before the first photo
        self.backbone = self.tagger.backbone
        self.options, self.settings = options, settings

    def __del__(self):
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)

    def __call__(self, batch):
        import pyarrow as pa

        from tagger.scoring.evidence import Evidence

        keys, locations = _unit_lists(batch)
        features, hashes, measures, errors = self.features(keys, locations)
        rows = [i for i in range(len(keys)) if not errors[i]]  # decoded: Tagger.tag checks their features
        results = self.tagger.tag(Evidence.of(features[rows], [measures[i] for i in rows]), self.options) if rows else []
        by_row, notes = {}, [""] * len(keys)
        for i, result in zip(rows, results):
            if result.tags is None:
                errors[i] = result.error
            else:
                by_row[i], notes[i] = result.tags, result.note
        return pa.table({
            "path": pa.array(keys, pa.string()),
            "tags": pa.array([[t for t, _ in by_row.get(i, [])] for i in range(len(keys))], pa.list_(pa.string())),
            "scores": pa.array([[round(float(s), 4) for _, s in by_row.get(i, [])] for i in range(len(keys))], pa.list_(pa.float64())),
            "error": pa.array(errors, pa.string()),
            "hash": pa.array(hashes, pa.string()),
            "settings": pa.array([self.settings] * len(keys), pa.string()),
            "note": pa.array(notes, pa.string()),
            # The listing as the driver saw it before any read: a photo changed since is seen as changed next run.
            "size": batch.column("sizes")[0].values,
            "mtime": batch.column("mtimes")[0].values,
        })


# -- the output dataset -------------------------------------------------------------------------


def _run_name() -> str:
    """A run's name: its start in UTC, so that the files of later runs sort last (and win)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


class Output:
    """The Parquet dataset folder (local or any pyarrow.fs URI) and the files in it, read with `pyarrow.dataset`."""

    def __init__(self, out: str | Path):
        from pyarrow import fs as pafs

        self.name = str(out)
        if is_uri(out):
            self.fs, self.root = pafs.FileSystem.from_uri(str(out))
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(out).absolute())
        self.local = isinstance(self.fs, pafs.LocalFileSystem) and not is_uri(out)

    def files(self) -> list[str]:
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type != pafs.FileType.Directory:
            raise BatchError(f"{self.name}: is a file (written by --engine local?); the ray engine writes a folder: choose another --out")
        entries = self.fs.get_file_info(pafs.FileSelector(self.root))
        # Names start with the run's UTC time, so sorting puts later runs last.
        return sorted(e.path for e in entries if e.type == pafs.FileType.File and e.base_name.startswith("part-")
                      and e.base_name.endswith(".parquet"))

    def check_writable(self) -> bool:
        """Make the folder and write a file in it, before any work: a read-only or missing place fails the run at once.
        True when the folder was made here (`remove_if_empty` takes it away again after a refused run)."""
        from pyarrow import fs as pafs

        marker = f"{self.root}/.probe-{_run_name()}"
        try:
            made = self.fs.get_file_info(self.root).type == pafs.FileType.NotFound
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(marker) as f:
                f.write(b"tagger")
            self.fs.delete_file(marker)
        except (OSError, ValueError) as e:
            raise BatchError(f"{self.name}: cannot write there ({str(e).splitlines()[0]})") from None
        return made

    def remove_if_empty(self) -> None:
        from pyarrow import fs as pafs

        if not self.fs.get_file_info(pafs.FileSelector(self.root)):
            self.fs.delete_dir(self.root)

    def table(self, columns: Sequence[str] = tuple(SCHEMA.names), files: Sequence[str] | None = None, coded: bool = False,
              where=None, strip: str = "", under: bool = False) -> pa.Table:
        """Every row of `files` (default: all), in file order, the columns asked for and `_file` (the file's index in
        `files`); a column a file lacks (written before it existed) reads as null. One scan of the dataset; a file torn
        by a killed run is removed (its photos are tagged again) and the scan repeated. coded: settings, error and
        note dictionary-encoded, as Parquet stores them (a run's settings are one string, not one a photo). where: a
        `pyarrow.dataset` filter expression: only its rows (and no `_file`). strip: each path as what follows this start
        (`tails`: null where a path lacks it), cut while the files are read, so the whole paths are never held.
        under (with strip): only the rows whose path has that start, with `_row` (the row's position over all the rows
        of `files`) for `_file`: the other rows (other folders' photos in the same output) are never held at all."""
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        files = self.files() if files is None else list(files)
        schema, fmt = SCHEMA, "parquet"
        if coded:
            schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in CODED else f for f in SCHEMA])
            fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(CODED)))
        while True:
            try:
                dataset = ds.dataset(files, schema=schema, format=fmt, filesystem=self.fs)
                counts = [fragment.metadata.num_rows for fragment in dataset.get_fragments()]
                projection = {c: tails(ds.field(c), strip) if c == "path" else ds.field(c) for c in columns} if strip \
                    else list(columns)
                table = self._under(dataset, projection, strip) if under else dataset.to_table(columns=projection, filter=where)
                break
            except (OSError, pa.ArrowInvalid) as e:
                torn = []
                for path in files:
                    try:
                        pq.read_metadata(path, filesystem=self.fs)
                    except (OSError, pa.ArrowInvalid):
                        torn.append(path)
                if not torn:
                    raise BatchError(f"{self.name}: cannot read the output ({str(e).splitlines()[0]})") from None
                for path in torn:
                    log.warning("%s: unreadable part of the output, removed (its photos are tagged again)", path)
                    self.fs.delete_file(path)
                files = [f for f in files if f not in torn]
        self.read_files, self.file_rows = files, counts
        if where is not None or under:
            return table
        index = np.repeat(np.arange(len(files), dtype=np.int32), counts) if files else np.zeros(0, np.int32)
        return table.append_column("_file", pa.array(index))

    @staticmethod
    def _under(dataset, projection: dict, strip: str) -> pa.Table:
        """The rows of `dataset` whose path starts with `strip` (their tails), with `_row`, batch by batch in order."""
        import pyarrow.dataset as ds

        if not strip:
            raise ValueError("under needs a start to keep the rows under")
        columns = list(projection)
        projection = {**projection, "path": tails(ds.field("path"), strip)}
        scanner = dataset.scanner(columns=projection)
        parts, rows, offset = [], [], 0
        for batch in scanner.to_batches():
            keep = pc.is_valid(batch.column("path"))
            at = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
            if len(at):
                parts.append(batch if len(at) == batch.num_rows else batch.filter(keep))
                rows.append(at + offset)
            offset += batch.num_rows
        table = pa.Table.from_batches(parts, schema=scanner.projected_schema).select(columns)
        return table.append_column("_row", pa.array(np.concatenate(rows) if rows else np.zeros(0, np.int64)))

    def latest(self, columns: Sequence[str] = tuple(SCHEMA.names), coded: bool = False) -> pa.Table:
        """The latest row of each path (later runs win), with `_file`; `self.rows_in_files` counts every row."""
        table = self.table(tuple(dict.fromkeys(["path", *columns])), coded=coded)
        self.rows_in_files = table.num_rows
        return _filled(_latest_only(table))

    def read(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The latest row of each path written so far, as a frame (`read_output` sorts it)."""
        return self.latest(columns or tuple(SCHEMA.names)).drop_columns(["_file"]).to_pandas()

    def write(self, table: pa.Table, name: str) -> str:
        """A file of the output, whole or not at all: written beside, then moved in place."""
        import pyarrow.parquet as pq

        path, tmp = f"{self.root}/{name}", f"{self.root}/.tmp-{name}"
        with self.fs.open_output_stream(tmp) as f:
            pq.write_table(table, f)
        self.fs.move(tmp, path)
        return path

    def prune(self, drop: np.ndarray) -> None:
        """Rewrite the files of the last `table()` read that hold rows at the positions `drop` (over all the rows read,
        as `_row` gives them): rows a later run superseded, or of photos that left the source."""
        files, file_rows = self.read_files, self.file_rows
        starts = np.cumsum([0, *file_rows])
        drop = np.unique(drop)
        file_of = np.searchsorted(starts, drop, side="right") - 1
        for i in np.unique(file_of):
            path, gone = files[i], drop[file_of == i] - starts[i]
            if len(gone) == file_rows[i]:
                self.fs.delete_file(path)
                continue
            # The file's rows by position, as it was read: a photo twice in one file keeps its last.
            keep = np.ones(file_rows[i], bool)
            keep[gone] = False
            table = self.table(tuple(SCHEMA.names), [path]).drop_columns(["_file"])
            self.write(table.filter(pa.array(keep)), path.rsplit("/", 1)[1])

    def write_failures(self, rows: pd.DataFrame) -> str | None:
        """OUT.failed.tsv, as the local engine writes it."""
        if self.local:
            target = write_failures(rows, Path(self.root))
            return str(target) if target else None
        target = self.root + ".failed.tsv"
        if (rows["error"] == "").all():
            try:
                self.fs.delete_file(target)
            except (FileNotFoundError, OSError):
                pass
            return None
        with self.fs.open_output_stream(target) as f:
            f.write(failures_tsv(rows))
        return target


def _filled(table: pa.Table) -> pa.Table:
    """Nulls of columns older files lack as the local engine reads them: "" for text, UNKNOWN for the listing."""
    for name in table.column_names:
        if name in ("error", "hash", "settings", "note"):
            table = table.set_column(table.schema.get_field_index(name), name, pc.fill_null(table[name], ""))
        elif name in LISTING:
            table = table.set_column(table.schema.get_field_index(name), name, pc.fill_null(table[name], UNKNOWN))
    return table


class Writer:
    """The run's rows, gathered on the driver into files of the output: a file when `rows_per_file` rows or
    `bytes_per_file` bytes are held, or the oldest held row is `file_seconds` old, and at the end."""

    def __init__(self, output: Output, run: str, options: RayOptions):
        self.output, self.run, self.options = output, run, options
        self.held: list[pa.Table] = []
        self.since = None
        self.files: list[str] = []

    def add(self, rows: pa.Table) -> None:
        rows = rows.select(SCHEMA.names).cast(SCHEMA)
        if not self.held:
            self.since = time.monotonic()
        self.held.append(rows)
        held = sum(t.num_rows for t in self.held)
        while held >= self.options.rows_per_file:
            table = pa.concat_tables(self.held)
            self._file(table.slice(0, self.options.rows_per_file))
            rest = table.slice(self.options.rows_per_file)
            self.held, held = ([rest] if rest.num_rows else []), rest.num_rows
            self.since = time.monotonic()
        if self.held and (sum(t.nbytes for t in self.held) >= self.options.bytes_per_file
                          or time.monotonic() - self.since >= self.options.file_seconds):
            self.close()

    def close(self) -> None:
        if self.held:
            self._file(pa.concat_tables(self.held))
            self.held = []

    def _file(self, table: pa.Table) -> None:
        self.files.append(self.output.write(table, f"part-{self.run}-{len(self.files):06d}.parquet"))


class ProgressLine:
    """Every `every` seconds, a line on stderr: photos done of the run's, the rate since the work started, and the ETA."""

    def __init__(self, total: int, every: float, stream=None):
        self.total, self.every, self.stream = total, every, stream
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.every and now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            print(f"tagger: {self.done:,} of {self.total:,} photos done, {rate:.1f} photos/s, about {_duration(eta)} to go",
                  file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "an unknown time"
    seconds = int(round(seconds))
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min" if seconds >= 3600 else f"{seconds // 60} min {seconds % 60:02d} s"


def _latest_only(table: pa.Table) -> pa.Table:
    """The last row of each path (in the table's order: file by file, files in run order)."""
    if not table.num_rows or pc.count_distinct(table["path"]).as_py() == table.num_rows:
        return table
    order = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    return table.take(np.sort(order.group_by("path").aggregate([("_row", "max")])["_row_max"].to_numpy()))


# -- the runs ----------------------------------------------------------------------------------


def bundle_files(model_path: str | Path) -> dict[str, bytes]:
    """The bundle's files as bytes (what a worker on any node needs to load it)."""
    folder = Path(model_path)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".json", ".npz", ".safetensors")}


def _current_hashes(ray, photos: pa.Table, unit: int) -> list[str]:
    """Content hashes of `photos` (in order), read by Ray tasks (on whichever nodes reach the storage)."""
    if not photos.num_rows:
        return []
    hashes = {}
    ds = _dataset(ray, photos, unit).map_batches(hash_unit, batch_size=1, batch_format="pyarrow")
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        hashes.update(zip(batch["path"].to_pylist(), batch["hash"].to_pylist()))
    return [hashes.get(k, "") for k in photos["key"].to_pylist()]


def plan(photos: pa.Table, output: Output, settings: str, hash_photos, retry_failed: bool = True, rehash: bool = False,
         prefix: str = ""):
    """What a run of `photos` (a listing, `list_photos`) into `output` will do: `tagger.library.plan.decide` on the
    output's rows (decide takes each photo's last). hash_photos(rows) hashes the photos whose listing does not match
    their row. The rows' hashes (64 characters a photo) are read only if one is needed: not by a rerun with nothing to do.
    prefix: a start every key has (`common_prefix`, or the source folder's): the rows' paths are read and matched
    without it, and rows without it (other sources' photos) are not read at all."""
    under = bool(prefix)  # rows of photos outside the start are no photo's of the listing: never read
    previous = _filled(output.table(["path", "settings", "error", *LISTING], coded=True, strip=prefix, under=under))
    files = output.read_files
    return decide(photos, previous, hash_photos, settings, retry_failed, rehash,
                  old_hashes=lambda: pc.fill_null(output.table(["hash"], files, strip=prefix, under=under)["hash"], ""), prefix=prefix)


def tag_source(source: str | Path, out: str | Path, model_path: str | Path, options: RayOptions = RayOptions(),
               tag_options: TagOptions = TagOptions(), on_plan=None, settings: str = "", *,
               exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS, skip_owner_tagged: bool = False,
               retry_failed: bool = True, rehash: bool = False, progress_stream=None) -> Summary:
    """Tag the photos of `source` that `out` does not already hold, on Ray; returns what happened.

    The plan is the local engine's (`tagger.library.plan.decide`): new, changed and earlier-failed
    photos (unless retry_failed is off) are tagged, rows made with other `settings` (`Tagger.settings`)
    are tagged again, a photo whose size and mtime match its row is not read (rehash: every photo with
    a row is read and hashed), and a local folder is scanned as the local engine scans it
    (exclude_dirs, skip_owner_tagged). on_plan gets the `Plan`; the progress lines go to
    progress_stream (default stderr).
    """
    if output_format(Path(str(out))) != "parquet":
        raise BatchError(f"{out}: the ray engine writes a Parquet dataset (a folder): use --out NAME.parquet")
    if options.device:
        _check_runtime(options.device, options.runtime)
    with driver_memory_pool():
        return _tag_source(source, out, model_path, options, tag_options, on_plan, settings, exclude_dirs, skip_owner_tagged,
                           retry_failed, rehash, progress_stream)


def _tag_source(source, out, model_path, options: RayOptions, tag_options: TagOptions, on_plan, settings: str, exclude_dirs,
                skip_owner_tagged: bool, retry_failed: bool, rehash: bool, progress_stream) -> Summary:
    photos, chosen = list_photos(source, exclude_dirs, skip_owner_tagged)
    output = Output(out)
    lock = Lock(Path(output.root)) if output.local else None
    if output.local:
        Path(output.root).parent.mkdir(parents=True, exist_ok=True)
    with (lock or nullcontext()):
        made = output.check_writable()
        try:
            with ray_session(options.address) as ray:
                return _tag_on(ray, output, photos, chosen, model_path, options, tag_options, on_plan, settings,
                               retry_failed, rehash, progress_stream)
        finally:
            if made:
                output.remove_if_empty()  # a run refused (a node, the device) leaves no empty folder behind


def _tag_on(ray, output: Output, photos: pa.Table, chosen: Selection, model_path, options: RayOptions,
            tag_options: TagOptions, on_plan, settings: str, retry_failed: bool, rehash: bool, progress_stream) -> Summary:
    unit = CHUNK_BATCHES * options.batch_size
    workers, device, resources = _placement(ray, options)  # a device the cluster lacks: refused before anything is read
    probed = []

    def probe_once(rows: pa.Table) -> None:
        # Before the first task that reads photos: each node must see them as the driver does.
        if not probed:
            probe_nodes(ray, _samples(rows, Reader()), device)
            probed.append(True)

    def hash_photos(rows: pa.Table) -> list[str]:
        probe_once(rows)
        return _current_hashes(ray, rows, unit)

    # The rows are matched on what follows a start every key has, here and after the run: the source folder's (a row
    # of a photo under it is the run's), or the listing's common start (a manifest's: it answers for its photos only).
    scope = chosen.scope
    folder = scope.folders[0] if len(scope.folders) == 1 and scope.folders[0] != "./" else None
    if folder is not None:
        prefix = folder
    else:  # "." (its keys have no common start to cut) or a manifest
        prefix = "" if scope.folders else common_prefix(photos["key"])
    decision = plan(photos, output, settings, hash_photos, retry_failed, rehash, prefix)
    todo = decision.todo
    summary = Summary.planned(decision, skipped=chosen.skipped, examples=chosen.examples)
    if on_plan:
        on_plan(Plan(photos=photos.num_rows, todo=todo.num_rows, retag=decision.retag, skipped=sum(chosen.skipped.values())))
    run = _run_name()
    writer = Writer(output, run, options)
    if decision.relisted.num_rows:
        # Unchanged in content, not in listing (touched, copied back): their rows again, with the new listing (later runs win).
        import pyarrow.dataset as ds

        old = _latest_only(output.table(where=ds.field("path").isin(decision.relisted["key"].combine_chunks())))
        writer.add(_relisted(old, decision.relisted))
    if todo.num_rows:
        probe_once(todo)
        ray.data.DataContext.get_current().enable_progress_bars = options.progress
        # The driver holds the bundle's reference for the whole run, so a restarted actor can still fetch it.
        bundle = ray.put(bundle_files(model_path))
        ds = _dataset(ray, todo, unit).map_batches(
            TagWorker, batch_size=1, batch_format="pyarrow",
            # A unit takes seconds to minutes, the hand-over milliseconds: one at a time per actor, so
            # that the first actor up does not queue the units the others are starting for.
            compute=ray.data.ActorPoolStrategy(size=min(workers, -(-todo.num_rows // unit)), max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs=dict(bundle=[bundle], device=device, options=tag_options, runtime=options.runtime,
                                       batch_size=options.batch_size, read_threads=options.read_threads,
                                       threads=options.cpus_per_worker, settings=settings),
            **resources)
        progress = ProgressLine(todo.num_rows, options.progress_every, progress_stream)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
            for key, error, note in zip(batch["path"].to_pylist(), batch["error"].to_pylist(), batch["note"].to_pylist()):
                summary.record(key, error, note)
            progress.update(batch.num_rows)
    writer.close()
    # The truth is what the files hold: every photo planned must have its row there.
    found = output.table(["path"], writer.files)["path"] if writer.files else pa.array([], pa.string())
    missing = todo["key"].filter(pc.invert(pc.is_in(todo["key"], value_set=found)))
    summary.missing = missing.to_pylist()
    # Each listed photo's latest row, found as the plan found them: by one look-up of every row's path among the keys,
    # over the rows that follow the start. A row is the run's when its photo is listed or it is under the source folder
    # (all of these, then); the others are other sources' rows, kept and never read into memory.
    every = output.table(["path"], strip=prefix, under=bool(prefix))
    ours = np.zeros(every.num_rows, bool)
    last = latest_rows(every["path"], tails(photos["key"], prefix), rows_found=ours)
    if folder is not None:
        ours[:] = True
    elif scope.folders:
        ours |= scope.covers(every["path"])
    ours[last[last >= 0]] = False  # a listed photo's latest row stays
    rows = every["_row"].to_numpy() if prefix else np.arange(every.num_rows)
    if ours.any():  # rows superseded by a later run, or of photos that left the source
        output.prune(rows[ours])
    del every, ours, last, rows
    summary.failures_file = _write_failures(output)
    return summary


def _write_failures(output: Output) -> Path | None:
    """OUT.failed.tsv from the output's rows: each photo whose latest row has an error, whichever run wrote it."""
    import pyarrow.dataset as ds

    failing = output.table(["path"], where=ds.field("error") != "")["path"] if output.files() else pa.array([], pa.string())
    rows = _filled(_latest_only(output.table(["path", "error"], where=ds.field("path").isin(pc.unique(failing))))) if len(failing) \
        else pa.table({"path": pa.array([], pa.string()), "error": pa.array([], pa.string())})
    written = output.write_failures(rows.to_pandas().astype(object))
    return Path(written) if written else None


def _relisted(old: pa.Table, listing: pa.Table) -> pa.Table:
    """Rows `old` with the size and mtime of `listing` (key, size, mtime)."""
    where = pc.index_in(old["path"], value_set=listing["key"])
    for name in LISTING:
        old = old.set_column(old.schema.get_field_index(name), name, listing[name].take(where))
    return old.select(SCHEMA.names)


def read_output(out: str | Path) -> pd.DataFrame:
    """The results a ray run wrote (the local engine's columns, one row per photo, sorted by path)."""
    rows = Output(out).read()
    return rows[COLUMNS].sort_values("path").reset_index(drop=True)


def compact(out: str | Path, rows_per_file: int = RayOptions.rows_per_file) -> tuple[int, int, int]:
    """Merge a finished output's files into files of `rows_per_file` rows (the latest row of each photo, sorted by
    path); returns (files before, files after, rows). The new files are written before the old ones go, so a kill
    midway leaves every row readable (the new files sort last and win)."""
    if rows_per_file < 1:
        raise BatchError(f"--rows-per-file must be at least 1, not {rows_per_file}")
    output = Output(out)
    if not output.files():
        raise BatchError(f"{out}: no output of the ray engine there (a folder of part-*.parquet files)")
    lock = Lock(Path(output.root)) if output.local else None
    with (lock or nullcontext()):
        old = output.files()
        rows = output.latest().drop_columns(["_file"]).sort_by("path").select(SCHEMA.names)
        run = _run_name()
        written = [output.write(rows.slice(i, rows_per_file), f"part-{run}-{i // rows_per_file:06d}.parquet")
                   for i in range(0, rows.num_rows, rows_per_file)]
        for path in old:
            output.fs.delete_file(path)
    return len(old), len(written), rows.num_rows


def warm_feature_cache(paths: Sequence[str | Path], config, options: RayOptions = RayOptions()) -> int:
    """Extract on Ray the features of the photos that `config.cache_dir` lacks, into that cache; returns how many.

    `extract_features(paths, config)` then answers every photo from the cache, as after a local run
    (the same batches, so the same features); photos that failed are not cached, and it reports them.
    """
    from pipelines.backbones import create_backbone
    from pipelines.cache import FeatureCache
    from pipelines.images import Blank
    from pipelines.measures import Measures, split_places
    from embeddings.files import content_hash

    if config.cache_dir is None:
        raise BatchError("the ray engine extracts into the feature cache: give a cache folder")
    # On the driver only for the cache's key, which names the runtime where its features differ (int8).
    backbone = create_backbone(config.backbone, config.weights, "cpu", config.runtime, config.cache_dir)
    cache = FeatureCache(config.cache_dir, backbone)

    def hashed(path):
        try:
            return content_hash(Path(path))
        except OSError:
            return ""

    with ThreadPoolExecutor(8) as pool:
        hashes = list(pool.map(hashed, paths))
    known = cache.lookup({h for h in hashes if h})
    todo, seen = [], set()
    for path, h in zip(paths, hashes):
        if h and h not in known and h not in seen:  # the first photo of each content, as extract_features does
            seen.add(h)
            todo.append(path)
    if not todo:
        return 0
    todo = listing_table([printable_path(p) for p in todo], [(UNKNOWN, UNKNOWN)] * len(todo), location=[os.fsencode(p) for p in todo])
    run = _run_name()
    done_hashes, done_features, done_measures, shards = [], [], [], []
    with ray_session(options.address) as ray:
        workers, device, resources = _placement(ray, options)
        ray.data.DataContext.get_current().enable_progress_bars = options.progress
        unit = CHUNK_BATCHES * options.batch_size
        ds = _dataset(ray, todo, unit).map_batches(
            FeatureWorker, batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(workers, -(-todo.num_rows // unit)), max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs=dict(backbone=config.backbone, weights=str(config.weights) if config.weights else None, device=device,
                                       batch_size=options.batch_size, read_threads=options.read_threads, threads=options.cpus_per_worker,
                                       runtime=config.runtime),
            **resources)
        for i, batch in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=None)):
            ok = np.array([not e for e in batch.column("error").to_pylist()], dtype=bool)
            if not ok.any():
                continue
            feats = np.asarray(batch.column("features").combine_chunks().flatten(), dtype=np.float32).reshape(len(batch), -1)[ok]
            hashes_ok = [h for h, good in zip(batch.column("hash").to_pylist(), ok) if good]
            measures = [Measures(c, Blank(b), split_places(p)) for c, b, p, good in
                        zip(batch.column("chroma").to_pylist(), batch.column("blank").to_pylist(), batch.column("places").to_pylist(), ok) if good]
            shards.append(f"ray-{run}-b{i:06d}")
            cache.write(shards[-1], hashes_ok, feats, measures)  # as it comes: an interrupted run keeps what it finished
            done_hashes += hashes_ok
            done_features.append(feats)
            done_measures += measures
    if shards:
        cache.write(f"ray-{run}-all", done_hashes, np.concatenate(done_features), done_measures)
        for name in shards:
            cache.remove(name)
    return len(done_hashes)
