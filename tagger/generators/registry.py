"""The registry of generator families: each family's file registers itself under its name (timm's `register_model` style)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from pipelines.errors import OptionError
from tagger.generators.base import GeneratorConfig, Trainer, WordGenerator


@dataclass(frozen=True)
class Family:
    name: str
    config: type[GeneratorConfig]
    trainer: type[Trainer]
    description: str


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _REGISTRY:
        raise ValueError(f"generator family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def list_families() -> list[str]:
    return list(_REGISTRY)


def get_family(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OptionError(f"unknown generator family {name!r}; known: {', '.join(list_families())}") from None


def make_config(name: str, values: dict) -> GeneratorConfig:
    """A family's config from saved values; an unknown field is an error that names it."""
    cls = get_family(name).config
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OptionError(f"{name} generator has no setting {', '.join(map(repr, unknown))}")
    return cls(**values)


def create_generator(name: str, config: GeneratorConfig | dict) -> WordGenerator:
    family = get_family(name)
    if isinstance(config, dict):
        config = make_config(name, config)
    if not isinstance(config, family.config):
        raise TypeError(f"{name} generator takes a {family.config.__name__}, got {type(config).__name__}")
    return WordGenerator(config)


def family_for(config: GeneratorConfig) -> str:
    """The name of the family whose config this is."""
    for family in _REGISTRY.values():
        if type(config) is family.config:
            return family.name
    raise ValueError(f"{type(config).__name__} is not the config of a registered generator family")
