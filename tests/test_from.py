"""`tagger train LIB --from MODEL`: a bundle grown from another on a library, its new words, the comparison with
the base, and the owner's rejections learnt."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_TAGS, build_tiny_tagger, make_photo_files
from embeddings.word2vec import WordVectors
from tagger.bundle import config_dict, load, save
from tagger.cli import app
from tagger.scoring.evidence import Evidence
from tagger.scoring.options import TagOptions
from tagger.training import extend as extend_module
from tagger.training.extend import ExtendConfig, extend, place_words

runner = CliRunner()
XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:tagger="urn:tagger:xmp:1.0/">'
       '<dc:subject><rdf:Bag>{}</rdf:Bag></dc:subject>{}</rdf:Description></rdf:RDF></x:xmpmeta>')


def bag(words) -> str:
    return "".join(f"<rdf:li>{w}</rdf:li>" for w in words)


def write_library(folder, n=60, rejected=None):
    """n photos with keyword sidecars (IMG.jpg.xmp): the tiny tags in turn, `zebra` (a word the tiny model lacks)
    with `sea` and `beach` on every third, a striped one; `rejected` maps a photo's index to the words its owner rejected."""
    from PIL import Image

    photos = make_photo_files(folder, n)
    rng = np.random.default_rng(1)
    tags = []
    for i, p in enumerate(photos):
        if i % 3 == 0:  # the zebra photos look alike (black and white stripes), so their features can say zebra
            stripes = np.where((np.arange(32) // 4 % 2)[None, :, None], 230, 20) + rng.normal(0, 20, (32, 32, 3))
            Image.fromarray(np.clip(stripes, 0, 255).astype(np.uint8)).save(p)
        words = list(TINY_TAGS[i % len(TINY_TAGS)]) + (["zebra", "sea", "beach"] if i % 3 == 0 else [])
        words = list(dict.fromkeys(words))
        no = (rejected or {}).get(i, [])
        record = f"<tagger:Rejected><rdf:Bag>{bag(no)}</rdf:Bag></tagger:Rejected>" if no else ""
        p.with_name(p.name + ".xmp").write_text(XMP.format(bag(words), record))
        tags.append(words)
    return photos, tags


@pytest.fixture
def base(tmp_path):
    tagger = build_tiny_tagger(unit=True, heads=2, scoring="softmax", knn_photos=40, neighbour_votes=5)
    return save(tagger, tmp_path / "base")


def test_a_new_word_sits_at_the_weighted_mean_of_the_known_words_it_shares_photos_with():
    known = WordVectors(["sea", "sky", "dog"], np.array([[1, 0], [0, 1], [5, 5]], dtype=np.float32))
    lists = [["zebra", "sea"], ["zebra", "sea", "sky"], ["zebra", "sea"], ["quagga", "zebra"], ["lonely"]]
    words, vectors = place_words(["zebra", "quagga", "lonely"], lists, known)
    assert words == ["zebra", "quagga"]  # lonely shares no photo with a placed word: left out
    assert np.allclose(vectors[0], [0.75, 0.25])  # sea 3 photos, sky 1
    assert np.allclose(vectors[1], vectors[0])  # placed after zebra, its only companion


@pytest.mark.slow
def test_from_round_trip_and_the_library_word_becomes_taggable(tmp_path, base):
    photos, tags = write_library(tmp_path / "lib")
    out = tmp_path / "grown"
    r = runner.invoke(app, ["train", str(tmp_path / "lib"), "--out", str(out), "--from", str(base), "--min-count", "3",
                            "--split", "0.6,0.2,0.2", "--epochs", "2", "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert "added 1 of the library's words: zebra" in r.output and "held-out P@5 (" in r.output
    grown = load(out)
    tiny = load(base)
    assert grown.words == tiny.words + ["zebra"] and "zebra" in grown.vocabulary
    assert grown.backbone_name == "tiny" and grown.generator.config.feature_dim == tiny.generator.config.feature_dim + 1
    assert len(grown.knn.tags) > len(tiny.knn.tags) and grown.knn.vocab_size == len(grown.words)
    # Saved and loaded, it tags as it did, and saves the same again.
    again = save(grown, tmp_path / "again")
    assert load(again).predict(photos[:6], TagOptions(seed=1)) == grown.predict(photos[:6], TagOptions(seed=1))
    assert config_dict(load(again)) == config_dict(grown)
    info = json.loads((out / "config.json").read_text())["info"]
    assert info["new_words"] == ["zebra"] and info["held_out"]["recommended"] in ("new", "base")

    # Fine-tuned harder (every photo a training one: the last epoch is kept), the generator gives the new word to the photos
    # whose owner gave it.
    result = extend(tmp_path / "lib", tmp_path / "hard", tiny, ExtendConfig(min_count=3, split=(1.0, 0.0, 0.0), epochs=40, lr=3e-3,
                                                                            cache_dir=tmp_path / "cache"), progress=False)
    top = [[w for w, _ in row] for row in result.tagger.predict(photos, TagOptions(method="cgan", top_k=3, min_score=0))]
    given = [("zebra" in row) for row in top]
    on = np.mean([g for g, t in zip(given, tags) if "zebra" in t])
    off = np.mean([g for g, t in zip(given, tags) if "zebra" not in t])
    assert on >= 0.3 and on >= 2 * off, (on, off)


def test_a_worse_new_model_is_said_and_the_base_stays_recommended(tmp_path, base, monkeypatch):
    write_library(tmp_path / "lib")
    real = extend_module.held_out_p5
    # The comparison as it is, with the new bundle made to score lower: the decision and what is said.
    monkeypatch.setattr(extend_module, "held_out_p5",
                        lambda tagger, *a: real(tagger, *a) - (1.0 if "zebra" in tagger.words else 0.0))
    out = tmp_path / "grown"
    r = runner.invoke(app, ["train", str(tmp_path / "lib"), "--out", str(out), "--from", str(base), "--min-count", "3",
                            "--split", "0.6,0.2,0.2", "--epochs", "1", "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert f"WARNING: the new model tags the library's held-out photos worse than {base}" in r.output
    assert f"keep using {base} (recommended)" in r.output and "recommended: " + str(out) not in r.output
    assert json.loads((out / "config.json").read_text())["info"]["held_out"]["recommended"] == "base"


def test_from_says_what_it_cannot_take(tmp_path, base):
    write_library(tmp_path / "lib", 12)
    args = ["train", str(tmp_path / "lib"), "--out", str(tmp_path / "m"), "--min-count", "3"]
    r = runner.invoke(app, args + ["--from", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "--from" in r.output and "no such model folder" in r.output
    r = runner.invoke(app, args + ["--from", str(base), "--preset", "adam"])
    assert r.exit_code == 1 and "--preset: not with --from" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "lib"), "--out", str(base), "--from", str(base)])
    assert r.exit_code == 1 and "is the --from model" in r.output


@pytest.mark.slow
def test_rejected_tags_are_not_proposed_again_after_training_from(tmp_path, base):
    """The loop: the owner rejects the tag the base model gives first on some photos, train --from, tag again."""
    tiny = load(base)
    photos, owner = write_library(tmp_path / "lib")
    feats = tiny.read(photos).features
    first = [row.tags[0][0] for row in tiny.tag(Evidence(feats, None), TagOptions(method="cgan", top_k=3, min_score=0))]
    rejected = {i: [first[i]] for i in range(0, 60, 2) if first[i] not in owner[i]}
    assert len(rejected) >= 10
    for f in (tmp_path / "lib").glob("*.xmp"):
        f.unlink()
    write_library(tmp_path / "lib", 60, rejected)
    cache = str(tmp_path / "cache")
    result = extend(tmp_path / "lib", tmp_path / "grown", tiny, ExtendConfig(min_count=3, split=(1.0, 0.0, 0.0), epochs=30, lr=3e-3,
                                                                             cache_dir=tmp_path / "cache"), progress=False)
    assert result.rejected == len(rejected)
    # The generator itself no longer gives those photos the word their owner rejected.
    rows = list(rejected)
    again = result.tagger.tag(Evidence(feats[rows], None), TagOptions(method="cgan", top_k=3, min_score=0))
    still = [i for i, row in zip(rows, again) if rejected[i][0] in [w for w, _ in row.tags]]
    assert len(still) <= len(rows) // 5, still
    # And `tagger tag` with the new model proposes none of them on those photos.
    r = runner.invoke(app, ["tag", str(tmp_path / "lib"), "--out", str(tmp_path / "tags.jsonl"), "--model", str(tmp_path / "grown"),
                            "--sidecar", "xmp", "--cache-dir", cache])
    assert r.exit_code == 0, r.output
    got = {json.loads(line)["path"]: json.loads(line)["tags"] for line in (tmp_path / "tags.jsonl").read_text().splitlines()}
    for i, words in rejected.items():
        key = next(k for k in got if k.endswith(photos[i].name))
        assert words[0] not in got[key], (photos[i].name, got[key])


def test_the_word_layer_learns_the_librarys_keywords_and_its_rejections_and_keeps_the_base_when_it_helps_nothing():
    from tagger.scoring.classifier import WordClassifier

    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (80, 6)).astype(np.float32)
    base = WordClassifier(np.zeros((3, 6), np.float32), np.full(3, -2.0, np.float32))
    # word 0 on photos whose first feature is positive; word 1 on every photo but those whose second feature is
    # above 0.5, where the owner rejected it
    no = features[:, 1] > 0.5
    ids = [([0] if f[0] > 0 else []) + ([] if n else [1]) for f, n in zip(features, no)]
    negatives = np.array([(row, 1) for row in np.flatnonzero(no)])
    config = ExtendConfig(classifier_epochs=200, classifier_lr=0.05)
    rows = np.arange(80)
    tuned, log = extend_module.finetune_classifier(base, features, rows, ids, negatives, config, None)
    p = tuned.probabilities(features)
    assert log["best_epoch"] == 200  # no validation photos: the last pass
    assert p[features[:, 0] > 0, 0].mean() > 0.7 > 0.3 > p[features[:, 0] <= 0, 0].mean()
    assert p[no, 1].mean() < 0.3 < 0.7 < p[~no, 1].mean()
    # a rejection weighs 20 times a photo merely without the word: lower still on the rejected photos
    unrejected, _ = extend_module.finetune_classifier(base, features, rows, ids, np.zeros((0, 2), int), config, None)
    assert p[no, 1].mean() < unrejected.probabilities(features)[no, 1].mean() - 0.05
    assert base.probabilities(features)[0, 0] == pytest.approx(0.1192, abs=1e-4)  # the base itself is not changed

    # validation photos whose one true word the base already ranks first (the best P@5 there is): however the
    # passes move the layer (towards word 2 everywhere), pass 0, the base's own weights, is kept
    wide = rng.normal(0, 1, (80, 12)).astype(np.float32)
    good = WordClassifier(np.eye(12, dtype=np.float32) * 5, np.zeros(12, np.float32))
    val = (wide[:10], [{int(np.argmax(f))} for f in wide[:10]])
    kept, log = extend_module.finetune_classifier(good, wide, rows, [[2]] * 80, np.zeros((0, 2), int), config, val)
    assert log["best_epoch"] == 0 and np.array_equal(kept.weight, good.weight)
    moved, _ = extend_module.finetune_classifier(good, wide, rows, [[2]] * 80, np.zeros((0, 2), int), config, None)
    assert not np.allclose(moved.weight, good.weight)


def test_a_library_with_no_new_word_keeps_the_base_kinds_without_reading_wordnet(monkeypatch):
    from embeddings import kinds as kinds_module
    from embeddings.kinds import Kind, WordKinds

    base = WordKinds({"cat": Kind.CONTENT, "cats": Kind.CONTENT, "paris": Kind.PLACE}, {"cat": "cat", "cats": "cat", "paris": "paris"},
                     {"cat": "animal", "cats": "animal", "paris": "place"})

    def no_wordnet(*a, **k):
        raise AssertionError("WordNet read for words the base has kinds for")

    monkeypatch.setattr(kinds_module, "classifier", no_wordnet)
    monkeypatch.setattr(kinds_module, "Classifier", no_wordnet)
    warnings = []
    assert extend_module.grow_kinds(base, ["cat", "cats", "paris"], [], warnings) == base and not warnings
