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
from and what re-tagging never removes.
"""
from __future__ import annotations

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


@dataclass
class Keywords:
    """The keyword fields of one XMP packet (or of IPTC, where only `subject` is filled)."""

    subject: list[str] = field(default_factory=list)  # dc:subject
    hierarchical: list[str] = field(default_factory=list)  # lr:hierarchicalSubject, "People|Anna"
    tags_list: list[str] = field(default_factory=list)  # digiKam:TagsList, "People/Anna"
    machine: list[str] = field(default_factory=list)  # tagger:Keywords: the dc:subject entries tagger added

    def owner(self, root: str = DEFAULT_ROOT) -> list[str]:
        """The flat keywords a person gave: dc:subject without tagger's, and the leaves of their hierarchy."""
        leaves = [h.rsplit("|", 1)[-1] for h in self.hierarchical if not under_root(h, root)]
        leaves += [t.rsplit("/", 1)[-1] for t in self.tags_list if not under_root(t, root, "/")]
        # A machine keyword the owner filed in their own tree (moved out of the root) is theirs now.
        machine = set(self.machine) - set(leaves)
        return _unique([k for k in self.subject if k not in machine] + leaves)


def parse_xmp(data: bytes | str, name: str | Path = "<xmp>") -> Keywords:
    """Keywords from an XMP packet (a sidecar's text or the packet embedded in a photo)."""
    try:
        root = SafeET.fromstring(data)
    except Exception as e:  # noqa: BLE001 - ParseError, and defusedxml's refusals (entities, DTDs)
        raise KeywordError(f"{name}: not valid XMP ({type(e).__name__}: {e})") from None
    return Keywords(_bag(root, "dc", "subject"), _bag(root, "lr", "hierarchicalSubject"), _bag(root, "digiKam", "TagsList"),
                    _bag(root, "tagger", "Keywords"))


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
    """Keywords inside the photo file: its XMP packet and its IPTC keywords. Nothing is decoded."""
    xmp, iptc = _embedded(photo)
    found = Keywords()
    if xmp:
        try:
            found = parse_xmp(xmp, photo)
        except KeywordError:
            pass  # a broken embedded packet: the photo is still a photo
    raw = (iptc or {}).get((2, 25))
    for value in raw if isinstance(raw, list) else [raw] if raw else []:
        found.subject.append(_iptc_text(value))
    found.subject = _unique(found.subject)
    return found


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
    """The XMP sidecar of a photo: `IMG_1.jpg.xmp` (full), `IMG_1.xmp` (stem), or for auto the one that exists.

    auto takes `IMG_1.xmp` only when it exists and `IMG_1.jpg.xmp` does not (Lightroom's and
    Capture One's convention), so a library keeps one sidecar per photo.
    """
    photo = Path(photo)
    if naming not in SIDECAR_NAMINGS:
        raise OptionError(f"unknown sidecar naming {naming!r}; choose from {', '.join(SIDECAR_NAMINGS)}")
    full, stem = photo.with_name(photo.name + ".xmp"), photo.with_suffix(".xmp")
    if naming == "full":
        return full
    if naming == "stem":
        return stem
    return stem if stem.is_file() and not full.is_file() else full


def owner_keywords(photo: str | Path, naming: str = "auto", root: str = DEFAULT_ROOT) -> list[str]:
    """The keywords a person gave the photo: embedded XMP and IPTC, and its sidecar, without tagger's own."""
    embedded = embedded_keywords(photo).owner(root)
    return _unique(embedded + read_sidecar(sidecar_path(photo, naming)).owner(root))


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


def _iptc_text(value: bytes) -> str:
    try:
        return clean_keyword(value.decode("utf-8"))
    except UnicodeDecodeError:
        return clean_keyword(value.decode("latin-1"))  # IPTC without a declared character set is usually Latin-1


def _unique(items) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))
