"""The seed's generator family behind one interface, and the registry that names them.

Every family trains the same kind of network, a `WordGenerator` G(noise, condition) -> word
vector, and differs in what it trains beside it and how. Each family is one file: its config (the
generator's sizes plus its own networks' sizes and loss weights), those networks and its
`Trainer`. A family registers itself under a name, in the style of timm's `register_model` and
this project's backbone registry; bundles record the name and the config and are loaded back
through `create_generator`.

    cgan   Mirza & Osindero (2014): G(z, image) against D(word, image)
    cvae   conditional VAE: q(z | word, image), decoder p(word | z, image), KL to N(0, I)
    caae   conditional adversarial autoencoder (Zhang et al. 2017): E(word) -> z against a uniform
           prior, G(z, image) -> word with a reconstruction loss, D(word, image) as in the cGAN
"""
from tagger.generators.base import GeneratorConfig, TrainConfig, TrainContext, Trainer, WordGenerator
from tagger.generators.registry import Family, create_generator, family_for, get_family, list_families, make_config, register_family
from tagger.generators import cgan, cvae, caae  # noqa: E402, F401, I001  (each registers its family, in this order)

__all__ = ["Family", "GeneratorConfig", "TrainConfig", "TrainContext", "Trainer", "WordGenerator", "create_generator",
           "family_for", "get_family", "list_families", "make_config", "register_family"]
