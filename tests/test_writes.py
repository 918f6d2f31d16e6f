"""Writes stay where they belong: sidecars, journals, locks and outputs never follow a link out of the library,
never replace a file tagger did not write, and what they hold reads back as it was written."""
import csv
import errno
import os
import subprocess
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embeddings.files import atomic_write
from pipelines.images import printable_path
from pipelines.keywords import embedded_keywords, read_sidecar
from tagger.batch import BatchError, failures_path, journal_path, read_results, tag_folder
from tagger.sidecar import SidecarConfig, SidecarError, sync

XMP, TXT = SidecarConfig("xmp"), SidecarConfig("txt")
HEAD = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag>')
TAIL = "</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"


def packet(*keywords) -> str:
    return HEAD + "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords) + TAIL


def photo(path, seed=0, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path, "JPEG", **save)
    return path


def tagger_of(tags=("beach", "sea"), calls=None):
    """A tag_batch giving every photo `tags` (scores falling from 0.9); files named 'bad...' fail."""

    def tag_batch(paths):
        for p in paths:
            if calls is not None:
                calls.append(p)
            if p.name.startswith("bad"):
                yield p, None, "not an image"
            else:
                yield p, [(t, round(0.9 - 0.05 * i, 4)) for i, t in enumerate(tags)], ""

    return tag_batch


# -- 1. a sidecar link out of the library; keywords with control characters ------------------------


def test_the_atomic_writer_makes_folders_only_when_asked(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "a" / "b" / "f.txt", b"x", parents=False)
    assert not (tmp_path / "a").exists()
    atomic_write(tmp_path / "a" / "b" / "f.txt", b"x")
    assert (tmp_path / "a" / "b" / "f.txt").read_bytes() == b"x"


# -- 2. --sidecar txt never replaces a file tagger did not write ------------------------------------


# -- 3. journal, lock, failures and output are never written through a link ------------------------


# -- 9. file names: too long for a sidecar; two names that once printed the same ------------------


# -- 10. CSV: words with ';' and newlines; formulas ----------------------------------------------------


