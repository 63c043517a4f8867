"""Baselines: shared survival head, padded batches equal single bags, registry, bundles."""

from __future__ import annotations

import pytest
import torch

from napari_ghanet.models.baselines import (
    ABMIL,
    ABMILSNN,
    SNN,
    build_model,
    model_inputs,
)
from napari_ghanet.models.bundle import load_bundle, save_bundle
from napari_ghanet.models.ghanet import GHANet
from napari_ghanet.models.losses import nll_loss

D, G = 12, 20
SMALL = {
    "abmil": {"input_dim": D, "hidden": 16, "attn_dim": 8},
    "snn": {"omic_dim": G, "hidden": 16},
    "abmil_snn": {"input_dim": D, "omic_dim": G, "hidden": 16, "attn_dim": 8,
                  "omic_hidden": 16, "fusion_dim": 16},
    "ghanet": {"omic_sizes": [2, 3, 2, 4, 3, 2], "input_dim": D, "width": 32, "heads": 2,
               "dim_head": 16, "gate_dim": 8, "compress_dim": 8, "ffn_mult": 2},
}


def _bags(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [7, 3, 11]
    x = torch.zeros(3, max(sizes), D)
    mask = torch.zeros(3, max(sizes), dtype=torch.bool)
    for i, n in enumerate(sizes):
        x[i, :n] = torch.randn(n, D, generator=g)
        x[i, n:] = 100.0  # padding must not leak into the result
        mask[i, :n] = True
    omics = torch.randn(3, G, generator=g)
    return sizes, x, mask, omics


@pytest.mark.parametrize("name", ["abmil", "snn", "abmil_snn", "ghanet"])
def test_survival_head_shapes_and_definitions(name):
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name]).eval()
    _, x, mask, omics = _bags()
    out = model(x, mask=mask, omics=omics)
    assert out.hazards.shape == out.survival.shape == out.logits.shape == (3, 4)
    assert out.risk.shape == (3,)
    torch.testing.assert_close(out.hazards, torch.sigmoid(out.logits))
    torch.testing.assert_close(out.survival, torch.cumprod(1 - out.hazards, dim=1))
    torch.testing.assert_close(out.risk, -out.survival.sum(1))
    assert bool((out.survival[:, 1:] <= out.survival[:, :-1]).all())


@pytest.mark.parametrize("name", ["abmil", "abmil_snn"])
def test_padded_batch_equals_each_bag_alone(name):
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name]).eval()
    sizes, x, mask, omics = _bags()
    with torch.no_grad():
        batch = model(x, mask=mask, omics=omics)
        for i, n in enumerate(sizes):
            one = model(x[i : i + 1, :n], omics=omics[i : i + 1])
            torch.testing.assert_close(batch.hazards[i], one.hazards[0], atol=1e-6, rtol=1e-5)
            attn = batch.morphology_attention[i]
            torch.testing.assert_close(attn[:n], one.morphology_attention[0], atol=1e-6, rtol=1e-5)
            assert float(attn[n:].abs().sum()) == 0.0
            assert float(attn.sum()) == pytest.approx(1.0, abs=1e-5)


def test_snn_reads_only_genomics_and_abmil_only_the_slide():
    torch.manual_seed(0)
    snn = build_model("snn", **SMALL["snn"]).eval()
    abmil = build_model("abmil", **SMALL["abmil"]).eval()
    _, x, mask, omics = _bags()
    with torch.no_grad():
        a = snn(None, omics=omics).risk
        b = snn(x * 0, mask=mask, omics=omics).risk
        c = snn(None, omics=omics + 1).risk
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)
        torch.testing.assert_close(abmil(x, mask, omics=omics).risk, abmil(x, mask).risk)
    with pytest.raises(ValueError, match="genomic vector"):
        snn(x, mask)
    with pytest.raises(ValueError, match="expects 20"):
        snn(None, omics=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="another encoder"):
        abmil(torch.zeros(1, 4, D + 1))
    assert model_inputs("snn") == ("omics",)
    assert model_inputs("abmil_snn") == ("wsi", "omics")
    assert model_inputs("ghanet") == ("wsi",)
    assert model_inputs(abmil) == ("wsi",)


def test_snn_is_self_normalizing():
    torch.manual_seed(0)
    snn = SNN(omic_dim=500, hidden=256, depth=3, dropout=0.25).eval()
    with torch.no_grad():
        h = snn.body(torch.randn(4096, 500))
    assert abs(float(h.mean())) < 0.1 and abs(float(h.std()) - 1.0) < 0.15
    assert any(isinstance(m, torch.nn.AlphaDropout) for m in snn.modules())
    assert any(isinstance(m, torch.nn.SELU) for m in snn.modules())


def test_multimodal_uses_both_inputs_and_trains():
    torch.manual_seed(0)
    model = ABMILSNN(**SMALL["abmil_snn"])
    _, x, mask, omics = _bags()
    model.eval()
    with torch.no_grad():
        base = model(x, mask, omics=omics).risk
        assert not torch.allclose(base, model(x, mask, omics=omics + 1).risk)
        assert not torch.allclose(base, model(x + 1, mask, omics=omics).risk)
    model.train()
    out = model(x, mask, omics=omics)
    nll_loss(out.hazards, out.survival, torch.tensor([0, 1, 3]), torch.tensor([0.0, 1.0, 0.0])).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert float(grads["wsi.proj.0.weight"].abs().sum()) > 0
    assert float(grads["omic.0.weight"].abs().sum()) > 0


def test_registry_errors_and_describe_round_trip():
    with pytest.raises(ValueError, match="unknown model 'motcat'"):
        build_model("motcat")
    with pytest.raises(ValueError, match=r"unknown abmil config field\(s\) \['width'\]"):
        build_model("abmil", width=3)
    assert isinstance(build_model("ghanet", **SMALL["ghanet"]), GHANet)
    for cls, name in ((ABMIL, "abmil"), (SNN, "snn"), (ABMILSNN, "abmil_snn")):
        m = build_model(name, **SMALL[name])
        assert isinstance(m, cls)
        d = m.describe()
        assert d["name"] == name
        again = build_model(d["name"], **d["config"])
        assert again.config == m.config


def test_abmil_bundle_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ABMIL(**SMALL["abmil"]).eval()
    meta = {
        "encoder": {"name": "morphometric", "dim": D},  # a registered encoder (spec rules)
        "categories": [{"name": f"c{i}", "genes": []} for i in range(6)],
        "survival_bins_months": [0.0, 5.0, 10.0, 20.0, 50.0],
        "risk_quantiles": {"probs": [0.0, 1.0], "values": [-3.0, -1.0]},
        "intended_use": "unit test",
    }
    bundle = load_bundle(save_bundle(tmp_path / "abmil.safetensors", model, meta))
    assert bundle.metadata["model"]["name"] == "abmil"
    _, x, mask, _ = _bags()
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x, mask).risk, model(x, mask).risk)
