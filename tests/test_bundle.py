"""Model bundles: round trip, and a clear error for every way a bundle can be wrong."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from napari_ghanet.models.bundle import (
    BundleError,
    EncoderMismatchError,
    EncoderSpec,
    EnsembleModel,
    load_bundle,
    read_bundle_metadata,
    save_bundle,
)
from napari_ghanet.models.ghanet import GHANet, GHANetConfig

SIZES = (3, 5, 4, 2, 6, 3)


def small_model(seed: int = 0) -> GHANet:
    torch.manual_seed(seed)
    return GHANet(
        GHANetConfig(omic_sizes=SIZES, input_dim=16, width=32, heads=2, dim_head=16,
                     gate_dim=16, compress_dim=8, ffn_mult=2)
    ).eval()


def metadata(**over):
    meta = {
        "encoder": {"name": "morphometric", "dim": 16, "patch_px": 256, "target_mpp": 0.5},
        "categories": [
            {"name": f"cat{i}", "genes": [f"G{i}_{j}_rnaseq" for j in range(s)]}
            for i, s in enumerate(SIZES)
        ],
        "genomic_stats": {"mean": [[0.0] * s for s in SIZES], "std": [[1.0] * s for s in SIZES]},
        "survival_bins_months": [0.0, 10.0, 20.0, 40.0, 200.0],
        "risk_quantiles": {"probs": [0.0, 0.25, 0.5, 0.75, 1.0],
                           "values": [-3.5, -3.0, -2.0, -1.0, -0.5]},
        "provenance": {"data": "unit test"},
        "intended_use": "Research only.",
    }
    meta.update(over)
    return meta


def test_round_trip_gives_the_same_numbers(tmp_path):
    model = small_model()
    path = save_bundle(tmp_path / "m.safetensors", model, metadata())
    bundle = load_bundle(path)
    x = torch.randn(50, 16)
    with torch.no_grad():
        a, b = model.forward_bag(x), bundle.model.forward_bag(x)
    assert torch.equal(a.hazards, b.hazards)
    assert bundle.category_names == [f"cat{i}" for i in range(6)]
    assert [len(g) for g in bundle.gene_names] == list(SIZES)
    assert bundle.encoder == EncoderSpec("morphometric", 16, 256, 0.5)
    assert bundle.bin_edges_months[-1] == 200.0
    assert not bundle.model.training
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_percentile_and_risk_group(tmp_path):
    bundle = load_bundle(save_bundle(tmp_path / "m.safetensors", small_model(), metadata()))
    assert bundle.percentile(-2.0) == pytest.approx(50.0)
    assert bundle.percentile(-2.5) == pytest.approx(37.5)
    assert bundle.percentile(-10.0) == 0.0 and bundle.percentile(5.0) == 100.0
    # groups are the training cohort's risk tertiles (interpolated from the quantiles here)
    assert bundle.risk_group(-10.0) == "low" and bundle.risk_group(5.0) == "high"
    assert bundle.risk_group(-2.5) == "intermediate"  # 37.5th percentile
    assert bundle.risk_group(-2.0) == "intermediate"  # the median


def test_encoder_mismatch_is_named(tmp_path):
    bundle = load_bundle(save_bundle(tmp_path / "m.safetensors", small_model(), metadata()))
    bundle.check_encoder({"name": "morphometric", "dim": 16, "patch_px": 256, "target_mpp": 0.5})
    with pytest.raises(EncoderMismatchError, match="resnet50_trunc.*feature dimension 1024"):
        bundle.check_encoder({"name": "resnet50_trunc", "dim": 1024, "patch_px": 256,
                              "target_mpp": 0.5})
    with pytest.raises(EncoderMismatchError, match="1 um/px"):
        bundle.check_encoder({"name": "morphometric", "dim": 16, "patch_px": 256, "target_mpp": 1.0})
    # the one EncoderSpec (owned by the encoders package), as a spec or a dict
    from napari_ghanet.encoders import EncoderSpec as OneSpec

    assert EncoderSpec is OneSpec and isinstance(bundle.encoder, OneSpec)
    assert bundle.encoder.to_dict() == metadata()["encoder"]
    bundle.check_encoder(OneSpec("morphometric", 16, weights="none", extra={"version": 1}))
    with pytest.raises(EncoderMismatchError, match=r"expects features from 'morphometric' "
                       r"\(16-d, 256 px at 0.5 um/px\) but got resize 224 instead of None\. "
                       "Re-embed"):
        bundle.check_encoder(OneSpec("morphometric", 16, resize=224))


def test_malformed_encoder_spec_is_a_bundle_error(tmp_path):
    bad = metadata(encoder={"name": "morphometric", "dim": 16, "mean": [0.5]})
    with pytest.raises(BundleError, match="mean must be 3 numbers"):
        save_bundle(tmp_path / "m.safetensors", small_model(), bad)


def test_missing_field_is_named(tmp_path):
    meta = metadata()
    del meta["survival_bins_months"]
    with pytest.raises(BundleError, match="survival_bins_months"):
        save_bundle(tmp_path / "m.safetensors", small_model(), meta)
    assert list(tmp_path.iterdir()) == []


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["ghanet"])
    edit(meta)
    header["__metadata__"]["ghanet"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_newer_format_version_is_refused(tmp_path):
    path = save_bundle(tmp_path / "m.safetensors", small_model(), metadata())
    _rewrite_header(path, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="newer.*upgrade napari-ghanet"):
        load_bundle(path)


def test_field_removed_after_writing_is_named(tmp_path):
    path = save_bundle(tmp_path / "m.safetensors", small_model(), metadata())
    _rewrite_header(path, lambda m: m.pop("encoder"))
    with pytest.raises(BundleError, match="encoder"):
        read_bundle_metadata(path)


def test_corrupt_and_foreign_files(tmp_path):
    path = save_bundle(tmp_path / "m.safetensors", small_model(), metadata())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BundleError, match="truncated|weights"):
        load_bundle(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a bundle at all")
    with pytest.raises(BundleError, match="not a readable"):
        load_bundle(garbage)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(BundleError, match="without napari-ghanet metadata"):
        load_bundle(plain)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.safetensors")


def test_weights_that_do_not_fit_the_config(tmp_path):
    path = save_bundle(tmp_path / "m.safetensors", small_model(), metadata())
    _rewrite_header(path, lambda m: m["model"]["config"].update(width=64, dim_head=32))
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(path)


def test_ensemble_bundle_averages_members(tmp_path):
    members = [small_model(seed) for seed in range(3)]
    path = save_bundle(tmp_path / "ens.safetensors", EnsembleModel(members), metadata())
    bundle = load_bundle(path)
    x = torch.randn(20, 16)
    with torch.no_grad():
        out = bundle.model.forward_bag(x)
        risks = torch.stack([m.forward_bag(x).risk for m in members])
    assert torch.isclose(out.risk, risks.mean(), atol=1e-6)
    assert torch.allclose(torch.cumprod(1 - out.hazards, 0), out.survival, atol=1e-6)
