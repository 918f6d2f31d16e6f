"""A photo's keywords as photo managers keep them: XMP in the file or in a sidecar, and IPTC.

digiKam, Lightroom, darktable and Immich keep keywords in XMP (`dc:subject`, flat;
`lr:hierarchicalSubject`, as `People|Anna`; digiKam's `digiKam:TagsList`, as `People/Anna`, which
digiKam and Immich read first), embedded in the photo or in a sidecar beside it
(`IMG_1.jpg.xmp`, or `IMG_1.xmp` where that is the library's convention), and older tools in
IPTC (`Keywords`, 2:25). Pillow reads the embedded XMP packet and the IPTC block without decoding
a pixel; the XMP is parsed with defusedxml, which refuses entity bombs and external entities.

Keywords that `tagger tag` wrote are recorded in the sidecar itself (`tagger:Keywords`, and the
hierarchical ones sit under a root, `tagger|beach`), so the owner's keywords are told apart from
the machine's: `owner_keywords` is what a person gave the photo, and that is what training learns
from and what re-tagging never removes. When that record is gone (another tool stripped the `tagger:`
namespace), the entries under the root are still tagger's, and their leaves are the machine keywords.
The record also says which of the owner's keywords tagger copied into a field from another one
(`tagger:CopiedSubject`, ...: so `tagger untag` can take exactly those out again), which machine
keywords the owner removed (`tagger:Rejected`: never proposed again) and whether tagger made the
sidecar file (`tagger:Created`).

Keywords are one keyword whatever their case or English plural (`same_keyword`: `Cats` is `cat`),
so a merge keeps the owner's spelling and adds no second one.
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from defusedxml import ElementTree as SafeET

from pipelines.errors import OptionError, TaggerError

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "tagger": "urn:tagger:xmp:1.0/",
}
DEFAULT_ROOT = "tagger"  # machine keywords sit under this root of the keyword tree: tagger|beach
SIDECAR_NAMINGS = ("auto", "full", "stem")  # auto: stem where the library already uses it; full: IMG_1.jpg.xmp; stem: IMG_1.xmp
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")  # Unicode's Cc, and the line and paragraph separators


class KeywordError(TaggerError, ValueError):
    """Metadata that cannot be read (a sidecar that is not XMP); the message names the file."""


# tagger's own properties (prefix tagger:) -> the Keywords list they are read into.
RECORD = {"Keywords": "machine", "Rejected": "rejected", "CopiedSubject": "copied_subject",
          "CopiedHierarchicalSubject": "copied_hierarchical", "CopiedTagsList": "copied_tags_list", "CopiedIPTCKeywords": "copied_iptc"}


@dataclass
class Keywords:
    """The keyword fields of one XMP packet (and, read from a photo, its IPTC Keywords)."""

    subject: list[str] = field(default_factory=list)  # dc:subject
    hierarchical: list[str] = field(default_factory=list)  # lr:hierarchicalSubject, "People|Anna"
    tags_list: list[str] = field(default_factory=list)  # digiKam:TagsList, "People/Anna"
    machine: list[str] = field(default_factory=list)  # tagger:Keywords: the dc:subject entries tagger added
    rejected: list[str] = field(default_factory=list)  # tagger:Rejected: machine keywords the owner removed
    # The owner's keywords tagger copied into each field from another field or file (tagger:Copied...).
    copied_subject: list[str] = field(default_factory=list)
    copied_hierarchical: list[str] = field(default_factory=list)
    copied_tags_list: list[str] = field(default_factory=list)
    copied_iptc: list[str] = field(default_factory=list)
    created: bool = False  # tagger:Created: tagger made this sidecar file (untag may delete it)
    iptc: list[str] | None = None  # IPTC Keywords of a photo (None: it has no IPTC block); not XMP
    recorded: bool = field(default=False, compare=False)  # the packet holds tagger's record (a tagger: property)

    def machine_words(self, root: str = DEFAULT_ROOT) -> list[str]:
        """The flat keywords tagger put here: its record, or, when another tool removed that, the leaves under the root."""
        if self.recorded:
            return list(self.machine)
        return _unique([h.rsplit("|", 1)[-1] for h in self.hierarchical if under_root(h, root) and h != root]
                       + [t.rsplit("/", 1)[-1] for t in self.tags_list if under_root(t, root, "/") and t != root])

    def owner_paths(self, root: str = DEFAULT_ROOT) -> list[tuple[str, ...]]:
        """The owner's hierarchical keywords of this packet (lr's and digiKam's), as tuples of levels; copies left out."""
        copied_h, copied_t = set(self.copied_hierarchical), set(self.copied_tags_list)
        paths = [tuple(h.split("|")) for h in self.hierarchical if not under_root(h, root) and h not in copied_h]
        paths += [tuple(t.split("/")) for t in self.tags_list if not under_root(t, root, "/") and t not in copied_t]
        return [p for p in dict.fromkeys(tuple(c for c in p if c) for p in paths) if p]

    def owner_flat(self, root: str = DEFAULT_ROOT) -> list[str]:
        """The owner's flat keywords of this packet: dc:subject and IPTC without tagger's keywords and copies."""
        # A machine keyword the owner filed in their own tree (moved out of the root) is theirs now.
        leaves = KeywordIndex(p[-1] for p in self.owner_paths(root))
        machine = {m for m in self.machine_words(root) if m not in leaves}
        copied, copied_iptc = set(self.copied_subject), set(self.copied_iptc)
        flat = [k for k in self.subject if k not in machine and k not in copied]
        return _unique(flat + [k for k in self.iptc or () if k not in machine and k not in copied_iptc])

    def owner(self, root: str = DEFAULT_ROOT) -> list[str]:
        """The keywords a person gave: flat ones and the leaves of their hierarchy, one spelling each."""
        return unique_keywords(self.owner_flat(root) + [p[-1] for p in self.owner_paths(root)])


def parse_xmp(data: bytes | str, name: str | Path = "<xmp>") -> Keywords:
    """Keywords from an XMP packet (a sidecar's text or the packet embedded in a photo)."""
    try:
        root = SafeET.fromstring(data)
    except Exception as e:  # noqa: BLE001 - ParseError, and defusedxml's refusals (entities, DTDs)
        raise KeywordError(f"{name}: not valid XMP ({type(e).__name__}: {e})") from None
    found = Keywords(_bag(root, "dc", "subject"), _bag(root, "lr", "hierarchicalSubject"), _bag(root, "digiKam", "TagsList"))
    for name, attr in RECORD.items():
        setattr(found, attr, _bag(root, "tagger", name))
    found.created = _bag(root, "tagger", "Created") == ["True"]
    found.recorded = any(el.tag.startswith("{%s}" % NS["tagger"]) for el in root.iter()) or any(
        a.startswith("{%s}" % NS["tagger"]) for d in root.iter("{%s}Description" % NS["rdf"]) for a in d.attrib)
    return found


def read_sidecar(path: str | Path) -> Keywords:
    """Keywords of an XMP sidecar file; an empty Keywords when there is none."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Keywords()
    except OSError as e:
        raise KeywordError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_xmp(data, path)


def embedded_xmp(photo: str | Path) -> bytes | None:
    """The XMP packet inside a photo file (None when it has none, or Pillow cannot open it). Nothing is decoded."""
    return _embedded(photo)[0]


def embedded_keywords(photo: str | Path) -> Keywords:
    """Keywords inside the photo file, IPTC Keywords also in `subject` (as readers that merge them see). Nothing is decoded."""
    found = embedded_fields(photo)
    found.subject = _unique(found.subject + (found.iptc or []))
    return found


def embedded_fields(photo: str | Path) -> Keywords:
    """The photo's XMP keyword fields and, apart, its IPTC Keywords (`iptc`: None when it has no IPTC block)."""
    xmp, iptc = _embedded(photo)
    found = Keywords()
    if xmp:
        try:
            found = parse_xmp(xmp, photo)
        except KeywordError:
            pass  # a broken embedded packet: the photo is still a photo
    if iptc is not None:
        raw = iptc.get((2, 25))
        found.iptc = _unique(_iptc_text(v) for v in (raw if isinstance(raw, list) else [raw] if raw else []))
    return found


def iptc_is_utf8(photo: str | Path) -> bool:
    """Whether the photo's IPTC declares UTF-8 (CodedCharacterSet ESC % G); undeclared IPTC is read as Latin-1."""
    iptc = _embedded(photo)[1]
    return bool(iptc) and iptc.get((1, 90)) == b"\x1b%G"


def _embedded(photo: str | Path) -> tuple[bytes | None, dict | None]:
    from PIL import Image, IptcImagePlugin

    from pipelines.images import is_heif, register_heif

    try:
        with open(photo, "rb") as f:
            if is_heif(f.read(12)):
                register_heif()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(photo) as im:
                xmp = im.info.get("xmp")
                iptc = IptcImagePlugin.getiptcinfo(im) if im.format in ("JPEG", "TIFF") else None
    except Exception:  # noqa: BLE001 - a photo Pillow cannot open has no keywords we can read; decoding reports it
        return None, None
    return (bytes(xmp) if xmp else None), iptc


def sidecar_path(photo: str | Path, naming: str = "auto") -> Path:
    """The XMP sidecar of a photo: `IMG_1.jpg.xmp` (full), `IMG_1.xmp` (stem), or for auto the one that is the photo's.

    auto takes `IMG_1.xmp` only when it exists, `IMG_1.jpg.xmp` does not, and no other file of the
    folder has the stem `IMG_1` (Lightroom's and Capture One's convention, for one photo). Where
    another one does (`IMG_1.CR2` beside `IMG_1.jpg`, or `IMG_1.png`), `IMG_1.xmp` may be that file's,
    so the photo takes `IMG_1.jpg.xmp`; once that exists, every later run takes it too.
    """
    photo = Path(photo)
    if naming not in SIDECAR_NAMINGS:
        raise OptionError(f"unknown sidecar naming {naming!r}; choose from {', '.join(SIDECAR_NAMINGS)}")
    full, stem = photo.with_name(photo.name + ".xmp"), photo.with_suffix(".xmp")
    if naming == "full":
        return full
    if naming == "stem":
        return stem
    return stem if stem.is_file() and not full.is_file() and not stem_shared_with(photo) else full


def stem_shared_with(photo: str | Path) -> list[str]:
    """The other files of the photo's folder with its stem (`IMG_1.CR2` for `IMG_1.jpg`), which `IMG_1.xmp` may belong to.

    Sidecars and other metadata files (`.xmp`, `.txt`, `.json`, ...) and hidden files own no sidecar.
    """
    photo = Path(photo)
    folder = str(photo.parent)
    try:
        st = os.stat(folder)
    except OSError:
        return []
    return [n for n in _stems(folder, st.st_mtime_ns, st.st_size).get(photo.stem, []) if n != photo.name]


@functools.lru_cache(maxsize=16)
def _stems(folder: str, mtime_ns: int, size: int) -> dict[str, list[str]]:
    """The folder's files by stem, sidecars left out: listed once while the folder is unchanged (mtime and size are the key),
    not once per photo of a large folder."""
    from pipelines.scan import METADATA_EXTENSIONS

    stems: dict[str, list[str]] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return stems
    for n in names:
        stem, ext = os.path.splitext(n)
        if not n.startswith(".") and ext.lower() not in METADATA_EXTENSIONS:
            stems.setdefault(stem, []).append(n)
    return stems


def owner_keywords(photo: str | Path, naming: str = "auto", root: str = DEFAULT_ROOT) -> list[str]:
    """The keywords a person gave the photo: embedded XMP and IPTC, and its sidecar, without tagger's own."""
    return unique_keywords(embedded_fields(photo).owner(root) + read_sidecar(sidecar_path(photo, naming)).owner(root))


def _bag(root, prefix: str, name: str) -> list[str]:
    """The items of every rdf:Bag/Seq under prefix:name, in order; attribute form for a single value too."""
    tag = "{%s}%s" % (NS[prefix], name)
    rdf = "{%s}" % NS["rdf"]
    out = []
    for el in root.iter(tag):
        items = [clean_keyword(li.text) for li in el.iter(rdf + "li") if li.text]
        if not any(items) and el.text:
            items = [clean_keyword(el.text)]
        out += items
    for desc in root.iter(rdf + "Description"):
        if tag in desc.attrib:
            out.append(clean_keyword(desc.attrib[tag]))
    return _unique(out)


def clean_keyword(text: str) -> str:
    """A keyword as one line: each run of control characters (newline, tab, NUL, ...) becomes a space; ends stripped."""
    return CONTROL.sub(" ", text).strip()


def under_root(keyword: str, root: str, sep: str = "|") -> bool:
    """Whether a hierarchical keyword is the root or in its branch."""
    return keyword == root or keyword.startswith(root + sep)


def keyword_forms(keyword: str) -> set[str]:
    """The keyword case-folded, and what it is as a singular by English rules (cats, boxes, cities: cat, box, city)."""
    k = keyword.casefold()
    forms = {k}
    if len(k) > 3 and k.endswith("s") and not k.endswith("ss"):
        forms.add(k[:-1])
        if len(k) > 4 and k.endswith("es"):
            forms.add(k[:-2])
        if len(k) > 4 and k.endswith("ies"):
            forms.add(k[:-3] + "y")
    return forms


def same_keyword(a: str, b: str) -> bool:
    """Whether two keywords are one, whatever their case or English plural: Car and car, Cats and cat, boxes and box."""
    return a == b or bool(keyword_forms(a) & keyword_forms(b))


class KeywordIndex:
    """Keywords gathered to ask whether one is among them (`same_keyword` with any) in constant time.

    Two keywords are one when they share a form, so the forms of those added are all a question
    needs: the fields of a stranger's sidecar may hold any number of keywords, and comparing each
    with each took 15 s for 8,000."""

    def __init__(self, keywords=()):
        self.forms: set[str] = set()
        for k in keywords:
            self.add(k)

    def add(self, keyword: str) -> None:
        self.forms |= keyword_forms(keyword)

    def __contains__(self, keyword: str) -> bool:
        return not self.forms.isdisjoint(keyword_forms(keyword))


class PathIndex:
    """Keyword paths (tuples of levels) gathered to ask whether one is among them, level by level `same_keyword`:
    looked up by the forms of their last level, so only paths ending in the same keyword are compared."""

    def __init__(self, paths=()):
        self.by_leaf: dict[str, list[tuple[str, ...]]] = {}
        for p in paths:
            self.add(p)

    def add(self, path: tuple[str, ...]) -> None:
        for form in keyword_forms(path[-1]):
            self.by_leaf.setdefault(form, []).append(path)

    def __contains__(self, path: tuple[str, ...]) -> bool:
        return any(same_path(path, q) for form in keyword_forms(path[-1]) for q in self.by_leaf.get(form, ()))


def same_path(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two keyword paths are one: as many levels, each the same keyword."""
    return len(a) == len(b) and all(same_keyword(x, y) for x, y in zip(a, b))


def unique_keywords(keywords) -> list[str]:
    """The keywords without repeats by case or plural, the first spelling of each kept.

    A keyword repeats one kept when they share a form (`same_keyword`), so the forms kept so far are
    all it is checked against: linear, where comparing each with each took 15 s for 8,000 keywords
    (a sidecar of a stranger's library may hold any number)."""
    out: list[str] = []
    seen: set[str] = set()
    for k in keywords:
        if not k:
            continue
        forms = keyword_forms(k)
        if seen.isdisjoint(forms):
            out.append(k)
            seen |= forms
    return out


def _iptc_text(value: bytes) -> str:
    try:
        return clean_keyword(value.decode("utf-8"))
    except UnicodeDecodeError:
        return clean_keyword(value.decode("latin-1"))  # IPTC without a declared character set is usually Latin-1


def _unique(items) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))
