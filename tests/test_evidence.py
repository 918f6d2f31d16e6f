"""Evidence beyond the features, end to end: blank frames get no tags and a note, GPS places come first.

Measured where a photo is decoded (predict, the local engine's workers, the service), kept in the
feature cache, and shown in every output: predict's lines and JSON, `tag`'s rows, the service's results.
"""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import build_tiny_tagger, make_photo_files
from pipelines.images import Blank
from pipelines.measures import Measures
from tagger.cli import app
from tagger.library.local import tag_paths
from tagger.model import NON_FINITE, PLACE_SCORE
from tagger.scoring.evidence import Evidence
from tagger.scoring.options import TagOptions

runner = CliRunner()
EIFFEL = (48.8584, 2.2945)


def features(tagger, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, tagger.feature_dim)).astype(np.float32)


def kinded(tagger, place_words=()):
    """The tagger with word kinds: every word content, but `place_words` places."""
    from embeddings.kinds import WordKinds

    return tagger.replace(kinds=WordKinds({w: "place" if w in place_words else "content" for w in tagger.words},
                                          {w: w for w in tagger.words}))


def add_gps(path: Path, lat: float, lon: float) -> Path:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed")
    subprocess.run(["exiftool", "-q", "-overwrite_original", f"-GPSLatitude={lat}", "-GPSLatitudeRef=N", f"-GPSLongitude={lon}",
                    "-GPSLongitudeRef=E", str(path)], check=True)
    return path


def black_frame(path: Path) -> Path:
    """A lens-cap shot: black with sensor noise, at a camera's size."""
    rng = np.random.default_rng(0)
    Image.fromarray(np.clip(rng.normal(3, 2, (600, 800, 3)), 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def grey_frame(path: Path) -> Path:
    Image.new("RGB", (640, 480), (128, 128, 128)).save(path)
    return path


# -- the tagging function ------------------------------------------------------------------------------------


def test_a_blank_frame_gets_no_tags_and_the_reason_and_the_others_are_unchanged():
    tagger = build_tiny_tagger()
    feats = features(tagger, 4)
    blank = [Blank.NONE, Blank.NEAR_BLACK, Blank.UNMEASURED, Blank.FEATURELESS]
    plain = tagger.tag(Evidence(feats, None), TagOptions(top_k=3))
    results = tagger.tag(Evidence(feats, None, blank), TagOptions(top_k=3))
    assert (results[1].tags, results[1].error, results[1].note) == ([], "", "no tags: near-black frame")
    assert (results[3].tags, results[3].note) == ([], "no tags: featureless frame")
    assert [r.tags for r in (results[0], results[2])] == [plain[0].tags, plain[2].tags] and plain[0].tags
    assert not results[0].note and not results[2].note  # a scene, and a photo never measured (tagged as before)


def test_unusable_features_are_an_error_even_in_a_blank_frame():
    tagger = build_tiny_tagger()
    feats = features(tagger, 1)
    feats[0, 0] = np.nan
    (result,) = tagger.tag(Evidence(feats, None, [Blank.UNIFORM]))
    assert (result.tags, result.error, result.note) == (None, NON_FINITE, "")


def test_gps_places_come_first_with_the_top_k_content_tags_after_them():
    tagger = kinded(build_tiny_tagger())
    feats = features(tagger, 3)
    plain = tagger.tag(Evidence(feats, None), TagOptions(top_k=3))
    results = tagger.tag(Evidence(feats, None, [Blank.NONE] * 3, [("paris", "france"), None, ()]), TagOptions(top_k=3))
    assert results[0].tags == [("paris", PLACE_SCORE), ("france", PLACE_SCORE)] + plain[0].tags
    assert [s for _, s in results[0].tags] == sorted((s for _, s in results[0].tags), reverse=True)  # still best first
    assert results[1].tags == plain[1].tags and results[2].tags == plain[2].tags  # no GPS: no place from it


@pytest.mark.parametrize("kinds, shown", [(None, True), (("all",), True), (("place",), True), (("content", "place"), True),
                                          (("content",), False), (("style", "gear"), False)])
def test_gps_places_are_shown_by_default_with_all_and_with_place_only(kinds, shown):
    tagger = kinded(build_tiny_tagger())
    (result,) = tagger.tag(Evidence(features(tagger, 1), None, [Blank.NONE], [("paris", "france")]), TagOptions(kinds=kinds))
    assert (("paris", PLACE_SCORE) in result.tags) is shown
    assert ("evidence=chroma,blank,gps" in tagger.settings(TagOptions(kinds=kinds))) is shown  # rows re-tagged when it changes


def test_a_place_word_of_the_model_and_the_same_gps_place_are_one_tag():
    tagger = kinded(build_tiny_tagger(), place_words=("beach",))
    feats = features(tagger, 1)
    everything = TagOptions(method="prior", top_k=len(tagger.words), kinds=("all",))
    assert "beach" in [t for t, _ in tagger.tag(Evidence(feats, None), everything)[0].tags]
    (result,) = tagger.tag(Evidence(feats, None, [Blank.NONE], [("beach",)]), everything)
    names = [t for t, _ in result.tags]
    assert names.count("beach") == 1 and result.tags[0] == ("beach", PLACE_SCORE)


def test_an_excluded_place_is_left_out_as_users_type_it():
    tagger = build_tiny_tagger()
    (result,) = tagger.tag(Evidence(features(tagger, 1), None, [Blank.NONE], [("paris", "france")]), TagOptions(exclude=("Paris",)))
    assert [t for t, _ in result.tags][:1] == ["france"] and "paris" not in [t for t, _ in result.tags]


def test_a_blank_frame_with_gps_still_gets_no_tags():
    tagger = build_tiny_tagger()
    (result,) = tagger.tag(Evidence(features(tagger, 1), None, [Blank.NEAR_WHITE], [("paris", "france")]))
    assert (result.tags, result.note) == ([], "no tags: near-white frame")


def test_evidence_keeps_each_photos_measures_through_take_and_join():
    m = [Measures(30.0, Blank.NONE, ("paris", "france")), Measures(0.0, Blank.UNIFORM, ()), Measures()]
    ev = Evidence.of(np.zeros((3, 2)), m)
    assert ev.places == (("paris", "france"), (), None) and ev.blank.tolist() == [0, 3, -1]
    part = ev.take(np.array([2, 0]))
    assert part.places == (None, ("paris", "france")) and part.blank.tolist() == [-1, 0] and part.chroma[1] == 30.0
    both = Evidence.join([part, ev.take([1])])
    assert both.places == (None, ("paris", "france"), ()) and both.blank_reasons == ["", "", "uniform frame"]
    with pytest.raises(ValueError, match="places must be one entry per photo"):
        Evidence(np.zeros((2, 2)), None, None, [("paris",)])


# -- decoding, the cache and the local engine ------------------------------------------------------------------


def test_read_measures_what_it_decodes(tmp_path):
    tagger = build_tiny_tagger()
    (scene,) = make_photo_files(tmp_path, 1, size=64)
    ev = tagger.read([add_gps(scene, *EIFFEL), black_frame(tmp_path / "cap.jpg"), Image.open(grey_frame(tmp_path / "grey.png"))])
    assert ev.places == (("paris", "france"), (), ())
    assert ev.blank.tolist() == [Blank.NONE, Blank.NEAR_BLACK, Blank.UNIFORM]


def test_the_feature_cache_answers_blank_frames_and_places_without_decoding(tmp_path, monkeypatch):
    from pipelines import features as features_module
    from pipelines.cache import FeatureCache

    tagger = build_tiny_tagger()
    photos = make_photo_files(tmp_path / "photos", 2, size=64)
    files = [add_gps(photos[0], *EIFFEL), photos[1], black_frame(tmp_path / "photos" / "cap.jpg")]
    cache = tmp_path / "cache"
    first = dict(tag_paths(tagger, files, TagOptions(seed=0), num_workers=0, cache_dir=cache))
    assert [t for t, _ in first[files[0]].tags][:2] == ["paris", "france"] and first[files[2]].note == "no tags: near-black frame"
    [shard] = FeatureCache(cache, tagger.backbone).shards()
    for suffix in (".blank.npy", ".places.npy"):
        assert shard.with_name(shard.name.replace(".hashes.npy", suffix)).is_file()
    monkeypatch.setattr(features_module, "decode_image", lambda *a, **k: pytest.fail("decoded a cached photo"))
    assert dict(tag_paths(tagger, files, TagOptions(seed=0), num_workers=0, cache_dir=cache)) == first


def old_cache(files, tagger, folder: Path):
    """A feature cache of `files` with features and chroma only, as the cache wrote shards before blank frames and places."""
    from pipelines.cache import FeatureCache
    from pipelines.features import FeatureConfig, extract_features

    config = FeatureConfig(backbone="tiny", device="cpu", num_workers=0, cache_dir=folder)
    fresh = extract_features(files, config, progress=False, backbone=tagger.backbone)
    cache = FeatureCache(folder, tagger.backbone)
    [shard] = cache.shards()
    name = shard.name.removesuffix(".hashes.npy")
    hashes, feats = np.load(shard), np.load(cache.dir / f"{name}.features.npy")
    cache.remove(name)
    cache.write("old", list(hashes), feats, [Measures(c) for c in fresh.chroma])
    assert not (cache.dir / "old.blank.npy").exists() and (cache.dir / "old.chroma.npy").exists()
    return config, cache, set(hashes.tolist())


def test_a_shard_from_before_the_measures_loads_and_its_photos_are_measured_again(tmp_path):
    from pipelines.features import extract_features

    tagger = build_tiny_tagger()
    files = [add_gps(make_photo_files(tmp_path / "photos", 1, size=64)[0], *EIFFEL), black_frame(tmp_path / "photos" / "cap.jpg")]
    config, cache, hashes = old_cache(files, tagger, tmp_path / "cache")
    known = cache.lookup_rows(hashes)
    assert all(not m.complete and m.blank is Blank.UNMEASURED and m.places is None for _, m in known.values())

    again = extract_features(files, config, progress=False, backbone=tagger.backbone)
    assert again.n_cached == 2 and again.n_extracted == 0
    assert again.places == [("paris", "france"), ()] and again.blank.tolist() == [Blank.NONE, Blank.NEAR_BLACK]
    # Measured again once, then kept: the next lookup finds them complete.
    assert all(m.complete for _, m in cache.lookup_rows(hashes).values())


def test_tag_decodes_again_the_photos_an_old_shard_cannot_say_everything_of(tmp_path):
    tagger = build_tiny_tagger()
    files = [add_gps(make_photo_files(tmp_path / "photos", 1, size=64)[0], *EIFFEL), black_frame(tmp_path / "photos" / "cap.jpg")]
    config, _, _ = old_cache(files, tagger, tmp_path / "cache")
    cached = dict(tag_paths(tagger, files, num_workers=0, cache_dir=config.cache_dir))
    assert cached == dict(tag_paths(tagger, files, num_workers=0))
    assert cached[files[0]].tags[0] == ("paris", PLACE_SCORE) and cached[files[1]].note == "no tags: near-black frame"


# -- the command line and the service on the shipped model -----------------------------------------------------


@pytest.fixture
def real_photo(subset_dir, tmp_path) -> Path:
    """A real subset photo (a beach), copied to the test's folder to be given GPS there."""
    target = tmp_path / "lib" / "beach.jpg"
    target.parent.mkdir()
    shutil.copy(subset_dir / "images" / "im4484.jpg", target)
    return target


@pytest.mark.data
def test_predict_names_the_place_of_a_photo_with_gps_and_not_of_the_same_photo_without(real_photo, tmp_path):
    plain = tmp_path / "plain.jpg"
    shutil.copy(real_photo, plain)
    add_gps(real_photo, *EIFFEL)
    result = runner.invoke(app, ["predict", str(real_photo), str(plain), "--json"])
    assert result.exit_code == 0, result.output
    with_gps, without = map(json.loads, result.stdout.splitlines())
    assert with_gps["tags"][:2] == ["paris", "france"] and with_gps["scores"][:2] == [1.0, 1.0]
    assert with_gps["tags"][2:] == without["tags"] and without["tags"]  # the same content tags after them
    assert "paris" not in without["tags"] and "france" not in without["tags"]
    result = runner.invoke(app, ["predict", str(real_photo), "--kinds", "content"])
    assert result.exit_code == 0 and "paris" not in result.stdout


@pytest.mark.data
def test_tag_writes_places_and_blank_frame_notes_and_a_blank_frame_is_no_failure(real_photo, tmp_path):
    lib = real_photo.parent
    shutil.copy(real_photo, lib / "plain.jpg")
    add_gps(real_photo, *EIFFEL)
    black_frame(lib / "cap.jpg")
    grey_frame(lib / "grey.png")
    out = tmp_path / "tags.csv"
    result = runner.invoke(app, ["tag", str(lib), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 tagged, 0 unchanged (kept), 0 failed; 2 blank frames given no tags" in result.stdout
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    row = {Path(p).name: r for p, r in rows.iterrows()}
    assert json.loads(row["beach.jpg"]["tags"])[:2] == ["paris", "france"]
    assert "paris" not in row["plain.jpg"]["tags"] and row["plain.jpg"]["note"] == ""
    assert (row["cap.jpg"]["tags"], row["cap.jpg"]["error"], row["cap.jpg"]["note"]) == ("", "", "no tags: near-black frame")
    assert row["grey.png"]["note"] == "no tags: uniform frame"
    assert not (tmp_path / "tags.csv.failed.tsv").exists()
    again = runner.invoke(app, ["tag", str(lib), "--out", str(out)])
    assert again.exit_code == 0 and "0 tagged, 4 unchanged (kept), 0 failed" in again.stdout  # not retried as failures


def test_the_service_shows_the_note_and_the_places(tmp_path):
    from fastapi.testclient import TestClient

    from tagger.service.app import create_app

    tagger = build_tiny_tagger()
    (scene,) = make_photo_files(tmp_path, 1, size=64)
    uploads = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in (add_gps(scene, *EIFFEL), black_frame(tmp_path / "cap.jpg"))]
    with TestClient(create_app(tagger)) as client:
        r = client.post("/v1/tag", files=uploads)
    assert r.status_code == 200, r.text
    placed, cap = r.json()["results"]
    assert placed["tags"][:2] == ["paris", "france"] and placed["note"] is None and placed["error"] is None
    assert cap == {"filename": "cap.jpg", "tags": [], "scores": [], "error": None, "note": "no tags: near-black frame"}
