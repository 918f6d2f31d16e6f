"""Tests for embeddings.word2vec: skip-gram training, own save/load, word2vec text and binary files."""
import time

import numpy as np
import pytest

from embeddings.tags import TagConfig, Vocabulary
from embeddings.word2vec import Word2VecConfig, WordVectors

WORDS = ["sky", "sea", "beach", "日本", "españa", "blackandwhite"]


def random_vectors(n=len(WORDS), dim=7, seed=0) -> WordVectors:
    rng = np.random.default_rng(seed)
    return WordVectors(WORDS[:n], rng.standard_normal((n, dim)).astype(np.float32))


def assert_same(a: WordVectors, b: WordVectors):
    assert a.words == b.words
    assert a.vectors.dtype == b.vectors.dtype == np.float32
    assert np.array_equal(a.vectors, b.vectors)


def test_save_load_round_trip(tmp_path):
    vecs = random_vectors()
    vecs.config = Word2VecConfig(dim=7, epochs=3)
    path = tmp_path / "vectors.npz"
    vecs.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npz"]  # no temp file left behind
    back = WordVectors.load(path)
    assert_same(back, vecs)
    assert back.config == vecs.config
    assert np.array_equal(back["españa"], vecs.vectors[4])
    plain = random_vectors(seed=1)  # no training config, as when read from a word2vec file
    plain.save(path)
    back = WordVectors.load(path)
    assert_same(back, plain)
    assert back.config is None


@pytest.mark.parametrize("binary, name", [(False, "v.txt"), (True, "v.bin"), (False, "v.w2v"), (True, "v.w2v")])
def test_word2vec_format_round_trip(tmp_path, binary, name):
    vecs = random_vectors()
    path = tmp_path / name
    vecs.save_word2vec_format(path, binary=binary)
    head = path.read_bytes()[:4]
    assert head == b"6 7\n"
    # `.w2v` says nothing, so the format is detected from the content.
    assert_same(WordVectors.load_word2vec_format(path), vecs)
    assert_same(WordVectors.load_word2vec_format(path, binary=binary), vecs)


@pytest.mark.parametrize("binary", [False, True])
def test_reads_files_written_by_gensim(tmp_path, binary):
    from gensim.models import KeyedVectors

    vecs = random_vectors()
    kv = KeyedVectors(vector_size=vecs.dim)
    kv.add_vectors(vecs.words, vecs.vectors)
    path = tmp_path / "gensim.data"
    kv.save_word2vec_format(str(path), binary=binary)
    assert_same(WordVectors.load_word2vec_format(path), vecs)


def test_subset_keeps_the_given_order_and_names_missing_words():
    vecs = random_vectors()
    sub = vecs.subset(["beach", "sky"])
    assert sub.words == ["beach", "sky"]
    assert np.array_equal(sub.vectors, vecs.vectors[[2, 0]])
    with pytest.raises(KeyError, match="'moon'.*'sun'|'sun'.*'moon'"):
        vecs.subset(["sky", "sun", "moon"])


def test_most_similar_is_cosine_without_the_word_itself():
    vecs = random_vectors(dim=5)
    unit = vecs.vectors / np.linalg.norm(vecs.vectors, axis=1, keepdims=True)
    cos = unit @ unit[1]
    expected = [vecs.words[i] for i in np.argsort(-cos) if i != 1][:3]
    got = vecs.most_similar("sea", 3)
    assert [w for w, _ in got] == expected
    assert np.allclose([s for _, s in got], [cos[vecs.index(w)] for w in expected], atol=1e-6)
    assert len(vecs.most_similar("sea", 100)) == len(vecs) - 1


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        WordVectors(["a", "b"], np.zeros((3, 4)))
    with pytest.raises(ValueError):
        WordVectors(["a", "a"], np.zeros((2, 4)))


def toy_corpus(n=300, seed=0):
    """Two topics that never share a photo: sea words and snow words."""
    rng = np.random.default_rng(seed)
    topics = [["sea", "beach", "sand", "waves", "surf"], ["snow", "winter", "ice", "ski", "cold"]]
    return [[str(w) for w in rng.choice(topics[i % 2], size=3, replace=False)] for i in range(n)]


def test_training_is_deterministic_with_one_worker():
    config = Word2VecConfig(dim=16, epochs=5, workers=1, seed=3)
    a = WordVectors.train(toy_corpus(), config)
    b = WordVectors.train(toy_corpus(), config)
    assert_same(a, b)
    c = WordVectors.train(toy_corpus(), Word2VecConfig(dim=16, epochs=5, workers=1, seed=4))
    assert not np.array_equal(a.subset(c.words).vectors, c.vectors)


def test_training_separates_topics():
    # No down-sampling: in a 10-word corpus every word is "frequent" and would be dropped.
    vecs = WordVectors.train(toy_corpus(), Word2VecConfig(dim=16, epochs=20, sample=0, workers=1))
    assert vecs.dim == 16 and sorted(vecs.words) == sorted(set(sum(toy_corpus(), [])))
    near = [w for w, _ in vecs.most_similar("beach", 4)]
    assert set(near) == {"sea", "sand", "waves", "surf"}


def read_corpus(subset_dir):
    with open(subset_dir / "tags_corpus.tsv", encoding="utf-8") as f:
        next(f)
        return [[t for t in line.rstrip("\n").split("\t", 1)[1].split(" ") if t] for line in f]


@pytest.mark.slow
@pytest.mark.data
def test_real_neighbours_make_sense(subset_dir):
    tag_lists = read_corpus(subset_dir)
    vocab = Vocabulary.build(tag_lists, TagConfig(min_count=10))
    start = time.perf_counter()
    vecs = WordVectors.train((vocab.normalize(tags) for tags in tag_lists), Word2VecConfig())
    print(f"\ntrained {vecs} on {len(tag_lists)} tag lists in {time.perf_counter() - start:.1f} s")
    vecs = vecs.subset(vocab.words)
    near = {}
    for word in ("beach", "snow", "winter", "cat", "dog", "sunset", "blackandwhite", "car"):
        near[word] = [w for w, _ in vecs.most_similar(word, 10)]
        print(word, "->", " ".join(near[word]))

    assert {"sea", "sand", "ocean", "shore", "seashore", "waves", "surf"} & set(near["beach"])
    assert "winter" in near["snow"] and "snow" in near["winter"]
    assert "kitty" in near["cat"]
    assert {"puppy", "pet", "poodle", "beagle", "dachshund"} & set(near["dog"])
    assert {"dusk", "sky", "clouds", "sun", "sunrise", "horizon"} & set(near["sunset"])
    assert {"auto", "bmw", "audi", "volkswagen", "vw", "carshow"} & set(near["car"])
    # The merged black-and-white word exists once; its variants have no vectors of their own.
    assert "blackandwhite" in vecs and "bw" not in vecs and "monochrome" not in vecs

    def cos(a, b):
        va, vb = vecs[a], vecs[b]
        return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))
    # Related pairs are closer than unrelated ones.
    assert cos("snow", "winter") > cos("snow", "beach")
    assert cos("beach", "sea") > cos("beach", "night")
    assert cos("dog", "puppy") > cos("dog", "building")
