"""Sidecars and embedded XMP: make a photo's XMP (or .txt) sidecar, or its own XMP and IPTC, hold its current machine tags.

`sync` is idempotent: it reads the sidecar, replaces the keywords tagger wrote last time with the
current ones, keeps every keyword and field the owner or a photo manager put there, and writes
only when something changed. What goes in every keyword field is `tagger.library.merge`'s: the
owner's keywords of every field and file read (this sidecar, the photo's embedded XMP and IPTC), in
each field's form, and the machine tags flat in `dc:subject` and under a root and each keyword's
category in `lr:hierarchicalSubject` (`tagger|nature|beach`; see `tagger.library.keyword_tree`)
and digiKam's `digiKam:TagsList` (`tagger/nature/beach`), which digiKam and Immich read before the
others; tags the owner removed are kept out (`tagger:Rejected`). Every hierarchical entry under the
root is tagger's, at any depth, so the flat form of earlier versions (`tagger|beach`, or `--flat`) is
replaced by the current one, not kept beside it. tagger's record (`tagger:Keywords`, its copies,
`tagger:Created` for a sidecar it made) lets a later run, and `unsync`/`unembed` (`tagger untag`),
tell what is tagger's.

`embed` does the same to the photo's own XMP with exiftool, merging in its sidecar's keywords, and
writes IPTC Keywords to match where the photo has IPTC already (none is made: the Metadata Working
Group's rule for the legacy block). exiftool rewrites the photo in place (`-overwrite_original`: a new
file renamed over it), so no `PHOTO_original` piles up in the library; a backup, where asked for, goes
to a folder outside it, once per photo.

A library is a stranger's folder, so a sidecar is written only where it belongs: beside its photo
(no folder is ever made), or through a symlink only to a regular file inside the library; any other
link, and anything not a regular file, is refused with the reason. A stem sidecar (`IMG_1.xmp`) that
another file of the stem may own (a RAW, or `IMG_1.png`) is never the photo's (`sidecar_path`). A
`.txt` sidecar has no room to record what tagger wrote, so one that exists is replaced only when it
holds exactly tags tagger gave the photo before (the results say which); any other is the owner's,
and is left alone. Keywords are written as one line each (`pipelines.keywords.clean_keyword`).

`decide` writes the owner's decisions from the review page into the XMP sidecar: an accepted
machine tag becomes the owner's keyword, a rejected one a `tagger:Rejected` entry, by the same
rules and merge as `sync`, every other keyword and field kept.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from defusedxml import ElementTree as SafeET

from embeddings.files import atomic_write
from pipelines.errors import OptionError, TaggerError
from pipelines.keywords import (NS, RECORD, SIDECAR_NAMINGS, KeywordError, Keywords, clean_keyword, embedded_fields, embedded_xmp,
                                iptc_is_utf8, parse_xmp, read_sidecar, sidecar_path, stem_shared_with)
from tagger.library.keyword_tree import KeywordTree
from tagger.library.merge import decided, merge, strip

KINDS = ("xmp", "txt")
PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
PACKET_END = '\n<?xpacket end="w"?>\n'
RDF = "{%s}" % NS["rdf"]
# Keywords attribute -> (prefix, XMP property, RDF container).
FIELDS = {"subject": ("dc", "subject", "Bag"), "hierarchical": ("lr", "hierarchicalSubject", "Bag"),
          "tags_list": ("digiKam", "TagsList", "Seq")} | {attr: ("tagger", name, "Bag") for name, attr in RECORD.items()}

for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


class SidecarError(TaggerError):
    """A sidecar that could not be read or written; the message names the file and the reason."""


@dataclass(frozen=True)
class SidecarConfig:
    kind: str = "xmp"  # xmp, or txt (one tag a line, all ours)
    naming: str = "auto"  # auto, full (IMG_1.jpg.xmp) or stem (IMG_1.xmp); see pipelines.keywords.sidecar_path

    def __post_init__(self):
        if self.kind not in KINDS:
            raise OptionError(f"unknown sidecar kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.naming not in SIDECAR_NAMINGS:
            raise OptionError(f"unknown sidecar naming {self.naming!r}; choose from {', '.join(SIDECAR_NAMINGS)}")


def path_for(photo: Path, config: SidecarConfig) -> Path:
    if config.kind == "txt":
        return photo.with_name(photo.name + ".txt")
    return sidecar_path(photo, config.naming)


def sync(photo: str | Path, tags: list[str], config: SidecarConfig = SidecarConfig(), dry_run: bool = False, *,
         library: Sequence[str | Path] | None = None, earlier: Iterable[list[str]] = (), tree: KeywordTree = KeywordTree()) -> bool:
    """Make the photo's sidecar carry `tags` as its machine tags; True if it was (or, dry, would be) written.

    tree: where an XMP sidecar files them (root, categories, flat); a .txt sidecar has one tag a line.
    An XMP sidecar also gets the owner's keywords of the photo's embedded XMP and IPTC, and leaves out
    the tags the owner rejected (`tagger.library.merge`).

    library: the folders the photo was found in (default: its own folder); a symlinked sidecar is
    written through only to a regular file inside them. earlier: tag lists tagger gave this photo
    before; an existing .txt sidecar is replaced only when it holds one of them (or these tags).
    A sidecar that cannot or may not be written is a SidecarError naming it and the reason.
    """
    photo = Path(photo)
    target = path_for(photo, config)
    tags = _clean(tags)
    if config.kind == "xmp" and config.naming == "stem" and (shared := stem_shared_with(photo)):
        raise SidecarError(f"{target}: may be the sidecar of {shared[0]} too (the same name before the extension); left alone: "
                           "use --sidecar-name auto or full, which give this photo its own")
    try:
        real = _resolve(target, [photo.parent] if library is None else library)
        old = _read(real)
    except OSError as e:
        raise SidecarError(f"{target}: cannot {'write' if e.errno == errno.ENAMETOOLONG else 'read'} ({e.strerror or e})") from None
    if config.kind == "txt":
        new = _txt(tags)
        if old is not None and old != new and old not in {_txt(_clean(t)) for t in earlier}:
            raise SidecarError(f"{target}: not written by tagger (it holds other text than the tags tagger gave this photo), left alone; "
                               "move it away to let tagger write its tags there")
    else:
        have, packet = _parse(old, target)
        want = merge(have, [embedded_fields(photo)], tags, tree, created=old is None or have.created)
        new = _render(old, packet, have, want)
    if new == old:
        return False
    if not dry_run:
        try:
            atomic_write(real, new, parents=False)  # a sidecar goes beside its photo: no folder is made for it
        except OSError as e:
            raise SidecarError(f"{target}: cannot write ({e.strerror or e})") from None
    return True


def decide(photo: str | Path, accept: Sequence[str] = (), reject: Sequence[str] = (), *,
           library: Sequence[str | Path] | None = None, root: str = KeywordTree().root) -> bool:
    """Write the owner's decisions on the photo's machine tags into its XMP sidecar; True if it was written.

    The sidecar is the one `sync` would write (`sidecar_path`, auto naming), made where there is none
    (marked as tagger's, so `tagger untag` can delete it). Its other machine tags stay as they are,
    filed where they were (`tagger|nature|beach`, or flat); the owner's keywords are never changed,
    only the accepted ones added. library: the folders a symlinked sidecar may point into, as for `sync`.
    """
    photo = Path(photo)
    target = sidecar_path(photo, "auto")
    accept, reject = _clean(accept), _clean(reject)
    try:
        real = _resolve(target, [photo.parent] if library is None else library)
        old = _read(real)
    except OSError as e:
        raise SidecarError(f"{target}: cannot read ({e.strerror or e})") from None
    have, packet = _parse(old, target)
    embedded = embedded_fields(photo)
    tags = [t for t in have.machine_words(root) if t not in accept]  # merge leaves the rejected ones out
    want = merge(decided(have, accept, reject, root), [embedded], tags, _tree_of([have, embedded], root), created=old is None or have.created)
    new = _render(old, packet, have, want)
    if new == old:
        return False
    try:
        atomic_write(real, new, parents=False)
    except OSError as e:
        raise SidecarError(f"{target}: cannot write ({e.strerror or e})") from None
    return True


def _tree_of(packets: Sequence[Keywords], root: str) -> KeywordTree:
    """The tree the packets' machine tags are filed in now (`tagger|nature|beach`: beach under nature), so a rewrite keeps it."""
    categories = {}
    for kw in packets:
        for entries, sep in ((kw.hierarchical, "|"), (kw.tags_list, "/")):
            for e in entries:
                levels = e.split(sep)
                # A category that is no tree level of ours (empty, padded) is left out: that keyword is written flat.
                if len(levels) == 3 and levels[0] == root and levels[1] and levels[1] == clean_keyword(levels[1]):
                    categories.setdefault(levels[2], levels[1])
    return KeywordTree(root, categories=categories)


def _clean(tags: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(t for t in map(clean_keyword, tags) if t))


def _resolve(target: Path, library: Sequence[str | Path]) -> Path:
    """The file to read and replace for `target`: itself, or the regular file inside the library its symlink names."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    if stat.S_ISLNK(mode):
        dest = Path(os.path.realpath(target))
        if not any(dest.is_relative_to(os.path.realpath(root)) for root in library):
            raise SidecarError(f"{target}: a symlink to {dest}, outside the library; left alone (tagger writes no file out of it)")
        if not dest.is_file():
            what = "a file that does not exist" if not dest.exists() else "something not a regular file"
            raise SidecarError(f"{target}: a symlink to {what} ({dest}); left alone (tagger creates no file through a link)")
        return dest
    if not stat.S_ISREG(mode):
        raise SidecarError(f"{target}: not a regular file (a folder, FIFO or device); left alone")
    return target


def _read(path: Path) -> bytes | None:
    """The file's bytes (None: there is none), opened without following a link; a FIFO is not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SidecarError(f"{path}: not a regular file (a folder, FIFO or device); left alone")
        return f.read()


def embed(photo: str | Path, tags: list[str], tree: KeywordTree = KeywordTree(), dry_run: bool = False, *,
          naming: str = "auto", backup: Path | None = None, library: Sequence[str | Path] | None = None) -> bool:
    """Write the machine tags into the photo's own XMP, and IPTC Keywords where it has IPTC (for Lightroom, which ignores sidecars of JPEGs).

    The same merge as a sidecar (`tagger.library.merge`), with the owner's keywords of the photo's
    sidecar (named by `naming`) too; exiftool writes it in place, every other field and the pixels
    untouched. backup: where to keep the photo's original before its first rewrite (never replaced
    later); None keeps none. library: the folders the photo was found in (default: its own folder); a
    photo that is a symlink is written through only to a regular file inside them (exiftool would
    otherwise replace the link with a file). True if the photo was (or, dry, would be) rewritten.
    """
    photo = Path(photo)
    real = _resolve(photo, [photo.parent] if library is None else library)  # exiftool would replace a link with a file
    old = embedded_xmp(photo)
    have, packet = _parse(old, photo)
    have.iptc = embedded_fields(photo).iptc
    side = sidecar_path(photo, naming)
    try:
        sidecar = read_sidecar(side)
    except KeywordError as e:
        raise SidecarError(f"{e}; its keywords cannot be merged, so {photo.name} is left alone") from None
    want = merge(have, [sidecar], _clean(tags), tree)
    if old is None and replace(want, iptc=None) == Keywords():
        return False  # no keyword to write (a blank frame's), and no XMP to keep in step: no empty packet is added
    new = _render(old, packet, have, want)
    return _exiftool_write(real, None if new == old else new, have, want, dry_run, backup)


def unembed(photo: str | Path, tree: KeywordTree = KeywordTree(), dry_run: bool = False, *,
            backup: Path | None = None, library: Sequence[str | Path] | None = None) -> tuple[list[str], bool]:
    """Take every machine tag and everything else tagger wrote out of the photo's XMP and IPTC (`tagger untag --embed`).

    (the machine keywords taken out, whether the photo is (or, dry, would be) rewritten); a photo with
    nothing of tagger's in it is not touched. library: as for `embed`.
    """
    photo = Path(photo)
    real = _resolve(photo, [photo.parent] if library is None else library)  # exiftool would replace a link with a file
    old = embedded_xmp(photo)
    have, packet = _parse(old, photo)
    have.iptc = embedded_fields(photo).iptc
    if not have.recorded and not have.machine_words(tree.root):
        return [], False  # nothing of tagger's in it: not even rewritten
    want = strip(have, tree)
    new = _render(old, packet, have, want)
    changed = _exiftool_write(real, None if new == old else new, have, want, dry_run, backup)
    return _removed(have, want, tree.root), changed


def unsync(photo: str | Path, target: Path, tree: KeywordTree = KeywordTree(), dry_run: bool = False, *,
           library: Sequence[str | Path] | None = None) -> tuple[list[str], bool, bool]:
    """Take everything tagger wrote out of one XMP sidecar (`tagger untag`).

    (the machine keywords taken out, whether it is rewritten, whether it is deleted), done or, dry, that
    would be. A sidecar tagger created that then holds nothing else is deleted; one reached through a
    symlink is only rewritten. A sidecar with nothing of tagger's is not touched.
    """
    real = _resolve(target, [Path(photo).parent] if library is None else library)
    try:
        old = _read(real)
    except OSError as e:
        raise SidecarError(f"{target}: cannot read ({e.strerror or e})") from None
    if old is None:
        return [], False, False
    have, packet = _parse(old, target)
    want = strip(have, tree)
    new = _render(old, packet, have, want)
    if new == old:
        return [], False, False
    gone = have.created and real == target and _empty(SafeET.fromstring(new))
    if not dry_run:
        try:
            if gone:
                os.unlink(target)
            else:
                atomic_write(real, new, parents=False)
        except OSError as e:
            raise SidecarError(f"{target}: cannot write ({e.strerror or e})") from None
    return _removed(have, want, tree.root), not gone, gone


def _removed(have: Keywords, want: Keywords, root: str) -> list[str]:
    """The machine keywords `want` no longer holds."""
    return [k for k in have.machine_words(root) if k not in want.subject]


def _exiftool_write(photo: Path, packet: bytes | None, have: Keywords, want: Keywords, dry_run: bool, backup: Path | None) -> bool:
    """Write a new XMP packet (None: keep it) and, where changed, IPTC Keywords into the photo with exiftool; False if nothing to write."""
    iptc = [] if want.iptc is None or want.iptc == have.iptc else ["-IPTC:Keywords="] + [f"-IPTC:Keywords={k}" for k in want.iptc]
    if iptc and not iptc_is_utf8(photo) and any(not k.isascii() and not _latin1(k) for k in want.iptc):
        iptc.append("-IPTC:CodedCharacterSet=UTF8")  # undeclared IPTC is Latin-1, which cannot hold these keywords
    if packet is None and not iptc:
        return False
    if dry_run:
        return True
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        raise SidecarError(f"{photo}: writing keywords into photos needs exiftool (Debian/Ubuntu: apt install libimage-exiftool-perl; "
                           "macOS: brew install exiftool; Windows: exiftool.org)")
    if backup is not None:
        keep_original(photo, backup)
    fd, name = tempfile.mkstemp(suffix=".xmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(packet or b"")
        # -overwrite_original: exiftool writes a new file and renames it over the photo; no PHOTO_original is left in the library.
        args = [exiftool, "-q", "-q", "-P", "-m", "-overwrite_original"] + ([f"-xmp<={name}"] if packet is not None else []) + iptc
        done = subprocess.run(args + ["--", str(photo)], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(name)
    if done.returncode != 0:
        raise SidecarError(f"{photo}: exiftool could not write the keywords into it ({done.stderr.strip() or done.returncode})")
    return True


def keep_original(photo: Path, backup: Path) -> None:
    """Copy the photo to `backup` unless a copy is there already: the first original is kept, later runs leave it."""
    if os.path.lexists(backup):
        return
    try:
        backup.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(backup, photo.read_bytes(), parents=False)
        shutil.copystat(photo, backup)
    except OSError as e:
        raise SidecarError(f"{backup}: cannot keep the original of {photo.name} there ({e.strerror or e}); the photo is left alone") from None


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _txt(tags: list[str]) -> bytes:
    return "".join(t + "\n" for t in tags).encode("utf-8")


def _parse(old: bytes | None, target: Path) -> tuple[Keywords, ET.Element]:
    """The packet's keywords and its tree to rewrite (a new empty packet for None); a broken one is a SidecarError."""
    if old is None:
        packet = ET.Element("{%s}xmpmeta" % NS["x"])
        ET.SubElement(ET.SubElement(packet, RDF + "RDF"), RDF + "Description", {RDF + "about": ""})
        return Keywords(), packet
    try:
        have = parse_xmp(old, target)
        _register_prefixes(old)
        return have, SafeET.fromstring(old)
    except Exception as e:  # noqa: BLE001 - KeywordError, or a packet our checks let through and ET does not
        what = "existing sidecar" if target.suffix.lower() == ".xmp" else "its XMP packet"
        raise SidecarError(f"{target}: {what} is not valid XMP, left untouched ({e})") from None


def _render(old: bytes | None, packet: ET.Element, have: Keywords, want: Keywords) -> bytes:
    """The packet with `want`'s fields; the old bytes themselves when nothing changed (a no-op run writes nothing)."""
    if old is not None and replace(want, iptc=None) == replace(have, iptc=None):
        return old
    _set_fields(packet, want)
    ET.indent(packet)
    return (PACKET_BEGIN + ET.tostring(packet, encoding="unicode") + PACKET_END).encode("utf-8")


def _set_fields(tree: ET.Element, want: Keywords) -> None:
    """Replace the keyword fields and tagger's record wherever they are (element or attribute form) with `want`'s, in one Description."""
    names = {"{%s}%s" % (NS[p], n) for p, n, _ in FIELDS.values()} | {"{%s}Created" % NS["tagger"]}
    descriptions = list(tree.iter(RDF + "Description"))
    if not descriptions:
        rdf = tree.find(f".//{RDF}RDF")
        if rdf is None:
            rdf = ET.SubElement(tree, RDF + "RDF")
        descriptions = [ET.SubElement(rdf, RDF + "Description", {RDF + "about": ""})]
    for desc in descriptions:
        for child in [c for c in desc if c.tag in names]:
            desc.remove(child)
        for name in names & set(desc.attrib):
            del desc.attrib[name]
    for attr, (prefix, name, container) in FIELDS.items():
        values = getattr(want, attr)
        if values:
            bag = ET.SubElement(ET.SubElement(descriptions[0], "{%s}%s" % (NS[prefix], name)), RDF + container)
            for v in values:
                ET.SubElement(bag, RDF + "li").text = v
    if want.created:
        ET.SubElement(descriptions[0], "{%s}Created" % NS["tagger"]).text = "True"


def _empty(tree: ET.Element) -> bool:
    """Whether a packet says nothing: no property in any Description (element or attribute)."""
    return all(len(d) == 0 and set(d.attrib) <= {RDF + "about"} for d in tree.iter(RDF + "Description"))


def _register_prefixes(data: bytes) -> None:
    """Keep the prefixes the sidecar used (exif:, digiKam:, ...) instead of ElementTree's ns0:, ns1:."""
    for _, (prefix, uri) in SafeET.iterparse(io.BytesIO(data), events=("start-ns",)):
        # A sidecar that binds one of our prefixes (x:, rdf:, dc:...) to another namespace must not take
        # it from ours: ElementTree's map is global, and every later sidecar would say ns0:, ns1:.
        if prefix and uri not in NS.values() and prefix not in NS:
            try:
                ET.register_namespace(prefix, uri)
            except ValueError:
                pass  # a reserved prefix (ns0-style): ElementTree names it itself
