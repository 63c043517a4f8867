"""Crafted model bundles (issue 12): each is refused with a one-line BundleError before
anything large is allocated, or (when harmless) loads and predicts finite numbers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import napari_ghanet.models.bundle as bundle_mod
from napari_ghanet.errors import BundleError, PredictionError
from napari_ghanet.inference.checks import check_prediction_finite, require_finite
from napari_ghanet.models.bundle import load_bundle, read_bundle_metadata, save_bundle
from napari_ghanet.models.bundle_schema import check_json_depth, metadata_problems
from napari_ghanet.models.ghanet import GHANet, GHANetConfig

SIZES = (3, 5, 4, 2, 6, 3)


def small_model(seed: int = 0) -> GHANet:
    torch.manual_seed(seed)
    return GHANet(
        GHANetConfig(omic_sizes=SIZES, input_dim=16, width=32, heads=2, dim_head=16,
                     gate_dim=16, compress_dim=8, ffn_mult=2)
    ).eval()


def metadata():
    return {
        "encoder": {"name": "morphometric", "dim": 16, "patch_px": 256, "target_mpp": 0.5},
        "categories": [
            {"name": f"cat{i}", "genes": [f"G{i}_{j}" for j in range(s)]}
            for i, s in enumerate(SIZES)
        ],
        "survival_bins_months": [0.0, 10.0, 20.0, 40.0, 200.0],
        "risk_quantiles": {"probs": [0.0, 0.5, 1.0], "values": [-3.5, -2.0, -0.5]},
        "risk_groups": {"cutoffs": [-2.0], "labels": ["low", "high"]},
        "intended_use": "Research only.",
    }


@pytest.fixture
def good(tmp_path):
    return save_bundle(tmp_path / "m.safetensors", small_model(), metadata())


def rewrite(path, edit=None, state_edit=None):
    """Rewrite a bundle: ``edit(meta)`` may change it in place or return a replacement
    (any JSON value, or raw text); ``state_edit(state)`` changes the tensors."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    text = header["__metadata__"]["ghanet"]
    if edit is not None:
        meta = json.loads(text)
        new = edit(meta)
        meta = meta if new is None else new
        text = meta if isinstance(meta, str) and meta.startswith("RAW:") else json.dumps(meta)
        text = text.removeprefix("RAW:")
    if state_edit is not None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        state_edit(state)
        save_file(state, str(path), metadata={"ghanet": text})
        return path
    header["__metadata__"]["ghanet"] = text
    body = json.dumps(header).encode()
    body += b" " * ((8 - len(body) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    return path


def refused(path, match):
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 2000
    return str(info.value)


def first_key(state):
    return next(k for k in state if state[k].numel() > 1)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_is_refused_naming_the_tensor(good, value):
    poisoned = []

    def poison(state):
        k = first_key(state)
        state[k] = state[k].clone()
        state[k].view(-1)[1] = value
        poisoned.append(k)

    rewrite(good, state_edit=poison)
    msg = refused(good, "NaN or infinite")
    assert repr(poisoned[0]) in msg


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int32])
def test_non_float_weights_are_refused(good, dtype):
    def cast(state):
        k = first_key(state)
        state[k] = state[k].to(dtype)

    rewrite(good, state_edit=cast)
    refused(good, "floating-point weights only")


def test_fp16_weights_are_converted_with_a_notice(good):
    def half(state):
        for k in state:
            state[k] = state[k].half()

    rewrite(good, state_edit=half)
    b = load_bundle(good)
    assert b.notices and "F16" in b.notices[0] and "float32" in b.notices[0]
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    out = b.model.forward_bag(torch.randn(7, 16))
    assert torch.isfinite(out.risk) and torch.isfinite(out.survival).all()


def _ensemble(meta):
    meta["model"] = {"name": "ensemble", "member": meta["model"], "n_members": 1_000_000}


CRAFTED = {
    "ensemble of a million": (_ensemble, "n_members"),
    "huge width": (lambda m: m["model"]["config"].update(width=2**22, dim_head=2**21), "width"),
    "omic_sizes 1e9": (lambda m: m["model"]["config"].update(omic_sizes=[10**9] * 6), "omic_sizes"),
    "metadata is a list": (lambda m: [m], "must be a JSON object"),
    "metadata is a string": (lambda m: "a string", "must be a JSON object"),
    "null bin edge": (lambda m: m.update(survival_bins_months=[0, None, 20, 40, 200]),
                      "survival_bins_months"),
    "encoder is a string": (lambda m: m.update(encoder="resnet50"), "'encoder' must be an object"),
    "encoder.dim abc": (lambda m: m["encoder"].update(dim="abc"), "encoder.dim"),
    "negative config": (lambda m: m["model"]["config"].update(gate_dim=-5), "gate_dim"),
    "config is a list": (lambda m: m["model"].update(config=[1, 2]), "config' must be an object"),
    "100,000-deep JSON": (lambda m: "RAW:" + "[" * 100_000 + "]" * 100_000, "nested 100000"),
    "deep inside a field": (lambda m: m.update(provenance={"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
        [[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}), "nested"),
    "format_version string": (lambda m: m.update(format_version="9"), "format_version"),
    "empty categories": (lambda m: m.update(categories=[]), "categories"),
    "category without genes": (lambda m: m["categories"][0].pop("genes") and None, "genes"),
    "long intended_use": (lambda m: m.update(intended_use="x" * 100_000), "intended_use"),
    "quantile probs above 1": (lambda m: m["risk_quantiles"].update(probs=[0, 0.5, 2]), "probs"),
    "quantile values NaN": (lambda m: m["risk_quantiles"].update(values=[0, None, 1]), "values"),
    "labels one short": (lambda m: m["risk_groups"].update(labels=["low"]), "risk_groups"),
    "cutoffs not numbers": (lambda m: m["risk_groups"].update(cutoffs=["a"]), "risk_groups"),
    "bins do not fit n_bins": (lambda m: m.update(survival_bins_months=[0, 1, 2]), "n_bins|bins"),
    "categories do not fit tokens": (lambda m: m["categories"].pop() and None, "tokens"),
    "model name unknown": (lambda m: m["model"].update(name="evil"), "unknown model"),
    "model is a number": (lambda m: m.update(model=3), "'model' must be an object"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_metadata_is_refused_in_one_line(good, case, monkeypatch):
    edit, match = CRAFTED[case]
    rewrite(good, edit)
    built = []
    monkeypatch.setattr(bundle_mod, "GHANet", lambda *a, **k: built.append(1))
    refused(good, match)
    with pytest.raises(BundleError, match=match):
        read_bundle_metadata(good)
    assert built == []  # refused before any model was built


def test_50_mb_intended_use_is_refused(good):
    rewrite(good, lambda m: m.update(intended_use="x" * 50_000_000))
    msg = refused(good, "MB|bytes")
    assert len(msg) < 400


def test_header_claiming_more_bytes_than_the_file(good, tmp_path):
    raw = good.read_bytes()
    big = tmp_path / "big.safetensors"
    big.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    refused(big, "header claims")
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    k = next(k for k in header if k != "__metadata__")
    header[k]["data_offsets"][1] += 10**9
    header[k]["shape"] = [header[k]["data_offsets"][1] // 4 - header[k]["data_offsets"][0] // 4]
    body = json.dumps(header).encode()
    body += b" " * ((8 - len(body) % 8) % 8)
    good.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    refused(good, "beyond the end of the file")


def test_a_folder_as_the_model_names_the_files_inside(good, tmp_path):
    msg = refused(tmp_path, "is a folder; give the .safetensors bundle file inside it")
    assert "m.safetensors" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "holds no .safetensors")


def test_json_depth_is_measured_without_recursion():
    assert check_json_depth("[" * 5 + "]" * 5) == 5
    assert check_json_depth('["[[[[[[", {"a": "}}}"}]') == 2
    with pytest.raises(ValueError, match="nested"):
        check_json_depth("[" * 100_000 + "]" * 100_000)
    assert metadata_problems({"format": "napari-ghanet-bundle", "format_version": "9"})[0] == (
        "'format_version' must be a whole number, got '9'"
    )


def test_several_problems_are_listed_together(good):
    def edit(m):
        m["encoder"]["dim"] = "abc"
        m["categories"] = []
    rewrite(good, edit)
    msg = refused(good, "encoder.dim")
    assert "categories" in msg


def test_the_demo_bundle_passes(tmp_path):
    from napari_ghanet.models.bundle import demo_bundle_path, expected_tensors

    b = load_bundle(demo_bundle_path())
    assert b.notices == []
    exp = expected_tensors(b.metadata["model"])
    assert set(exp) == set(b.model.state_dict())


def test_non_finite_predictions_are_errors_and_exports_write_nothing(tmp_path, tiled_tiff):
    from napari_ghanet.inference.predict import export_all, predict_slide

    src = save_bundle(tmp_path / "m.safetensors", small_model(), {
        **metadata(), "encoder": {"name": "morphometric", "dim": 16, "patch_px": 256,
                                  "target_mpp": 0.5}})
    b = load_bundle(src)
    # NaN weights cannot be loaded any more: poison the loaded model to reach the check
    with torch.no_grad():
        next(iter(b.model.parameters())).fill_(float("nan"))
    with pytest.raises((PredictionError, BundleError)) as info:
        predict_slide(tiled_tiff, b, cache_dir=tmp_path / "cache", device="cpu")
    assert "model file" in str(info.value) or "encoder" in str(info.value)
    with pytest.raises(PredictionError, match="risk"):
        require_finite("risk", float("nan"))

    class P:  # a prediction with one NaN: every exporter refuses, no file is written
        risk, percentile = float("nan"), 50.0
        hazards = survival = np.ones(4, np.float32)
        morphology_attention = np.ones(3, np.float32) / 3
        genome_attention = np.ones((6, 3), np.float32)
        categories, top_regions = [], []
        model = {"path": "m.safetensors"}
        slide = {"name": "s.tif"}

    with pytest.raises(PredictionError, match=r"model file \(m.safetensors\)"):
        check_prediction_finite(P())
    out = tmp_path / "out"
    with pytest.raises(PredictionError):
        export_all(P(), out)
    assert not out.exists() or list(out.iterdir()) == []
