"""Named training recipes, per generator family: the generator's config, the training settings, the
word space, and how the bundle tags by default.

`tagger train --generator NAME --preset P`; a family's first preset is its default. The cgan's
`paper` preset is Mirza & Osindero's recipe as written; every other preset changes what the paper
left open, each named and described, never silently mixed into "paper".
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from pipelines.errors import OptionError
from tagger.scoring.condition import ConditionConfig
from tagger.generators import GeneratorConfig, TrainConfig
from tagger.generators.caae import CAAEConfig
from tagger.generators.cgan import CGANConfig
from tagger.generators.cvae import CVAEConfig
from tagger.scoring.words import WordSpaceConfig
from tagger.scoring.voting import SamplingConfig


@dataclass(frozen=True)
class Preset:
    generator: GeneratorConfig = field(default_factory=CGANConfig)  # its type names the family
    train: TrainConfig = field(default_factory=TrainConfig)
    words: WordSpaceConfig = field(default_factory=WordSpaceConfig)
    standardize_features: bool = False  # scale image features to zero mean, unit variance per dimension
    condition: ConditionConfig = field(default_factory=ConditionConfig)  # what G is conditioned on besides the image
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how the bundle tags by default
    description: str = ""


# What the non-paper presets share: Adam, standardized features, centred unit word vectors, a
# softmax reconstruction term, and 20 samples whose 100 nearest words get softmax votes x prior.
_WORDS = WordSpaceConfig(center=True, normalize=True)
_ADAM = TrainConfig(optimizer="adam", lr=2e-4, lr_decay=1.0, label_smoothing=0.1, recon="softmax", recon_weight=1.0, epochs=4)
# Each sample's nearest words share one vote by a softmax of cosine / 0.1, as in training; the prior to
# the power 1 puts back the word frequency that the training loss took out.
_SAMPLING = SamplingConfig(scoring="softmax", temperature=0.1, prior_power=1.0, neighbours=100, samples=20)

PRESETS: dict[str, dict[str, Preset]] = {
    "cgan": {
        "paper": Preset(description="Mirza & Osindero 2014 as written: SGD 0.1, momentum 0.5->0.7, dropout 0.5"),
        "adam": Preset(
            # 20 samples visit each of the 5 heads 4 times. 5 heads, not the 10 tried first, keep the
            # half-precision bundle small (the last layer grows by 1 MB per head).
            generator=CGANConfig(unit_output=True, heads=5),
            train=_ADAM,
            words=_WORDS,
            standardize_features=True,
            sampling=_SAMPLING,
            description="Adam 2e-4, standardized features, centred unit word vectors, smoothing 0.1; G with unit-length "
            "output and 5 heads picked by the noise, a mixture-of-softmaxes reconstruction term (x1); 20 samples, "
            "100 nearest words each, each sample's softmax votes times prior",
        ),
        "votes": Preset(
            # From the validation runs: the neighbours' votes in the condition, more heads, half the frequency
            # term in training and at tagging time, 6 epochs. 8 heads keep the bundle under 25 MB.
            generator=CGANConfig(unit_output=True, heads=8),
            train=replace(_ADAM, recon_prior=0.5, epochs=6),
            words=_WORDS,
            standardize_features=True,
            condition=ConditionConfig(neighbour_votes=50),
            sampling=replace(_SAMPLING, prior_power=0.5),
            description="the adam preset conditioned on the image and its 50 nearest training photos' tag votes, "
            "with 8 heads, the frequency term at 0.5 in training and tagging, 6 epochs",
        ),
    },
    "cvae": {
        "default": Preset(
            generator=CVAEConfig(unit_output=True),
            train=TrainConfig(optimizer="adam", lr=2e-4, lr_decay=1.0, recon="softmax", recon_weight=1.0, epochs=4),
            words=_WORDS,
            standardize_features=True,
            sampling=_SAMPLING,
            description="Adam 2e-4, standardized features, centred unit word vectors; decoder with unit-length output, "
            "the softmax over the vocabulary as its likelihood, KL x1 to N(0, I) over a 32-d z; 20 decoded prior "
            "samples, softmax votes times prior",
        ),
        "votes": Preset(
            generator=CVAEConfig(unit_output=True),
            train=TrainConfig(optimizer="adam", lr=2e-4, lr_decay=1.0, recon="softmax", recon_weight=1.0, recon_prior=0.5, epochs=6),
            words=_WORDS,
            standardize_features=True,
            condition=ConditionConfig(neighbour_votes=50),
            sampling=replace(_SAMPLING, prior_power=0.5),
            description="the default preset conditioned on the image and its 50 nearest training photos' tag votes, "
            "the frequency term at 0.5 in training and tagging, 6 epochs",
        ),
    },
    "caae": {
        "default": Preset(
            generator=CAAEConfig(unit_output=True, prior_weight=1.0),
            train=_ADAM,
            words=_WORDS,
            standardize_features=True,
            sampling=_SAMPLING,
            description="Adam 2e-4, standardized features, centred unit word vectors, smoothing 0.1; E(word) -> 50-d z "
            "against U[-1, 1], G with unit-length output, softmax reconstruction x1 from E's codes and from prior codes, "
            "D_img x0.1, D_z x0.1; 20 decoded prior samples, softmax votes times prior",
        ),
    },
}


# What `tagger train` uses without --preset: the best on validation photos (see the README); the paper's
# recipe stays one --preset away.
DEFAULTS = {"cgan": "votes", "cvae": "votes", "caae": "default"}


def get_preset(family: str, name: str | None = None) -> Preset:
    """A family's preset by name; None: the family's default (DEFAULTS)."""
    if family not in PRESETS:
        raise OptionError(f"unknown generator family {family!r}; choose from {', '.join(PRESETS)}")
    presets = PRESETS[family]
    if name is None:
        return presets[default_preset_name(family)]
    if name not in presets:
        raise OptionError(f"generator {family} has no preset {name!r}; choose from {', '.join(presets)}")
    return presets[name]


def default_preset_name(family: str) -> str:
    return DEFAULTS.get(family) or next(iter(PRESETS[family]))
