"""Sidecars: make a photo's XMP (or .txt) sidecar hold its current machine tags, and nothing else of ours.

`sync` is idempotent: it reads the sidecar, replaces the keywords tagger wrote last time with the
current ones, keeps every keyword and field the owner or a photo manager put there, and writes
only when something changed. Tags go to the fields photo managers read: `dc:subject` (flat),
`lr:hierarchicalSubject` under a root and each keyword's category (`tagger|nature|beach`; see
`tagger.library.keyword_tree`), which digiKam, Lightroom and darktable show as a branch of the keyword
tree, and digiKam's own `digiKam:TagsList` (`tagger/nature/beach`), which digiKam and Immich read before
the others. Every hierarchical entry under the root is tagger's, at any depth, so the flat form of
earlier versions (`tagger|beach`, or `--flat`) is replaced by the current one, not kept beside it.
The flat ones tagger added are listed in `tagger:Keywords`, so a later run knows them; a keyword the
owner already had is theirs and is never listed.
A new sidecar of a photo with embedded keywords starts with those keywords, so a manager that
prefers the sidecar still shows them.

A library is a stranger's folder, so a sidecar is written only where it belongs: beside its photo
(no folder is ever made), or through a symlink only to a regular file inside the library; any other
link, and anything not a regular file, is refused with the reason. A `.txt` sidecar has no room to
record what tagger wrote, so one that exists is replaced only when it holds exactly tags tagger gave
the photo before (the results say which); any other is the owner's, and is left alone. Keywords are
written as one line each (`pipelines.keywords.clean_keyword`).
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
from dataclasses import dataclass
from pathlib import Path

from defusedxml import ElementTree as SafeET

from embeddings.files import atomic_write
from pipelines.errors import OptionError, TaggerError
from pipelines.keywords import NS, SIDECAR_NAMINGS, Keywords, clean_keyword, embedded_keywords, embedded_xmp, parse_xmp, sidecar_path
from tagger.library.keyword_tree import KeywordTree

KINDS = ("xmp", "txt")
PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
PACKET_END = '\n<?xpacket end="w"?>\n'
RDF = "{%s}" % NS["rdf"]
# Keywords attribute -> (prefix, XMP property, RDF container).
FIELDS = {"subject": ("dc", "subject", "Bag"), "hierarchical": ("lr", "hierarchicalSubject", "Bag"),
          "tags_list": ("digiKam", "TagsList", "Seq"), "machine": ("tagger", "Keywords", "Bag")}

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

    library: the folders the photo was found in (default: its own folder); a symlinked sidecar is
    written through only to a regular file inside them. earlier: tag lists tagger gave this photo
    before; an existing .txt sidecar is replaced only when it holds one of them (or these tags).
    A sidecar that cannot or may not be written is a SidecarError naming it and the reason.
    """
    photo = Path(photo)
    target = path_for(photo, config)
    tags = _clean(tags)
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
        new = _xmp(photo, old, tags, tree, target)
    if new == old:
        return False
    if not dry_run:
        try:
            atomic_write(real, new, parents=False)  # a sidecar goes beside its photo: no folder is made for it
        except OSError as e:
            raise SidecarError(f"{target}: cannot write ({e.strerror or e})") from None
    return True


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


def embed(photo: str | Path, tags: list[str], tree: KeywordTree = KeywordTree(), dry_run: bool = False) -> bool:
    """Write the machine tags into the photo's own XMP (for managers that ignore sidecars of JPEGs, like Lightroom).

    The same reconciliation as a sidecar, on the packet inside the photo; exiftool writes it, every
    other field and the pixels untouched, and keeps the first original as `PHOTO_original` (never
    overwritten by later runs). True if the photo was (or, dry, would be) rewritten.
    """
    photo = Path(photo)
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        raise SidecarError(f"{photo}: writing keywords into photos needs exiftool (Debian/Ubuntu: apt install libimage-exiftool-perl; "
                           "macOS: brew install exiftool; Windows: exiftool.org)")
    old = embedded_xmp(photo)
    new = _xmp(photo, old, _clean(tags), tree, photo)
    if new == old:
        return False
    if dry_run:
        return True
    fd, packet = tempfile.mkstemp(suffix=".xmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new)
        done = subprocess.run([exiftool, "-q", "-q", "-P", "-m", f"-xmp<={packet}", "--", str(photo)],
                              capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(packet)
    if done.returncode != 0:
        raise SidecarError(f"{photo}: exiftool could not write the keywords into it ({done.stderr.strip() or done.returncode})")
    return True


def _txt(tags: list[str]) -> bytes:
    return "".join(t + "\n" for t in tags).encode("utf-8")


def _xmp(photo: Path, old: bytes | None, tags: list[str], tree: KeywordTree, target: Path) -> bytes:
    root = tree.root
    if old is None:
        embedded = embedded_keywords(photo)
        have = Keywords(embedded.owner(root), [h for h in embedded.hierarchical if not tree.is_machine(h)],
                        [t for t in embedded.tags_list if not tree.is_machine(t, "/")])
        packet = ET.Element("{%s}xmpmeta" % NS["x"])
        ET.SubElement(ET.SubElement(packet, RDF + "RDF"), RDF + "Description", {RDF + "about": ""})
    else:
        try:
            have = parse_xmp(old, target)
            _register_prefixes(old)
            packet = SafeET.fromstring(old)
        except Exception as e:  # noqa: BLE001 - KeywordError, or a packet our checks let through and ET does not
            raise SidecarError(f"{target}: existing sidecar is not valid XMP, left untouched ({e})") from None
    owner = set(have.owner(root))
    kept = [k for k in have.subject if k in owner or k not in set(have.machine)]
    added = [t for t in tags if t not in kept]
    want = Keywords(
        subject=kept + added,
        # Every entry under the root is ours, whatever its depth (tagger|cat of earlier versions, tagger|animal|cat):
        # it is replaced by the current form, so a switch to or from --flat leaves one form, not both.
        hierarchical=[h for h in have.hierarchical if not tree.is_machine(h)] + [tree.path(t) for t in tags],
        tags_list=[h for h in have.tags_list if not tree.is_machine(h, "/")] + [tree.path(t, "/") for t in tags],
        machine=added,
    )
    if old is not None and want == have:
        return old
    _set_fields(packet, want)
    ET.indent(packet)
    return (PACKET_BEGIN + ET.tostring(packet, encoding="unicode") + PACKET_END).encode("utf-8")


def _set_fields(tree: ET.Element, want: Keywords) -> None:
    """Replace the three keyword fields wherever they are (element or attribute form) with `want`'s, in one Description."""
    names = {"{%s}%s" % (NS[p], n) for p, n, _ in FIELDS.values()}
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
