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
