"""WordNet 3.0 as Debian's `wordnet-base` package installs it, read with nltk's WordNetCorpusReader.

    wn = wordnet()                 # one reader per process; $WORDNET_DIR overrides /usr/share/wordnet
    wn.synsets("flowers")[0].lexname()   # 'noun.plant'
    wn.morphy("trees")                   # 'tree'

nltk normally reads its own download (`nltk.download("wordnet")`), which needs a network this tool
may not have. Debian's files are the same database, with two gaps that nltk 3.10 trips on:

- There is no `lexnames` file. Its content is fixed: the 45 lexicographer files of lexnames(5WN),
  number, name and syntactic category. `LEXNAMES` below is that table, and the reader serves it
  when the folder has none.
- There is no `index.sense`, and nltk's reader builds a map from "the" WordNet (its own download)
  to the one loaded by reading both folders' `index.sense`. The files read here are WordNet 3.0
  itself, so that map is the identity and is not built.

nltk 3.10 reads corpora only inside folders on `nltk.data.path` (its path sandbox, `nltk.pathsec`),
and refuses to follow a symlink out of the reader's folder: links to Debian's files in a folder of
our own would be refused, and copies would duplicate 28 MB per user and go stale with the package.
So the WordNet folder itself is added to `nltk.data.path`, which is what nltk documents for a corpus
in a custom place.
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path

DEFAULT_DIR = Path("/usr/share/wordnet")
# The files the reader cannot work without (lemma.count() also reads cntlist.rev, when it is there).
REQUIRED = ("index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj", "index.adv", "data.adv",
            "noun.exc", "verb.exc", "adj.exc", "adv.exc")

# lexnames(5WN): file number, lexicographer file, syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb).
_LEXICOGRAPHER_FILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl")
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES = "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXICOGRAPHER_FILES))


class WordNetMissing(FileNotFoundError):
    """WordNet's files are not where they were looked for."""


def wordnet_dir() -> Path:
    """Where WordNet is read from: $WORDNET_DIR, else Debian's /usr/share/wordnet."""
    return Path(os.environ.get("WORDNET_DIR") or DEFAULT_DIR).expanduser()


def wordnet(folder: str | Path | None = None):
    """The WordNet reader for `folder` (default: `wordnet_dir()`), made once per process and folder.

    A folder without WordNet's files is a WordNetMissing error that says what to install.
    """
    return _reader(Path(folder or wordnet_dir()).expanduser().resolve())


@functools.cache
def _reader(folder: Path):
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise WordNetMissing(
            f"WordNet 3.0 not found in {folder} ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} missing): "
            "install it with `apt install wordnet-base`, or set WORDNET_DIR to a folder of WordNet 3.0's database files")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class DebianWordNet(WordNetCorpusReader):
        def open(self, file):
            if file == "lexnames" and not (folder / "lexnames").is_file():
                return io.StringIO(LEXNAMES)
            return super().open(file)

        def map_wn(self, version="wordnet"):
            return None  # the files are WordNet 3.0: the map from nltk's WordNet 3.0 is the identity

    if str(folder) not in map(str, nltk.data.path):
        nltk.data.path.append(str(folder))
    with warnings.catch_warnings():
        # "The multilingual functions are not available": only English is read.
        warnings.simplefilter("ignore", UserWarning)
        return DebianWordNet(str(folder), None)
