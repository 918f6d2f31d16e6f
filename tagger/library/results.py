"""The results of a batch run: one row per photo (path, tags, scores, error, hash, settings, note, size, mtime), read and written.

Both engines write these columns: the local engine one file (CSV, JSONL or Parquet, by extension)
plus its journal, the Ray engine a Parquet dataset. In CSV the tags and scores cells are JSON
arrays (a word may hold `;` or `,`; outputs from before, joined with `;`, still read), and a cell
that a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, tab, CR) starts with `'`, as does
one that starts with `'` itself; reading takes it off. `OUT.failed.tsv` lists the photos that could
not be tagged, with the reason. `note` says why a photo that did not fail has no tags (a blank frame:
"no tags: near-black frame"); outputs from before the column read with it empty. `size` and `mtime`
(bytes, and modification time in ns) are what the photo's listing said when it was hashed, so that
a later run knows it unchanged without reading it (`tagger.library.plan.decide`); -1 where not known,
as in outputs from before the columns.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from embeddings.files import atomic_write
from pipelines.errors import TaggerError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
COLUMNS = ["path", "tags", "scores", "error", "hash", "settings", "note", "size", "mtime"]
FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a cell starting so is a formula to a spreadsheet (OWASP, CSV injection)


class BatchError(TaggerError):
    """A batch run that cannot start (bad output name, another run holds the lock)."""


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise BatchError(f"{out}: unknown output type {out.suffix!r}; use .csv, .jsonl or .parquet")
    return fmt


def read_results(out: Path) -> pd.DataFrame:
    """Rows of an earlier run: its output file, then its journal (later lines win)."""
    return latest(read_rows(out))


def latest(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop_duplicates("path", keep="last").reset_index(drop=True)


def read_rows(out: Path) -> pd.DataFrame:
    """Every row of the output file and then of its journal; a photo tagged again has a row in each."""
    frames = []
    if out.is_file() and out.stat().st_size > 0:
        fmt = output_format(out)
        try:
            if fmt == "csv":
                prev = pd.read_csv(out, dtype=str, keep_default_na=False).map(_from_cell)
            elif fmt == "jsonl":
                prev = pd.DataFrame(read_jsonl(out))
            else:
                prev = pd.read_parquet(out)
        except Exception as e:  # noqa: BLE001 - pandas and pyarrow raise many kinds for a file that is not theirs
            raise BatchError(f"{out}: cannot read it as earlier results ({type(e).__name__}); choose another --out") from None
        missing = [c for c in ("path", "tags", "scores") if c not in prev.columns]
        if len(prev) and missing:
            raise BatchError(f"{out}: not a results file of `tagger tag` (no {', '.join(missing)} column; it has "
                             f"{', '.join(map(str, prev.columns[:8]))}); choose another --out, this one is left as it is")
        if len(prev):
            try:
                prev["tags"] = prev["tags"].map(_as_list)
                prev["scores"] = prev["scores"].map(lambda v: [float(x) for x in _as_list(v)])
            except (TypeError, ValueError) as e:
                raise BatchError(f"{out}: its tags or scores column cannot be read ({e}); choose another --out") from None
        frames.append(prev)
    journal = journal_path(out)
    if journal.is_file():
        frames.append(pd.DataFrame(read_jsonl(journal)))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(frames, ignore_index=True)
    for col in COLUMNS:
        if col not in rows:
            rows[col] = ""
    for col in ("error", "hash", "settings", "note"):
        rows[col] = rows[col].fillna("").astype(str)
    for col in ("size", "mtime"):
        # By value, not pd.to_numeric: a column with a gap would go through float64 and lose an mtime's nanoseconds.
        rows[col] = pd.Series([_listed(v) for v in rows[col]], index=rows.index, dtype="int64")
    return rows


def _listed(value) -> int:
    """A size or mtime cell as an int; -1 (not known) for a gap."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value)
    return int(text) if text.lstrip("-").isdigit() else -1


def _as_list(value) -> list:
    """A tags or scores cell as a list: CSV holds a JSON array (outputs from before: joined with ';'), JSONL and Parquet lists."""
    if isinstance(value, str):
        if value.startswith("["):
            try:
                items = json.loads(value)
            except ValueError:
                items = None
            if isinstance(items, list):
                return items
        return value.split(";") if value else []
    return list(value)


def _to_cell(value):
    """A CSV cell as a spreadsheet shows it, text and never a formula: a leading ' before one that could start one."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA + ("'",)) else value


def _from_cell(value: str) -> str:
    """The cell's text as written: the ' that `_to_cell` added taken off (a cell of an older output never had one)."""
    return value[1:] if value[:1] == "'" and value[1:2] and value[1:2] in FORMULA + ("'",) else value


def text(message: str) -> str:
    """An error message that prints and saves (a lone surrogate escaped)."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal.jsonl")


def failures_path(out: Path) -> Path:
    return out.with_name(out.name + ".failed.tsv")


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def failures_tsv(rows: pd.DataFrame) -> bytes:
    """`OUT.failed.tsv`'s bytes: path and error of the rows with an error (tab-separated, a header, cells as in a CSV output)."""
    failed = rows[rows["error"] != ""].sort_values("path")
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["path", "error"])
    writer.writerows((_to_cell(p), _to_cell(e)) for p, e in zip(failed["path"], failed["error"]))
    return buf.getvalue().encode("utf-8")


def write_failures(rows: pd.DataFrame, out: Path) -> Path | None:
    """`OUT.failed.tsv` for the rows with an error; removed when none."""
    target = failures_path(out)
    if (rows["error"] == "").all():
        target.unlink(missing_ok=True)
        return None
    atomic_write(target, failures_tsv(rows))
    return target


def write_results(rows: pd.DataFrame, out: Path) -> None:
    """The whole output, atomically: a reader sees the old file or the new one, never half."""
    fmt = output_format(out)
    rows = rows[COLUMNS].sort_values("path").reset_index(drop=True)
    if fmt == "csv":
        # An empty list is an empty cell, as before (a failed photo's row).
        flat = rows.assign(tags=rows["tags"].map(lambda t: json.dumps(list(t), ensure_ascii=False) if len(t) else ""),
                           scores=rows["scores"].map(lambda s: json.dumps([round(float(x), 4) for x in s]) if len(s) else ""))
        atomic_write(out, flat.map(_to_cell).to_csv(index=False).encode("utf-8"))
    elif fmt == "jsonl":
        atomic_write(out, "".join(json.dumps(plain(rec), ensure_ascii=False) + "\n" for rec in rows.to_dict("records")).encode("utf-8"))
    else:
        rows = rows.assign(scores=rows["scores"].map(lambda s: [float(x) for x in s]))
        atomic_write(out, lambda f: rows.to_parquet(f, index=False))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
    return rows


def plain(rec: dict) -> dict:
    return {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v) for k, v in rec.items()}
