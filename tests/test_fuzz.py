"""Fuzzing the decoder: mutated JPEG and PNG bytes give an RGB image or an ImageError, nothing else.

Derandomized (a fixed example sequence) so CI sees the same inputs on every run.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.images import ImageError, decode_image
from tagger.scoring.options import TagOptions
from tagger.scoring.evidence import Evidence
from tagger.bundle import save


def _sample(fmt: str) -> bytes:
    rng = np.random.default_rng(7)
    im = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


SEEDS = {"jpeg": _sample("JPEG"), "png": _sample("PNG")}

# One mutation: (kind, position as a fraction of the length, a byte value).
MUTATION = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                     st.floats(0.0, 1.0, allow_nan=False), st.integers(0, 255))


def mutate(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for kind, where, value in mutations:
        if not b:
            break
        i = min(int(where * len(b)), len(b) - 1)
        if kind == "flip":
            b[i] ^= 1 << (value % 8)
        elif kind == "set":
            b[i] = value
        elif kind == "insert":
            b[i:i] = bytes([value]) * (1 + value % 4)
        elif kind == "delete":
            del b[i : i + 1 + value % 8]
        else:
            del b[i:]
    return bytes(b)


def check_decode(data: bytes) -> None:
    try:
        im = decode_image(data, "fuzz.jpg")
    except ImageError as e:
        assert e.path == "fuzz.jpg" and e.reason and "\n" not in e.reason
        return
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size[0] >= 1 and im.size[1] >= 1
    im.tobytes()  # fully decoded, usable pixels


@pytest.mark.parametrize("fmt", sorted(SEEDS))
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_decode_mutated_bytes(fmt, mutations):
    check_decode(mutate(SEEDS[fmt], mutations))


def test_unmutated_seeds_decode():
    for data in SEEDS.values():
        assert decode_image(data, "seed").size == (16, 12)


_TAGGER = []


def tiny_tagger():
    if not _TAGGER:
        from conftest import build_tiny_tagger

        _TAGGER.append(build_tiny_tagger())
    return _TAGGER[0]


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(SEEDS)), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_predict_mutated_bytes(fmt, mutations):
    data = mutate(SEEDS[fmt], mutations)
    try:
        [tags] = tiny_tagger().predict([data])
    except ImageError as e:
        assert e.reason
        return
    assert 1 <= len(tags) <= 3
    assert all(isinstance(t, str) and np.isfinite(s) for t, s in tags)


# -- the sidecar reader and the bundle loader -------------------------------------------------------

SIDECAR = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
           b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
           b'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/">'
           b"<dc:subject><rdf:Bag><rdf:li>beach</rdf:li><rdf:li>Anna</rdf:li></rdf:Bag></dc:subject>"
           b"<lr:hierarchicalSubject><rdf:Bag><rdf:li>People|Anna</rdf:li></rdf:Bag></lr:hierarchicalSubject>"
           b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_sidecar_reader_and_writer_on_mutated_xmp(tmp_path_factory, mutations):
    """A mutated sidecar reads as keywords or a KeywordError, and sync writes it or leaves it untouched with a SidecarError."""
    from pipelines.keywords import KeywordError, parse_xmp
    from tagger.library.sidecar import SidecarConfig, SidecarError, sync

    data = mutate(SIDECAR, mutations)
    try:
        kw = parse_xmp(data)
        assert all(isinstance(k, str) for k in kw.subject + kw.hierarchical + kw.owner())
    except KeywordError:
        pass
    folder = tmp_path_factory.mktemp("side")
    photo = folder / "p.jpg"
    photo.write_bytes(SEEDS["jpeg"])
    side = folder / "p.jpg.xmp"
    side.write_bytes(data)
    try:
        sync(photo, ["dog", "grass"], SidecarConfig("xmp"))
    except SidecarError:
        assert side.read_bytes() == data  # left untouched
    else:
        from pipelines.keywords import read_sidecar

        assert read_sidecar(side).machine[-1:] in (["grass"], [])  # ours recorded (or already the owner's)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["g_image_hidden", "g_noise_hidden", "word_dim", "noise_dim", "heads", "dropout", "d_maxout_units"]),
       value=st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                       st.none(), st.booleans()),
       where=st.sampled_from(["generator", "sampling"]))
def test_bundle_loader_on_tampered_config(tmp_path_factory, key, value, where):
    """Any value in config.json loads (and then tags) or is a one-line BundleError: never a traceback or a huge allocation."""
    import json

    from conftest import build_tiny_tagger
    from tagger.bundle import BundleError
    from tagger.bundle import load, save

    path = save(build_tiny_tagger(), tmp_path_factory.mktemp("b") / "m")
    cfg = json.loads((path / "config.json").read_text())
    if where == "generator":
        cfg["generator"]["config"][key] = value
    else:
        cfg["sampling"][{"g_image_hidden": "samples", "g_noise_hidden": "neighbours", "word_dim": "top_k", "noise_dim": "seed",
                         "heads": "temperature", "dropout": "min_score", "d_maxout_units": "prior_power"}[key]] = value
    (path / "config.json").write_text(json.dumps(cfg))
    try:
        tagger = load(path)
    except BundleError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))
        return
    tags = [r.tags for r in tagger.tag(Evidence(np.zeros((1, tagger.feature_dim), dtype=np.float32), None), TagOptions())]
    assert all(np.isfinite(s) for _, s in tags[0])


_SAVED = []


def tiny_bundle_copy(folder):
    """A fresh copy of one saved tiny bundle with every part (kNN, neighbour votes, calibration)."""
    import shutil

    from conftest import build_tiny_tagger
    from tagger.scoring.calibration import Calibration

    if not _SAVED:
        tagger = build_tiny_tagger(knn_photos=20, neighbour_votes=3)
        tagger = tagger.replace(calibration={"cgan": Calibration(np.array([0.0, 1.0]), np.array([0.1, 0.5]))})
        _SAVED.append(save(tagger, folder.parent / "saved"))
    return shutil.copytree(_SAVED[0], folder / "m")


def load_and_tag_or_refuse(path):
    """A tampered bundle loads and tags (finite scores), or is a one-line BundleError naming a file of the bundle."""
    from tagger.bundle import BundleError
    from tagger.bundle import load

    try:
        tagger = load(path)
    except BundleError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{path}/"), str(e)
        return None
    for method in tagger.methods:
        tags = [r.tags for r in tagger.tag(Evidence(np.zeros((2, tagger.feature_dim), dtype=np.float32), None), TagOptions(method=method))]
        assert all(np.isfinite(s) for row in tags for _, s in row)
    assert isinstance(tagger.summary.train_photos, int)
    return tagger


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6)
SETTINGS = [("generator", "config", k) for k in ("word_dim", "unit_output", "noise", "heads", "dropout", "g_joint_hidden")] + [
    ("sampling", k) for k in ("samples", "exclude", "scoring", "min_score", "seed")] + [
    ("words", "center"), ("words", "normalize"), ("condition", "neighbour_votes"), ("backbone", "name"), ("backbone", "weights"),
    ("generator", "family"), ("generator", "config"), ("method",), ("vocabulary_size",), ("format_version",), ("info",),
    ("info", "train_photos"), ("info", "split"), ("info", "val_p5"), ("info", "warnings"), ("info", "something_new")]


@pytest.mark.slow
@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(SETTINGS), value=JSON_VALUES)
def test_bundle_loader_on_any_tampered_setting(tmp_path_factory, where, value):
    """Any JSON value anywhere in config.json: the bundle loads and tags, or it is one line naming the file."""
    import json

    path = tiny_bundle_copy(tmp_path_factory.mktemp("b"))
    cfg = json.loads((path / "config.json").read_text())
    parent = cfg
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    (path / "config.json").write_text(json.dumps(cfg))
    load_and_tag_or_refuse(path)


KNN_ARRAYS = ["indptr", "indices", "config", "vocab_size", "mean", "components", "features"]


@pytest.mark.slow
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(KNN_ARRAYS), seed=st.integers(0, 2**32 - 1),
       how=st.sampled_from(["add", "shuffle", "truncate", "scalar", "cast", "huge"]))
def test_knn_loader_on_tampered_arrays(tmp_path_factory, name, seed, how):
    """Any array of knn.npz changed in value, order, length, dtype or size: the bundle loads and tags, or one line."""
    path = tiny_bundle_copy(tmp_path_factory.mktemp("k"))
    rng = np.random.default_rng(seed)
    with np.load(path / "knn.npz") as data:
        arrays = dict(data)
    a = arrays[name]
    if how == "add":
        a = a + rng.integers(-3, 4, size=a.shape).astype(a.dtype)
    elif how == "shuffle":
        a = rng.permutation(a.ravel()).reshape(a.shape) if a.ndim else a
    elif how == "truncate":
        a = a.ravel()[: rng.integers(0, max(a.size, 1))]
    elif how == "scalar":
        a = np.array(rng.integers(-2**62, 2**62))
    elif how == "cast":
        a = a.astype(rng.choice(["float64", "int8", "uint64", "bool", "complex64", "<U2"]))
    elif a.dtype.kind == "f":
        a = np.full(a.shape, rng.choice([np.inf, np.nan, 1e30]))
    else:
        a = np.full(a.shape, rng.choice([2**62, -1]))
    arrays[name] = a
    with open(path / "knn.npz", "wb") as f:
        np.savez(f, **arrays)
    load_and_tag_or_refuse(path)
