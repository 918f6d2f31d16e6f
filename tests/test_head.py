"""The ImageNet head as words: the class list, the class -> word links through WordNet, the scorer on a
real photo, and the bundle that keeps the links."""
import json

import numpy as np
import pytest

from conftest import REPO
from embeddings.imagenet import ClassWords, class_synsets, hypernym_distances, wnids
from pipelines.backbones import imagenet_categories

SHIPPED = REPO / "tagger" / "assets" / "model"
WORDS = ["cat", "animal", "airplane", "plane", "dog", "sky", "wind", "nikon", "me", "golden", "flower"]


@pytest.fixture(scope="module")
def links(wn):
    return ClassWords.build(WORDS, wn)


def test_the_class_list_is_imagenets_in_logit_order(wn):
    ids = wnids()
    assert len(ids) == len(set(ids)) == 1000 and ids == sorted(ids)
    synsets = class_synsets(wn)
    names = imagenet_categories()  # torchvision's class names, in the heads' logit order
    # Each class's synset is named like torchvision's class of the same index (a few names differ in form only).
    agree = sum(n.lower().replace(" ", "_").replace("-", "_") in {l.name().lower().replace("-", "_") for l in s.lemmas()}
                for n, s in zip(names, synsets))
    assert agree >= 950, agree
    assert synsets[names.index("tabby")].name() == "tabby.n.01"


def test_a_class_reaches_the_words_of_its_hypernyms(links):
    tabby, airliner = imagenet_categories().index("tabby"), imagenet_categories().index("airliner")
    assert tabby in links.links["cat"] and tabby in links.links["animal"]
    assert links.links["cat"][tabby] < links.links["animal"][tabby]  # nearer up the tree
    assert airliner in links.links["airplane"] and airliner in links.links["plane"]
    assert tabby not in links.links["dog"] and airliner not in links.links["animal"]
    assert len(links.links["animal"]) > len(links.links["dog"]) > len(links.links["cat"])
    for word in ("sky", "nikon", "me"):  # no class is one of these
        assert word not in links.links


def test_only_senses_the_word_is_used_for_link(wn):
    # `wind` is the weather first; its rare sense of a wind instrument would link it to the trombone.
    trombone = imagenet_categories().index("trombone")
    assert "wind" not in ClassWords.build(["wind"], wn, min_share=0.1).links
    assert trombone in ClassWords.build(["wind"], wn, min_share=0.0).links["wind"]


def test_the_distances_are_the_shortest_way_up(wn):
    tabby = wn.synset("tabby.n.01")
    dist = hypernym_distances(tabby)
    assert dist[tabby] == 0 and dist[wn.synset("domestic_cat.n.01")] == 1 and dist[wn.synset("cat.n.01")] == 2
    assert dist[wn.synset("entity.n.01")] == max(dist.values())


def test_the_matrix_weights_by_distance_and_the_links_round_trip(links, tmp_path):
    words = ["dog", "cat", "sky"]
    m = links.matrix(words, decay=0.5)
    assert m.shape == (1000, 3) and not m[:, 2].any()
    for c, d in links.links["cat"].items():
        assert m[c, 1] == 0.5 ** d
    assert np.count_nonzero(m[:, 0]) == len(links.links["dog"])
    links.save(tmp_path / "head.json")
    assert ClassWords.load(tmp_path / "head.json") == links
    data = json.loads((tmp_path / "head.json").read_text())
    data["links"]["cat"].append([1000, 1])  # no such class
    (tmp_path / "head.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="class 1000"):
        ClassWords.load(tmp_path / "head.json")


@pytest.fixture(scope="module")
def shipped(wn):
    from tagger.bundle import load

    tagger = load(SHIPPED, device="cpu")
    return tagger.replace(head=ClassWords.build(tagger.words, wn))


@pytest.fixture(scope="module")
def chelsea_features():
    """Features of scikit-image's photo of a cat, under the default runtime and under torch."""
    from PIL import Image
    from skimage import data

    from pipelines.backbones import create_backbone
    from pipelines.features import extract_images

    photo = Image.fromarray(data.chelsea())
    out = {}
    for runtime in ("torch", "onnx"):
        b = create_backbone("efficientnet_lite0", device="cpu", runtime=runtime)
        out[runtime] = (np.asarray(extract_images([photo], b, b.device)), b)
    return out


def test_the_head_scorer_gives_a_cat_photo_cat(shipped, chelsea_features):
    features, backbone = chelsea_features["torch"]
    head = shipped.scorers["head"]
    scores = head.scores(features)
    assert scores.shape == (1, len(shipped.words))
    top = [shipped.words[i] for i in np.argsort(-scores[0])[:5]]
    assert "cat" in top, top  # beside animal and its synonyms, which every animal class reaches
    cat, animal = scores[0, shipped.words.index("cat")], scores[0, shipped.words.index("animal")]
    assert 0.5 < cat <= animal + 1e-6  # the cat classes are animal classes
    assert scores[0, shipped.words.index("dog")] < 0.1 * cat
    # The head on the features is the network's own classifier on the photo.
    import torch
    from PIL import Image
    from skimage import data

    logits = backbone.classify(backbone.transform(Image.fromarray(data.chelsea()))[None])
    assert np.allclose(head.probabilities(features), torch.softmax(logits, 1).numpy(), atol=1e-4)


def test_the_head_reads_onnx_features_as_torch_features(shipped, chelsea_features):
    head = shipped.scorers["head"]
    assert np.allclose(head.probabilities(chelsea_features["onnx"][0]), head.probabilities(chelsea_features["torch"][0]), atol=1e-3)


def test_the_tagger_tags_the_cat_photo_cat_with_the_head(shipped, chelsea_features):
    from tagger.scoring.evidence import Evidence
    from tagger.scoring.options import TagOptions

    assert {"head", "cgan+knn+head"} <= set(shipped.methods)
    evidence = Evidence(chelsea_features["torch"][0], None)
    for method in ("head", "cgan+knn+head"):
        tags = [t for t, _ in shipped.tag(evidence, TagOptions(method=method, top_k=5))[0].tags]
        assert "cat" in tags, (method, tags)


def test_the_bundle_keeps_the_links(shipped, chelsea_features, tmp_path):
    from tagger.bundle import BundleError, load, save
    from tagger.scoring.evidence import Evidence
    from tagger.scoring.options import TagOptions

    save(shipped, tmp_path / "m")
    assert (tmp_path / "m" / "head.json").is_file()
    loaded = load(tmp_path / "m", device="cpu")
    assert loaded.head == shipped.head and loaded.methods == shipped.methods
    evidence = Evidence(chelsea_features["torch"][0], None)
    for method in ("head", "cgan+knn+head"):
        assert loaded.tag(evidence, TagOptions(method=method)) == shipped.tag(evidence, TagOptions(method=method))
    # Links to a word the vocabulary lacks are a damaged bundle.
    data = json.loads((tmp_path / "m" / "head.json").read_text())
    data["links"]["notaword"] = [[0, 0]]
    (tmp_path / "m" / "head.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="head.json.*notaword"):
        load(tmp_path / "m", device="cpu")
    # Without the file the bundle has no head methods, so maps fitted for them name a method it lacks.
    (tmp_path / "m" / "head.json").unlink()
    maps = json.loads((tmp_path / "m" / "calibration.json").read_text())
    (tmp_path / "m" / "calibration.json").write_text(json.dumps({**maps, "head": next(iter(maps.values()))}))
    with pytest.raises(BundleError, match="calibrates .*head"):
        load(tmp_path / "m", device="cpu")
    for name in ("calibration.json", "acceptance.json"):
        maps = json.loads((tmp_path / "m" / name).read_text())
        (tmp_path / "m" / name).write_text(json.dumps({m: c for m, c in maps.items() if "head" not in m}))
    assert "head" not in load(tmp_path / "m", device="cpu").methods


def test_a_sum_adds_probabilities_as_they_are_and_scales_the_rest():
    from tagger.scoring.scorers import combine

    votes = np.array([[4.0, 2.0, -1.0], [1.0, 0.0, 0.5]])
    probs = np.array([[0.1, 0.0, 0.0], [0.0, 0.9, 0.0]])
    got = combine([votes, probs], [1.0, 2.0], [False, True])
    # Votes scaled to each photo's best (negative as 0); the probabilities unscaled, times their weight.
    assert np.allclose(got, [[1.0 + 0.2, 0.5, 0.0], [1.0, 1.8, 0.5]])
    # Scaled too, an unsure head (0.1) would count as much as a sure one.
    assert np.allclose(combine([votes, probs])[0], [2.0, 0.5, 0.0])
