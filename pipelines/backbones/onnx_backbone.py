"""The backbone under ONNX Runtime: exported once per backbone and weights, checked against torch, cached.

    backbone = create_backbone("efficientnet_lite0", runtime="onnx")   # an OnnxBackbone
    backbone.forward_features(pixels)                                    # as the torch Backbone's

On a CPU, ONNX Runtime runs EfficientNet-Lite0 2-2.5x faster than torch (the same network, BN folded),
with features that differ by about 1e-5, so the two share the feature cache and give the same tags.

The ONNX file holds the feature extractor only, with the normalization inside the graph:

    input   pixels    float32 (N, 3, crop, crop): RGB values 0..255 after the resize and the centre crop
    output  features  float32 (N, dim): the pooled penultimate features the tagger is trained on

Its metadata (`onnx.load(f).metadata_props`) says the same in words, with the preprocessing as JSON,
the backbone, the weights' hash and the largest difference from torch measured at export.

Files are cached in the feature cache folder, named like its folders (`efficientnet_lite0-<key>.onnx`,
the key a hash of the backbone, its weights and preprocessing). An export is written to a temporary
file, checked against torch on a fixed batch, and only then renamed into place: a killed export never
leaves a file that loads, and a refused one never lands. A file that does not load, or whose metadata
names other weights or another format, is exported again.

`onnx-int8` quantizes that float graph with ONNX Runtime's static quantization (QDQ, per-channel
weights), calibrated on photos the caller gives (`calibration`); see README "Performance" for
what it costs in tags.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from embeddings.files import atomic_write
from pipelines.backbones.spec import BackboneSpec, Preprocessing, make_pixels_transform, make_transform, weights_id
from pipelines.backbones.torch_backbone import Backbone
from pipelines.errors import TaggerError

log = logging.getLogger(__name__)

ONNX_FORMAT = "1"  # bump when the graph's inputs, outputs or export settings change: older files are then rebuilt
OPSET = 17
# Largest |onnx - torch| feature difference accepted at export, relative to the largest torch feature
# (at least 1). Lite0 measures about 2e-6 of its largest feature (1e-5 absolute).
TOLERANCE = 1e-4
CHUNK = 16  # photos per session.run; like torch's CPU chunks, activations of 16 photos stay in cache
INPUT, OUTPUT = "pixels", "features"


class OnnxExportError(TaggerError):
    """The exported graph does not give the torch backbone's features; the message has the figure."""


def session_options(threads: int | None = None):
    """ONNX Runtime session options, each set on purpose rather than left to the library's defaults."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # As many threads as torch uses (one per core, or OMP_NUM_THREADS / torch.set_num_threads), so
    # the runtime choice never changes how much of the machine a run takes.
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1  # one chain of convs: nothing to run side by side
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fuses conv + clip, folds constants
    # The arena keeps activation buffers between runs (chunks all have the same shape but the last), and
    # the memory pattern plans them once per shape: no allocation per chunk.
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    # Threads that spin between runs take CPU from the decoding workers on a small machine; they sleep instead.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: its warnings about unused initializers mean nothing to a user
    return so


class OnnxBackbone:
    """A `Backbone`'s feature pass under ONNX Runtime, on the CPU: the same attributes and `forward_features`."""

    def __init__(self, spec: BackboneSpec, session, path: Path, weights_path: Path | None, runtime: str,
                 build_torch: Callable[[], Backbone]):
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.preprocessing = spec.preprocessing
        self.transform = make_transform(spec.preprocessing)
        self.pixels_transform = make_pixels_transform(spec.preprocessing)
        self.device = torch.device("cpu")
        self.weights_path = weights_path
        self.runtime = runtime
        self.path = path  # the cached ONNX file
        self.session = session
        self._build_torch = build_torch
        self._torch: Backbone | None = None
        p = spec.preprocessing
        self._mean = np.asarray(p.mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255
        self._std = np.asarray(p.std, dtype=np.float32).reshape(1, 3, 1, 1) * 255

    @property
    def weights_id(self) -> str:
        """Names the weights for cache keys: the torch weights' (features within 1e-4 share a cache), marked for int8."""
        base = weights_id(self.weights_path)
        return base if self.runtime == "onnx" else f"{base}-{self.runtime}"

    def pixels(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """The graph's input: float32 pixels 0..255 from uint8 pixels or from `transform`'s normalized floats."""
        x = batch.numpy(force=True) if isinstance(batch, torch.Tensor) else np.asarray(batch)
        if x.dtype == np.uint8:
            return x.astype(np.float32)
        return (x.astype(np.float32, copy=False) * self._std + self._mean).astype(np.float32, copy=False)

    def forward_features(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, 3, H, W) photos -> (N, dim) float32 features; `batch` is uint8 pixels or normalized floats."""
        x = self.pixels(batch)
        out = [self.session.run([OUTPUT], {INPUT: x[i : i + CHUNK]})[0] for i in range(0, len(x), CHUNK)]
        return torch.from_numpy(np.concatenate(out) if out else np.zeros((0, self.dim), np.float32))

    __call__ = forward = forward_features

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, from the torch network: the ONNX file holds the feature extractor only."""
        if self.spec.num_classes is None:
            raise ValueError(f"backbone {self.name!r} has no classification head")
        if self._torch is None:
            self._torch = self._build_torch()
        return self._torch.classify(batch)

    def __repr__(self) -> str:
        return f"OnnxBackbone({self.name}, {self.runtime}, {self.path.name})"


def onnx_file(cache_dir: Path, spec: BackboneSpec, weights_id_: str, runtime: str) -> Path:
    """Where the ONNX file of these weights lives: keyed like the feature cache's folders."""
    import hashlib

    key = hashlib.blake2b(repr((ONNX_FORMAT, spec.name, weights_id_, spec.preprocessing)).encode(), digest_size=16).hexdigest()[:12]
    suffix = "" if runtime == "onnx" else f"-{runtime.removeprefix('onnx-')}"
    return Path(cache_dir).expanduser() / f"{spec.name}-{key}{suffix}.onnx"


def expected_metadata(spec: BackboneSpec, weights_id_: str, runtime: str) -> dict[str, str]:
    """The metadata a cached file must carry to be used as is; any other value means it is stale."""
    return {"tagger.format": ONNX_FORMAT, "tagger.backbone": spec.name, "tagger.weights_id": weights_id_,
            "tagger.runtime": runtime, "tagger.preprocessing": json.dumps(asdict(spec.preprocessing))}


def load_onnx_backbone(spec: BackboneSpec, weights_path: Path | None, runtime: str, cache_dir: str | Path | None,
                       build_torch: Callable[[], Backbone]) -> OnnxBackbone:
    """The backbone under ONNX Runtime, from its cached file, exported (and checked) first where there is none.

    build_torch: makes the torch backbone, only needed to export (and for `classify`).
    """
    if cache_dir is None:
        from pipelines.cache import default_cache_dir

        cache_dir = default_cache_dir() / "features"
    wid = weights_id(weights_path)
    path = onnx_file(Path(cache_dir), spec, wid, runtime)
    expect = expected_metadata(spec, wid, runtime)
    session = _open_cached(path, expect)
    if session is not None:
        return OnnxBackbone(spec, session, path, weights_path, runtime, build_torch)
    torch_backbone = None
    if runtime == "onnx":
        torch_backbone = build_torch()
        try:
            export_onnx(torch_backbone, path)
        except OSError as e:
            # An unwritable cache costs this process an export of its own, not the run.
            log.warning("%s: cannot be written (%s); exporting to a temporary folder for this run", path, e.strerror or e)
            path = Path(tempfile.mkdtemp(prefix="tagger-onnx-")) / path.name
            export_onnx(torch_backbone, path)
    else:  # onnx-int8: quantized from the float file (exported first where there is none)
        float_backbone = load_onnx_backbone(spec, weights_path, "onnx", cache_dir, build_torch)
        torch_backbone = float_backbone._torch
        quantize_onnx(float_backbone, path)
    session = _open_cached(path, expect)
    if session is None:
        raise OnnxExportError(f"{path}: exported, but does not load")
    backbone = OnnxBackbone(spec, session, path, weights_path, runtime, build_torch)
    backbone._torch = torch_backbone  # where it was built anyway, `classify` need not build it again
    return backbone


def _open_cached(path: Path, expect: dict[str, str]):
    """An inference session on a cached file that is whole and current, else None (and why, in the log)."""
    if not path.is_file():
        return None
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a damaged protobuf fails in several ways
        log.warning("%s: cannot load (%s); exporting it again", path, str(e).strip().splitlines()[0][:200])
        return None
    meta = session.get_modelmeta().custom_metadata_map
    stale = sorted(k for k, v in expect.items() if meta.get(k) != v)
    if stale:
        log.warning("%s: made for another backbone, weights or format (%s differ); exporting it again", path, ", ".join(stale))
        return None
    return session


class _FromPixels(nn.Module):
    """What the ONNX graph computes: pixels 0..255 -> normalized -> the network's pooled features."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.model = backbone.model
        p = backbone.preprocessing
        self.register_buffer("mean", torch.tensor(p.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(p.std).view(1, 3, 1, 1) * 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features((pixels - self.mean) / self.std)


def check_batch(p: Preprocessing, n: int = 4, seed: int = 0) -> np.ndarray:
    """A fixed batch of uint8 pixels (N, 3, crop, crop) to compare runtimes on: smooth shapes and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : p.crop, 0 : p.crop] / p.crop
    photos = []
    for i in range(n):
        # Gradients and blobs (like photos) plus noise (every filter sees some signal).
        f = rng.uniform(1, 6, size=3)
        base = 127 + 100 * np.sin(f[:, None, None] * (xx + i * yy)[None] * np.pi)
        photos.append(np.clip(base + rng.normal(0, 20, (3, p.crop, p.crop)), 0, 255))
    return np.stack(photos).astype(np.uint8)


def export_onnx(backbone: Backbone, out: str | Path, tolerance: float = TOLERANCE) -> dict[str, str]:
    """Export a torch backbone's feature pass to `out` (atomically), checked against torch; returns its metadata.

    The largest feature difference on `check_batch` must be within `tolerance` (relative to the largest
    feature, at least 1), or the export is refused with an OnnxExportError giving the figure.
    """
    import onnx
    import onnxruntime as ort

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    p = backbone.preprocessing
    try:
        wrapper = _FromPixels(backbone).eval().cpu()
        example = torch.zeros(2, 3, p.crop, p.crop)
        with warnings.catch_warnings(), torch.no_grad():
            # TF "SAME" padding reads the input's size: the tracer warns that it becomes a constant, which is
            # what we want (the graph takes crop x crop photos, as the preprocessing makes them).
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                              do_constant_folding=True)
        pixels = check_batch(p)
        reference = backbone.forward_features(torch.from_numpy(pixels)).numpy()
        session = ort.InferenceSession(str(tmp), sess_options=session_options(), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT], {INPUT: pixels.astype(np.float32)})[0]
        diff = float(np.abs(got - reference).max())
        scale = max(1.0, float(np.abs(reference).max()))
        if not diff <= tolerance * scale:  # `not <=`: a NaN difference is refused too
            raise OnnxExportError(f"{backbone.name}: the ONNX export differs from torch by up to {diff:.3g} on the check batch "
                                  f"(allowed {tolerance * scale:.3g}); not used: run with --runtime torch")
        meta = {**expected_metadata(backbone.spec, backbone.weights_id, "onnx"), **describe(backbone.spec),
                "tagger.max_abs_diff_vs_torch": f"{diff:.3g}", "tagger.torch": torch.__version__, "tagger.onnxruntime": ort.__version__}
        model = onnx.load(str(tmp))
        model.doc_string = f"{backbone.name} image features for tagger: {meta['tagger.input']} -> {meta['tagger.output']}"
        del model.metadata_props[:]
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        atomic_write(out, model.SerializeToString())  # only now, checked, does the file appear under its name
        log.info("%s: exported %s to ONNX (largest difference from torch %.3g)", out, backbone.name, diff)
        return meta
    finally:
        tmp.unlink(missing_ok=True)


def describe(spec: BackboneSpec) -> dict[str, str]:
    """The graph's input, output and preprocessing in words, for the file's metadata (and the README)."""
    p = spec.preprocessing
    mean = ", ".join(f"{m * 255:g}" for m in p.mean)
    std = ", ".join(f"{s * 255:g}" for s in p.std)
    return {
        "tagger.input": f"{INPUT}: float32 (N, 3, {p.crop}, {p.crop}), RGB values 0..255",
        "tagger.output": f"{OUTPUT}: float32 (N, {spec.dim}), the pooled penultimate features",
        "tagger.preprocessing_steps": (f"decode to RGB (EXIF orientation applied); resize the shorter side to {p.resize} "
                                       f"({p.interpolation}); centre crop {p.crop}x{p.crop}; channels first; the graph "
                                       f"itself normalizes (x - [{mean}]) / [{std}]"),
    }


CALIBRATION_PHOTOS = 256  # check_batch images the int8 activation ranges are measured on
MIN_INT8_COSINE = 0.95  # mean cosine similarity of int8 to float features on the check batch, below which int8 is refused


def quantize_onnx(float_backbone: OnnxBackbone, out: str | Path) -> dict[str, str]:
    """Quantize a float ONNX backbone to int8 at `out` (atomically): ONNX Runtime's static quantization.

    QDQ format, int8 weights per output channel, uint8 activations whose ranges are calibrated (min/max,
    moving average) on `check_batch` images. Synthetic images keep the file the same on every machine,
    for any photos; calibrating on 256 MIRFLICKR training photos instead measured no better beyond noise
    (README "Performance"). Refused (OnnxExportError) if int8 features drift from float ones on the
    check batch (mean cosine under MIN_INT8_COSINE).
    """
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    p = float_backbone.preprocessing
    photos = check_batch(p, n=CALIBRATION_PHOTOS, seed=1).astype(np.float32)

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.chunks = iter(range(0, len(photos), CHUNK))

        def get_next(self):
            i = next(self.chunks, None)
            return None if i is None else {INPUT: photos[i : i + CHUNK]}

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_backbone.path), str(prepared))  # shape inference and graph clean-up, as the docs advise
        quantize_static(str(prepared), str(quantized), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibMovingAverage": True})
        session = ort.InferenceSession(str(quantized), sess_options=session_options(), providers=["CPUExecutionProvider"])
        check = check_batch(p).astype(np.float32)
        want = float_backbone.session.run([OUTPUT], {INPUT: check})[0]
        got = session.run([OUTPUT], {INPUT: check})[0]
        cosine = float(np.mean((got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)))
        if not cosine >= MIN_INT8_COSINE:
            raise OnnxExportError(f"{float_backbone.name}: int8 features match float ones with mean cosine {cosine:.3f} on the "
                                  f"check batch (at least {MIN_INT8_COSINE} needed); not used: run with --runtime onnx")
        model = onnx.load(str(quantized))
    float_meta = {m.key: m.value for m in onnx.load(str(float_backbone.path)).metadata_props}
    meta = {**float_meta, **expected_metadata(float_backbone.spec, float_backbone.weights_id, "onnx-int8"),
            "tagger.int8": (f"ONNX Runtime static quantization (QDQ): int8 weights per channel, uint8 activations calibrated "
                            f"(min/max) on {CALIBRATION_PHOTOS} synthetic images"),
            "tagger.int8_cosine_vs_float": f"{cosine:.4f}"}
    meta.pop("tagger.max_abs_diff_vs_torch", None)  # of the float graph, not this one
    model.doc_string = f"{float_backbone.name} image features for tagger, int8: {meta['tagger.input']} -> {meta['tagger.output']}"
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    atomic_write(out, model.SerializeToString())
    log.info("%s: quantized %s to int8 (mean cosine to float features %.4f)", out, float_backbone.name, cosine)
    return meta
