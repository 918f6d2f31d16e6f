"""GAN training on a synthetic task it must learn, checkpoints, resume and the training log."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from embeddings.index import TagIndex
from tagger.generators.cgan import CGANConfig
from tagger.evaluation.metrics import precision_at_k, top_ids
from tagger.training.presets import get_preset
from tagger.training.loop import make_pairs, train, write_log
from tagger.scoring.words import prepare_word_vectors
from tagger.scoring.voting import SamplingConfig

SMALL = CGANConfig(feature_dim=16, word_dim=8, noise_dim=4, g_noise_hidden=16, g_image_hidden=64,
                  d_word_hidden=16, d_image_hidden=64, d_maxout_units=32, dropout=0.1)


def synthetic(n_photos=400, n_clusters=4, seed=0):
    """Photos in clusters of features; each cluster's photos carry 3 of its own 5 words.

    A cluster's words lie near each other, as related tags do in a skip-gram space.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, 16)) * 3
    topics = rng.normal(size=(n_clusters, 8)) * 2
    words = (np.repeat(topics, 5, axis=0) + rng.normal(size=(n_clusters * 5, 8)) * 0.7).astype(np.float32)
    cluster = rng.integers(0, n_clusters, n_photos)
    features = (centers[cluster] + rng.normal(size=(n_photos, 16))).astype(np.float32)
    tags = [list(rng.choice(np.arange(5 * c, 5 * c + 5), 3, replace=False)) for c in cluster]
    return features, words, tags


def setup(preset="adam"):
    features, words, tags = synthetic()
    p = get_preset("cgan", preset)
    targets = prepare_word_vectors(words, p.words)
    index = TagIndex([f"w{i}" for i in range(len(words))], targets)
    pairs = make_pairs(tags[:300])
    val = (features[300:], [set(t) for t in tags[300:]])
    return features, targets, index, pairs, val, p


def test_the_gan_learns_tags_of_a_synthetic_task():
    features, targets, index, pairs, val, p = setup()
    cfg = replace(p.train, epochs=10, lr=5e-4, batch_size=50)
    sampling = SamplingConfig(samples=20, neighbours=3)
    G, state = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=p.standardize_features, progress=False)
    # Random tagging would score 3/20 = 0.15; the 5 words of the photo's cluster give at most 0.6.
    assert state.best_p5 > 0.45, state.log[-1]
    assert len(state.log) == 10 and {"loss_d", "loss_g", "d_real", "d_fake", "val_p5"} <= set(state.log[0])
    # The generator returned is the best one, not the last.
    from tagger.scoring.sampling import score_words

    table = score_words(G, val[0], index, replace(sampling, seed=cfg.seed))
    assert precision_at_k(top_ids(table, 5), val[1], 5) == pytest.approx(state.best_p5)


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    features, targets, index, pairs, val, p = setup()
    cfg = replace(p.train, epochs=4, lr=2e-3, batch_size=50)
    sampling = SamplingConfig(samples=5, neighbours=3)
    whole, _ = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=True, progress=False)
    # Two epochs, then "killed"; a new call with the same work dir finishes the last two.
    train(features, pairs, targets, index, SMALL, replace(cfg, epochs=2), sampling=sampling, val=val, standardize_features=True, work_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").is_file()
    resumed, state = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=True, work_dir=tmp_path, progress=False)
    assert state.epoch == 4 and [r["epoch"] for r in state.log] == [1, 2, 3, 4]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_paper_preset_runs_and_max_steps_stops_it(tmp_path):
    features, targets, index, pairs, val, p = setup("paper")
    cfg = replace(p.train, epochs=50, max_steps=25, batch_size=50)  # 18 steps an epoch
    _, state = train(features, pairs, targets, index, SMALL, cfg, sampling=SamplingConfig(samples=5), val=val, standardize_features=False, progress=False)
    assert state.step == 25 and state.epoch == 2 and state.log[-1]["steps"] == 7
    write_log(state.log, tmp_path / "log.csv", tmp_path / "curves.png")
    assert (tmp_path / "log.csv").read_text().startswith("epoch,loss_d,loss_g")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_training_is_seeded():
    features, targets, index, pairs, val, p = setup()
    cfg = replace(p.train, epochs=1, batch_size=50)
    a, _ = train(features, pairs, targets, index, SMALL, cfg, sampling=SamplingConfig(samples=5), val=None, standardize_features=True, progress=False)
    b, _ = train(features, pairs, targets, index, SMALL, cfg, sampling=SamplingConfig(samples=5), val=None, standardize_features=True, progress=False)
    c, _ = train(features, pairs, targets, index, SMALL, replace(cfg, seed=1), sampling=SamplingConfig(samples=5), val=None, standardize_features=True, progress=False)
    assert torch.equal(a.out.weight, b.out.weight) and not torch.equal(a.out.weight, c.out.weight)


def test_set_reconstruction_and_weight_averaging_learn_and_resume(tmp_path):
    features, targets, index, pairs, val, p = setup()
    cfg = replace(p.train, epochs=4, lr=1e-3, batch_size=50, recon="set", set_samples=4, ema=0.9)
    sampling = SamplingConfig(samples=20, neighbours=3)
    whole, state = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=True, progress=False)
    assert state.best_p5 > 0.4, state.log
    train(features, pairs, targets, index, SMALL, replace(cfg, epochs=2), sampling=sampling, val=val, standardize_features=True, work_dir=tmp_path, progress=False)
    resumed, _ = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=True, work_dir=tmp_path, progress=False)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    with pytest.raises(ValueError, match="recon"):
        train(features, pairs, targets, index, SMALL, replace(cfg, recon="l2"), sampling=sampling, val=val, standardize_features=True, progress=False)
    with pytest.raises(ValueError, match="diversity"):
        train(features, pairs, targets, index, SMALL, replace(cfg, recon="pair", diversity=0.1), sampling=sampling, val=val, standardize_features=True, progress=False)


def spread(G, features) -> float:
    """Mean cosine of a photo's samples to their mean direction: 1 when G ignores its noise."""
    G.eval()
    with torch.no_grad():
        s = torch.nn.functional.normalize(G.generate(G.sample_noise(16), torch.as_tensor(features)), dim=-1)
    return (s * torch.nn.functional.normalize(s.mean(1, keepdim=True), dim=-1)).sum(-1).mean().item()


def test_mode_seeking_term_spreads_the_samples_of_a_photo():
    features, targets, index, pairs, val, p = setup()
    cfg = replace(p.train, epochs=3, lr=1e-3, batch_size=50, recon="set", set_samples=4)
    sampling = SamplingConfig(samples=20, neighbours=3)
    plain, _ = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=True, progress=False)
    seeking, state = train(features, pairs, targets, index, SMALL, replace(cfg, diversity=1.0), sampling=sampling, val=val, standardize_features=True, progress=False)
    assert spread(seeking, features[:50]) < spread(plain, features[:50]) - 0.05
    assert state.best_p5 > 0.3, state.log  # and it still learns the tags


def test_softmax_reconstruction_learns_the_photos_words():
    features, targets, index, pairs, val, p = setup()
    cfg = replace(p.train, epochs=6, lr=1e-3, batch_size=50, recon="softmax", recon_weight=1.0)
    sampling = SamplingConfig(samples=20, neighbours=3)
    prior = np.bincount(pairs[:, 1], minlength=len(targets)) / 300
    G, state = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=True, progress=False, prior=prior)
    assert state.best_p5 > 0.4, state.log
    # The photo's own words outrank the other clusters' words by cosine to what G generates.
    G.eval()
    with torch.no_grad():
        out = torch.nn.functional.normalize(G(G.sample_noise(100), torch.as_tensor(val[0][:100])), dim=1)
    cos = out @ torch.nn.functional.normalize(torch.as_tensor(targets), dim=1).T
    own = torch.zeros_like(cos, dtype=torch.bool)
    for i, words in enumerate(val[1][:100]):
        cluster = {w // 5 for w in words}
        own[i, [w for w in range(len(targets)) if w // 5 in cluster]] = True
    assert cos[own].mean() > cos[~own].mean() + 0.3
    # Without a prior, train counts it from the pairs: the same one here, so the same generator.
    again, _ = train(features, pairs, targets, index, SMALL, cfg, sampling=sampling, val=val, standardize_features=True, progress=False)
    assert torch.equal(again.out.weight, G.out.weight)


def test_mixture_loss_is_the_softmax_with_one_head_and_covers_two_words_with_two():
    from tagger.generators.losses import mixture_loss

    targets = torch.eye(4)
    one = torch.tensor([[[1.0, 0.2, 0, 0]]])
    assert mixture_loss(one, torch.tensor([1]), targets, 0.5).item() == pytest.approx(
        torch.nn.functional.cross_entropy(torch.nn.functional.normalize(one[:, 0], dim=-1) @ targets.T / 0.5, torch.tensor([1])).item(), rel=1e-6)
    # Word 2 lies between words 0 and 1. A photo tagged 0 and 1: one point between them ranks word 2
    # first, two heads, one on each word, give both words most of the mass.
    words = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    middle = torch.tensor([[[1.0, 1, 0], [1.0, 1, 0]]])
    apart = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    for word in (0, 1):
        w = torch.tensor([word])
        assert mixture_loss(apart, w, words, 0.1) < mixture_loss(middle, w, words, 0.1) - 1.0
