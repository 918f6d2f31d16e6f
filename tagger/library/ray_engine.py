"""The Ray engine: `tagger tag SOURCE --engine ray` and `tagger features --engine ray` across machines.

    tag_source("photos/", "tags.parquet", model_path, RayOptions(workers=2))

The driver lists the photos (a local folder, a CSV/Parquet manifest with a path column, or any URI
that `pyarrow.fs` reads: s3://, gs://, file://) and cuts the ones to tag into units of
8 x batch_size photos, in the order the local engine tags them. Ray Data hands each unit to a
`TagWorker` actor (one model per actor, a GPU each where there are GPUs), which reads the bytes,
hashes and decodes them with the project's own decoder, runs the backbone in batches of
batch_size and tags the unit with the model. These are the chunks and batches of
`tagger.library.local.tag_paths`, so every photo meets the same arithmetic and gets the same tags and scores as
with `--engine local` (CPU convolutions give results that differ in the last bits when the batch
around a photo differs).

The output is a Parquet dataset, a folder with one file per unit (`part-RUN-...parquet`), with
the local engine's columns (path, tags, scores, error, hash, settings, note); photos that could not be tagged get
a row with the reason and are listed in `OUT.failed.tsv`, a blank frame a row with no tags and the note why. A run reads what earlier runs wrote
(later runs win), hashes the photos it already has rows for, and tags only new or changed ones.
A worker killed mid-run is restarted by Ray and its unit tried again; a file is written only
when its unit is done, so a killed driver loses only units in flight. Ray is imported only here
and only when used: `pip install "tagger[ray]"`.
"""
from __future__ import annotations

import fnmatch
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.datasets import PATH_COLUMNS
from pipelines.images import printable_path
from pipelines.scan import DEFAULT_EXCLUDE_DIRS, PHOTO_EXTENSIONS
from tagger.library.batch import Lock
from tagger.library.results import COLUMNS, BatchError, failures_tsv, output_format, write_failures
from tagger.library.plan import Plan, Selection, Summary, decide, select_photos
from tagger.library.local import CHUNK_BATCHES  # a unit is this x batch_size photos: the chunk of tag_paths, so the batches match
from tagger.scoring.options import TagOptions

log = logging.getLogger(__name__)

INSTALL_HINT = 'the ray engine needs Ray: pip install "tagger[ray]" (or pip install "ray[data]")'
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None  # "auto", "ray://host:10001" or host:port of a running cluster; None: start a local Ray
    workers: int | None = None  # model actors; None: one per GPU with a GPU device, else one per CPU of the cluster
    cpus_per_worker: int = 1  # CPUs (and torch threads) each actor holds
    device: str | None = None  # "cpu", "cuda", ...; None: "cuda" where the cluster has GPUs, else "cpu"
    batch_size: int = 64  # photos per backbone forward pass (as `tagger tag --batch-size`)
    read_threads: int = 4  # threads reading and decoding a unit's photos inside each actor
    runtime: str | None = None  # what runs the backbone in each actor (torch, onnx, onnx-int8; None: the device's default)
    progress: bool = False  # Ray Data's progress bars


@dataclass(slots=True)
class Photo:
    key: str  # what the output's path column says: the path as listed (printable), or the URI
    location: bytes  # what a worker opens: a local path (os.fsencode) or a URI (UTF-8)


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
        try:
            ray.init(address=address, **({} if address.startswith("ray://") else kwargs))
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BatchError(f"cannot join the Ray cluster at {address} ({str(e).splitlines()[0]}); start one with `ray start --head`") from None
    else:
        ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def _placement(ray, options: RayOptions) -> tuple[int, str, dict]:
    """(workers, device, resources per actor) for the cluster at hand."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    device = options.device or ("cuda" if gpus else "cpu")
    if device.startswith("cuda"):
        if not gpus:
            raise BatchError(f"--device {device}: the Ray cluster has no GPUs")
        return options.workers or gpus, device, {"num_gpus": 1, "num_cpus": options.cpus_per_worker}
    workers = options.workers or max(1, cpus // options.cpus_per_worker)
    return workers, device, {"num_cpus": options.cpus_per_worker}


# -- sources ---------------------------------------------------------------------------------------


def is_uri(source: str | Path) -> bool:
    return "://" in str(source)


def list_photos(source: str | Path, exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
                skip_owner_tagged: bool = False) -> tuple[list[Photo], Selection]:
    """The photos of a folder, a manifest (CSV/Parquet with a path column) or a URI (pyarrow.fs), in tagging order,
    and what was left out. A local folder is scanned as the local engine scans it (`tagger.library.plan.select_photos`)."""
    if is_uri(source):
        if skip_owner_tagged:
            raise BatchError(f"{source}: --skip-owner-tagged reads each photo's keywords on this machine; it takes a local folder")
        return _list_uri(str(source), exclude_dirs), Selection({})
    source = Path(source)
    if source.is_dir():
        chosen = select_photos([source], exclude_dirs, skip_owner_tagged)
        return [Photo(key, os.fsencode(p)) for key, p in chosen.photos.items()], chosen
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        if skip_owner_tagged:
            raise BatchError(f"{source}: --skip-owner-tagged takes a folder of photos, not a manifest")
        return _from_manifest(_read_manifest(source), base=str(source.parent)), Selection({})
    raise BatchError(f"{source}: no such folder or manifest (a .csv or .parquet file with a path column)")


def _list_uri(uri: str, exclude_dirs: Sequence[str] = ()) -> list[Photo]:
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
            table = _read_manifest(io.BytesIO(f.read()), name=uri)
        return _from_manifest(table, base=uri.rsplit("/", 1)[0])
    if info.type != pafs.FileType.Directory:
        raise BatchError(f"{uri}: no such folder or manifest")
    found = []
    for entry in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = entry.path[len(root.rstrip("/")) + 1 :]
        folders = rel.split("/")[:-1]
        if entry.type == pafs.FileType.File and not any(part.startswith(".") for part in rel.split("/")) \
                and not any(fnmatch.fnmatch(f, pattern) for f in folders for pattern in exclude_dirs) \
                and os.path.splitext(entry.path)[1].lower() in PHOTO_EXTENSIONS:
            found.append(f"{scheme}://{entry.path}")
    return [Photo(u, u.encode()) for u in sorted(found)]


def _read_manifest(file, name: str | None = None) -> pd.DataFrame:
    name = name or str(file)
    if name.lower().endswith((".parquet", ".pq")):
        return pd.read_parquet(file)
    return pd.read_csv(file, dtype=str, keep_default_na=False, sep="\t" if name.lower().endswith(".tsv") else ",")


def _from_manifest(table: pd.DataFrame, base: str) -> list[Photo]:
    column = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if column is None:
        raise BatchError(f"manifest has no path column (one of {', '.join(PATH_COLUMNS)}); it has {', '.join(map(str, table.columns))}")
    photos = []
    for value in table[column].astype(str).str.strip():
        if not value:
            continue
        if not is_uri(value) and not os.path.isabs(value):
            value = f"{base}/{value}" if is_uri(base) else os.path.join(base, value)
        photos.append(Photo(value if is_uri(value) else printable_path(value), value.encode() if is_uri(value) else os.fsencode(value)))
    return photos


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


def _units(photos: Sequence[Photo], size: int) -> list[dict]:
    return [{"keys": [p.key for p in photos[i : i + size]], "locations": [p.location for p in photos[i : i + size]]}
            for i in range(0, len(photos), size)]


def _unit_lists(batch) -> tuple[list[str], list[bytes]]:
    """The one unit in a Ray batch of size 1 (a dict of numpy columns)."""
    return [str(k) for k in batch["keys"][0]], [bytes(x) for x in batch["locations"][0]]


def hash_unit(batch) -> dict:
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
    return {"path": np.array(keys, dtype=object), "hash": np.array(hashes, dtype=object)}


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
        })


# -- the output dataset -------------------------------------------------------------------------


class Output:
    """The Parquet dataset folder (local or any pyarrow.fs URI) and the files in it."""

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

    def read(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The latest row of each path written so far, with the file that holds it; `self.rows_in_files` counts every row."""
        import pyarrow.parquet as pq

        frames = []
        for path in self.files():
            try:
                table = pq.read_table(path, columns=list(columns) if columns else None, filesystem=self.fs)
            except (OSError, ValueError) as e:
                # A file torn by a killed run: its photos are tagged again and it goes.
                log.warning("%s: unreadable part of the output, removed (%s)", path, e)
                self.fs.delete_file(path)
                continue
            frames.append(table.to_pandas().assign(file=path))
        self.rows_in_files = sum(len(f) for f in frames)
        if not frames:
            return pd.DataFrame(columns=[*(columns or COLUMNS), "file"])
        rows = pd.concat(frames, ignore_index=True)
        for col in ("error", "hash", "settings", "note"):
            if col in rows or columns is None:
                rows[col] = rows[col].fillna("").astype(str) if col in rows else ""  # settings, note: files from before the column
        return rows.drop_duplicates("path", keep="last").reset_index(drop=True)

    def prune(self, keep: set[str]) -> None:
        """Rewrite the files holding rows that a later run superseded, or of photos no longer in the source."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        latest = self.read(["path", "error", "hash"])
        wanted = {(f, p) for f, p in zip(latest["file"], latest["path"]) if p in keep}
        for path in self.files():
            table = pq.read_table(path, filesystem=self.fs)
            mask = [(path, p) in wanted for p in table.column("path").to_pylist()]
            if all(mask):
                continue
            table = table.filter(pa.array(mask))
            if table.num_rows == 0:
                self.fs.delete_file(path)
                continue
            tmp = path.rsplit("/", 1)[0] + "/.tmp-" + path.rsplit("/", 1)[1]
            with self.fs.open_output_stream(tmp) as f:
                pq.write_table(table, f)
            self.fs.move(tmp, path)

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


def _file_names(run: str):
    """Ray Data's file names for one run, `part-RUN-WRITE-TASK-I.parquet`: RUN is the run's start (UTC), so names sort by run."""
    from ray.data.datasource import FilenameProvider

    class Names(FilenameProvider):
        def get_filename_for_task(self, write_uuid, task_index):
            return f"part-{run}-{write_uuid}-{task_index:06d}.parquet"  # Ray insists on its write id in the name

    return Names()


# -- the runs ----------------------------------------------------------------------------------


def bundle_files(model_path: str | Path) -> dict[str, bytes]:
    """The bundle's files as bytes (what a worker on any node needs to load it)."""
    folder = Path(model_path)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".json", ".npz", ".safetensors")}


def _current_hashes(ray, photos: list[Photo], unit: int) -> dict[str, str]:
    """Content hashes of `photos`, read by Ray tasks (on whichever nodes reach the storage)."""
    if not photos:
        return {}
    units = _units(photos, unit)
    ds = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(hash_unit, batch_size=1)
    hashes = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        hashes.update(zip(map(str, batch["path"]), map(str, batch["hash"])))
    return hashes


def tag_source(source: str | Path, out: str | Path, model_path: str | Path, options: RayOptions = RayOptions(),
               tag_options: TagOptions = TagOptions(), on_plan=None, settings: str = "", *,
               exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS, skip_owner_tagged: bool = False,
               retry_failed: bool = True) -> Summary:
    """Tag the photos of `source` that `out` does not already hold, on Ray; returns what happened.

    The plan is the local engine's (`tagger.library.plan`): new, changed and earlier-failed photos
    (unless retry_failed is off) are tagged, rows made with other `settings` (`Tagger.settings`) are
    tagged again, and a local folder is scanned as the local engine scans it (exclude_dirs,
    skip_owner_tagged). on_plan gets the `Plan`.
    """
    if output_format(Path(str(out))) != "parquet":
        raise BatchError(f"{out}: the ray engine writes a Parquet dataset (a folder): use --out NAME.parquet")
    photos, chosen = list_photos(source, exclude_dirs, skip_owner_tagged)
    output = Output(out)
    lock = Lock(Path(output.root)) if output.local else None
    if output.local:
        Path(output.root).parent.mkdir(parents=True, exist_ok=True)
    with (lock or nullcontext()), ray_session(options.address) as ray:
        previous = output.read()
        known = set(previous["path"])
        unit = CHUNK_BATCHES * options.batch_size
        # Only photos with a row need hashing to plan: the workers hash the others as they tag them.
        current = _current_hashes(ray, [p for p in photos if p.key in known], unit)
        by_key = {p.key: p for p in photos}
        decision = decide(list(by_key), previous, current, settings, retry_failed)
        todo = [by_key[k] for k in decision.todo]
        keys = set(by_key)
        summary = Summary.planned(decision, skipped=chosen.skipped, examples=chosen.examples)
        if on_plan:
            on_plan(Plan(photos=len(photos), todo=len(todo), retag=decision.retag, skipped=sum(chosen.skipped.values())))
        run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        if todo:
            workers, device, resources = _placement(ray, options)
            ray.data.DataContext.get_current().enable_progress_bars = options.progress
            # The driver holds the bundle's reference for the whole run, so a restarted actor can still fetch it.
            bundle = ray.put(bundle_files(model_path))
            units = _units(todo, unit)
            ds = ray.data.from_items(units, override_num_blocks=len(units))
            ds = ds.map_batches(TagWorker, batch_size=1,
                                # A unit takes seconds to minutes, the hand-over milliseconds: one at a time per actor, so
                                # that the first actor up does not queue the units the others are starting for.
                                compute=ray.data.ActorPoolStrategy(size=min(workers, len(units)), max_tasks_in_flight_per_actor=1),
                                fn_constructor_kwargs=dict(bundle=[bundle], device=device, options=tag_options, runtime=options.runtime,
                                                           batch_size=options.batch_size, read_threads=options.read_threads,
                                                           threads=options.cpus_per_worker, settings=settings),
                                **resources)
            # Writing a file is IO, not compute: it must not wait for a CPU that the model actors hold.
            ds.write_parquet(output.root if output.local else output.name, filename_provider=_file_names(run),
                             ray_remote_args={"num_cpus": 0})
        rows = output.read(["path", "error", "hash", "note"])
        ours = rows[rows["file"].map(lambda f: Path(f).name.startswith(f"part-{run}-"))]
        for key, error, note in zip(ours["path"], ours["error"], ours["note"]):
            summary.record(key, error, note)
        rows = rows[rows["path"].isin(keys)]
        if output.rows_in_files > len(rows):  # rows superseded by a later run, or of photos that left the source
            output.prune(keys)
        failures = output.write_failures(rows)
        summary.failures_file = Path(failures) if failures else None
    return summary


def read_output(out: str | Path) -> pd.DataFrame:
    """The results a ray run wrote (the local engine's columns, one row per photo, sorted by path)."""
    rows = Output(out).read()
    return rows[COLUMNS].sort_values("path").reset_index(drop=True)


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
            todo.append(Photo(printable_path(path), os.fsencode(path)))
    if not todo:
        return 0
    run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    done_hashes, done_features, done_measures, shards = [], [], [], []
    with ray_session(options.address) as ray:
        workers, device, resources = _placement(ray, options)
        ray.data.DataContext.get_current().enable_progress_bars = options.progress
        units = _units(todo, CHUNK_BATCHES * options.batch_size)
        ds = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
            FeatureWorker, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(units)), max_tasks_in_flight_per_actor=1),
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
