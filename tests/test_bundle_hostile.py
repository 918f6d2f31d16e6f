"""Bundles from a stranger: every array checked against its header and the others, every setting by its declared
type, before anything the size of the data is allocated; each failure one line naming the file and the field."""
import json
import math
import tracemalloc

import numpy as np
import pytest

from conftest import build_tiny_tagger, make_photo_files
from embeddings.tags import MAX_WORD_LENGTH, MAX_WORDS, TagConfig, Vocabulary
from embeddings.word2vec import Word2VecConfig
from pipelines.errors import OptionError
from tagger.scoring.knn import KNNConfig
from tagger.bundle import BundleError
from tagger.scoring.condition import ConditionConfig
from tagger.generators import TrainConfig
from tagger.generators.caae import CAAEConfig
from tagger.generators.cgan import CGANConfig
from tagger.generators.cvae import CVAEConfig
from tagger.bundle import load, save
from tagger.scoring.words import WordSpaceConfig
from tagger.scoring.voting import SamplingConfig


@pytest.fixture
def bundle(tmp_path):
    """A tiny bundle with every part: 19 words, a kNN of 20 photos and a generator conditioned on 3 neighbours' votes."""
    return save(build_tiny_tagger(knn_photos=20, neighbour_votes=3), tmp_path / "m")


def refused(path, name: str, *says: str) -> str:
    """Loading the bundle is a one-line BundleError naming the file and saying each of `says`."""
    with pytest.raises(BundleError) as info:
        load(path)
    text = str(info.value)
    assert text.startswith(f"{path / name}:") and all(s in text for s in says), text
    assert "\n" not in text and len(text) < 400, text
    return text


def edit_json(file, change):
    file.write_text(json.dumps(change(json.loads(file.read_text()))))


def edit_npz(file, change, save=np.savez):
    with np.load(file) as data:
        arrays = change(dict(data))
    with open(file, "wb") as f:
        save(f, **arrays)


def peak_bytes(run) -> int:
    """The most memory Python and numpy held at once while `run` ran (numpy reports its arrays to tracemalloc)."""
    tracemalloc.start()
    try:
        run()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# -- the words ------------------------------------------------------------------------------------------------------

def test_a_long_word_in_the_vectors_is_refused_from_the_header_before_its_array_is_read(bundle):
    # 19 fixed-width words of a million characters: 76 MB of array, from a word of 1 MB.
    edit_npz(bundle / "word_vectors.npz", lambda a: {**a, "words": np.array(["x" * 1_000_000, *a["words"][1:]])})

    def load_it():
        with pytest.raises(BundleError) as info:
            load(bundle)
        load_it.text = str(info.value)

    assert peak_bytes(load_it) < 20 << 20
    assert load_it.text.startswith(f"{bundle}/word_vectors.npz:") and "words" in load_it.text, load_it.text
    assert f"1000000 characters, over the limit of {MAX_WORD_LENGTH}" in load_it.text, load_it.text


def test_a_long_word_in_the_vocabulary_is_refused(bundle):
    edit_json(bundle / "vocabulary.json", lambda v: {**v, "words": [v["words"][0] + "x" * 200, *v["words"][1:]]})
    refused(bundle, "vocabulary.json", "words[0]", f"over the limit of {MAX_WORD_LENGTH}")


def test_too_many_words_are_refused_from_the_header_and_the_list(bundle):
    edit_npz(bundle / "word_vectors.npz", lambda a: {**a, "words": np.full(MAX_WORDS + 1, "a")})
    refused(bundle, "word_vectors.npz", "words", f"{MAX_WORDS + 1} words, over the limit of {MAX_WORDS}")
    edit_json(bundle / "vocabulary.json", lambda v: {**v, "words": ["a"] * (MAX_WORDS + 1)})
    refused(bundle, "vocabulary.json", "words", f"{MAX_WORDS + 1} words, over the limit of {MAX_WORDS}")


def test_a_vocabulary_built_from_a_corpus_with_a_huge_tag_leaves_it_out():
    tags = [["beach", "x" * 100_000], ["beach", "x" * 100_000], ["sea", "y" * MAX_WORD_LENGTH]]
    vocab = Vocabulary.build(tags, TagConfig(min_count=1))
    assert vocab.words == ["beach", "sea", "y" * MAX_WORD_LENGTH]


@pytest.mark.parametrize("change, says", [
    (lambda v: {**v, "counts": [str(c) for c in v["counts"]]}, ["counts[0] must be a valid integer, got '"]),
    (lambda v: {**v, "counts": v["counts"][:-1]}, ["18 counts for 19 words"]),
    (lambda v: {**v, "counts": [-1] + v["counts"][1:]}, ["counts", "negative"]),
    (lambda v: {**v, "words": [v["words"][1], *v["words"][1:]]}, ["words", "twice"]),
    (lambda v: {**v, "words": [""] + v["words"][1:]}, ["words[0]", "empty"]),
    (lambda v: {**v, "words": "sea"}, ["words must be a valid list, got 'sea'"]),
    (lambda v: {**v, "canonical": {"sea": 3}}, ["canonical['sea'] must be a valid string, got 3"]),
    (lambda v: {**v, "stoplist": [None]}, ["stoplist[0] must be a valid string, got None"]),
    (lambda v: {**v, "config": {**v["config"], "merge_plurals": "no"}}, ["merge_plurals must be a valid boolean, got 'no'"]),
    (lambda v: {**v, "config": {**v["config"], "min_count": 10.0}}, ["min_count must be a valid integer, got 10.0"]),
    (lambda v: [v], ["not a tagger.vocabulary v1 file"]),
])
def test_a_tampered_vocabulary_is_one_line(bundle, change, says):
    edit_json(bundle / "vocabulary.json", change)
    refused(bundle, "vocabulary.json", *says)


# -- the arrays -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, says", [
    (lambda a: {**a, "vectors": np.where(np.arange(8) == 3, np.nan, a["vectors"]).astype(np.float32)}, ["vectors", "NaN or infinite"]),
    (lambda a: {**a, "vectors": a["vectors"].astype(np.int64)}, ["array vectors is 2-d int64, expected 2-d floats"]),
    (lambda a: {**a, "vectors": a["vectors"].ravel()}, ["array vectors is 1-d float32, expected 2-d floats"]),
    (lambda a: {**a, "words": a["words"].astype(bytes)}, ["array words is 1-d |S", "expected 1-d text"]),
    (lambda a: {k: v for k, v in a.items() if k != "meta"}, ["array meta is missing"]),
    (lambda a: {**a, "meta": np.array(json.dumps({"format": "tagger.word_vectors", "version": 1, "config": {"dim": "8"}}))},
     ["dim must be a valid integer, got '8'"]),
    (lambda a: {**a, "meta": np.array(json.dumps({"format": "tagger.word_vectors", "version": 1, "config": {"dim": 16}}))},
     ["8-d vectors", "says 16"]),
    (lambda a: {**a, "meta": np.array("[1]")}, ["meta", "not a tagger.word_vectors v1"]),
])
def test_tampered_word_vectors_are_one_line(bundle, change, says):
    edit_npz(bundle / "word_vectors.npz", change)
    refused(bundle, "word_vectors.npz", *says)


def _knn(change):
    return lambda a: {**a, **change(a)}


@pytest.mark.parametrize("change, says", [
    (_knn(lambda a: {"indices": a["indices"] + 19}), ["indices", "outside 0..18"]),
    (_knn(lambda a: {"indices": a["indices"] - 19}), ["indices", "outside 0..18"]),
    (_knn(lambda a: {"indices": a["indices"].astype(np.float64)}), ["array indices is 1-d float64, expected 1-d integers"]),
    (_knn(lambda a: {"indptr": a["indptr"][::-1].copy()}), ["indptr", "start at 0"]),
    (_knn(lambda a: {"indptr": a["indptr"] + 1}), ["indptr", "start at 0"]),
    (_knn(lambda a: {"indptr": np.r_[0, a["indptr"][1:][::-1]]}), ["indptr", "decreases"]),
    (_knn(lambda a: {"indptr": np.r_[a["indptr"][:-1], a["indptr"][-1] - 1]}), ["indptr", "ends at 39", "40 indices"]),
    (_knn(lambda a: {"indptr": a["indptr"][:-1]}), ["indptr", "20 entries for 20 photos", "expected 21"]),
    (_knn(lambda a: {"features": a["features"][:, :-1]}), ["features", "(20, 19)", "components"]),
    (_knn(lambda a: {"features": np.where(np.arange(20) == 5, np.nan, a["features"]).astype(np.float16)}),
     ["features", "NaN or infinite"]),
    (_knn(lambda a: {"mean": a["mean"][:-1]}), ["mean", "(31,)", "components"]),
    (_knn(lambda a: {"components": np.full_like(a["components"], np.inf)}), ["components", "NaN or infinite"]),
    (_knn(lambda a: {"config": np.array([10**12, 10**12, 1])}), ["config", "k", "10000"]),
    (_knn(lambda a: {"config": np.array([0, 256, 1])}), ["config", "k", "got 0"]),
    (_knn(lambda a: {"config": np.array([50, 10**12, 1])}), ["config", "dim"]),
    (_knn(lambda a: {"config": np.array([50, 256, 2])}), ["config", "subtract_prior", "got 2"]),
    (_knn(lambda a: {"config": np.array([50, 256])}), ["config", "(2,)", "expected 3 values"]),
    (_knn(lambda a: {"config": np.array(["50", "256", "1"])}), ["array config is 1-d <U3, expected 1-d integers"]),
    (_knn(lambda a: {"vocab_size": np.array(10**15)}), ["vocab_size", f"1000000000000000 words, expected 1 or more, within the limit of {MAX_WORDS}"]),
    (_knn(lambda a: {"vocab_size": np.array(19.0)}), ["array vocab_size is 0-d float64, expected 0-d integers"]),
    (lambda a: {k: v for k, v in a.items() if k != "indices"}, ["array indices is missing"]),
])
def test_a_tampered_knn_is_one_line_naming_the_array(bundle, change, says):
    edit_npz(bundle / "knn.npz", change)
    refused(bundle, "knn.npz", *says)


@pytest.mark.parametrize("name", ["features", "mean", "components"])
def test_knn_floats_beyond_float32_are_refused(bundle, name):
    """Stored as float64 they are finite, but the baseline works in float32: 1e300 would become inf, its votes
    NaN, and the knn method would tag nothing while the generator took other votes, silently."""
    edit_npz(bundle / "knn.npz", _knn(lambda a: {name: np.full(a[name].shape, 1e300)}))
    refused(bundle, "knn.npz", f"array {name} holds NaN or infinite values")


def test_a_knn_of_another_backbone_is_refused_at_load(bundle):
    rng = np.random.default_rng(0)
    edit_npz(bundle / "knn.npz", _knn(lambda a: {"mean": np.zeros(64, np.float32), "components": rng.normal(size=(64, 20)).astype(np.float16)}))
    refused(bundle, "knn.npz", "64-d features", "backbone tiny gives 32")


def test_a_compressed_array_is_refused_the_uncompressed_ones_load(bundle):
    """A compressed array could unpack to any size: tagger writes its arrays uncompressed, so none takes more
    memory than it takes disk."""
    edit_npz(bundle / "knn.npz", lambda a: a, save=np.savez)
    load(bundle)
    edit_npz(bundle / "knn.npz", lambda a: a, save=np.savez_compressed)
    refused(bundle, "knn.npz", "array mean is compressed")


def test_a_header_larger_than_its_data_is_refused_before_anything_is_allocated(bundle):
    """A header claiming 10^9 photos over the 20 photos of data: refused from the header, not a 512 GB allocation."""
    import zipfile

    file = bundle / "knn.npz"
    with zipfile.ZipFile(file) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    old = members["features.npy"]
    line = old[: old.index(b"\n") + 1]
    header = line.replace(b"(20, 20)", b"(1000000000, 20)").rstrip(b" \n").ljust(len(line) - 1) + b"\n"  # as long as before
    members["features.npy"] = header + old[len(header):]
    with zipfile.ZipFile(file, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)

    def load_it():
        with pytest.raises(BundleError) as info:
            load(bundle)
        load_it.text = str(info.value)

    assert peak_bytes(load_it) < 20 << 20
    assert load_it.text.startswith(f"{file}:") and "features" in load_it.text and "(1000000000, 20)" in load_it.text, load_it.text


# -- the settings ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, says", [
    (lambda: CGANConfig(unit_output="no"), "unit_output must be a valid boolean, got 'no'"),
    (lambda: CGANConfig(unit_output=1), "unit_output must be a valid boolean, got 1"),
    (lambda: CGANConfig(noise=["uniform"]), "noise must be 'uniform' or 'normal', got ['uniform']"),
    (lambda: CVAEConfig(kl_weight="1"), "kl_weight must be a finite number, 0 or more, got '1'"),
    (lambda: CAAEConfig(heads=True), "heads must be a whole number from 1 to 65536, got True"),
    (lambda: SamplingConfig(exclude=("sea", 3)), "exclude[1] must be a valid string, got 3"),
    (lambda: SamplingConfig(exclude="sea"), "exclude must be a valid tuple, got 'sea'"),
    (lambda: SamplingConfig(scoring=None), "scoring must be one of"),
    (lambda: ConditionConfig(neighbour_votes=2.5), "neighbour_votes must be a valid integer, got 2.5"),
    (lambda: ConditionConfig(neighbour_votes=True), "neighbour_votes must be a valid integer, got True"),
    (lambda: WordSpaceConfig(center="no"), "center must be a valid boolean, got 'no'"),
    (lambda: KNNConfig(k=True), "k must be a valid integer, got True"),
    (lambda: TrainConfig(adam_betas=(0.5, "x")), "adam_betas[1] must be a valid number, got 'x'"),
    (lambda: TrainConfig(epochs=1.5), "epochs must be a valid integer, got 1.5"),
])
def test_every_config_field_is_checked_by_its_declared_type(make, says):
    with pytest.raises(OptionError) as info:
        make()
    assert says in str(info.value), str(info.value)


@pytest.mark.parametrize("make, says", [
    (lambda: TagConfig(merge_plurals="no"), "merge_plurals must be a valid boolean, got 'no'"),
    (lambda: TagConfig(stoplist=3), "stoplist must be a valid string or None, got 3"),
    (lambda: Word2VecConfig(workers=2.0), "workers must be a valid integer, got 2.0"),
])
def test_the_embeddings_configs_are_checked_too(make, says):
    with pytest.raises(ValueError) as info:
        make()
    assert says in str(info.value), str(info.value)


def test_right_values_still_pass_and_a_long_value_is_cut_in_the_message():
    assert CGANConfig(dropout=0, unit_output=True).dropout == 0 and SamplingConfig(temperature=1).temperature == 1  # ints are floats
    assert TagConfig(stoplist=None).stoplist is None and SamplingConfig(exclude=("sea",)).exclude == ("sea",)
    with pytest.raises(OptionError) as info:
        WordSpaceConfig(center="x" * 10_000)
    assert len(str(info.value)) < 200


def _config(change):
    return lambda c: {**c, **change(c)}


@pytest.mark.parametrize("change, says", [
    (_config(lambda c: {"generator": {**c["generator"], "config": {**c["generator"]["config"], "unit_output": "no"}}}),
     "unit_output must be a valid boolean, got 'no'"),
    (_config(lambda c: {"generator": {**c["generator"], "config": [1]}}), "generator.config must be a valid dictionary"),
    (_config(lambda c: {"words": {**c["words"], "center": "no"}}), "center must be a valid boolean, got 'no'"),
    (_config(lambda c: {"condition": {"neighbour_votes": 2.5}}), "neighbour_votes must be a valid integer, got 2.5"),
    # More neighbours than any photo may have: loaded, each vote share divided by 10**12, other tags.
    (_config(lambda c: {"condition": {"neighbour_votes": 10**12}}), "neighbour_votes must be at most 10000, got 1000000000000"),
    (_config(lambda c: {"sampling": {**c["sampling"], "exclude": "sea"}}), "sampling.exclude must be a valid list, got 'sea'"),
    (_config(lambda c: {"sampling": {**c["sampling"], "exclude": ["sea", 1]}}), "sampling.exclude[1] must be a valid string, got 1"),
    (_config(lambda c: {"backbone": {**c["backbone"], "name": ["tiny"]}}), "backbone.name must be a valid string, got ['tiny']"),
    (_config(lambda c: {"vocabulary_size": True}), "vocabulary_size must be a valid integer, got True"),
    (_config(lambda c: {"method": 3}), "method must be a valid string or None, got 3"),
    (_config(lambda c: {"format_version": True}), "bundle format True"),
    (_config(lambda c: {"info": [1, 2]}), "info must be a valid dictionary, got [1, 2]"),
    (_config(lambda c: {"info": {**c["info"], "train_photos": "100"}}), "info.train_photos must be a valid integer, got '100'"),
    (_config(lambda c: {"info": {**c["info"], "train_photos": -5}}), "info.train_photos must be 0 or more, got -5"),
    (_config(lambda c: {"info": {**c["info"], "split": {"train": "9"}}}), "info.split['train'] must be a valid integer, got '9'"),
    (_config(lambda c: {"info": {**c["info"], "warnings": "x"}}), "info.warnings must be a valid list, got 'x'"),
])
def test_a_tampered_config_is_one_line_naming_the_setting(bundle, change, says):
    edit_json(bundle / "config.json", change)
    refused(bundle, "config.json", says)


def test_a_deeply_nested_or_huge_config_is_one_line(bundle):
    cfg = (bundle / "config.json").read_text()
    (bundle / "config.json").write_text(cfg[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(bundle, "config.json", "not valid JSON", "nested too deeply")
    (bundle / "config.json").write_text(cfg[:-1] + ', "x": "' + "x" * (2 << 20) + '"}')
    refused(bundle, "config.json", "over the limit")


@pytest.fixture
def odd_info(tmp_path):
    """A bundle whose info holds fields this tagger does not know, of every JSON type, and NaN where it may."""
    tagger = build_tiny_tagger()
    tagger = tagger.replace(info={"train_photos": 8, "val_p5": math.nan, "from_the_future": {"a": [1, None, "x", 2.5, True]}, "n": -(10**30)})
    return save(tagger, tmp_path / "m")


def test_unknown_info_fields_of_any_type_load_and_read(odd_info):
    tagger = load(odd_info)
    assert tagger.summary.train_photos == 8 and math.isnan(tagger.summary.val_p5)
    assert tagger.info["from_the_future"] == {"a": [1, None, "x", 2.5, True]}


@pytest.mark.slow
def test_predict_json_and_the_service_read_odd_info(odd_info, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from tagger.cli import app
    from tagger.service.app import create_app

    [photo] = make_photo_files(tmp_path / "photos", 1)
    result = CliRunner().invoke(app, ["predict", str(photo), "--model", str(odd_info), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output.splitlines()[-1])["tags"]) == 3
    with TestClient(create_app(load(odd_info))) as client:
        r = client.get("/v1/model")
    assert r.status_code == 200 and r.json()["info"]["from_the_future"] == {"a": [1, None, "x", 2.5, True]}


@pytest.mark.parametrize("change, says", [
    (lambda c: [c], "must be a valid dictionary"),
    (lambda c: {"cgan": {"knots": ["0", "1"], "probs": [0.1, 0.2]}}, "cgan: knots[0] must be a valid number, got '0'"),
    (lambda c: {"cgan": {"knots": [0, 1], "probs": [True, True]}}, "cgan: probs[0] must be a valid number, got True"),
    (lambda c: {"cgan": {"knots": [0, 1], "probs": [0.1, 0.2], "top": "5"}}, "cgan: top must be a valid integer, got '5'"),
    (lambda c: {"cgan": {"knots": [1, 0], "probs": [0.1, 0.2]}}, "knots must be finite and non-decreasing"),
    (lambda c: {"cgan": {"knots": [0, 1], "probs": [0.1, 1.5]}}, "within 0..1"),
])
def test_a_tampered_calibration_is_one_line(tmp_path, change, says):
    from tagger.scoring.calibration import Calibration

    tagger = build_tiny_tagger()
    tagger = tagger.replace(calibration={"cgan": Calibration(np.array([0.0, 1.0]), np.array([0.1, 0.5]))})
    path = save(tagger, tmp_path / "m")
    edit_json(path / "calibration.json", change)
    refused(path, "calibration.json", says)
