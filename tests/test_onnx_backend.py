"""ONNX Runtime CPU backend: parity with torch, the export cache, fallback, embed_slide."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from _plugin_helpers import small_vit
from napari_ghanet.encoders import EncoderError, PatchEncoder, create_encoder
from napari_ghanet.encoders.onnx_backend import (
    OnnxEncoder,
    _session,
    supports_onnx,
    wrap_for_cpu,
)
from napari_ghanet.inference.embedding import embed_slide
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_GHANET_ONNX_CACHE", str(tmp_path / "onnx"))
    return tmp_path / "onnx"




def batch(n=6, side=256, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8))


def test_resnet50_trunc_parity_with_torch(resnet50_weights, _onnx_cache):
    enc = create_encoder("resnet50_trunc", weights=resnet50_weights)
    fast = wrap_for_cpu(enc, "onnx")
    assert isinstance(fast, OnnxEncoder) and supports_onnx(enc)
    x = batch(5)
    ref = enc.encode(x)
    out = fast.encode(x)
    assert fast.backend == "onnxruntime" and out.dtype == torch.float32
    assert out.shape == ref.shape == (5, 1024)
    assert float((out - ref).abs().max()) <= 1e-4
    assert fast.spec() == enc.spec() and fast.name == enc.name and fast.dim == 1024
    # exported once, cached atomically: one complete folder, no temporary leftovers
    folders = list(_onnx_cache.iterdir())
    assert len(folders) == 1 and (folders[0] / "model.onnx").is_file()
    assert not [p for p in _onnx_cache.iterdir() if p.name.startswith(".")]


def test_small_vit_parity_and_cache_reuse(_onnx_cache):
    enc = small_vit()
    x = batch(7)
    ref = enc.encode(x)
    out = wrap_for_cpu(enc).encode(x)  # auto
    assert float((out - ref).abs().max()) <= 1e-4 and ref.abs().max() > 0
    (folder,) = list(_onnx_cache.iterdir())
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    again = wrap_for_cpu(enc)
    assert torch.allclose(again.encode(x[:3]), out[:3], atol=1e-6)
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    assert len(list(_onnx_cache.iterdir())) == 1


def test_cache_key_follows_weights_and_input_size():
    a, b = OnnxEncoder(small_vit(1)), OnnxEncoder(small_vit(1))
    assert a.cache_key(64) == b.cache_key(64)
    assert a.cache_key(64) != a.cache_key(96)
    assert a.cache_key(64) != OnnxEncoder(small_vit(2)).cache_key(64)


def test_ort_uses_torch_thread_count(_onnx_cache):
    enc = small_vit()
    fast = wrap_for_cpu(enc, "onnx")
    fast.encode(batch(2))
    sess = _session(fast.model_path(64), torch.get_num_threads())
    assert sess.get_session_options().intra_op_num_threads == torch.get_num_threads()


class Means(PatchEncoder):
    name = "test_means"
    dim = 3
    onnx_ok = True

    def forward(self, x):
        return x.mean((2, 3)) * 2


def test_failed_export_falls_back_to_torch_with_one_warning(caplog, monkeypatch):
    import napari_ghanet.encoders.onnx_backend as ob

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(ob, "_export", broken)
    enc = Means().eval()
    fast = wrap_for_cpu(enc, "auto")
    x = batch(3, side=32)
    with caplog.at_level(logging.WARNING):
        out = fast.encode(x)
        out2 = fast.encode(x)
    warnings = [r for r in caplog.records if "ONNX Runtime unavailable" in r.getMessage()]
    assert len(warnings) == 1 and fast.backend == "torch"
    assert "exporter exploded" in warnings[0].getMessage()
    assert torch.equal(out, enc.encode(x)) and torch.equal(out2, out)
    with pytest.raises(EncoderError, match="ONNX Runtime backend failed.*exploded"):
        wrap_for_cpu(Means().eval(), "onnx").encode(x)


def test_corrupt_cached_export_falls_back(_onnx_cache, caplog):
    enc = Means().eval()
    fast = wrap_for_cpu(enc)
    folder = _onnx_cache / fast.cache_key(32)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not onnx")
    x = batch(2, side=32)
    with caplog.at_level(logging.WARNING):
        out = fast.encode(x)
    assert fast.backend == "torch" and torch.equal(out, enc.encode(x))


def test_morphometric_stays_in_torch():
    enc = create_encoder("morphometric")
    assert wrap_for_cpu(enc) is enc and wrap_for_cpu(enc, "torch") is enc
    with pytest.raises(EncoderError, match="does not run in ONNX Runtime"):
        wrap_for_cpu(enc, "onnx")
    with pytest.raises(EncoderError, match="unknown backend"):
        wrap_for_cpu(enc, "tensorrt")


def test_embed_slide_cpu_backends_agree(tiled_tiff):
    enc = create_encoder("resnet50_trunc", pretrained=False)
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, tissue_mask(s))
        grid = grid.select(np.arange(min(6, len(grid))))
        fast = embed_slide(s, grid, enc, device="cpu", batch_size=4, workers=2)
        slow = embed_slide(s, grid, enc, device="cpu", batch_size=4, workers=2, backend="torch")
        with pytest.raises(EncoderError, match="unknown backend"):
            embed_slide(s, grid, enc, device="cpu", backend="trt")
    assert fast.attrs["backend"] == "onnxruntime" and slow.attrs["backend"] == "torch"
    assert fast.attrs["encoder_spec"] == slow.attrs["encoder_spec"]
    assert fast.features.shape == slow.features.shape == (len(grid), 1024)
    assert np.abs(fast.features - slow.features).max() <= 1e-4
