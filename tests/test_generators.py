"""The generator families behind one interface: the registry, each family learning a synthetic task,
resuming from its checkpoint, and its own losses."""
from dataclasses import replace

import pytest
import torch

from test_train import synthetic
from embeddings.index import TagIndex
from pipelines.errors import TaggerError
from tagger.generators import TrainConfig, WordGenerator, create_generator, family_for, get_family, list_families, make_config
from tagger.generators.caae import CAAEConfig, Encoder
from tagger.generators.cgan import CGANConfig
from tagger.generators.cvae import CVAEConfig, kl_to_standard_normal
from tagger.training.presets import PRESETS, get_preset
from tagger.training.loop import make_pairs, train
from tagger.scoring.words import prepare_word_vectors
from tagger.scoring.voting import SamplingConfig

SIZES = dict(feature_dim=16, word_dim=8, g_noise_hidden=16, g_image_hidden=64, dropout=0.1, unit_output=True)
SMALL = {
    "cgan": CGANConfig(noise_dim=4, d_word_hidden=16, d_image_hidden=64, d_maxout_units=32, heads=2, **SIZES),
    "cvae": CVAEConfig(noise_dim=4, e_word_hidden=16, e_image_hidden=32, **SIZES),
    "caae": CAAEConfig(noise_dim=4, e_hidden=16, dz_hidden=16, d_word_hidden=16, d_image_hidden=64, d_maxout_units=32, **SIZES),
}
SAMPLING = SamplingConfig(samples=20, neighbours=3, scoring="softmax", prior_power=1.0)


def setup():
    features, words, tags = synthetic()
    targets = prepare_word_vectors(words, get_preset("cgan", "adam").words)
    index = TagIndex([f"w{i}" for i in range(len(words))], targets)
    return features, targets, index, make_pairs(tags[:300]), (features[300:], [set(t) for t in tags[300:]])


def test_registry_names_every_family_and_builds_from_saved_values():
    assert list_families() == ["cgan", "cvae", "caae"] and list(PRESETS) == list_families()
    for name, config in SMALL.items():
        assert family_for(config) == name and get_family(name).config is type(config)
        G = create_generator(name, config.to_dict())
        assert isinstance(G, WordGenerator) and G.config == config
        out = G.generate(G.sample_noise(5), torch.randn(3, 16))
        assert out.shape == (3, 5, 8) and torch.allclose(out.norm(dim=-1), torch.ones(3, 5))
    with pytest.raises(ValueError, match="unknown generator family 'gan'; known: cgan, cvae, caae"):
        get_family("gan")
    with pytest.raises(ValueError, match="cvae generator has no setting 'd_image_hidden', 'd_maxout_pieces'"):
        make_config("cvae", SMALL["cgan"].to_dict())
    with pytest.raises(TypeError, match="caae generator takes a CAAEConfig, got CVAEConfig"):
        create_generator("caae", SMALL["cvae"])
    with pytest.raises(ValueError, match="noise must be 'uniform' or 'normal'"):
        CVAEConfig(noise="gumbel")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cgan", "cvae", "caae"])
def test_each_family_learns_the_tags_of_a_synthetic_task_and_resumes(tmp_path, family):
    features, targets, index, pairs, val = setup()
    cfg = replace(get_preset(family).train if family != "cgan" else get_preset("cgan", "adam").train, epochs=4, lr=2e-3, batch_size=50)
    whole, state = train(features, pairs, targets, index, SMALL[family], cfg, sampling=SAMPLING, val=val, standardize_features=True, progress=False)
    # Random tagging would score 3/20 = 0.15; the 5 words of the photo's cluster give at most 0.6.
    assert state.best_p5 > 0.4, state.log
    losses = set(state.log[0]) - {"epoch", "steps", "lr", "momentum", "val_p5", "seconds"}
    assert losses == {"cgan": {"loss_d", "loss_g", "d_real", "d_fake"}, "cvae": {"loss", "recon", "kl"},
                      "caae": {"loss_eg", "recon", "g_img", "e_z", "loss_dz", "loss_di", "d_real", "d_fake"}}[family]
    # Two epochs, then "killed": the family's networks and optimizers come back from the checkpoint.
    train(features, pairs, targets, index, SMALL[family], replace(cfg, epochs=2), sampling=SAMPLING, val=val, standardize_features=True, work_dir=tmp_path, progress=False)
    resumed, _ = train(features, pairs, targets, index, SMALL[family], cfg, sampling=SAMPLING, val=val, standardize_features=True, work_dir=tmp_path, progress=False)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_a_checkpoint_is_read_without_running_pickled_code(tmp_path):
    features, targets, index, pairs, val = setup()
    cfg = replace(get_preset("cvae").train, epochs=1, batch_size=100)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    import pickle

    class Planted:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"trainer": Planted()}, tmp_path / "checkpoint.pt")
    with pytest.raises(TaggerError, match="checkpoint.pt: not a checkpoint this tagger wrote, not loaded") as info:
        train(features, pairs, targets, index, SMALL["cvae"], cfg, sampling=SAMPLING, val=None, standardize_features=True, work_dir=tmp_path, progress=False)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError) and not (tmp_path / "pwned").exists()


def test_family_settings_are_checked_before_training():
    features, targets, index, pairs, val = setup()
    with pytest.raises(ValueError, match="cvae family needs a reconstruction term"):
        train(features, pairs, targets, index, SMALL["cvae"], TrainConfig(optimizer="adam", epochs=1), sampling=SAMPLING, val=None, progress=False)
    with pytest.raises(ValueError, match="cvae family's prior is N\\(0, I\\)"):
        train(features, pairs, targets, index, replace(SMALL["cvae"], noise="uniform"), get_preset("cvae").train, sampling=SAMPLING,
              progress=False)
    with pytest.raises(ValueError, match="caae family's prior is U\\[-1, 1\\]"):
        train(features, pairs, targets, index, replace(SMALL["caae"], noise="normal"), get_preset("caae").train, sampling=SAMPLING,
              progress=False)


def test_kl_is_zero_only_at_the_prior():
    zero = torch.zeros(4, 3)
    assert kl_to_standard_normal(zero, zero).item() == pytest.approx(0.0)
    assert kl_to_standard_normal(zero + 1, zero).item() == pytest.approx(1.5)  # 0.5 * mean^2 per dimension
    assert kl_to_standard_normal(zero, zero + 1).item() > 0


def test_caae_codes_lie_in_the_uniform_priors_range():
    E = Encoder(SMALL["caae"])
    z = E(torch.randn(100, 8) * 50)
    assert z.shape == (100, 4) and z.abs().max() <= 1.0
