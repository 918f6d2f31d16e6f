"""Merging a photo's keyword fields: one story in every field tagger writes, and the owner's decisions kept.

Photo managers read different fields first: digiKam and Immich `digiKam:TagsList`, Lightroom
`lr:hierarchicalSubject` and `dc:subject`, older tools IPTC Keywords. So when tagger writes a
packet (a sidecar, or the XMP inside a photo) every field it writes carries the owner's keywords
from every field and file it read (this packet, the photo's embedded XMP and IPTC, its sidecar),
each in the field's form: flat in `dc:subject` and IPTC, `People|Anna` in the hierarchy,
`People/Anna` in TagsList, a flat keyword as a top-level entry of both trees. What tagger copies
into a field is recorded (`tagger:CopiedSubject`, ...) so that it can be recomputed on the next run
and taken out by `tagger untag`; the owner's own entries are never changed or reordered.

The machine keywords go flat into `dc:subject` (and IPTC) and under the root in the trees, except a
keyword the owner has already, in any case or plural (`Cats` for `cat`), or filed in their own tree
(`Places|beach`): that one is theirs. A machine keyword of tagger's last record that the owner has
removed (gone from `dc:subject`, or from a tree the packet still has) is rejected: kept in
`tagger:Rejected` and never written for that photo again.

The owner can decide in tagger too (the review page, `tagger.library.review`): `decided` turns an
accepted machine keyword into the owner's (a flat keyword of `dc:subject`, out of tagger's record
and branch) and a rejected one into a `tagger:Rejected` entry, as if the owner had kept or removed
it in a photo manager; `merge` then writes every field from that.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pipelines.keywords import KeywordIndex, Keywords, PathIndex, same_keyword, under_root, unique_keywords
from tagger.library.keyword_tree import KeywordTree


@dataclass(frozen=True)
class Owner:
    """The owner's keywords of a photo, from every field and file read, in the order read."""

    flat: list[str]  # dc:subject and IPTC entries, one spelling each
    paths: list[tuple[str, ...]]  # hierarchy entries (lr's and digiKam's), as levels
    # Indexes of the above (any number of keywords, each question in constant time).
    levels: KeywordIndex = field(init=False, repr=False, compare=False)  # every level of every path
    leaves: KeywordIndex = field(init=False, repr=False, compare=False)  # the last level of each path
    _all: KeywordIndex = field(init=False, repr=False, compare=False)  # flat keywords and every level

    def __post_init__(self):
        object.__setattr__(self, "levels", KeywordIndex(c for p in self.paths for c in p))
        object.__setattr__(self, "leaves", KeywordIndex(p[-1] for p in self.paths))
        everything = KeywordIndex(self.flat)
        everything.forms |= self.levels.forms
        object.__setattr__(self, "_all", everything)

    def has(self, keyword: str) -> bool:
        """Whether the owner has the keyword already: flat, or as any level of their tree, in any case or plural."""
        return keyword in self._all


def owner_of(packets: Sequence[Keywords], root: str) -> Owner:
    flat, paths, seen = [], [], PathIndex()
    for kw in packets:
        flat += kw.owner_flat(root)
        for p in kw.owner_paths(root):
            if p not in seen:
                paths.append(p)
                seen.add(p)
    return Owner(unique_keywords(flat), paths)


def rejected_now(have: Keywords, owner: Owner, root: str) -> list[str]:
    """Machine keywords of the packet's last record the owner has removed since (a tag moved into their tree is not one).

    Removed means gone from dc:subject, or from a tree field the packet still has: a tool that drops a
    whole field it does not know (TagsList) removes nothing the owner decided.
    """
    if not have.recorded:
        return []  # no record of what tagger wrote: nothing to compare with

    subject = KeywordIndex(have.subject)
    trees = [KeywordIndex(e.rsplit(sep, 1)[-1] for e in entries) for entries, sep in ((have.hierarchical, "|"), (have.tags_list, "/"))
             if entries]

    def missing(word: str) -> bool:
        return word not in subject or any(word not in leaves for leaves in trees)

    return [w for w in have.machine if not owner.has(w) and missing(w)]


def merge(have: Keywords, others: Sequence[Keywords], tags: Sequence[str], tree: KeywordTree, created: bool = False) -> Keywords:
    """The fields a packet should hold: `have` (as read) with the owner's keywords of all packets and the machine `tags`.

    others: the photo's other packets (the embedded XMP with its IPTC, or the sidecar). have.iptc, when
    not None (the photo has an IPTC block), gets the same flat keywords as dc:subject; IPTC is never made.
    """
    root = tree.root
    owner = owner_of([have, *others], root)
    # What the owner removed from any packet of the photo counts for all of them, in this run already.
    rejected = unique_keywords([r for kw in (have, *others) for r in (*kw.rejected, *rejected_now(kw, owner, root))])
    said_no = KeywordIndex(rejected)
    machine = unique_keywords(t for t in tags if not owner.has(t) and t not in said_no)
    leaves = [p[-1] for p in owner.paths]
    top = [(k,) for k in owner.flat if k not in owner.levels]

    subject, copied_subject = _with(_own(have.subject, have, have.copied_subject, owner, root), owner.flat + leaves)
    hier_own = [h for h in have.hierarchical if not tree.is_machine(h) and h not in have.copied_hierarchical]
    tags_own = [t for t in have.tags_list if not tree.is_machine(t, "/") and t not in have.copied_tags_list]
    hierarchical, copied_hierarchical = _paths(hier_own, owner.paths + top, "|")
    tags_list, copied_tags_list = _paths(tags_own, owner.paths + top, "/")
    iptc, copied_iptc = None, []
    if have.iptc is not None:
        iptc, copied_iptc = _with(_own(have.iptc, have, have.copied_iptc, owner, root), owner.flat + leaves)
        iptc += machine
    return Keywords(subject=subject + machine, hierarchical=hierarchical + [tree.path(t) for t in machine],
                    tags_list=tags_list + [tree.path(t, "/") for t in machine], machine=machine, rejected=rejected,
                    copied_subject=copied_subject, copied_hierarchical=copied_hierarchical, copied_tags_list=copied_tags_list,
                    copied_iptc=copied_iptc, created=created, iptc=iptc, recorded=True)


def decided(have: Keywords, accept: Sequence[str], reject: Sequence[str], root: str) -> Keywords:
    """The packet as read, with the owner's decisions on machine keywords applied (feed it to `merge`).

    An accepted keyword becomes the owner's: flat in dc:subject, out of tagger's record and out of the
    branch under the root (which says "tagger's" even without the record); accepting a rejected one
    takes the rejection back. A rejected keyword joins tagger:Rejected, and stays in the record so that
    merge takes it out of every field. Nothing else of the packet is changed.
    """
    def kept(entries: list[str], sep: str) -> list[str]:
        return [e for e in entries if not (under_root(e, root, sep) and any(same_keyword(e.rsplit(sep, 1)[-1], a) for a in accept))]

    def out(words: list[str], gone: Sequence[str]) -> list[str]:
        return [w for w in words if not any(same_keyword(w, g) for g in gone)]

    subject = list(have.subject) + [a for a in accept if not any(same_keyword(a, s) for s in have.subject)]
    rejected = out(have.rejected, accept) + [r for r in reject if not any(same_keyword(r, x) for x in have.rejected)]
    return replace(have, subject=subject, machine=out(have.machine, accept), rejected=rejected,
                   hierarchical=kept(have.hierarchical, "|"), tags_list=kept(have.tags_list, "/"))


def strip(have: Keywords, tree: KeywordTree) -> Keywords:
    """The packet without anything tagger wrote: machine keywords, the root's entries, copies and its record (`tagger untag`)."""
    root = tree.root
    owner = owner_of([have], root)
    return Keywords(subject=_own(have.subject, have, have.copied_subject, owner, root),
                    hierarchical=[h for h in have.hierarchical if not tree.is_machine(h) and h not in have.copied_hierarchical],
                    tags_list=[t for t in have.tags_list if not tree.is_machine(t, "/") and t not in have.copied_tags_list],
                    iptc=None if have.iptc is None else _own(have.iptc, have, have.copied_iptc, owner, root))


def _own(entries: list[str], have: Keywords, copied: list[str], owner: Owner, root: str) -> list[str]:
    """A flat field's own entries: without copies and tagger's keywords, except a machine keyword the owner filed in their tree."""
    machine = {m for m in have.machine_words(root) if m not in owner.leaves}
    copied = set(copied)
    return [e for e in entries if e not in copied and e not in machine]


def _with(own: list[str], wanted: list[str]) -> tuple[list[str], list[str]]:
    """own plus each wanted keyword it lacks (in any case or plural); and those added."""
    added, have = [], KeywordIndex(own)
    for w in wanted:
        if w not in have:
            added.append(w)
            have.add(w)
    return own + added, added


def _paths(own: list[str], wanted: list[tuple[str, ...]], sep: str) -> tuple[list[str], list[str]]:
    """A tree field's own entries plus each wanted path it lacks, written with `sep`; and those added."""
    have = PathIndex(tuple(e.split(sep)) for e in own)
    added = []
    for p in wanted:
        if p not in have:
            have.add(p)
            added.append(sep.join(p))
    return own + added, added
