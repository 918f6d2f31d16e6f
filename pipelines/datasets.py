"""Dataset readers: MIRFLICKR-25K, the shared subset, CSV/Parquet manifests and photo libraries, all into one frame.

Every reader returns a pandas frame with one row per photo:

    id      str            the photo's id (MIRFLICKR number, or the path relative to the manifest)
    path    str            absolute path of the image file
    tags    list[str]      raw user tags, in the order the user gave them (may be empty)
    labels  list[str]|None concept labels where the data has them, else None

Photos without tags stay in the frame (they can still be tagged); `count_untagged` and the
readers' log line report them so nothing disappears silently.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pandas as pd

from pipelines.errors import OptionError, TaggerError

log = logging.getLogger(__name__)

COLUMNS = ["id", "path", "tags", "labels"]
PATH_COLUMNS = ("path", "file", "filename", "image", "photo")
TAGS_COLUMNS = ("tags", "keywords", "tag")
LABELS_COLUMNS = ("labels", "labels24")
ID_COLUMNS = ("id", "photo_id")
SPLITS = ("train", "val", "test")


class DatasetError(TaggerError, ValueError):
    """A dataset that cannot be read; the message names the file or folder and the problem."""


def read_dataset(source: str | Path, *, path_column: str | None = None, tags_column: str | None = None) -> pd.DataFrame:
    """Read any supported source, chosen by what is at `source`."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    if source.is_file():
        return read_manifest(source, path_column=path_column, tags_column=tags_column)
    if (source / "annotations.jsonl").is_file():
        return read_subset(source)
    for root in (source, source / "mirflickr"):
        if (root / "meta" / "tags").is_dir():
            return read_mirflickr(root)
    return read_library(source)


def read_folder(root: str | Path) -> pd.DataFrame:
    """Every photo under `root` with the keywords its owner gave it (maybe none); the id is the path relative to `root`.

    Keywords come from the photo's XMP and IPTC and from its XMP sidecar (`pipelines.keywords`),
    the way digiKam, Lightroom and darktable keep them; keywords `tagger tag` wrote are left out, so
    a model never learns from its own output.
    """
    from pipelines.keywords import owner_keywords
    from pipelines.scan import scan

    root = Path(root)
    photos = scan([root]).photos
    if not photos:
        raise DatasetError(
            f"{root}: not a dataset folder and no photos in it (expected photos with keywords, annotations.jsonl, "
            "MIRFLICKR's meta/tags/, or pass a CSV/Parquet manifest with a path and a tags column)"
        )
    rows = [(p.relative_to(root).as_posix(), str(p.resolve()), owner_keywords(p), None) for p in photos]
    return pd.DataFrame(rows, columns=COLUMNS)


def read_library(root: str | Path) -> pd.DataFrame:
    """A photo library to train on: `read_folder`, where some photos must carry keywords."""
    frame = read_folder(root)
    if count_untagged(frame) == len(frame):
        raise DatasetError(
            f"{root}: {len(frame)} photos, none with keywords (read from XMP dc:subject, IPTC Keywords and XMP sidecars); "
            "give some photos keywords in your photo manager, or pass a CSV/Parquet manifest with a path and a tags column"
        )
    return _frame(list(frame.itertuples(index=False, name=None)), Path(root))


def read_subset(root: str | Path) -> pd.DataFrame:
    """The shared MIRFLICKR subset: `annotations.jsonl`, one photo a line (id, file, tags, labels24)."""
    root = Path(root)
    file = root / "annotations.jsonl"
    if not file.is_file():
        raise DatasetError(f"{file}: missing (is {root} the subset folder?)")
    rows = []
    with file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rows.append((str(rec["id"]), str(root / rec["file"]), list(rec.get("tags") or []), rec.get("labels24")))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DatasetError(f"{file}:{n}: bad record ({e})") from e
    return _frame(rows, file)


def read_mirflickr(root: str | Path, labels_dir: str | Path | None = None) -> pd.DataFrame:
    """MIRFLICKR-25K as distributed: `imN.jpg` beside `meta/tags/tagsN.txt` (one tag a line).

    Concept labels are read from `labels_dir` (the `mirflickr25k_annotations_v080` folder: one
    file of photo numbers per concept, `*_r1.txt` being the stricter variants, which we skip) or,
    when not given, from that folder next to `root` where it exists.
    """
    root = Path(root)
    tags_dir = root / "meta" / "tags"
    if not tags_dir.is_dir():
        raise DatasetError(f"{tags_dir}: missing (expected MIRFLICKR's meta/tags/tagsN.txt files)")
    if labels_dir is None:
        guess = root.parent / "mirflickr25k_annotations_v080"
        labels_dir = guess if guess.is_dir() else None
    labels = _read_concept_lists(Path(labels_dir)) if labels_dir else None

    rows = []
    for image in sorted(root.glob("im*.jpg"), key=_number):
        n = _number(image)
        tag_file = tags_dir / f"tags{n}.txt"
        tags = _read_lines(tag_file) if tag_file.is_file() else []
        rows.append((str(n), str(image.resolve()), tags, labels.get(n, []) if labels is not None else None))
    if not rows:
        raise DatasetError(f"{root}: no imN.jpg photos found")
    return _frame(rows, root)


def read_manifest(path: str | Path, *, path_column: str | None = None, tags_column: str | None = None) -> pd.DataFrame:
    """A CSV or Parquet manifest: a path column and a tags column (labels optional).

    Relative paths are taken from the manifest's folder. In Parquet the tags may be a list column;
    in CSV a cell holds a JSON list, or tags separated by `,` `;` or `|`, or else by whitespace.
    """
    path = Path(path)
    table = _read_table(path, "manifest")
    if table.empty:
        raise DatasetError(f"{path}: manifest has no rows")
    pcol = _pick_column(table, path_column, PATH_COLUMNS, path, "path")
    tcol = _pick_column(table, tags_column, TAGS_COLUMNS, path, "tags")
    lcol = next((c for c in LABELS_COLUMNS if c in table.columns), None)
    base = path.parent.resolve()
    labels = table[lcol] if lcol else [None] * len(table)
    rows = []
    for i, (rel, tags, labs) in enumerate(zip(table[pcol], table[tcol], labels)):
        rel = "" if rel is None else str(rel).strip()
        if not rel:
            raise DatasetError(f"{path}: row {i + 1} has an empty {pcol!r}")
        photo = Path(rel) if Path(rel).is_absolute() else base / rel
        rows.append((rel, str(photo), parse_tags(tags), parse_tags(labs) if lcol else None))
    return _frame(rows, path)


def read_tag_lists(path: str | Path) -> pd.DataFrame:
    """Tag lists without images (columns id, tags), such as MIRFLICKR's `tags_corpus.tsv`: more text for word2vec.

    A .tsv, .csv or .parquet file with an id column and a tags column, cells as in `read_manifest`.
    Lists with no tags are kept (they teach nothing and cost nothing).
    """
    path = Path(path)
    table = _read_table(path, "tag-list file")
    icol = _pick_column(table, None, ID_COLUMNS, path, "id")
    tcol = _pick_column(table, None, TAGS_COLUMNS, path, "tags")
    return pd.DataFrame({"id": table[icol].astype(str).str.strip(), "tags": [parse_tags(c) for c in table[tcol]]})


def _read_table(path: Path, what: str) -> pd.DataFrame:
    """A .csv/.tsv/.txt (all cells as strings) or .parquet table; `what` names it in errors."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such {what}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise DatasetError(f"{path}: unknown {what} type {suffix!r} (use .csv, .tsv or .parquet)")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read {what} ({e})") from e


def parse_tags(cell) -> list[str]:
    """One manifest cell -> list of tags (see `read_manifest` for the accepted forms)."""
    if cell is None:
        return []
    if not isinstance(cell, str):
        if hasattr(cell, "tolist"):
            cell = cell.tolist()
        if isinstance(cell, (list, tuple)):
            return [str(t).strip() for t in cell if str(t).strip()]
        if pd.isna(cell):
            return []
        cell = str(cell)
    cell = cell.strip()
    if cell.startswith("["):
        try:
            return [str(t).strip() for t in json.loads(cell) if str(t).strip()]
        except json.JSONDecodeError:
            pass
    sep = next((s for s in ",;|" if s in cell), None)
    parts = cell.split(sep) if sep else cell.split()
    return [t.strip() for t in parts if t.strip()]


def split_ids(ids, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> pd.Series:
    """Assign each photo id to train/val/test by a hash of (seed, id).

    Hashing rather than shuffling keeps a photo in the same split when the collection grows or is
    read in another order, and never splits one photo's (image, tag) pairs across splits.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise OptionError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    edges = (fractions[0], fractions[0] + fractions[1])

    def bucket(photo_id) -> str:
        h = hashlib.blake2b(f"{seed}:{photo_id}".encode(), digest_size=8).digest()
        u = int.from_bytes(h, "big") / 2**64
        return "train" if u < edges[0] else "val" if u < edges[1] else "test"

    ids = pd.Series(ids)
    return pd.Series([bucket(i) for i in ids], index=ids.index, name="split")


def check_photos(frame: pd.DataFrame, source: str | Path) -> int:
    """Count the listed photos that are not there: a warning when some are (they are skipped later), an error when all are.

    The readers only parse; this is the one look at the disk before the slow work starts.
    """
    missing = [p for p in frame["path"] if not Path(p).is_file()]
    if missing and len(missing) == len(frame):
        raise DatasetError(
            f"{source}: none of its {len(frame)} photos exist (e.g. {missing[0]}); "
            "relative paths in a manifest are read from the manifest's folder"
        )
    if missing:
        log.warning("%s: %d of %d photos are missing (e.g. %s); they are skipped", source, len(missing), len(frame), missing[0])
    return len(missing)


def count_untagged(frame: pd.DataFrame) -> int:
    return int((frame["tags"].map(len) == 0).sum())


def _frame(rows: list[tuple], source: Path) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        raise DatasetError(f"{source}: no photos")
    untagged = count_untagged(frame)
    if untagged:
        log.warning("%s: %d of %d photos have no tags (kept; they are left out of training)", source, untagged, len(frame))
    return frame


def _pick_column(table: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...], path: Path, what: str) -> str:
    if wanted is not None:
        if wanted not in table.columns:
            raise DatasetError(f"{path}: no column {wanted!r} (columns: {', '.join(map(str, table.columns))})")
        return wanted
    for c in candidates:
        if c in table.columns:
            return c
    raise DatasetError(
        f"{path}: no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(map(str, table.columns))})"
    )


def _read_lines(file: Path) -> list[str]:
    text = file.read_bytes().decode("utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _number(p: Path) -> int:
    m = re.search(r"(\d+)", p.stem)
    return int(m.group(1)) if m else -1


def _read_concept_lists(folder: Path) -> dict[int, list[str]]:
    labels: dict[int, list[str]] = {}
    for file in sorted(folder.glob("*.txt")):
        if file.stem.endswith("_r1") or file.stem.startswith("README"):
            continue
        for line in _read_lines(file):
            if line.isdigit():
                labels.setdefault(int(line), []).append(file.stem)
    return labels
