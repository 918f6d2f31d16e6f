"""The 24 MIRFLICKR concept labels and the tag words that name them.

MIRFLICKR's expert labels (`labels24.tsv`: sky, clouds, water, tree, dog, people, night...) are
complete for their concepts: a photo without the `dog` label has no dog in it, where its owner's
tags leave out most of what it shows (on the shipped model's validation photos, a concept word in a
photo's top ten is in the owner's tags 15% of the time and the concept is in the photo 63% of the
time). So for the words that name a concept, the labels say what a person looking at the photo
would accept, and tagging is calibrated against that (`tagger.scoring.calibration`, `acceptance`).

`LABEL_WORDS` ranks the labels by a tag table in evaluation (a label scores as its best word);
`NAMES` holds only words that are right exactly when the concept is in the photo (`sea` and
`ocean` for sea, not `beach`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Words that point to each concept, for ranking the 24 labels by a tag table (evaluate); those missing from a
# model's vocabulary are ignored.
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "animals": ("animal", "animals", "dog", "cat", "bird", "horse", "cow", "sheep", "pet", "wildlife", "zoo", "insect"),
    "baby": ("baby", "babies", "newborn", "infant"),
    "bird": ("bird", "birds", "gull", "seagull", "duck", "pigeon"),
    "car": ("car", "cars", "auto", "automobile"),
    "clouds": ("clouds", "cloud", "cloudy"),
    "dog": ("dog", "dogs", "puppy"),
    "female": ("woman", "girl", "female", "lady", "women", "girls"),
    "flower": ("flower", "flowers", "blossom", "bloom", "rose", "tulip", "daisy"),
    "food": ("food", "cake", "dinner", "lunch", "breakfast", "fruit", "dessert", "chocolate"),
    "indoor": ("indoor", "indoors", "interior", "room", "home", "kitchen"),
    "lake": ("lake", "pond"),
    "male": ("man", "boy", "male", "guy", "men", "boys"),
    "night": ("night", "nighttime", "nightshot", "dark"),
    "people": ("people", "person", "portrait", "man", "woman", "girl", "boy", "child", "kids", "friends", "family", "me", "selfportrait"),
    "plant_life": ("plant", "plants", "tree", "trees", "flower", "flowers", "garden", "leaf", "leaves", "grass", "forest"),
    "portrait": ("portrait", "selfportrait", "face", "self"),
    "river": ("river", "stream", "creek"),
    "sea": ("sea", "ocean", "beach", "coast", "waves"),
    "sky": ("sky", "skies", "clouds", "blue sky"),
    "structures": ("architecture", "building", "buildings", "house", "bridge", "church", "tower", "city", "castle"),
    "sunset": ("sunset", "sunrise", "dusk"),
    "transport": ("car", "train", "bus", "bike", "bicycle", "boat", "airplane", "plane", "truck", "motorcycle", "transport"),
    "tree": ("tree", "trees"),
    "water": ("water", "sea", "lake", "river", "ocean", "waterfall"),
}

# Words that are right on a photo exactly when its concept label is (plural and synonym forms too).
NAMES: dict[str, tuple[str, ...]] = {
    "animals": ("animal", "animals"), "baby": ("baby", "babies"), "bird": ("bird", "birds"), "car": ("car", "cars", "auto"),
    "clouds": ("clouds", "cloud"), "dog": ("dog", "dogs"), "female": ("woman", "women"), "flower": ("flower", "flowers"),
    "food": ("food",), "indoor": ("indoor", "indoors", "interior"), "lake": ("lake",), "male": ("man", "men"), "night": ("night",),
    "people": ("people", "person"), "plant_life": ("plant", "plants"), "portrait": ("portrait",), "river": ("river",),
    "sea": ("sea", "ocean"), "sky": ("sky",), "structures": ("architecture", "building", "buildings"), "sunset": ("sunset",),
    "transport": ("transport", "transportation"), "tree": ("tree", "trees"), "water": ("water",),
}


def concept_truth(words: Sequence[str], labels: Sequence[Sequence[str] | None]) -> tuple[np.ndarray, list[set[int]]]:
    """For the words that name a concept: a (V,) mask of them, and for each photo the ids of those right on it
    (its concept labels named). Photos without labels (None) get an empty set; callers leave them out."""
    pos = {w: i for i, w in enumerate(words)}
    named = {pos[w]: concept for concept, names in NAMES.items() for w in names if w in pos}
    known = np.zeros(len(words), dtype=bool)
    known[list(named)] = True
    truth = [set() if labs is None else {i for i, c in named.items() if c in set(labs)} for labs in labels]
    return known, truth
