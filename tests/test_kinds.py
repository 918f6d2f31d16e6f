"""Tests for embeddings.kinds: each source of a word's kind on real words, precedence, keywords, saving."""
import json
from pathlib import Path

import pytest

from embeddings.kinds import (CATEGORIES, COMMUNITY_WORDS, GEAR_WORDS, PHOTO_WORDS, SELF_WORDS, STYLE_WORDS, Kind,
                              WordKinds, gazetteer)
from embeddings.tags import Stoplist, Vocabulary
from embeddings.wordnet import WordNetMissing, wordnet

REPO = Path(__file__).resolve().parents[1]
SHIPPED_VOCABULARY = REPO / "tagger" / "assets" / "model" / "vocabulary.json"


@pytest.fixture(scope="module")
def c():
    from embeddings.kinds import classifier

    try:
        wordnet()
    except WordNetMissing as e:
        pytest.skip(f"WordNet not installed: {e}")
    return classifier()


def kind(c, word):
    return c.explain(word)[0]


@pytest.mark.parametrize("word, expected", [
    # the gazetteer: countries, cities (squashed as Flickr squashes them), US states, continents
    ("paris", Kind.PLACE), ("france", Kind.PLACE), ("newyorkcity", Kind.PLACE), ("sanfrancisco", Kind.PLACE),
    ("unitedstates", Kind.PLACE), ("losangeles", Kind.PLACE), ("california", Kind.PLACE), ("europe", Kind.PLACE),
    ("saopaulo", Kind.PLACE), ("sãopaulo", Kind.PLACE), ("thenetherlands", Kind.PLACE),
    # WordNet's named places, and demonyms
    ("england", Kind.PLACE), ("tuscany", Kind.PLACE), ("ny", Kind.PLACE),
    ("japanese", Kind.PLACE), ("iranian", Kind.PLACE), ("persian", Kind.PLACE), ("french", Kind.PLACE),
    # WordNet's lexicographer files
    ("cat", Kind.CONTENT), ("horse", Kind.CONTENT), ("beach", Kind.CONTENT), ("tree", Kind.CONTENT),
    ("food", Kind.CONTENT), ("girl", Kind.CONTENT), ("people", Kind.CONTENT), ("portrait", Kind.CONTENT),
    ("snow", Kind.CONTENT), ("rainbow", Kind.CONTENT), ("flowers", Kind.CONTENT), ("eyes", Kind.CONTENT),
    ("red", Kind.CONTENT), ("reflection", Kind.CONTENT), ("winter", Kind.CONTENT), ("christmas", Kind.CONTENT),
    ("urban", Kind.CONTENT),
    ("love", Kind.OTHER), ("beautiful", Kind.OTHER), ("happy", Kind.OTHER), ("life", Kind.OTHER), ("new", Kind.OTHER),
    # squashed WordNet lemmas and compounds
    ("teddybear", Kind.CONTENT), ("streetart", Kind.CONTENT), ("southerncalifornia", Kind.PLACE),
    # the lists
    ("nikon", Kind.GEAR), ("canon", Kind.GEAR), ("50mm", Kind.GEAR), ("d80", Kind.GEAR), ("holga", Kind.GEAR),
    ("iphone", Kind.GEAR), ("me", Kind.SELF), ("selfportrait", Kind.SELF), ("myself", Kind.SELF),
    ("explore", Kind.COMMUNITY), ("abigfave", Kind.COMMUNITY), ("supershot", Kind.COMMUNITY),
    ("impressedbeauty", Kind.COMMUNITY), ("diamondclassphotographer", Kind.COMMUNITY), ("geotagged", Kind.COMMUNITY),
    ("macro", Kind.STYLE), ("blackandwhite", Kind.STYLE), ("bokeh", Kind.STYLE), ("longexposure", Kind.STYLE),
    ("photo", Kind.OTHER),
    # the calendar
    ("2008", Kind.DATE), ("christmas2007", Kind.DATE), ("july", Kind.DATE), ("sunday", Kind.DATE),
    # synonyms.tsv first: a variant is its canonical form
    ("bw", Kind.STYLE), ("monochrome", Kind.STYLE), ("nyc", Kind.PLACE), ("españa", Kind.PLACE), ("cielo", Kind.CONTENT),
    ("autoportrait", Kind.SELF),
])
def test_kind(c, word, expected):
    assert c.explain(word)[0] == expected, c.explain(word)


@pytest.mark.parametrize("word, expected, why", [
    # a country, continent or US state wins over any other sense
    ("turkey", Kind.PLACE, "country"), ("china", Kind.PLACE, "country"), ("chile", Kind.PLACE, "country"),
    ("jersey", Kind.PLACE, "country"), ("georgia", Kind.PLACE, "country"),
    # a city against a common word: SemCor's counts
    ("rome", Kind.PLACE, "city"),                # Rome 4, a common sense 2
    ("orange", Kind.CONTENT, "noun.food"),       # Orange, California against the fruit and the colour
    ("nice", Kind.OTHER, "adj"),                 # Nice against nice
    ("spring", Kind.CONTENT, "noun.time"),       # Spring, Texas
    ("rose", Kind.CONTENT, "noun.plant"),        # the flower, not a name
    ("bear", Kind.CONTENT, "noun.animal"),       # Bear, Delaware; the noun over the verb
    # neither counted: the population decides
    ("berlin", Kind.PLACE, "city"), ("bologna", Kind.PLACE, "city"), ("manhattan", Kind.PLACE, "city"),
    ("sunset", Kind.CONTENT, "noun"),            # Sunset, Florida: 36,500 people
    ("butterfly", Kind.CONTENT, "noun.animal"),  # a town in Kerala
    ("david", Kind.OTHER, "name"),               # David, Panama: 82,907 people; David is a name first
    ("obama", Kind.OTHER, "no source"),          # Obama, Fukui: a one-word town name WordNet does not know
    ("victoria", Kind.PLACE, "city"),            # the queen has no SemCor count, the city 956,800 people
    # the lists come before the gazetteer and WordNet
    ("fuji", Kind.GEAR, "list"),                 # Fuji, Shizuoka: 245,392 people
    ("me", Kind.SELF, "list"),                   # ME is Maine in WordNet
    ("moon", Kind.CONTENT, "noun"),              # the Moon is a named noun.object, not a place
])
def test_precedence(c, word, expected, why):
    got, reason = c.explain(word)
    assert got == expected and why in reason, (word, got, reason)


def test_the_lists_are_disjoint(c):
    """A word of two lists would take the kind of the first one tried: the lists must not overlap."""
    lists = {"self": SELF_WORDS, "community": COMMUNITY_WORDS, "gear": GEAR_WORDS, "style": STYLE_WORDS,
             "photo": PHOTO_WORDS}
    matchers = {name: Stoplist(words) for name, words in lists.items()}
    words = set(Vocabulary.load(SHIPPED_VOCABULARY).words) | {w for ws in lists.values() for w in ws if "*" not in w
                                                                and "[" not in w}
    both = {w: [n for n, m in matchers.items() if w in m] for w in words}
    assert {w: names for w, names in both.items() if len(names) > 1} == {}


def test_gazetteer_normalizes_like_tags():
    places = gazetteer()
    assert places["newyorkcity"].level == "city" and places["newyorkcity"].name == "New York City"
    assert places["unitedstates"].level == "country"
    assert places["saopaulo"] == places["sãopaulo"]
    assert places["georgia"].level == "country"  # the country over the US state and the cities
    assert places["losangeles"].population > 1_000_000 and places["losangeles"].name == "Los Angeles"


def test_keywords_merge_inflections_and_synonyms(c):
    words = ["flowers", "flower", "trees", "children", "child", "kids", "glasses", "stairs", "graffiti", "eyes",
             "me", "selfportrait", "self", "myself", "bw", "blackandwhite", "monochrome", "car", "auto",
             "autumn", "fall", "sea", "ocean", "dog", "puppy", "bike", "bicycle", "sun", "sunlight", "paris"]
    k = c.keywords(words)
    assert k["flowers"] == k["flower"] == "flower"
    assert k["trees"] == "tree" and k["eyes"] == "eye"
    assert k["children"] == k["child"] == k["kids"] == "child"   # `child` is named before `kids` here
    assert k["glasses"] == "glasses" and k["stairs"] == "stairs" and k["graffiti"] == "graffiti"  # plurals of their own
    assert k["me"] == k["self"] == k["myself"] == k["selfportrait"] == "selfportrait"
    assert k["bw"] == k["monochrome"] == k["blackandwhite"] == "blackandwhite"
    assert k["car"] == k["auto"] == "car"
    assert k["autumn"] == k["fall"] == "autumn"           # the one named first
    assert len({k["sea"], k["ocean"]}) == 2 and len({k["dog"], k["puppy"]}) == 2
    assert len({k["bike"], k["bicycle"]}) == 2           # `bike` is first a motorcycle in WordNet
    assert len({k["sun"], k["sunlight"]}) == 2
    assert k["paris"] == "paris"


def test_synonym_groups(c):
    from embeddings.kinds import synonym_groups

    groups = synonym_groups(["clouds", "cloud", "car", "auto", "sky", "me", "selfportrait"])
    assert groups == [["clouds", "cloud"], ["car", "auto"], ["me", "selfportrait"]]


def test_word_kinds_round_trip(c, tmp_path):
    words = ["paris", "cat", "cats", "nikon", "me", "selfportrait", "explore", "2008", "macro", "love"]
    kinds = WordKinds.build(words)
    assert kinds.kinds == {"paris": Kind.PLACE, "cat": Kind.CONTENT, "cats": Kind.CONTENT, "nikon": Kind.GEAR,
                           "me": Kind.SELF, "selfportrait": Kind.SELF, "explore": Kind.COMMUNITY, "2008": Kind.DATE,
                           "macro": Kind.STYLE, "love": Kind.OTHER}
    assert kinds.keywords["cats"] == "cat" and kinds.keywords["me"] == "selfportrait"
    assert kinds.of(Kind.CONTENT) == ["cat", "cats"]
    kinds.save(tmp_path / "kinds.json")
    again = WordKinds.load(tmp_path / "kinds.json")
    assert again == kinds and list(again.kinds) == words
    assert all(isinstance(k, Kind) for k in again.kinds.values())


@pytest.mark.parametrize("word, expected", [
    # the lexicographer file of the sense that made the word content
    ("cat", "animal"), ("dog", "animal"), ("pizza", "food"), ("tree", "plant"), ("girl", "people"), ("eyes", "people"),
    ("sky", "nature"), ("snow", "nature"), ("winter", "time"), ("wedding", "event"), ("hiking", "activity"),
    ("circle", "shape"), ("glass", "material"), ("chair", "object"), ("city", "place"),
    # hypernyms before the file: a car is a vehicle, a bridge architecture, red a colour, a painting art
    ("car", "vehicle"), ("boat", "vehicle"), ("bridge", "architecture"), ("red", "color"), ("painting", "art"),
    ("street", "place"), ("garden", "place"),
    # a group yields to a counted sense a photo shows: the building, the furniture; a White person to the colour
    ("church", "architecture"), ("table", "object"), ("forest", "nature"), ("white", "color"), ("family", "people"),
    # a variant as its canonical form, a compound by its head, a relational adjective by its noun
    ("cielo", "nature"), ("streetart", "art"), ("urban", "place"),
    # every other kind by its name
    ("paris", "place"), ("japanese", "place"), ("blackandwhite", "style"), ("bw", "style"), ("macro", "style"),
    ("nikon", "gear"), ("me", "self"), ("explore", "community"), ("2008", "date"), ("love", "other"), ("photo", "other"),
])
def test_category(c, word, expected):
    assert c.category(word) == expected, c.decide(word)


def test_categories_are_of_the_kind_and_from_the_set(c):
    words = Vocabulary.load(SHIPPED_VOCABULARY).words[:300]
    kinds = WordKinds.build(words)
    assert set(kinds.categories.values()) <= CATEGORIES
    for word in words:
        if kinds.kinds[word] is not Kind.CONTENT:
            assert kinds.categories[word] == kinds.kinds[word].value, word
    content = {kinds.categories[w] for w in kinds.of(Kind.CONTENT)}
    assert len(content) >= 8 and "content" not in content  # content is spread over branches, never one branch of its own


def test_word_kinds_categories_round_trip(c, tmp_path):
    words = ["cat", "cats", "pizza", "paris", "bw", "blackandwhite", "me", "selfportrait"]
    kinds = WordKinds.build(words)
    assert kinds.categories == {w: c.category(w) for w in words}
    # A keyword's category is its first word's, the word that stands for the group when tagging.
    assert kinds.keyword_categories() == {"cat": c.category("cat"), "pizza": c.category("pizza"), "paris": "place",
                                          "blackandwhite": "style", "selfportrait": "self"}
    kinds.save(tmp_path / "kinds.json")
    assert json.loads((tmp_path / "kinds.json").read_text())["categories"] == kinds.categories
    again = WordKinds.load(tmp_path / "kinds.json")
    assert again == kinds and again.categories == kinds.categories


def test_a_file_saved_before_categories_loads_with_the_kind_names(tmp_path):
    path = tmp_path / "kinds.json"
    path.write_text(json.dumps({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "content", "paris": "place"},
                                "keywords": {"cat": "cat", "paris": "paris"}}))
    kinds = WordKinds.load(path)
    assert kinds.categories == {"cat": "content", "paris": "place"}
    assert kinds.keyword_categories() == {"cat": "content", "paris": "place"}


def test_the_shipped_kinds_are_what_the_command_makes(c, tmp_path):
    """tagger/assets/model/kinds.json is `python -m embeddings.kinds tagger/assets/model` (make kinds), categories too."""
    import shutil

    from embeddings.kinds import main

    shipped = SHIPPED_VOCABULARY.parent
    shutil.copy(SHIPPED_VOCABULARY, tmp_path / "vocabulary.json")
    main([str(tmp_path)])
    made = WordKinds.load(tmp_path / "kinds.json")
    assert made == WordKinds.load(shipped / "kinds.json")
    assert (tmp_path / "kinds.json").read_bytes() == (shipped / "kinds.json").read_bytes()


@pytest.mark.parametrize("data, message", [
    ({"format": "tagger.vocabulary", "version": 1}, "not a tagger.word_kinds v1 file"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "animal"}, "keywords": {"cat": "cat"}},
     "kind 'animal' is not one of"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "content"}, "keywords": {}}, "same words"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": 3}, "keywords": {"cat": "cat"}}, r"kinds\['cat'\]"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "content"}}, "keywords"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"": "content"}, "keywords": {"": "x"}}, "empty"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "content"}, "keywords": {"cat": "cat"},
      "categories": {"dog": "animal"}}, "same words"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "content"}, "keywords": {"cat": "cat"},
      "categories": {"cat": "pets|cats"}}, "plain lowercase word"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "content"}, "keywords": {"cat": "cat"},
      "categories": {"cat": "Animal"}}, "plain lowercase word"),
    ({"format": "tagger.word_kinds", "version": 1, "kinds": {"cat": "content"}, "keywords": {"cat": "cat"},
      "categories": {"cat": 7}}, r"categories\['cat'\]"),
])
def test_load_refuses_a_bad_file(tmp_path, data, message):
    path = tmp_path / "kinds.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as e:
        WordKinds.load(path)
    assert str(path) in str(e.value)


def test_shipped_vocabulary(c):
    """Every word of the shipped model gets a kind; the bulk is content and the known non-content words are not."""
    words = Vocabulary.load(SHIPPED_VOCABULARY).words
    kinds = WordKinds.build(words)
    assert len(kinds) == len(words)
    counts = kinds.counts()
    assert counts[Kind.CONTENT] > len(words) / 3
    assert counts[Kind.PLACE] > 100
    for word, expected in [("sky", Kind.CONTENT), ("selfportrait", Kind.SELF), ("me", Kind.SELF), ("hdr", Kind.STYLE),
                           ("newyorkcity", Kind.PLACE), ("london", Kind.PLACE), ("film", Kind.GEAR), ("strobist", Kind.GEAR)]:
        assert kinds.kinds[word] == expected, word


def test_subset_vocabulary(c, subset_dir):
    """The 1,386 frequent raw tags of MIRFLICKR: camera, award and year tags are found (the shipped vocabulary has
    none, its stoplist removed them)."""
    words = (subset_dir / "tag_vocab_1386.txt").read_text(encoding="utf-8").split()
    kinds = c.classify(words)
    for word, expected in [("explore", Kind.COMMUNITY), ("nikon", Kind.GEAR), ("canon", Kind.GEAR), ("2007", Kind.DATE),
                           ("interestingness", Kind.COMMUNITY), ("abigfave", Kind.COMMUNITY), ("bw", Kind.STYLE)]:
        assert kinds[word] == expected, word
    assert sum(k is Kind.COMMUNITY for k in kinds.values()) > 50


def test_known_kinds_are_kept_and_only_the_new_words_decided(c, monkeypatch):
    """A grown vocabulary: the base's words keep what the base said (even where WordNet would say otherwise), the new
    words are decided, and a new word still joins a base word's keyword."""
    from embeddings.kinds import Classifier

    made = WordKinds.build(["cat", "paris", "macro"])
    base = WordKinds({**made.kinds, "macro": Kind.CONTENT}, made.keywords, {**made.categories, "macro": "object"})
    decided = []
    real = Classifier.decide
    monkeypatch.setattr(Classifier, "decide", lambda self, w: decided.append(w) or real(self, w))
    grown = WordKinds.build(["cat", "paris", "macro", "cats", "nikon"], known=base)
    assert {"cats", "nikon"} <= set(decided) and not {"cat", "paris", "macro"} & set(decided)
    assert grown.kinds["macro"] is Kind.CONTENT and grown.categories["macro"] == "object"
    assert grown.kinds["nikon"] is Kind.GEAR and grown.keywords["cats"] == "cat" and grown.kinds["paris"] is Kind.PLACE
