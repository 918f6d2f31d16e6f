"""The model bundle: round trip, determinism, options, atomic writes and clear load errors."""
import json
import os

import numpy as np
import torch
import pytest

from conftest import build_tiny_tagger, make_photo_files
from tagger.bundle import BundleError, config_dict
from tagger.bundle import load, save
from tagger.scoring.options import TagOptions
from tagger.scoring.evidence import Evidence
from tagger.library.local import tag_paths


@pytest.fixture
def photos(tmp_path):
    return make_photo_files(tmp_path / "photos", 6)


@pytest.mark.parametrize("joint,heads,unit,scoring", [(0, 1, False, "votes"), (12, 1, False, "votes"), (0, 3, True, "softmax")])
def test_round_trip_gives_the_same_tags(tmp_path, photos, joint, heads, unit, scoring):
    tagger = build_tiny_tagger(joint=joint, heads=heads, unit=unit, scoring=scoring)
    before = tagger.predict(photos, TagOptions(seed=3))
    save(tagger, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "generator.safetensors", "vocabulary.json", "word_vectors.npz"]
    loaded = load(tmp_path / "m")
    assert loaded.predict(photos, TagOptions(seed=3)) == before
    assert loaded.words == tagger.words
    assert config_dict(loaded) == config_dict(tagger)
    assert all(len(tags) == 3 for tags in before)


def test_half_precision_bundle_is_smaller_and_loads(tmp_path, photos):
    tagger = build_tiny_tagger()
    full = save(tagger, tmp_path / "full")
    half = save(tagger, tmp_path / "half", half=True)
    assert (half / "generator.safetensors").stat().st_size < 0.75 * (full / "generator.safetensors").stat().st_size
    loaded = load(half)
    # The weights come back as the float16 values they were stored as, in float32 to compute with.
    for name, value in tagger.generator.state_dict().items():
        back = loaded.generator.state_dict()[name]
        assert back.dtype == torch.float32 and torch.equal(back, value.half().float()), name
    assert len(loaded.predict(photos)) == len(photos)


def test_seeded_and_independent_of_the_batch(photos):
    tagger = build_tiny_tagger()
    both = tagger.predict(photos[:2], TagOptions(seed=1))
    assert tagger.predict(photos[:2], TagOptions(seed=1)) == both
    assert tagger.predict(photos[1:2], TagOptions(seed=1))[0] == both[1]
    table = tagger.score(Evidence(tagger.read(photos).features, None), TagOptions(seed=1), calibrated=False).order
    other = tagger.score(Evidence(tagger.read(photos).features, None), TagOptions(seed=2), calibrated=False).order
    assert not np.array_equal(table, other)


def test_options_top_k_min_score_and_exclude(photos):
    tagger = build_tiny_tagger()
    tags = tagger.predict(photos[:1], TagOptions(top_k=5))[0]
    assert len(tags) == 5 and [s for _, s in tags] == sorted((s for _, s in tags), reverse=True)
    best = tags[0][0]
    # Excluded tags are given as users type them and normalized like the vocabulary.
    assert best not in [t for t, _ in tagger.predict(photos[:1], TagOptions(top_k=5, exclude=[best.upper()]))[0]]
    cut = tags[2][1]
    assert all(s >= cut for _, s in tagger.predict(photos[:1], TagOptions(top_k=5, min_score=cut))[0])


def test_tag_paths_reports_bad_files_and_tags_the_rest(tmp_path, photos):
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    tagger = build_tiny_tagger()
    rows = list(tag_paths(tagger, photos[:3] + [bad], TagOptions(seed=0), chunk=2, num_workers=0))
    assert [r[0] for r in rows] == photos[:3] + [bad]
    assert [t for t, _ in rows[0][1].tags] == [t for t, _ in tagger.predict([photos[0]], TagOptions(seed=0))[0]]
    assert rows[3][1].tags is None and rows[3][1].error and str(bad) not in rows[3][1].error


def test_tag_paths_with_a_feature_cache_skips_the_network_the_second_time(tmp_path, photos, monkeypatch):
    """`tagger tag` again with other options: the same tags as without a cache, and no forward pass."""
    from pipelines.cache import FeatureCache

    tagger = build_tiny_tagger()
    cache = tmp_path / "cache"
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(b"not a photo")
    files = photos + [bad]
    plain = {p: r for p, r in tag_paths(tagger, files, TagOptions(seed=0, top_k=3), chunk=4, num_workers=0)}
    first = {p: r for p, r in tag_paths(tagger, files, TagOptions(seed=0, top_k=3), chunk=4, num_workers=0, cache_dir=cache)}
    assert first == plain and plain[bad].tags is None
    calls = []
    forward = tagger.backbone.forward_features
    monkeypatch.setattr(tagger.backbone, "forward_features", lambda x: calls.append(len(x)) or forward(x))
    again = list(tag_paths(tagger, files, TagOptions(seed=0, top_k=2), chunk=4, num_workers=0, cache_dir=cache))
    # The broken file is tried again (it is not cached), nothing else reaches the network.
    assert calls == [] and {p for p, _ in again} == set(files)
    assert dict(again) == dict(tag_paths(tagger, files, TagOptions(seed=0, top_k=2), chunk=4, num_workers=0))
    # Colour evidence comes from the cache as measured on the decoded pixels.
    [shard] = FeatureCache(cache, tagger.backbone).shards()
    assert (shard.parent / shard.name.replace(".hashes.npy", ".chroma.npy")).is_file()


def test_feature_cache_is_bounded(tmp_path, photos):
    from pipelines.cache import FeatureCache
    from pipelines.images import Blank
    from pipelines.measures import Measures

    tagger = build_tiny_tagger()
    cache = FeatureCache(tmp_path / "cache", tagger.backbone, max_bytes=0)
    for i, p in enumerate(photos[:3]):
        cache.write(f"s{i}", [f"{i:032x}"], np.zeros((1, tagger.feature_dim), dtype=np.float32), [Measures(1.0, Blank.NONE, ())])
    for i, age in enumerate((5, 9, 1)):  # s2, written last, is the oldest by its times: the times count, not the order
        for f in cache.dir.glob(f"s{i}.*"):
            os.utime(f, ns=(age * 10**9, age * 10**9))
    one = sum(f.stat().st_size for f in cache.dir.glob("s0.*.npy") if f.name.endswith((".features.npy", ".hashes.npy")))
    cache.max_bytes = 2 * one
    assert cache.trim() == ["s2"]  # the oldest goes first, until the rest fits
    assert sorted(p.name for p in cache.shards()) == ["s0.hashes.npy", "s1.hashes.npy"]


def test_save_over_a_bundle_is_atomic(tmp_path, monkeypatch):
    tagger = build_tiny_tagger()
    path = save(tagger, tmp_path / "m")
    import tagger.bundle as model

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save(tagger, path)
    assert load(path).words == tagger.words  # the old bundle is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # and no temporary folder is left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(BundleError, match="not a model bundle; refusing"):
        save(tagger, tmp_path / "notes")


def test_save_removes_what_a_killed_save_left(tmp_path):
    tagger = build_tiny_tagger()
    dead = 99_999_999  # above any pid_max: no such process
    stale_tmp, stale_old = tmp_path / f".m.{dead}.abcd1234.tmp", tmp_path / f".m.{dead}.abcd1234.old"
    live_tmp = tmp_path / f".m.{os.getppid()}.abcd1234.tmp"  # a save still running (here: our parent's pid)
    for d in (stale_tmp, stale_old, live_tmp):
        d.mkdir()
    # Killed between its two renames: "m" is gone and the .old folder is the only copy of it; it stays.
    save(tagger, tmp_path / "m")
    assert not stale_tmp.exists() and stale_old.exists() and live_tmp.exists()
    save(tagger, tmp_path / "m")  # now "m" exists: the stale .old goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", live_tmp.name])


def test_load_errors_say_what_is_wrong(tmp_path):
    path = save(build_tiny_tagger(), tmp_path / "m")
    with pytest.raises(BundleError, match="no config.json"):
        load(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(BundleError, match="bundle format 99, this tagger reads formats 1, 2"):
        load(path)
    (path / "config.json").write_text(json.dumps(cfg))
    weights = (path / "generator.safetensors").read_bytes()
    (path / "generator.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(BundleError, match="generator.safetensors: cannot load"):
        load(path)
    (path / "generator.safetensors").write_bytes(weights)
    (path / "config.json").write_text(json.dumps({**cfg, "backbone": {**cfg["backbone"], "name": "efficientnet_lite0"}}))
    with pytest.raises(BundleError, match="config.json: backbone efficientnet_lite0 gives 1280-d features but this model was trained on 32-d"):
        load(path)  # at load time, not at the first photo
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "vocabulary.json").unlink()
    with pytest.raises(BundleError, match="vocabulary.json: missing"):
        load(path)


def _damage(path, name, change):
    """Rewrite one part of a bundle: `change` takes and returns the file's bytes, or (for a name given with a
    trailing "!") its JSON or arrays."""
    file = path / name.rstrip("!")
    if not name.endswith("!"):
        file.write_bytes(change(file.read_bytes()))
    elif file.suffix == ".json":
        file.write_text(json.dumps(change(json.loads(file.read_text()))))
    else:
        with np.load(file) as data:
            arrays = change(dict(data))
        with open(file, "wb") as f:
            np.savez(f, **arrays)


def _nan_weights(b: bytes) -> bytes:
    from safetensors.torch import load, save

    state = load(b)
    key = sorted(state)[0]
    state[key] = torch.full_like(state[key], float("nan"))
    return save(state)


def _half(b: bytes) -> bytes:
    return b[: len(b) // 2]


@pytest.mark.parametrize("name, change, message", [
    ("config.json!", lambda c: {**c, "backbone": {**c["backbone"], "name": "vit_huge"}},
     "config.json: made for backbone 'vit_huge', which this tagger does not have"),
    ("config.json!", lambda c: {k: v for k, v in c.items() if k != "generator"}, "config.json: missing, unknown or out-of-range setting ('generator')"),
    ("config.json!", lambda c: {**c, "generator": {**c["generator"], "family": "vqvae"}},
     "config.json: missing, unknown or out-of-range setting (unknown generator family 'vqvae'; known: cgan, cvae, caae)"),
    ("config.json!", lambda c: {**c, "generator": {**c["generator"], "config": {**c["generator"]["config"], "heads": 0}}},
     "config.json: missing, unknown or out-of-range setting (heads must be a whole number from 1 to 65536, got 0)"),
    ("config.json!", lambda c: {**c, "generator": {**c["generator"], "config": {**c["generator"]["config"], "g_image_hidden": 32}}},
     "generator.safetensors: tensor image_branch.0.bias is (16,) but config.json describes (32,)"),
    # Tampered values: refused in one line before anything is allocated, not NaN tags or a 20 GB allocation.
    *[("config.json!", (lambda k, v: lambda c: {**c, "generator": {**c["generator"], "config": {**c["generator"]["config"], k: v}}})(k, v),
       f"config.json: missing, unknown or out-of-range setting ({k} must be a whole number from 1 to 65536, got {v!r})")
      for k, v in [("g_image_hidden", 10**9), ("word_dim", -8), ("g_noise_hidden", 2.5)]],
    ("config.json!", lambda c: {**c, "generator": {**c["generator"], "config": {**c["generator"]["config"], "dropout": float("nan")}}},
     "config.json: missing, unknown or out-of-range setting (dropout must be a finite number, 0 or more, got nan)"),
    ("config.json!", lambda c: {**c, "sampling": {**c["sampling"], "temperature": float("nan")}},
     "config.json: missing, unknown or out-of-range setting (temperature must be a finite number above 0, got nan)"),
    ("config.json!", lambda c: {**c, "sampling": {**c["sampling"], "temperature": 0}},
     "config.json: missing, unknown or out-of-range setting (temperature must be a finite number above 0, got 0)"),
    ("config.json!", lambda c: {**c, "sampling": {**c["sampling"], "min_score": float("nan")}},
     "config.json: missing, unknown or out-of-range setting (min_score must be within 0..1, got nan)"),
    ("config.json!", lambda c: {**c, "sampling": {**c["sampling"], "samples": 10**8}},
     "config.json: missing, unknown or out-of-range setting (samples must be a whole number from 1 to 10000, got 100000000)"),
    ("generator.safetensors", _nan_weights, "generator.safetensors: 1 tensors hold NaN or infinite values (e.g. "),
    ("generator.safetensors", _half, "generator.safetensors: cannot load generator weights"),
    ("word_vectors.npz", _half, "word_vectors.npz: cannot load the word vectors"),
    ("word_vectors.npz", lambda b: b"", "word_vectors.npz: cannot load the word vectors"),
    ("vocabulary.json", _half, "vocabulary.json: cannot load the vocabulary"),
    ("word_vectors.npz!", lambda a: {**a, "words": np.array(["zebra", *a["words"][1:]])},
     "word_vectors.npz: 1 words are not in vocabulary.json (e.g. ['zebra'])"),
    ("word_vectors.npz!", lambda a: {**a, "words": a["words"][:-2], "vectors": a["vectors"][:-2]},
     "word_vectors.npz: 17 words, config.json says 19"),
    ("word_vectors.npz!", lambda a: {**a, "vectors": a["vectors"][:-2]},
     "word_vectors.npz: cannot load the word vectors (19 words but vectors of shape (17, 8))"),
    ("word_vectors.npz!", lambda a: {**a, "vectors": a["vectors"][:, :5]}, "word_vectors.npz: 5-d vectors, but the generator makes 8-d"),
])
def test_damaged_or_foreign_bundle_is_one_line_at_load(tmp_path, name, change, message):
    path = save(build_tiny_tagger(), tmp_path / "m")
    _damage(path, name, change)
    with pytest.raises(BundleError) as info:
        load(path)
    text = str(info.value)
    assert text.startswith(f"{path}/") and message in text, text  # names the file, says what is wrong
    assert "\n" not in text and len(text) < 500


def test_a_tagger_is_not_changed_once_built_and_replace_makes_a_new_one():
    from tagger.scoring.calibration import Calibration

    tagger = build_tiny_tagger()
    with pytest.raises(AttributeError, match="replace"):
        tagger.calibration = {}
    calibrated = tagger.replace(calibration={"cgan": Calibration(np.array([0.0, 1.0]), np.array([0.1, 0.5]))})
    assert calibrated is not tagger and tagger.calibration == {} and set(calibrated.calibration) == {"cgan"}
    assert calibrated.generator is tagger.generator  # the parts are shared, not copied
    with pytest.raises(ValueError, match="calibrates knn"):
        tagger.replace(calibration={"knn": Calibration(np.array([0.0, 1.0]), np.array([0.1, 0.5]))})
    with pytest.raises(ValueError, match="default method 'knn'"):
        tagger.replace(method="knn")  # this one has no kNN baseline


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(top_k=True), dict(min_score=1.5), dict(min_score=float("nan")),
                                 dict(seed=-1), dict(exclude=("x",) * 101), dict(exclude=(3,)), dict(method="")])
def test_tag_options_are_checked_when_made(bad):
    from pipelines.errors import OptionError

    with pytest.raises(OptionError):
        TagOptions(**bad)


def test_a_photo_without_usable_features_gets_the_reason_and_the_others_their_tags():
    tagger = build_tiny_tagger()
    features = np.random.default_rng(0).normal(size=(3, tagger.feature_dim)).astype(np.float32)
    features[1, 0] = np.nan
    results = tagger.tag(Evidence(features, None), TagOptions(top_k=3))
    assert (results[1].tags, results[1].error, results[1].note) == (None, "no features (non-finite output)", "")
    assert results[0].tags and results[2].tags and not results[0].error
    alone = tagger.tag(Evidence(features[[0, 2]], None), TagOptions(top_k=3))
    assert [r.tags for r in alone] == [results[0].tags, results[2].tags]  # the bad row changes nothing for the others


def kinds_for(tagger, kinds: dict[str, str], keywords: dict[str, str] | None = None):
    from embeddings.kinds import WordKinds

    return WordKinds({w: kinds.get(w, "content") for w in tagger.words}, {w: (keywords or {}).get(w, w) for w in tagger.words})


def test_the_default_shows_content_and_style_words_only_and_kinds_all_shows_every_word(tmp_path):
    tagger = build_tiny_tagger()
    feats = np.random.default_rng(0).normal(size=(6, tagger.feature_dim)).astype(np.float32)
    everything = len(tagger.words)
    plain = tagger.tag(Evidence(feats, None), TagOptions(method="prior", top_k=everything))
    hidden = set(tagger.words[::3])  # every third word a place
    kinded = tagger.replace(kinds=kinds_for(tagger, {w: "place" for w in hidden}))
    shown = kinded.tag(Evidence(feats, None), TagOptions(method="prior", top_k=everything))
    assert all(not {t for t, _ in r.tags} & hidden for r in shown)
    assert [[t for t in r.tags if t[0] not in hidden] for r in plain] == [r.tags for r in shown]  # the rest as before
    assert kinded.tag(Evidence(feats, None), TagOptions(method="prior", top_k=everything, kinds=("all",))) == plain
    only = kinded.tag(Evidence(feats, None), TagOptions(method="prior", top_k=everything, kinds=("place",)))
    assert {t for r in only for t, _ in r.tags} == hidden
    assert "kinds=content,style" in kinded.settings() and "kinds=all" in tagger.settings()
    back = load(save(kinded, tmp_path / "m"))  # kinds.json: saved with the bundle, loaded back
    assert back.kinds == kinded.kinds and back.tag(Evidence(feats, None), TagOptions(method="prior", top_k=5)) == \
        kinded.tag(Evidence(feats, None), TagOptions(method="prior", top_k=5))


def test_words_of_one_keyword_are_one_tag_with_the_best_score_of_them():
    tagger = build_tiny_tagger()
    a, b, c = tagger.words[:3]
    kinded = tagger.replace(kinds=kinds_for(tagger, {}, {a: "one", b: "one", c: "one"}))
    feats = np.random.default_rng(1).normal(size=(8, tagger.feature_dim)).astype(np.float32)
    every = len(tagger.words)
    raw = tagger.tag(Evidence(feats, None), TagOptions(top_k=every))
    merged = kinded.tag(Evidence(feats, None), TagOptions(top_k=every))
    for before, after in zip(raw, merged):
        names = [t for t, _ in after.tags]
        assert names.count("one") <= 1 and not {a, b, c} & set(names)
        if "one" in names:
            best = max((s for t, s in before.tags if t in (a, b, c)), default=None)
            assert dict(after.tags)["one"] == pytest.approx(best)
    assert all("one" not in [t for t, _ in r.tags] for r in kinded.tag(Evidence(feats, None), TagOptions(top_k=every, exclude=("one",))))


def test_word_kinds_that_miss_a_word_of_the_vocabulary_are_refused():
    from embeddings.kinds import WordKinds

    tagger = build_tiny_tagger()
    partial = WordKinds({w: "content" for w in tagger.words[1:]}, {w: w for w in tagger.words[1:]})
    with pytest.raises(ValueError, match="word kinds lack 1"):
        tagger.replace(kinds=partial)
