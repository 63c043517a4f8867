"""G-HANet against the official implementation's conformance vectors, and its own rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ghanet.models.ghanet import (
    CheckpointError,
    GHANet,
    GHANetConfig,
    load_official_checkpoint,
    topk_edge_mask,
)
from napari_ghanet.models.losses import ghanet_loss, nll_loss, reconstruction_loss

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official_ghanet"
TOL = 1e-5


@pytest.fixture(scope="module")
def official():
    assert REF.is_dir(), f"conformance vectors missing: {REF} (../shared must sit beside the repo)"
    model = load_official_checkpoint(REF / "case_a_official_state_dict.pt")
    io = np.load(REF / "case_a_io.npz")
    with torch.no_grad():
        out = model.forward_bag(torch.from_numpy(io["x_path"]))
    return model, io, out


def _close(actual: torch.Tensor, expected: np.ndarray) -> float:
    a = actual.detach().numpy().reshape(-1)
    e = np.asarray(expected, dtype=np.float64).reshape(-1)
    assert a.shape == e.shape
    return float(np.abs(a - e).max())


def test_official_config_is_inferred(official):
    model, io, _ = official
    meta = json.loads((REF / "case_a_meta.json").read_text())
    cfg = model.config
    assert list(cfg.omic_sizes) == meta["omic_sizes"]
    assert cfg.input_dim == meta["feature_dim"]
    assert cfg.num_tokens == meta["num_tokens"]
    assert cfg.n_bins == meta["n_classes"]
    assert cfg.official_compat is True
    assert not model.training


@pytest.mark.parametrize(
    "field, key",
    [
        ("hazards", "hazards"),
        ("survival", "S"),
        ("risk", "risk"),
        ("morphology_attention", "morph_attention"),
        ("genome_attention", "genome_attention"),
        ("similarity", "similarity"),
    ],
)
def test_outputs_match_official(official, field, key):
    _, io, out = official
    assert _close(getattr(out, field), io[key]) < TOL


def test_reconstructions_match_official(official):
    _, io, out = official
    assert len(out.reconstructed) == 6
    for i, rec in enumerate(out.reconstructed):
        assert _close(rec, io[f"reconstructed_omic_{i}"]) < TOL


def test_risk_is_minus_sum_of_survival(official):
    _, _, out = official
    assert torch.isclose(out.risk, -out.survival.sum())
    assert torch.all(out.survival[1:] <= out.survival[:-1])


def test_genome_attention_keeps_top_fifth_per_token(official):
    _, io, out = official
    n = io["x_path"].shape[0]
    kept = (out.genome_attention > 1e-12).sum(dim=1)
    assert torch.all(kept >= int(n * 0.2))
    assert torch.allclose(out.genome_attention.sum(dim=1), torch.ones(6), atol=1e-5)
    assert torch.isclose(out.morphology_attention.sum(), torch.tensor(1.0), atol=1e-5)


def test_losses_match_official(official):
    _, io, _ = official
    losses = json.loads((REF / "case_a_losses.json").read_text())
    targets = np.load(REF / "case_a_loss_targets.npz")
    hazards = torch.from_numpy(io["hazards"])
    surv = torch.from_numpy(io["S"])
    for y in range(4):
        for c in (0, 1):
            for alpha in (0.0, 0.15, 0.4):
                got = nll_loss(hazards, surv, torch.tensor([y]), torch.tensor([c]), alpha=alpha)
                assert abs(float(got) - losses[f"nll_Y{y}_c{c}_alpha{alpha}"]) < TOL
    rec = [torch.from_numpy(io[f"reconstructed_omic_{i}"]) for i in range(6)]
    tgt = [torch.from_numpy(targets[f"target_omic_{i}"]) for i in range(6)]
    sce, mse = reconstruction_loss(rec, tgt)
    assert abs(float(sce) - losses["sce_sum_alpha3"]) < TOL
    assert abs(float(mse) - losses["mse_sum"]) < TOL
    total, parts = ghanet_loss(hazards, surv, rec, tgt, torch.tensor([2]), torch.tensor([0]))
    assert abs(float(total) - losses["total_loss_Y2_c0_alpha0"]) < TOL
    assert set(parts) == {"nll", "sce", "mse"}


def small_model(seed=0, **kw) -> GHANet:
    torch.manual_seed(seed)
    cfg = GHANetConfig(
        omic_sizes=(3, 5, 4, 2, 6, 3), input_dim=16, width=32, heads=2, dim_head=16,
        gate_dim=16, compress_dim=8, ffn_mult=2, **kw,
    )
    return GHANet(cfg).eval()


def test_batched_forward_equals_per_bag():
    model = small_model()
    lengths = [37, 5, 1, 120, 4]
    torch.manual_seed(1)
    bags = [torch.randn(n, 16) for n in lengths]
    n_max = max(lengths)
    x = torch.zeros(len(bags), n_max, 16)
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : len(b)] = b
        x[i, len(b):] = 1e3  # padding content must not matter
        mask[i, : len(b)] = True
    with torch.no_grad():
        batch = model.forward_batch(x, mask)
        for i, b in enumerate(bags):
            single = model.forward_bag(b)
            one = batch.bag(i, len(b))
            for name in ("hazards", "survival", "risk", "morphology_attention", "genome_attention"):
                assert torch.allclose(getattr(one, name), getattr(single, name), atol=1e-5), name
            for r1, r2 in zip(one.reconstructed, single.reconstructed):
                assert torch.allclose(r1, r2, atol=1e-5)
            # padding gets no attention at all
            assert torch.all(batch.morphology_attention[i, len(b):] == 0)
            assert torch.all(batch.genome_attention[i, :, len(b):] == 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_tiny_bags_keep_at_least_one_patch_per_token(n):
    model = small_model()
    with torch.no_grad():
        out = model.forward_bag(torch.randn(n, 16))
    assert torch.isfinite(out.hazards).all()
    assert torch.all((out.genome_attention > 0).sum(dim=1) >= 1)


def test_topk_per_bag_length():
    sim = torch.arange(20, dtype=torch.float32).repeat(2, 3, 1)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 10:] = False
    edge = topk_edge_mask(sim, mask, 0.2)
    assert edge[0].sum(dim=1).tolist() == [4, 4, 4]  # int(20 * 0.2)
    assert edge[1].sum(dim=1).tolist() == [2, 2, 2]  # int(10 * 0.2), among its own patches
    assert edge[1, 0, 8:10].all() and not edge[1, 0, 10:].any()


def test_empty_bag_is_a_clear_error():
    model = small_model()
    with pytest.raises(ValueError, match="empty bag"):
        model.forward_bag(torch.zeros(0, 16))
    x = torch.randn(2, 5, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="empty bag"):
        model.forward_batch(x, mask)


def test_wrong_feature_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match="another encoder"):
        small_model().forward_bag(torch.randn(10, 1024))


def test_second_cross_attention_is_used_outside_official_mode():
    native = small_model(official_compat=False)
    compat = small_model(official_compat=True)
    compat.load_state_dict(native.state_dict())
    x = torch.randn(30, 16)
    with torch.no_grad():
        a, b = native.forward_bag(x), compat.forward_bag(x)
    assert not torch.allclose(a.hazards, b.hazards)
    # in official mode the second block has no influence
    with torch.no_grad():
        for p in compat.cab.cross_attn[1].parameters():
            p.add_(1.0)
        c = compat.forward_bag(x)
    assert torch.allclose(b.hazards, c.hazards)


def test_training_step_reaches_all_used_parameters():
    model = small_model().train()
    x = torch.randn(3, 40, 16)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[2, 10:] = False
    out = model(x, mask)
    targets = [torch.randn(3, s) for s in model.config.omic_sizes]
    loss, _ = ghanet_loss(out.hazards, out.survival, out.reconstructed, targets,
                          torch.tensor([0, 1, 3]), torch.tensor([0.0, 1.0, 0.0]))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    assert out.genome_attention.requires_grad is False  # the genome guide is detached


def test_config_validation():
    with pytest.raises(ValueError, match="one reconstruction size per token"):
        GHANetConfig(omic_sizes=(1, 2))
    with pytest.raises(ValueError, match="must equal width"):
        GHANetConfig(omic_sizes=(1,) * 6, width=64, heads=3, dim_head=16)


def test_checkpoint_errors_list_the_keys(tmp_path, official):
    model, _, _ = official
    state = torch.load(REF / "case_a_official_state_dict.pt", weights_only=True)
    del state["ln1.weight"]
    state["extra.layer"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(bad)
    assert "norm_ffn.weight" in str(err.value) and "extra.layer" in str(err.value)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_loading_never_unpickles_code(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, evil)
    with pytest.raises(CheckpointError):
        load_official_checkpoint(evil)
    assert "never run" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "missing.pt")
