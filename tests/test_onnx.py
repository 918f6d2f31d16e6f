"""The backbone under ONNX Runtime: export round trip, agreement with torch, rebuilt when damaged or stale, the CLI."""
import logging

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_photo_files
from pipelines.backbones import create_backbone
from pipelines.device import choose_runtime
from pipelines.features import FeatureConfig, extract_features
from pipelines.scan import list_images
from pipelines.backbones.onnx_backbone import INPUT, OUTPUT, OnnxBackbone, OnnxExportError, check_batch, export_onnx
from tagger.cli import app
from tagger.scoring.options import TagOptions
from tagger.library.local import tag_paths


def test_export_round_trip(tmp_path):
    """The file loads back (onnx and onnxruntime), says what it takes and gives, and gives torch's features."""
    import onnxruntime as ort

    torch_tiny = create_backbone("tiny", device="cpu", runtime="torch")
    out = tmp_path / "tiny.onnx"
    meta = export_onnx(torch_tiny, out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert {p.key: p.value for p in model.metadata_props} == meta
    assert meta["tagger.backbone"] == "tiny" and meta["tagger.input"].startswith(f"{INPUT}: float32 (N, 3, 32, 32)")
    assert meta["tagger.output"].startswith(f"{OUTPUT}: float32 (N, 32)") and "centre crop 32x32" in meta["tagger.preprocessing_steps"]
    assert [i.name for i in model.graph.input] == [INPUT] and [o.name for o in model.graph.output] == [OUTPUT]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # no temporary left

    pixels = check_batch(torch_tiny.preprocessing, n=5, seed=1)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: pixels.astype(np.float32)})[0]
    assert np.allclose(got, torch_tiny.forward_features(torch.from_numpy(pixels)).numpy(), atol=1e-5)


def test_onnx_backbone_is_cached_and_agrees_with_torch(tmp_path):
    onnx_tiny = create_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path)
    torch_tiny = create_backbone("tiny", device="cpu", runtime="torch")
    assert isinstance(onnx_tiny, OnnxBackbone) and onnx_tiny.path.parent == tmp_path and onnx_tiny.path.is_file()
    assert (onnx_tiny.dim, onnx_tiny.weights_id, onnx_tiny.preprocessing) == (torch_tiny.dim, torch_tiny.weights_id, torch_tiny.preprocessing)
    # uint8 pixels and transform's normalized floats, in more photos than one chunk
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 255, (37, 3, 32, 32), dtype=np.uint8))
    floats = (pixels.float() / 255 - 0.5) / 0.5
    for x in (pixels, floats):
        assert torch.allclose(onnx_tiny.forward_features(x), torch_tiny.forward_features(x), atol=1e-5)
    assert onnx_tiny.forward_features(pixels[:0]).shape == (0, 32)
    again = create_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path)
    assert again.path == onnx_tiny.path and again._torch is None  # loaded from the file: no torch network built


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other weights", "older format"])
def test_a_corrupt_or_stale_file_is_rebuilt(tmp_path, caplog, damage):
    path = create_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path).path
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an onnx file")
    else:
        model = onnx.load(str(path))
        key, value = ("tagger.weights_id", "0123456789abcdef") if damage == "other weights" else ("tagger.format", "0")
        next(p for p in model.metadata_props if p.key == key).value = value
        onnx.save(model, str(path))
    with caplog.at_level(logging.WARNING, logger="pipelines.backbones.onnx_backbone"):
        rebuilt = create_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path)
    assert ("cannot load" if damage in ("truncated", "garbage") else "exporting it again") in caplog.text
    assert rebuilt.path == path and rebuilt._torch is not None  # exported again
    x = torch.from_numpy(check_batch(rebuilt.preprocessing))
    assert torch.allclose(rebuilt.forward_features(x), create_backbone("tiny", device="cpu", runtime="torch").forward_features(x), atol=1e-5)


def test_an_export_that_disagrees_is_refused_with_the_figure(tmp_path):
    torch_tiny = create_backbone("tiny", device="cpu", runtime="torch")
    with pytest.raises(OnnxExportError, match=r"differs from torch by up to [0-9.e-]+ .*allowed 0.*--runtime torch"):
        export_onnx(torch_tiny, tmp_path / "tiny.onnx", tolerance=0.0)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_a_killed_export_leaves_no_file(tmp_path, monkeypatch):
    import pipelines.backbones.onnx_backbone as ob

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped right after torch wrote the graph

    monkeypatch.setattr(ob, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        create_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert create_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path).path.is_file()


def test_runtime_choice(monkeypatch):
    import pipelines.device as d

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_runtime(None, cpu) == choose_runtime("auto", cpu) == "onnx"
    assert choose_runtime(None, cuda) == "torch"  # a GPU keeps torch
    assert choose_runtime(" Torch ", cpu) == "torch" and choose_runtime("onnx-int8", cpu) == "onnx-int8"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        choose_runtime("tensorrt", cpu)
    with pytest.raises(ValueError, match="runs on the CPU"):
        choose_runtime("onnx", cuda)
    monkeypatch.setattr(d, "onnxruntime_available", lambda: False)
    assert choose_runtime(None, cpu) == "torch"
    with pytest.raises(ValueError, match="onnxruntime is not installed"):
        choose_runtime("onnx", cpu)


def test_features_share_the_cache_across_runtimes(tmp_path):
    """Features within the tolerance are interchangeable: a cache filled by one runtime serves the other."""
    photos = make_photo_files(tmp_path / "p", 6, size=48)
    config = dict(backbone="tiny", num_workers=0, device="cpu", cache_dir=tmp_path / "cache")
    by_torch = extract_features(photos, FeatureConfig(**config, runtime="torch"), progress=False)
    by_onnx = extract_features(photos, FeatureConfig(**config, runtime="onnx"), progress=False)
    assert by_torch.n_extracted == 6 and by_onnx.n_cached == 6
    fresh = extract_features(photos, FeatureConfig(**{**config, "cache_dir": None}, runtime="onnx"), progress=False)
    assert np.allclose(fresh.features, by_torch.features, atol=1e-5)


def test_cli_runtime_option_and_export(tmp_path, tiny_bundle):
    runner = CliRunner()
    photos = make_photo_files(tmp_path / "p", 2)
    outputs = {}
    for runtime in ("torch", "onnx"):
        result = runner.invoke(app, ["predict", *map(str, photos), "--model", str(tiny_bundle), "--runtime", runtime])
        assert result.exit_code == 0, result.output
        outputs[runtime] = result.output
    assert outputs["torch"] == outputs["onnx"]
    result = runner.invoke(app, ["predict", str(photos[0]), "--model", str(tiny_bundle), "--runtime", "tensorrt"])
    assert result.exit_code == 2 and "'tensorrt' is not one of" in " ".join(result.output.split())  # Typer's choice check

    out = tmp_path / "deploy" / "backbone.onnx"
    result = runner.invoke(app, ["export-onnx", str(out), "--model", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    assert "input: pixels: float32 (N, 3, 32, 32)" in result.output and "output: features: float32 (N, 32)" in result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["tagger.backbone"] == "tiny"


@pytest.mark.slow
@pytest.mark.data
def test_torch_and_onnx_tag_200_subset_photos_alike(subset_dir, tmp_path):
    """The shipped model on 200 real photos: features within 1e-4, and the same tags, both ways."""
    from tagger.bundle import load
    from tagger.shipped import default_model_path

    paths = list_images(subset_dir / "images")[:200]
    results = {}
    for runtime in ("torch", "onnx"):
        tagger = load(default_model_path(), device="cpu", runtime=runtime)
        assert tagger.backbone.runtime == runtime
        feats = extract_features(paths, FeatureConfig(num_workers=2, device="cpu", runtime=runtime), progress=False,
                                 backbone=tagger.backbone)
        assert feats.ok.all()
        tags = list(tag_paths(tagger, paths, TagOptions(top_k=5, min_score=0), batch_size=64))  # the same five: no threshold to fall either side of
        results[runtime] = feats.features, [r.tags for _, r in tags]
    (f_torch, t_torch), (f_onnx, t_onnx) = results["torch"], results["onnx"]
    diff = np.abs(f_torch - f_onnx).max()
    print(f"largest feature difference over 200 photos: {diff:.2e}")
    assert diff < 1e-4
    assert [[w for w, _ in t] for t in t_torch] == [[w for w, _ in t] for t in t_onnx]
    scores = np.array([[s for _, s in t] for t in t_torch]) - np.array([[s for _, s in t] for t in t_onnx])
    assert np.abs(scores).max() < 1e-3


def test_int8_is_quantized_once_and_keeps_its_own_feature_cache(tmp_path):
    int8 = create_backbone("tiny", device="cpu", runtime="onnx-int8", cache_dir=tmp_path)
    float32 = create_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path)
    assert int8.path.name.endswith("-int8.onnx") and int8.path.with_name(int8.path.name.replace("-int8", "")) == float32.path
    meta = {p.key: p.value for p in onnx.load(str(int8.path)).metadata_props}
    assert meta["tagger.runtime"] == "onnx-int8" and "static quantization" in meta["tagger.int8"]
    assert float(meta["tagger.int8_cosine_vs_float"]) >= 0.95
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8.path)).graph.node)
    # Not the float features: int8 rows never land in (or come from) the float features' cache.
    assert int8.weights_id != float32.weights_id and int8.weights_id.startswith(float32.weights_id)
    x = torch.from_numpy(check_batch(int8.preprocessing))
    a, b = int8.forward_features(x), float32.forward_features(x)
    assert torch.nn.functional.cosine_similarity(a, b).mean() > 0.95
    again = create_backbone("tiny", device="cpu", runtime="onnx-int8", cache_dir=tmp_path)
    assert again._torch is None  # loaded, not quantized again
