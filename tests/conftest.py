"""Shared fixtures: the real MIRFLICKR subset (skipped where absent) and small generated data."""
import os
from pathlib import Path

import pytest
from tagger.bundle import save

REPO = Path(__file__).resolve().parents[1]
# The subset lives beside the checkout and is never copied into it; TAGGER_SUBSET overrides.
SUBSET = Path(os.environ.get("TAGGER_SUBSET", REPO.parent / "shared" / "datasets" / "mirflickr25k_subset"))


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """The tests' caches (ONNX exports of the backbones among them) go to a folder of their own, not the user's."""
    if "TAGGER_CACHE" not in os.environ:
        os.environ["TAGGER_CACHE"] = str(tmp_path_factory.mktemp("tagger-cache"))
        yield
        del os.environ["TAGGER_CACHE"]
    else:
        yield


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    if not (SUBSET / "annotations.jsonl").is_file():
        pytest.skip(f"shared MIRFLICKR subset not found at {SUBSET} (set TAGGER_SUBSET to its folder)")
    return SUBSET


def make_photo_files(folder: Path, n: int, size: int = 32, seed: int = 0) -> list[Path]:
    """n small random JPEG photos in folder."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"photo{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


TINY_TAGS = [["beach", "sea", "sand"], ["dog", "puppy", "grass"], ["sunset", "sky", "sea"], ["cat", "kitten"],
             ["snow", "winter", "sky"], ["city", "street", "night"], ["flowers", "flower", "macro"], ["bw", "portrait"]]


def build_tiny_tagger(seed: int = 0, joint: int = 0, heads: int = 1, unit: bool = False, scoring: str = "votes",
                      family: str = "cgan", knn_photos: int = 0, neighbour_votes: int = 0):
    """A random but complete Tagger on the tiny test backbone: fast, and exercises every part.

    knn_photos: a kNN baseline fitted on that many random photos' features; neighbour_votes: the generator
    conditioned on that many neighbours' votes too (needs knn_photos).
    """
    import numpy as np
    import torch

    from embeddings.tags import TagConfig, Vocabulary
    from embeddings.word2vec import WordVectors
    from pipelines.backbones import get_spec
    from tagger.scoring.knn import KNNTagger
    from tagger.scoring.condition import ConditionConfig
    from tagger.generators import create_generator, get_family
    from tagger.model import Tagger
    from tagger.scoring.voting import SamplingConfig

    vocab = Vocabulary.build(TINY_TAGS, TagConfig(min_count=1))
    rng = np.random.default_rng(seed)
    wv = WordVectors(vocab.words, rng.normal(size=(len(vocab), 8)).astype(np.float32))
    knn = None
    if knn_photos:
        feats = rng.normal(size=(knn_photos, get_spec("tiny").dim)).astype(np.float32)
        knn = KNNTagger.fit(feats, [[i % len(vocab), (3 * i + 1) % len(vocab)] for i in range(knn_photos)], len(vocab))
    condition = ConditionConfig(neighbour_votes=neighbour_votes)
    torch.manual_seed(seed)
    sizes = dict(feature_dim=condition.width(get_spec("tiny").dim, len(vocab)), word_dim=8, noise_dim=4, g_noise_hidden=8,
                 g_image_hidden=16, g_joint_hidden=joint, heads=heads, unit_output=unit)
    own = {"cgan": dict(d_word_hidden=8, d_image_hidden=16, d_maxout_units=8), "cvae": dict(e_word_hidden=8, e_image_hidden=8, noise="normal"),
           "caae": dict(e_hidden=8, dz_hidden=8, d_word_hidden=8, d_image_hidden=16, d_maxout_units=8)}[family]
    G = create_generator(family, get_family(family).config(**sizes, **own))
    return Tagger(G, vocab, wv, "tiny", sampling=SamplingConfig(samples=16, neighbours=3, top_k=3, scoring=scoring), knn=knn,
                  condition=condition)


@pytest.fixture
def tiny_bundle(tmp_path) -> Path:
    return save(build_tiny_tagger(), tmp_path / "bundle")


@pytest.fixture(scope="module")
def wn():
    """WordNet 3.0 (Debian's wordnet-base), skipped where it is not installed."""
    from embeddings.wordnet import WordNetMissing, wordnet

    try:
        return wordnet()
    except WordNetMissing as e:
        pytest.skip(f"WordNet not installed: {e}")
