"""Tests for embeddings.wordnet: Debian's WordNet 3.0 through nltk, and the error where it is missing."""
import pytest

from embeddings.wordnet import DEFAULT_DIR, LEXNAMES, WordNetMissing, wordnet, wordnet_dir


def test_lexnames_is_the_45_entry_table():
    lines = [line.split("\t") for line in LEXNAMES.splitlines()]
    assert len(lines) == 45
    assert [int(n) for n, _, _ in lines] == list(range(45))
    assert lines[5] == ["05", "noun.animal", "1"] and lines[29] == ["29", "verb.body", "2"]
    assert lines[0] == ["00", "adj.all", "3"] and lines[2] == ["02", "adv.all", "4"] and lines[44] == ["44", "adj.ppl", "3"]


def test_missing_wordnet_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("WORDNET_DIR", str(tmp_path))
    assert wordnet_dir() == tmp_path
    with pytest.raises(WordNetMissing, match=r"apt install wordnet-base.*WORDNET_DIR") as e:
        wordnet()
    assert str(tmp_path) in str(e.value) and "index.noun" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_wordnet_dir_defaults_to_debians(monkeypatch):
    monkeypatch.delenv("WORDNET_DIR", raising=False)
    assert wordnet_dir() == DEFAULT_DIR


def test_reads_debians_wordnet(wn):
    assert wn.get_version() == "3.0"
    assert wn.synsets("dog")[0].name() == "dog.n.01"
    assert wn.synset("dog.n.01").lexname() == "noun.animal"  # the lexnames table is read
    assert wn.synset("rose.n.01").lexname() == "noun.plant"
    assert wn.morphy("flowers") == "flower" and wn.morphy("children", "n") == "child"  # *.exc files
    assert max(lemma.count() for lemma in wn.synset("cat.n.01").lemmas()) > 0  # cntlist.rev: sense counts
    assert wn.synset("japanese.a.01").lemmas()[0].pertainyms()[0].name() == "Japan"


def test_one_reader_per_process(wn):
    assert wordnet() is wn
    assert wordnet(wordnet_dir()) is wn
