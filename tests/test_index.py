"""Tests for embeddings.index: exact and HNSW cosine search over tag vectors, save/load."""
import time

import numpy as np
import pytest

from embeddings.index import IndexConfig, TagIndex


def random_words(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    return [f"w{i}" for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32)


def brute_force(vectors, queries, k):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cos = q @ unit.T
    ids = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cos, ids, axis=1), ids


def test_flat_search_equals_numpy_cosine():
    words, vectors = random_words(500, 32)
    queries = np.random.default_rng(1).standard_normal((40, 32)).astype(np.float32) * 7.0
    index = TagIndex(words, vectors)
    assert index.kind == "flat" and len(index) == 500 and index.dim == 32
    scores, ids = index.search_ids(queries, 10)
    want_scores, want_ids = brute_force(vectors.astype(np.float64), queries.astype(np.float64), 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (40, 10)
    assert np.array_equal(ids, want_ids)
    assert np.allclose(scores, want_scores, atol=1e-5)
    scores2, tags = index.search(queries, 10)
    assert np.array_equal(scores2, scores)
    assert tags == [[words[i] for i in row] for row in want_ids]


def test_queries_are_not_mutated():
    words, vectors = random_words(50, 8)
    queries = np.random.default_rng(2).standard_normal((5, 8)) * 3.0  # float64 on purpose
    before = queries.copy()
    vectors_before = vectors.copy()
    TagIndex(words, vectors).search(queries, 3)
    assert np.array_equal(queries, before)
    assert np.array_equal(vectors, vectors_before)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_zero_vectors_give_zero_scores_not_nan(kind):
    words, vectors = random_words(20, 8)
    vectors[3] = 0.0
    index = TagIndex(words, vectors, kind=kind)
    scores, ids = index.search_ids(np.zeros((2, 8), np.float32), 5)
    assert not np.isnan(scores).any() and np.all(scores == 0.0)
    scores, ids = index.search_ids(vectors[:4], 20)
    assert not np.isnan(scores).any()
    assert scores[3].max() == 0.0                # a zero query matches nothing
    assert np.allclose(scores[0, 0], 1.0, atol=1e-5) and ids[0, 0] == 0


def test_k_is_capped_at_the_vocabulary_size():
    words, vectors = random_words(7, 4)
    scores, tags = TagIndex(words, vectors).search(vectors[:2], 50)
    assert scores.shape == (2, 7) and sorted(tags[0]) == sorted(words)


def test_threshold_picks_the_index_kind():
    words, vectors = random_words(51, 8)
    assert TagIndex(words, vectors, IndexConfig(hnsw_threshold=50)).kind == "hnsw"
    assert TagIndex(words[:50], vectors[:50], IndexConfig(hnsw_threshold=50)).kind == "flat"
    assert TagIndex(words, vectors, IndexConfig(hnsw_threshold=50), kind="flat").kind == "flat"
    assert TagIndex(words, vectors).kind == "flat"  # default threshold is 100,000
    with pytest.raises(ValueError, match="unknown index kind"):
        TagIndex(words, vectors, kind="ivf")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    words, vectors = random_words(300, 16)
    config = IndexConfig(hnsw_m=16, ef_search=64)
    index = TagIndex(words, vectors, config, kind=kind)
    queries = np.random.default_rng(3).standard_normal((25, 16)).astype(np.float32)
    path = tmp_path / "index"
    index.save(path)
    index.save(path)  # overwriting an existing index folder works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temp folders left
    back = TagIndex.load(path)
    assert back.words == words and back.kind == kind and back.config == config and back.dim == 16
    s1, t1 = index.search(queries, 10)
    s2, t2 = back.search(queries, 10)
    assert t1 == t2 and np.array_equal(s1, s2)


def clustered(n, dim, rng, centers):
    """Gaussian clusters with as much spread inside a cluster as between cluster centres."""
    return (centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.slow
def test_hnsw_recall_at_20_on_100k_vectors():
    rng = np.random.default_rng(0)
    dim = 64
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    vectors = clustered(100_000, dim, rng, centers)
    queries = clustered(200, dim, rng, centers)
    words = [f"w{i}" for i in range(len(vectors))]

    start = time.perf_counter()
    hnsw = TagIndex(words, vectors, kind="hnsw")  # the default config, nothing tuned here
    built = time.perf_counter() - start
    _, approx = hnsw.search_ids(queries, 20)
    _, exact = TagIndex(words, vectors, kind="flat").search_ids(queries, 20)
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact)])
    print(f"\nHNSW build {built:.1f} s, recall@20 = {recall:.4f} (ef_search={hnsw.config.ef_search})")
    assert recall >= 0.99
