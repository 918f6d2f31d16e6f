"""The backbone's retrained last blocks: the tail, its weights overlay, the word layer, and the bundle that carries them."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_TAGS, make_photo_files
from pipelines.backbones import BackboneWeightsError, create_backbone
from pipelines.backbones.tail import Tail, save_overlay, tail_features
from pipelines.features import trunk_activations
from tagger.bundle import BundleError, load, save
from tagger.scoring.classifier import WordClassifier
from tagger.scoring.options import TagOptions
from tagger.training.tune import TuneConfig

LITE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def lite():
    return create_backbone(LITE, device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_files(tmp_path_factory.mktemp("photos"), 6, size=96, seed=4)


def retrained(lite) -> Tail:
    """A tail whose weights differ from the backbone's, as training leaves them."""
    tail = Tail(lite.model, 2)
    with torch.no_grad():
        tail.conv_head.weight.mul_(1.5)
        tail.blocks[0]._project_conv.weight.add_(0.05)
    return tail


def test_the_copied_tail_gives_the_backbones_own_features(lite, photos):
    acts, feats, ok = trunk_activations(lite, photos, 2, num_workers=0)
    assert ok.all() and acts.shape == (6, 192, 7, 7) and acts.dtype == np.float16
    # float16 maps, float32 features: the same to well within what separates two photos
    assert np.abs(tail_features(Tail(lite.model, 2), acts) - feats).max() < 0.02 * np.abs(feats).max()


def test_an_overlay_builds_the_retrained_network_under_either_runtime(lite, photos, tmp_path):
    tail = retrained(lite)
    overlay = save_overlay(tail.overlay(), tmp_path / "tail.safetensors", LITE)
    acts, base, _ = trunk_activations(lite, photos, 2, num_workers=0)
    expected = tail_features(tail, acts)
    from pipelines.features import extract_images
    from PIL import Image

    images = [Image.open(p) for p in photos]
    net = create_backbone(LITE, weights=overlay, device="cpu", runtime="torch")
    got = extract_images(images, net)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    assert np.abs(got - base).max() > 0.1 * np.abs(base).max()  # the overlay took: not the backbone's own features
    assert net.weights_id != lite.weights_id  # so the feature cache and the ONNX export keep them apart
    onnx = create_backbone(LITE, weights=overlay, device="cpu", runtime="onnx", cache_dir=tmp_path / "cache")
    assert np.abs(extract_images(images, onnx) - got).max() < 1e-4 * np.abs(got).max()


def test_an_overlay_of_another_network_or_with_foreign_tensors_is_refused(lite, tmp_path):
    tensors = Tail(lite.model, 1).overlay()
    other = save_overlay(tensors, tmp_path / "other.safetensors", "efficientnet_lite1")
    with pytest.raises(BackboneWeightsError, match="an overlay for backbone 'efficientnet_lite1'"):
        create_backbone(LITE, weights=other, device="cpu", runtime="torch")
    foreign = save_overlay({**tensors, "_blocks.99.weight": torch.zeros(3)}, tmp_path / "foreign.safetensors", LITE)
    with pytest.raises(BackboneWeightsError, match=r"foreign.safetensors: 1 tensors are not efficientnet_lite0's \(e.g. _blocks.99.weight\)"):
        create_backbone(LITE, weights=foreign, device="cpu", runtime="torch")
    wrong = save_overlay({k: (v[:1] if k == "_conv_head.weight" else v) for k, v in tensors.items()}, tmp_path / "wrong.safetensors", LITE)
    with pytest.raises(BackboneWeightsError, match="_conv_head.weight"):
        create_backbone(LITE, weights=wrong, device="cpu", runtime="torch")


def lite_tagger(overlay, classifier: bool = True):
    """A complete tagger on EfficientNet-Lite0 with a retrained tail and a word layer, its other parts random."""
    from embeddings.tags import TagConfig, Vocabulary
    from embeddings.word2vec import WordVectors
    from tagger.generators import create_generator, get_family
    from tagger.model import Tagger
    from tagger.scoring.knn import KNNTagger
    from tagger.scoring.voting import SamplingConfig

    vocab = Vocabulary.build(TINY_TAGS, TagConfig(min_count=1))
    rng = np.random.default_rng(0)
    wv = WordVectors(vocab.words, rng.normal(size=(len(vocab), 8)).astype(np.float32))
    knn = KNNTagger.fit(rng.normal(size=(40, 1280)).astype(np.float32), [[i % len(vocab)] for i in range(40)], len(vocab))
    torch.manual_seed(0)
    G = create_generator("cgan", get_family("cgan").config(feature_dim=1280, word_dim=8, noise_dim=4, g_noise_hidden=8, g_image_hidden=16,
                                                           d_word_hidden=8, d_image_hidden=16, d_maxout_units=8))
    words = WordClassifier(rng.normal(size=(len(vocab), 1280)).astype(np.float32) * 0.01, np.zeros(len(vocab), np.float32)) if classifier else None
    return Tagger(G, vocab, wv, LITE, sampling=SamplingConfig(samples=8, neighbours=3, top_k=3), knn=knn, backbone_weights=str(overlay),
                  classifier=words)


def test_a_bundle_carries_its_retrained_tail_and_word_layer_wherever_it_goes(lite, photos, tmp_path):
    overlay = save_overlay(retrained(lite).overlay(), tmp_path / "tail.safetensors", LITE)
    tagger = lite_tagger(overlay)
    assert tagger.methods == ("cgan", "knn", "cgan+knn", "classifier", "cgan+knn+classifier", "prior")
    save(tagger, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["backbone"]["weights"] == "backbone.safetensors"
    overlay.unlink()  # the bundle has its own copy
    shutil.move(tmp_path / "m", tmp_path / "moved")  # and names it relative to itself
    loaded = load(tmp_path / "moved", runtime="torch")
    assert loaded.backbone_weights == str(tmp_path / "moved" / "backbone.safetensors")
    assert np.array_equal(loaded.classifier.weight, tagger.classifier.weight) and loaded.methods == tagger.methods
    options = TagOptions(method="cgan+knn+classifier", seed=1)
    tags = loaded.predict(photos, options)
    assert all(len(t) == 3 for t in tags)
    assert load(save(loaded, tmp_path / "again"), runtime="torch").predict(photos, options) == tags
    # --half stores the word layer in float16: half the size, read back as the rounded float32 weights.
    save(tagger, tmp_path / "half", half=True)
    assert (tmp_path / "half" / "classifier.safetensors").stat().st_size < 0.6 * (tmp_path / "again" / "classifier.safetensors").stat().st_size
    rounded = load(tmp_path / "half", runtime="torch").classifier.weight
    assert rounded.dtype == np.float32 and np.array_equal(rounded, tagger.classifier.weight.astype(np.float16).astype(np.float32))


def test_a_bundle_missing_its_tail_or_with_a_classifier_of_another_shape_is_refused(lite, tmp_path):
    overlay = save_overlay(Tail(lite.model, 1).overlay(), tmp_path / "tail.safetensors", LITE)
    save(lite_tagger(overlay), tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "m2")
    (tmp_path / "m" / "backbone.safetensors").unlink()
    with pytest.raises(BundleError, match=r"backbone.safetensors: missing from the bundle"):
        load(tmp_path / "m")
    WordClassifier(np.zeros((3, 1280), np.float32), np.zeros(3, np.float32)).save(tmp_path / "m2" / "classifier.safetensors")
    with pytest.raises(BundleError, match=r"classifier.safetensors: the classifier maps 1280-d features to 3 words"):
        load(tmp_path / "m2")


def test_tune_config_refuses_what_cannot_train():
    for bad in (dict(blocks=0), dict(epochs=0), dict(lr=0.0), dict(dropout=1.0), dict(held_share=0.0), dict(held_share=1.0)):
        with pytest.raises(ValueError):
            TuneConfig(**bad)
    with pytest.raises(ValueError, match="only EfficientNet-Lite"):
        Tail(torch.nn.Linear(2, 2), 1)


@pytest.mark.slow
@pytest.mark.data
def test_train_with_tune_blocks_ships_the_retrained_network(subset_dir, tmp_path):
    """`tagger train --tune-blocks 2` on 300 real photos: the bundle tags with the retrained network and its word layer."""
    from tagger.cli import app

    with open(subset_dir / "annotations.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(300), f)]
    with open(tmp_path / "photos.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "tags"])
        writer.writerows([str(subset_dir / r["file"]), " ".join(r["tags"])] for r in rows)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "photos.csv"), "--out", str(tmp_path / "m"), "--preset", "adam", "--epochs", "1",
                                      "--min-count", "5", "--split", "0.7,0.3,0", "--tune-blocks", "2", "--tune-epochs", "2",
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "retrained the backbone's last 2 blocks: epoch" in result.output
    tagger = load(tmp_path / "m")
    s = tagger.summary
    assert s.tune["blocks"] == 2 and s.tune["best_epoch"] in (1, 2) and len(s.tune["held_p5"]) == 2
    assert {"classifier", "cgan+knn+classifier"} <= set(tagger.methods) and tagger.head is None  # the ImageNet head does not fit new features
    assert tagger.default_method == max(s.method_val_p5, key=s.method_val_p5.get)
    photo = subset_dir / rows[0]["file"]
    own = tagger.read([photo]).features
    from pipelines.features import extract_images
    from PIL import Image

    assert np.abs(own - extract_images([Image.open(photo)], create_backbone(LITE, device="cpu"))).max() > 0.01
    assert tagger.predict([photo], TagOptions(top_k=5))[0]
    # Training again reuses the cached activations and the retrained tail: the same bundle, quickly.
    again = CliRunner().invoke(app, ["train", str(tmp_path / "photos.csv"), "--out", str(tmp_path / "m2"), "--preset", "adam", "--epochs", "1",
                                     "--min-count", "5", "--split", "0.7,0.3,0", "--tune-blocks", "2", "--tune-epochs", "2",
                                     "--cache-dir", str(tmp_path / "cache")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "m2" / "backbone.safetensors").read_bytes() == (tmp_path / "m" / "backbone.safetensors").read_bytes()
