"""The kNN (TagVote) baseline: votes minus the prior, PCA storage, save/load round trip."""
import numpy as np
import pytest

from tagger.scoring.knn import KNNConfig, KNNTagger


def test_tagvote_by_hand():
    # Two tight groups of photos; group A carries word 0, group B word 1; word 2 is on everything.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 6)) * 0.01 + np.eye(6)[0] * 5
    b = rng.normal(size=(10, 6)) * 0.01 + np.eye(6)[1] * 5
    feats = np.vstack([a, b]).astype(np.float32)
    tags = [[0, 2]] * 10 + [[1, 2]] * 10
    knn = KNNTagger.fit(feats, tags, 3, KNNConfig(k=5, dim=4))
    s = knn.scores(a[:1])[0]
    # 5 neighbours from group A: word 0 gets 5 - 5 * 0.5, word 1 gets 0 - 2.5, word 2 gets 5 - 5 * 1.
    assert s.tolist() == pytest.approx([2.5, -2.5, 0.0], abs=1e-5)
    plain = KNNTagger.fit(feats, tags, 3, KNNConfig(k=5, dim=4, subtract_prior=False))
    assert plain.scores(b[:1])[0].tolist() == pytest.approx([0, 5, 5])


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 32)).astype(np.float32)
    tags = [list(rng.choice(8, 2, replace=False)) for _ in range(50)]
    knn = KNNTagger.fit(feats, tags, 8, KNNConfig(k=7, dim=16))
    knn.save(tmp_path / "knn.npz")
    back = KNNTagger.load(tmp_path / "knn.npz")
    assert back.config == knn.config and back.vocab_size == 8
    q = rng.normal(size=(5, 32)).astype(np.float32)
    # Stored in float16: the same neighbours, so the same votes.
    np.testing.assert_allclose(back.scores(q), knn.scores(q), atol=1e-5)


def test_a_training_photos_votes_leave_the_photo_out():
    from tagger.scoring.knn import KNNTagger

    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 16)).astype(np.float32)
    knn = KNNTagger.fit(features, [[i % 5] for i in range(30)], 5)
    plain = knn.neighbours(features[:10], 4)
    assert plain[:, 0].tolist() == list(range(10))  # each photo is its own nearest neighbour
    own = knn.neighbours(features[:10], 4, self_rows=np.arange(10))
    assert own.shape == (10, 4) and not (own == np.arange(10)[:, None]).any()
    assert (own[:, :3] == plain[:, 1:]).all()  # the next ones move up
    assert (knn.neighbours(features[:3], 4, self_rows=np.array([-1, -1, -1])) == plain[:3]).all()
    votes = knn.votes(features[:10], 4, self_rows=np.arange(10))
    assert votes.sum(1).tolist() == [4.0] * 10
