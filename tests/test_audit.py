"""Colour evidence from the pixels, and the audit of the tags users notice first when they are wrong."""
import numpy as np
from PIL import Image

from conftest import build_tiny_tagger
from pipelines.images import is_colour
from tagger.evaluation.audit import audit
from tagger.scoring.options import TagOptions
from tagger.scoring.evidence import Evidence


def test_colour_is_told_from_pixels_not_from_the_file_mode(tmp_path):
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    grey = Image.fromarray(np.repeat(rng.integers(0, 255, (64, 64, 1), dtype=np.uint8), 3, axis=2))  # RGB, but grey
    sepia = Image.fromarray((np.repeat(rng.integers(0, 200, (64, 64, 1)), 3, axis=2) * [1.0, 0.95, 0.9]).astype(np.uint8))
    assert is_colour(colour) and not is_colour(grey) and not is_colour(grey.convert("L")) and not is_colour(sepia)
    colour.save(tmp_path / "c.jpg")
    grey.save(tmp_path / "g.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    assert is_colour(tmp_path / "c.jpg") and not is_colour(tmp_path / "g.jpg") and not is_colour(tmp_path / "bad.jpg")


def test_a_colour_photo_never_gets_blackandwhite(tmp_path):
    tagger = build_tiny_tagger()
    assert "blackandwhite" in tagger.words
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    colour, grey = Image.fromarray(photo), Image.fromarray(photo).convert("L").convert("RGB")
    everything = len(tagger.words)
    tags = tagger.predict([colour, grey], TagOptions(method="prior", top_k=everything))  # every word scores above 0
    assert "blackandwhite" not in [t for t, _ in tags[0]] and "blackandwhite" in [t for t, _ in tags[1]]
    # Without the pixels (features only) nothing is ruled out.
    feats = tagger.read([colour]).features
    assert "blackandwhite" in [t for t, _ in tagger.tag(Evidence(feats, None), TagOptions(method="prior", top_k=everything))[0].tags]
    table = tagger.score(Evidence(feats, None), TagOptions(), calibrated=False).order
    ruled = tagger.score(Evidence(feats, np.array([40.0])), TagOptions(), calibrated=False).order  # a colour photo's chroma
    bw = tagger.words.index("blackandwhite")
    assert ruled[0, bw] == -np.inf and np.array_equal(np.delete(ruled, bw, axis=1), np.delete(table, bw, axis=1))


def test_audit_counts_kinds_against_the_owners():
    words = ["sky", "tokyo", "me", "blackandwhite", "paris"]
    kinds = ["content", "place", "self", "style", "place"]  # the bundle's word kinds (embeddings.kinds)
    table = np.array([[0.9, 0.8, -1, 0.7, -1],   # tokyo given and right, bw on a colour photo
                      [0.9, -1, 0.8, -1, 0.7],   # paris given, the owner said tokyo; me given and right
                      [0.9, -1, -1, 0.8, 0.1]])  # paris given, bw on a grey photo: not counted
    truth = [{1}, {1, 2}, {3}]
    out = audit(table, truth, words, colour=np.array([True, True, False]), k=3, word_kinds=kinds)
    assert out["place"] == {"photos": 3, "tagged": 3, "owners": 2, "right": 1}
    assert out["self"] == {"photos": 3, "tagged": 1, "owners": 1, "right": 1}
    assert out["blackandwhite on colour"] == {"photos": 2, "tagged": 1, "owners": 0, "right": 0}
    # A bundle without kinds: no place row (nothing here says which words are places), self from the common words.
    old = audit(table, truth, words, colour=np.array([True, True, False]), k=3)
    assert "place" not in old and old["self"] == out["self"]


def test_the_extractor_measures_colour_as_the_photo_would_be_measured(tmp_path):
    from pipelines.features import FeatureConfig, extract_features
    from pipelines.images import COLOUR_CHROMA, load_image

    rng = np.random.default_rng(2)
    paths = []
    for i, grey in enumerate([False, True, False, True]):
        a = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        im = Image.fromarray(a).convert("L").convert("RGB") if grey else Image.fromarray(a)
        paths.append(tmp_path / f"p{i}.png")
        im.save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    result = extract_features([*paths, tmp_path / "bad.jpg"], FeatureConfig(backbone="tiny", num_workers=0), progress=False)
    assert (result.chroma[:4] > COLOUR_CHROMA).tolist() == [is_colour(load_image(p)) for p in paths] == [True, False, True, False]
    assert np.isnan(result.chroma[4])
