"""Tests for embeddings.tags: tag normalization, stoplist, synonyms, plural merging, Vocabulary."""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.tags import STOPLIST_FILE, SYNONYMS_FILE, TagConfig, Vocabulary, normalize_tag, read_synonyms


@pytest.mark.parametrize("raw, expected", [
    ("ＢＥＡＣＨ", "beach"),              # NFKC: full-width letters
    ("Sunset", "sunset"),
    ("Straße", "strasse"),               # casefold, not just lower
    ("  sky\u3000", "sky"),              # ideographic space
    ("sun\u200bset", "sunset"),          # zero-width space
    ("\ufeffdog", "dog"),                # BOM
    ("کتاب\u200cها", "کتابها"),          # zero-width non-joiner
    ("Black and White", "blackandwhite"),  # Flickr's clean form: no spaces
    ("18-55mm", "1855mm"),
    ("b&w", "bw"),
    ("日本", "日本"),
    ("españa", "españa"),                # accents are kept
])
def test_normalize_tag(raw, expected):
    assert normalize_tag(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "\u200b", "\u3000", "2", "365", "1.5", "2007", "２００８", "'07",
                                 "05.05.2007", "-3", "geo:lat=51.501", "upcoming:event=616375", "..."])
def test_normalize_tag_drops_numbers_years_and_empty(raw):
    assert normalize_tag(raw) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=15))
def test_normalize_tag_is_a_fixed_point(raw):
    tag = normalize_tag(raw)
    if tag is not None:
        assert normalize_tag(tag) == tag
        assert tag and not any(ch.isspace() for ch in tag)


def photos(*specs):
    """('a b', 3) -> three photos tagged ['a', 'b']."""
    out = []
    for tags, n in specs:
        out += [tags.split()] * n
    return out


def test_stoplist_removes_camera_and_community_tags():
    vocab = Vocabulary.build(photos(("Nikon sky explore", 3), ("nikond80 canoneos400d sky photos", 2)),
                             TagConfig(min_count=1))
    assert vocab.words == ["sky"]
    for tag in ("nikon", "explore", "nikond80", "canoneos400d", "photos"):
        assert tag not in vocab.canonical
    assert vocab.normalize(["NIKON", "Sky", "explore", "nikond300"]) == ["sky"]


def test_synonyms_merge_and_count_once_per_photo():
    vocab = Vocabulary.build(photos(("bw street", 2), ("blackandwhite", 3), ("bw blackandwhite b&w", 4)),
                             TagConfig(min_count=1))
    assert vocab.canonical["bw"] == vocab.canonical["blackandwhite"] == "blackandwhite"
    assert "bw" not in vocab
    assert vocab.counts[vocab.index("blackandwhite")] == 9  # photos, not tag occurrences
    assert vocab.normalize(["BW", "Black and White", "street"]) == ["blackandwhite", "street"]


def test_plural_merge_keeps_the_more_frequent_form():
    vocab = Vocabulary.build(photos(("cloud", 3), ("clouds", 5), ("cloud clouds", 1), ("flower", 6), ("flowers", 2),
                                    ("city", 2), ("cities", 1)), TagConfig(min_count=1))
    assert vocab.canonical["cloud"] == vocab.canonical["clouds"] == "clouds"
    assert vocab.counts[vocab.index("clouds")] == 9
    assert vocab.canonical["flowers"] == "flower"
    assert vocab.canonical["cities"] == "city"
    assert "cloud" not in vocab and "flowers" not in vocab


def test_plural_merge_leaves_short_words_and_ss_words_alone():
    vocab = Vocabulary.build(photos(("glass", 3), ("glas", 2), ("glasses", 2), ("bus", 2), ("bu", 2), ("ss", 2),
                                    ("s", 2), ("news", 2), ("new", 2)), TagConfig(min_count=1))
    for word in ("glass", "glas", "glasses", "bus", "bu", "ss", "news", "new"):
        assert vocab.canonical[word] == word


def test_plural_merge_can_be_turned_off():
    vocab = Vocabulary.build(photos(("cloud", 3), ("clouds", 5)), TagConfig(min_count=1, merge_plurals=False))
    assert vocab.words == ["clouds", "cloud"]


def test_unseen_plural_finds_its_singular():
    vocab = Vocabulary.build(photos(("beach", 3)), TagConfig(min_count=1))
    assert vocab.normalize(["Beaches"]) == ["beach"]


def test_min_count_cut():
    vocab = Vocabulary.build(photos(("sky sea", 5), ("sky", 5), ("rare", 4)), TagConfig(min_count=5))
    assert vocab.words == ["sky", "sea"]
    assert list(vocab.counts) == [10, 5]
    assert vocab.canonical["rare"] == "rare"           # mapping stays total for seen tags
    assert vocab.canonicalize(["Rare", "sky", "sky"]) == ["rare", "sky"]
    assert vocab.normalize(["Rare", "sky", "unknown"]) == ["sky"]


def test_words_sorted_by_count_then_alphabetically():
    vocab = Vocabulary.build(photos(("bee ant", 2), ("cat", 3), ("dog", 1)), TagConfig(min_count=1))
    assert vocab.words == ["cat", "ant", "bee", "dog"]
    assert [vocab.index(w) for w in vocab.words] == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="zzz"):
        vocab.index("zzz")


def test_user_stoplist_replaces_the_shipped_one(tmp_path):
    stop = tmp_path / "stop.txt"
    stop.write_text("# mine\nSky\nfoo*\n", encoding="utf-8")
    vocab = Vocabulary.build(photos(("sky nikon sea foobar", 2)), TagConfig(min_count=1, stoplist=str(stop)))
    assert sorted(vocab.words) == ["nikon", "sea"]


def test_user_synonyms_replace_the_shipped_ones(tmp_path):
    syn = tmp_path / "syn.tsv"
    syn.write_text("puppy\tdog\n", encoding="utf-8")
    vocab = Vocabulary.build(photos(("puppy", 2), ("dog", 1), ("bw", 1), ("blackandwhite", 1)),
                             TagConfig(min_count=1, synonyms=str(syn)))
    assert vocab.canonical["puppy"] == "dog"
    assert vocab.canonical["bw"] == "bw"  # the shipped bw -> blackandwhite is gone


def test_a_string_is_not_a_tag_list():
    with pytest.raises(TypeError, match="list of tags"):
        Vocabulary.build(["sky sea"], TagConfig(min_count=1))
    vocab = Vocabulary.build([["sky"]], TagConfig(min_count=1))
    with pytest.raises(TypeError):
        vocab.normalize("sky")


def test_config_paths_are_saved_as_text(tmp_path):
    stop = tmp_path / "stop.txt"
    stop.write_text("sky\n", encoding="utf-8")
    vocab = Vocabulary.build([["sky", "sea"]], TagConfig(min_count=1, stoplist=stop))
    assert vocab.config.stoplist == str(stop) and vocab.words == ["sea"]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").config == vocab.config


def test_shipped_data_files_parse():
    synonyms = read_synonyms(SYNONYMS_FILE)
    assert synonyms["bw"] == synonyms["monochrome"] == "blackandwhite"
    assert "puppy" not in synonyms and "ocean" not in synonyms
    assert synonyms["glasses"] == "glasses"  # pinned
    vocab = Vocabulary.build(photos(("nikon 50mm explore abigfave d200 400d sky", 1)), TagConfig(min_count=1))
    assert vocab.words == ["sky"]
    assert STOPLIST_FILE.is_file()


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(photos(("clouds bw sky", 3), ("cloud blackandwhite", 2), ("rare", 1)),
                             TagConfig(min_count=2))
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left behind
    back = Vocabulary.load(path)
    assert back.words == vocab.words
    assert np.array_equal(back.counts, vocab.counts)
    assert back.canonical == vocab.canonical
    assert back.config == vocab.config
    raw = ["Clouds", "B&W", "nikon", "rare", "skies"]
    assert back.canonicalize(raw) == vocab.canonicalize(raw)
    assert back.normalize(raw) == vocab.normalize(raw) == ["clouds", "blackandwhite", "sky"]


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "something", "version": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a"):
        Vocabulary.load(path)


def read_annotation_tags(subset_dir: Path) -> list[list[str]]:
    with open(subset_dir / "annotations.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["tags"] for line in f if line.strip()]


@pytest.mark.data
def test_real_subset_vocabulary(subset_dir):
    tag_lists = read_annotation_tags(subset_dir)
    vocab = Vocabulary.build(tag_lists, TagConfig(min_count=10))
    for junk in ("explore", "nikon", "2007", "canon", "abigfave", "geotagged", "bw"):
        assert junk not in vocab
    for word in ("beach", "sky", "sunset", "dog", "blackandwhite"):
        assert word in vocab
    assert "explore" not in vocab.canonical and "nikon" not in vocab.canonical
    assert vocab.canonical["bw"] == "blackandwhite"
    assert {vocab.canonical["cloud"], vocab.canonical["clouds"]} == {"clouds"}
    # Merging only adds photos: the merged word has at least as many as any raw variant.
    raw_bw = sum("bw" in tags for tags in tag_lists)
    assert vocab.counts[vocab.index("blackandwhite")] >= raw_bw
    assert all(vocab.counts >= 10)
    assert all(np.diff(vocab.counts) <= 0)
    # Every word the product can output is a normalized tag that maps to itself.
    for word in vocab.words:
        assert normalize_tag(word) == word
        assert vocab.normalize([word]) == [word]
    # Tags of a real photo come out unique, in order, inside the vocabulary.
    for tags in tag_lists[:500]:
        out = vocab.normalize(tags)
        assert len(out) == len(set(out)) and all(w in vocab for w in out)
