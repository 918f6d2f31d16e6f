"""The networks, the vote counting and the training schedule, on small synthetic data."""
import numpy as np
import pytest
import torch

from tagger.generators import TrainConfig, WordGenerator
from tagger.generators.base import learning_rate, momentum
from tagger.generators.cgan import CGANConfig, Discriminator, Maxout
from tagger.training.loop import make_pairs
from tagger.scoring.words import WordSpaceConfig, prepare_word_vectors
from tagger.scoring.voting import SamplingConfig, rank, vote


def test_shapes_follow_the_config():
    cfg = CGANConfig(feature_dim=12, word_dim=7, noise_dim=5)
    G, D = WordGenerator(cfg), Discriminator(cfg)
    x = torch.randn(4, 12)
    fake = G(G.sample_noise(4), x)
    assert fake.shape == (4, 7)
    assert D(fake, G.normalize(x)).shape == (4,)
    # The paper's sizes by default.
    G0 = WordGenerator(CGANConfig())
    assert G0.image_branch[0].out_features == 2000 and G0.noise_branch[0].out_features == 500
    assert Discriminator(CGANConfig()).joint[0].linear.out_features == 3000


def test_uniform_noise_range_and_seed():
    G = WordGenerator(CGANConfig(feature_dim=3, word_dim=2, noise_dim=1000))
    z = G.sample_noise(10, torch.Generator().manual_seed(1))
    assert z.min() >= -1 and z.max() < 1 and z.min() < -0.9 and z.max() > 0.9
    assert torch.equal(z, G.sample_noise(10, torch.Generator().manual_seed(1)))


def test_maxout_takes_the_max_piece():
    m = Maxout(2, units=1, pieces=3)
    with torch.no_grad():
        m.linear.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0]]))
        m.linear.bias.zero_()
    assert m(torch.tensor([[2.0, 5.0], [-3.0, 1.0]])).squeeze(1).tolist() == [5.0, 3.0]


def test_feature_standardization_lives_in_the_generator():
    G = WordGenerator(CGANConfig(feature_dim=3, word_dim=2))
    G.set_feature_stats(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 2, 2]))
    assert G.normalize(torch.tensor([[3.0, 2, 1]])).tolist() == [[1.0, 0.0, -1.0]]
    assert "feature_mean" in G.state_dict()


def test_vote_counts_each_sample_once():
    cfg = SamplingConfig(samples=2, neighbours=2)
    # 2 photos x 2 samples, 2 neighbours each, vocabulary of 4.
    ids = np.array([[0, 1], [1, 2], [3, 2], [3, -1]])
    scores = np.array([[0.9, 0.5], [0.8, 0.4], [0.7, 0.6], [0.5, 0.0]], dtype=np.float32)
    table = vote(scores, ids, 2, 4, cfg)
    assert table.tolist() == [[0.5, 1.0, 0.5, 0.0], [0.0, 0.0, 0.5, 1.0]]
    sim = vote(scores, ids, 2, 4, SamplingConfig(samples=2, neighbours=2, scoring="similarity"))
    np.testing.assert_allclose(sim[0], [0.45, 0.65, 0.2, 0.0], rtol=1e-6)


def test_softmax_scoring_gives_each_sample_one_vote():
    ids = np.array([[0, 1], [1, 2], [3, 2], [3, -1]])
    scores = np.array([[0.9, 0.5], [0.8, 0.4], [0.7, 0.6], [0.5, -np.inf]], dtype=np.float32)
    table = vote(scores, ids, 2, 4, SamplingConfig(samples=2, neighbours=2, scoring="softmax", temperature=0.1))
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-6)  # 2 samples x 1 vote / 2 samples
    # A missing neighbour gets nothing; the closer of two words gets exp(0.4 / 0.1) times the other's share.
    assert table[1, 3] == pytest.approx(0.5 + 0.5 * 1 / (1 + np.exp(-1.0)), rel=1e-5)
    assert table[0, 0] / table[0, 2] == pytest.approx(np.exp(4.0), rel=1e-4)  # 0.9 vs 0.5, then 0.8 vs 0.4


@pytest.mark.parametrize("noise", ["uniform", "normal"])
def test_the_noise_picks_every_head_about_equally(noise):
    G = WordGenerator(CGANConfig(feature_dim=6, word_dim=3, noise_dim=4, noise=noise, heads=5)).eval()
    z = G.sample_noise(5000, torch.Generator().manual_seed(0))
    counts = torch.bincount(G.head_of(z), minlength=5)
    assert len(counts) == 5 and counts.min() > 900 and counts.max() < 1100
    # Tagging spreads its samples evenly over the heads: 10 samples, 2 per head.
    even = G.sample_noise(10, torch.Generator().manual_seed(0), stratified=True)
    assert torch.bincount(G.head_of(even), minlength=5).tolist() == [2] * 5
    assert torch.equal(even[:, 1:], G.sample_noise(10, torch.Generator().manual_seed(0))[:, 1:])
    x = torch.randn(2, 6)
    every = G.all_heads(z[:2], x)  # (2, 5, 3)
    assert every.shape == (2, 5, 3)
    picked = G(z[:2], x)
    for i in range(2):
        assert torch.allclose(picked[i], every[i, G.head_of(z[i])], atol=1e-6)


def test_rank_orders_filters_and_excludes():
    table = np.array([[0.1, 0.9, 0.5, 0.0]], dtype=np.float32)
    words = ["a", "b", "c", "d"]
    assert rank(table, words, SamplingConfig(top_k=3)) == [[("b", pytest.approx(0.9)), ("c", 0.5), ("a", pytest.approx(0.1))]]
    assert [t for t, _ in rank(table, words, SamplingConfig(top_k=3, min_score=0.2))[0]] == ["b", "c"]
    assert [t for t, _ in rank(table, words, SamplingConfig(top_k=2), np.array([1]))[0]] == ["c", "a"]
    with pytest.raises(ValueError):
        SamplingConfig(scoring="magic")


def test_paper_schedule():
    cfg = TrainConfig()
    assert learning_rate(cfg, 0) == 0.1
    assert learning_rate(cfg, 10000) == pytest.approx(0.1 / 1.00004**10000)
    assert learning_rate(cfg, 10**9) == cfg.lr_min
    assert momentum(cfg, 0) == 0.5 and momentum(cfg, cfg.momentum_epochs) == pytest.approx(0.7)
    assert momentum(cfg, 100 * cfg.momentum_epochs) == pytest.approx(0.7)
    assert momentum(cfg, cfg.momentum_epochs / 2) == pytest.approx(0.6)


def test_pairs_repeat_each_photo_per_tag():
    assert make_pairs([[3, 1], [], [2]]).tolist() == [[0, 3], [0, 1], [2, 2]]
    assert make_pairs([[], []]).shape == (0, 2)


def test_word_space_preparation():
    v = np.array([[2.0, 0.0], [0.0, 4.0]], dtype=np.float32)
    assert np.array_equal(prepare_word_vectors(v, WordSpaceConfig()), v)
    c = prepare_word_vectors(v, WordSpaceConfig(center=True, normalize=True))
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(c[0], -c[1], rtol=1e-6)


@pytest.mark.parametrize("joint,unit,heads", [(0, False, 1), (16, False, 1), (0, True, 1), (16, True, 1), (0, True, 3), (0, False, 3),
                                               (16, True, 3)])
def test_generate_equals_forward_on_repeated_rows(joint, unit, heads):
    G = WordGenerator(CGANConfig(feature_dim=12, word_dim=7, noise_dim=5, g_joint_hidden=joint, unit_output=unit, heads=heads)).eval()
    x, shared = torch.randn(4, 12), G.sample_noise(6, stratified=True)
    many = G.generate(shared, x)
    assert many.shape == (4, 6, 7)
    assert torch.allclose(many.reshape(24, 7), G(shared.repeat(4, 1), x.repeat_interleave(6, dim=0)), atol=1e-5)
    own = torch.randn(4, 6, 5)  # a noise per photo and sample
    assert torch.allclose(G.generate(own, x).reshape(24, 7), G(own.reshape(24, 5), x.repeat_interleave(6, dim=0)), atol=1e-5)
    norms = many.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) if unit else not torch.allclose(norms, torch.ones_like(norms), atol=1e-2)


def test_tag_table_pads_each_photos_tags():
    from tagger.training.loop import tag_table

    pairs = np.array([[2, 5], [0, 1], [2, 7], [2, 9]])
    table = tag_table(pairs, 4)
    assert table.tolist() == [[1, -1, -1], [-1, -1, -1], [5, 7, 9], [-1, -1, -1]]


def test_set_loss_is_zero_only_when_samples_cover_the_tags():
    from tagger.generators.losses import set_loss

    targets = torch.eye(4)
    tags = torch.tensor([[0, 2, -1]])
    exact = targets[[0, 2, 0]][None]  # every sample on a tag, every tag reached
    assert set_loss(exact, tags, targets).item() == pytest.approx(0, abs=1e-6)
    one_tag = targets[[0, 0, 0]][None]  # precise but tag 2 is never reached
    stray = targets[[0, 2, 3]][None]  # both tags reached but one sample is off
    assert set_loss(one_tag, tags, targets) > 0.1 and set_loss(stray, tags, targets) > 0.1
    # The padding (-1) never counts as a tag: a sample on word 3 is not rewarded.
    assert set_loss(targets[[3, 3, 3]][None], tags, targets).item() == pytest.approx(1.0)


def test_mode_seeking_loss_is_large_when_samples_ignore_the_noise():
    from tagger.generators.losses import mode_seeking_loss

    noise = torch.rand(2, 4, 6) * 2 - 1
    collapsed = torch.randn(2, 1, 5).repeat(1, 4, 1).requires_grad_()
    spread = torch.randn(2, 4, 5)
    assert mode_seeking_loss(collapsed, noise) > 100 * mode_seeking_loss(spread, noise)
    mode_seeking_loss(collapsed, noise).backward()  # finite even where two samples coincide
    assert torch.isfinite(collapsed.grad).all()
    # Only directions count (the word space is cosine): scaling a sample changes nothing.
    assert mode_seeking_loss(spread * 3, noise).item() == pytest.approx(mode_seeking_loss(spread, noise).item(), rel=1e-5)
