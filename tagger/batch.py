"""`tagger tag DIR`: tag every photo under a folder into one results file, resumably.

Results go first to a journal beside the output (`OUT.journal.jsonl`), one JSON line per photo,
flushed to the OS as soon as the photo is tagged; a torn last line from a kill is ignored on reading. When the
run ends the output (CSV, JSONL or Parquet, by extension) is written atomically from the previous
output plus the journal, and the journal is removed. A run after an interruption, or on a folder
that gained or changed photos, reads both back and tags only photos whose content hash is new, so
nothing is lost and nothing is tagged twice. A lock file keeps two runs off the same output: the
second is refused at once. Photos that could not be tagged are listed, with the reason, in
`OUT.failed.tsv` (as well as in the output's `error` column).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from embeddings.files import remove_stale
from pipelines.images import list_images
from pipelines.images import printable_path as path_key

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
COLUMNS = ["path", "tags", "scores", "error", "hash"]


class BatchError(RuntimeError):
    """A batch run that cannot start (bad output name, another run holds the lock)."""


@dataclass
class Summary:
    tagged: int = 0  # tagged in this run
    kept: int = 0  # unchanged since an earlier run: its row was kept
    failed: int = 0  # could not be read as a photo (reported with the reason)
    failures: list[str] = field(default_factory=list)
    sidecar_errors: list[str] = field(default_factory=list)
    failures_file: Path | None = None  # OUT.failed.tsv: every photo of the folder that could not be tagged, with why

    @property
    def total(self) -> int:
        return self.tagged + self.kept + self.failed


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise BatchError(f"{out}: unknown output type {out.suffix!r}; use .csv, .jsonl or .parquet")
    return fmt


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_results(out: Path) -> pd.DataFrame:
    """Rows of an earlier run: its output file, then its journal (later lines win)."""
    frames = []
    if out.is_file():
        fmt = output_format(out)
        if fmt == "csv":
            prev = pd.read_csv(out, dtype=str, keep_default_na=False)
            prev["tags"] = prev["tags"].map(lambda s: s.split(";") if s else [])
            prev["scores"] = prev["scores"].map(lambda s: [float(x) for x in s.split(";")] if s else [])
        elif fmt == "jsonl":
            prev = pd.DataFrame(_read_jsonl(out))
        else:
            prev = pd.read_parquet(out)
            prev["tags"] = prev["tags"].map(list)
            prev["scores"] = prev["scores"].map(list)
        frames.append(prev)
    journal = journal_path(out)
    if journal.is_file():
        frames.append(pd.DataFrame(_read_jsonl(journal)))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(frames, ignore_index=True)
    for col in COLUMNS:
        if col not in rows:
            rows[col] = ""
    rows["error"] = rows["error"].fillna("").astype(str)
    rows["hash"] = rows["hash"].fillna("").astype(str)
    return rows.drop_duplicates("path", keep="last").reset_index(drop=True)


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal.jsonl")


def failures_path(out: Path) -> Path:
    return out.with_name(out.name + ".failed.tsv")


def write_failures(rows: pd.DataFrame, out: Path) -> Path | None:
    """`OUT.failed.tsv` (path, error; tab-separated, with a header) for the rows with an error; removed when none."""
    target = failures_path(out)
    failed = rows[rows["error"] != ""].sort_values("path")
    if failed.empty:
        target.unlink(missing_ok=True)
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["path", "error"])
    writer.writerows(zip(failed["path"], failed["error"]))
    _atomic_write(target, buf.getvalue())
    return target


def write_results(rows: pd.DataFrame, out: Path) -> None:
    """The whole output, atomically: a reader sees the old file or the new one, never half."""
    fmt = output_format(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    rows = rows[COLUMNS].sort_values("path").reset_index(drop=True)
    if fmt == "csv":
        flat = rows.copy()
        flat["tags"] = flat["tags"].map(";".join)
        flat["scores"] = flat["scores"].map(lambda s: ";".join(f"{x:.4f}" for x in s))
        flat.to_csv(tmp, index=False)
    elif fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in rows.to_dict("records"):
                f.write(json.dumps(_plain(rec), ensure_ascii=False) + "\n")
    else:
        rows.assign(scores=rows["scores"].map(lambda s: [float(x) for x in s])).to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)


class Lock:
    """An exclusive lock on the output, held for the run; a second run is refused, not queued.

    A POSIX record lock (lockf), not flock: it belongs to this process alone, so decoding workers
    forked while it is held do not keep it alive after a kill, and the kernel drops it when we die.
    The lock file is removed at the end while still locked; a run that opened it just before then
    finds its lock on a file no longer at the path and tries again, so two runs never both hold one.
    """

    def __init__(self, out: Path):
        self.path = out.with_name(out.name + ".lock")
        self.fd = None

    def __enter__(self):
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise BatchError(f"{self.path}: another `tagger tag` run is writing this output; wait for it or choose another --out")
            if _same_file(fd, self.path):
                self.fd = fd
                return self
            os.close(fd)  # the previous holder removed that file as it finished: lock the new one

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)  # before unlocking: nobody can lock this file and believe it is the current one
        except FileNotFoundError:
            pass
        os.close(self.fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def tag_folder(
    folder: Path,
    out: Path,
    tag_batch: Callable[[list[Path]], Iterator[tuple[Path, list[tuple[str, float]] | None, str]]],
    sidecar: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
) -> Summary:
    """Tag the photos under `folder` that `out` does not already hold, then write `out`.

    `tag_batch(paths)` yields (path, tags or None, error) per photo in batches of its choosing; the
    journal is flushed after every photo it yields, so a kill loses at most the photos in flight.
    """
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise BatchError(f"{folder}: no such folder")
    try:
        os.scandir(folder).close()
    except OSError as e:
        raise BatchError(f"{folder}: cannot read folder ({e.strerror or e})") from None
    output_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Lock(out):
        # A run killed while writing the output left .OUT.tmpPID behind (the lock says no other run is writing).
        remove_stale(out.parent, re.escape(f".{out.name}") + r"(\.failed\.tsv)?\.tmp(?P<pid>\d+)")
        previous = read_results(out)
        photos = list_images(folder)
        done = dict(zip(previous["path"], previous["hash"]))
        hashes, todo = {}, []
        for p in photos:
            try:
                hashes[path_key(p)] = file_hash(p)
            except OSError:
                hashes[path_key(p)] = ""  # unreadable: the tagging step reports why
                todo.append(p)
                continue
            if done.get(path_key(p)) != hashes[path_key(p)]:
                todo.append(p)
        # Unchanged photos keep their rows; earlier failures on unchanged files are not retried.
        unchanged = {path_key(p) for p in photos} - {path_key(p) for p in todo}
        old_failed = previous[(previous["error"] != "") & previous["path"].isin(unchanged)]
        summary = Summary(
            kept=len(unchanged) - len(old_failed),
            failed=len(old_failed),
            failures=[f"{p}: {e}" for p, e in zip(old_failed["path"], old_failed["error"])],
        )
        if on_plan:
            on_plan(len(photos), len(todo))
        journal = journal_path(out)
        with open(journal, "a+", encoding="utf-8") as jf:
            if jf.tell() > 0:
                jf.seek(jf.tell() - 1)
                if jf.read(1) != "\n":
                    jf.write("\n")  # end a line torn by a kill, or our first row would join it
            for path, tags, error in tag_batch(todo):
                rec = {
                    "path": path_key(path),
                    "tags": [t for t, _ in tags or []],
                    "scores": [round(float(s), 4) for _, s in tags or []],
                    "error": error or "",
                    "hash": hashes.get(path_key(path), ""),
                }
                jf.write(json.dumps(rec, ensure_ascii=False) + "\n")
                jf.flush()
                if error:
                    summary.failed += 1
                    summary.failures.append(f"{path_key(path)}: {error}")
                else:
                    summary.tagged += 1
                    if sidecar:
                        try:
                            write_sidecar(path, rec["tags"], sidecar)
                        except (OSError, ValueError) as e:
                            summary.sidecar_errors.append(f"{path}: sidecar not written ({e})")
                if progress:
                    progress(1)
            os.fsync(jf.fileno())
        rows = read_results(out)
        # Photos that left the folder leave the results too.
        rows = rows[rows["path"].isin({path_key(p) for p in photos})]
        write_results(rows, out)
        summary.failures_file = write_failures(rows, out)
        journal.unlink(missing_ok=True)
    return summary


# -- sidecars ------------------------------------------------------------------------------------

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


def write_sidecar(photo: Path, tags: list[str], kind: str) -> Path:
    """`photo.jpg.xmp` (tags as dc:subject keywords, merged into an existing sidecar) or `photo.jpg.txt`."""
    if kind == "txt":
        target = photo.with_name(photo.name + ".txt")
        _atomic_write(target, "".join(t + "\n" for t in tags))
        return target
    if kind != "xmp":
        raise ValueError(f"unknown sidecar kind {kind!r} (use xmp or txt)")
    target = photo.with_name(photo.name + ".xmp")
    rdf, dc = "{%s}" % NS["rdf"], "{%s}" % NS["dc"]
    if target.is_file():
        # Keep what photo managers wrote there (ratings, edits, their keywords); add ours.
        try:
            root = ET.parse(target).getroot()
        except ET.ParseError as e:
            raise ValueError(f"{target}: existing sidecar is not valid XML ({e}); left untouched") from e
    else:
        root = ET.Element("{%s}xmpmeta" % NS["x"])
        ET.SubElement(ET.SubElement(root, rdf + "RDF"), rdf + "Description", {rdf + "about": ""})
    desc = root.find(f".//{rdf}Description")
    if desc is None:
        rdf_el = root.find(f".//{rdf}RDF")
        if rdf_el is None:
            rdf_el = ET.SubElement(root, rdf + "RDF")
        desc = ET.SubElement(rdf_el, rdf + "Description", {rdf + "about": ""})
    subject = desc.find(dc + "subject")
    if subject is None:
        subject = ET.SubElement(desc, dc + "subject")
    bag = subject.find(rdf + "Bag")
    if bag is None:
        bag = ET.SubElement(subject, rdf + "Bag")
    have = {li.text for li in bag.findall(rdf + "li")}
    for tag in tags:
        if tag not in have:
            ET.SubElement(bag, rdf + "li").text = tag
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    _atomic_write(target, '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + text + '\n<?xpacket end="w"?>\n')
    return target


def read_sidecar_keywords(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return [li.text for li in root.iter("{%s}li" % NS["rdf"]) if li.text]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
    return rows


def _plain(rec: dict) -> dict:
    return {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v) for k, v in rec.items()}
