"""G-HANet's ablations and top-k variants: one switch each, differing only where they should."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari_ghanet.training.trainer import SurvivalData, TrainConfig, fit

from napari_ghanet.models.baselines import (
    build_model,
    ghanet_overrides,
    is_ghanet,
    model_inputs,
    topk_model_name,
)
from napari_ghanet.models.ghanet import GHANet

SIZES = (3, 4)
SMALL = dict(omic_sizes=SIZES, num_tokens=2, input_dim=8, width=16, heads=2, dim_head=8,
             gate_dim=8, compress_dim=8, ffn_mult=2)


def _pair(variant: str):
    torch.manual_seed(0)
    full = build_model("ghanet", **SMALL).eval()
    other = build_model(variant, **SMALL).eval()
    other.load_state_dict(full.state_dict())  # same weights: the switch is the only change
    return full, other


def _bags():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 8, generator=g)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    return x, mask


def test_names_and_defaults():
    assert GHANet(**SMALL).config.reconstruction and GHANet(**SMALL).config.genome_edges
    assert GHANet(**SMALL).config.hypergraph
    assert ghanet_overrides("ghanet-no-recon") == {"reconstruction": False}
    assert ghanet_overrides("ghanet-no-genome") == {"genome_edges": False}
    assert ghanet_overrides("ghanet-no-hyper") == {"hypergraph": False}
    assert topk_model_name(0.1) == "ghanet@0.1" and ghanet_overrides("ghanet@0.1") == {"ratio": 0.1}
    assert ghanet_overrides("ghanet@0") is None and ghanet_overrides("ghanet@x") is None
    assert not is_ghanet("amil") and is_ghanet("ghanet@0.5")
    assert build_model("ghanet@0.35", **SMALL).config.ratio == 0.35
    assert all(model_inputs(n) == ("wsi",) for n in ("ghanet-no-recon", "ghanet@0.1"))
    # the same parameters: a variant's checkpoint is a G-HANet checkpoint
    for v in ("ghanet-no-recon", "ghanet-no-genome", "ghanet-no-hyper", "ghanet@0.5"):
        a, b = _pair(v)
        assert a.state_dict().keys() == b.state_dict().keys()


def test_no_recon_changes_only_the_reconstruction():
    full, other = _pair("ghanet-no-recon")
    x, mask = _bags()
    with torch.no_grad():
        a, b = full(x, mask), other(x, mask)
    assert len(a.reconstructed) == 2 and b.reconstructed == []
    assert torch.equal(a.hazards, b.hazards)  # reconstruction never feeds the prediction
    assert torch.equal(a.genome_attention, b.genome_attention)


def test_no_genome_uses_the_morphology_attention_for_every_hyperedge():
    full, other = _pair("ghanet-no-genome")
    x, mask = _bags()
    seen = {}
    other.hyper.register_forward_hook(lambda m, inp, out: seen.update(G=inp[1]))
    with torch.no_grad():
        a, b = full(x, mask), other(x, mask)
    G = seen["G"]
    assert torch.allclose(G, b.morphology_attention[:, None, :].expand_as(G))
    assert torch.equal(a.morphology_attention, b.morphology_attention)
    for ra, rb in zip(a.reconstructed, b.reconstructed):  # CAB untouched
        assert torch.equal(ra, rb)
    assert not torch.allclose(a.hazards, b.hazards)


def test_no_hyper_pools_with_the_hyperedge_weights():
    full, other = _pair("ghanet-no-hyper")
    x, mask = _bags()
    calls = []
    other.hyper.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        a, b = full(x, mask), other(x, mask)
        # bypassing the hypergraph MLP in the full model gives the ablation exactly
        full.hyper.forward = lambda h, G: torch.matmul(G, h)
        c = full(x, mask)
    assert calls == []
    assert torch.equal(b.hazards, c.hazards)
    assert not torch.allclose(a.hazards, b.hazards)
    assert torch.equal(a.genome_attention, b.genome_attention)


def test_topk_ratio_changes_the_genome_edges_only():
    full, other = _pair("ghanet@0.5")
    x, mask = _bags()
    with torch.no_grad():
        a, b = full(x, mask), other(x, mask)
    k_full = (a.genome_attention[0] > 1e-6).sum(dim=-1)
    k_half = (b.genome_attention[0] > 1e-6).sum(dim=-1)
    assert k_full.tolist() == [6, 6] and k_half.tolist() == [15, 15]  # 30 patches
    assert torch.equal(a.similarity, b.similarity)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    bags = [rng.normal(size=(int(rng.integers(5, 15)), 8)).astype(np.float32) for _ in range(n)]
    return SurvivalData(
        ids=[f"p{i}" for i in range(n)], y=rng.integers(0, 4, n), c=rng.integers(0, 2, n),
        times=rng.uniform(1, 50, n),
        targets=[rng.normal(size=(n, s)).astype(np.float32) for s in SIZES],
        bag=lambda i: bags[i],
    )


def test_no_recon_trains_on_the_nll_alone():
    cfg = TrainConfig(epochs=1, accumulation=8, batch_size=4, device="cpu")
    hist = {}
    for name in ("ghanet", "ghanet-no-recon"):
        torch.manual_seed(0)
        hist[name] = fit(build_model(name, **SMALL), _data(), cfg).history[0]
    assert {"train_sce", "train_mse"} <= set(hist["ghanet"])
    assert "train_sce" not in hist["ghanet-no-recon"] and "train_nll" in hist["ghanet-no-recon"]
    assert hist["ghanet-no-recon"]["train_loss"] == pytest.approx(hist["ghanet-no-recon"]["train_nll"])
