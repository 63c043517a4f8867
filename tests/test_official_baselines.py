"""The comparison models against their official code's conformance vectors, and their rules
on other bag sizes, seeds and checkpoints made here (held-out-like cases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ghanet.errors import CheckpointError
from napari_ghanet.models import load_official_baseline, phenotype_clusters
from napari_ghanet.models.baselines import build_model, model_inputs
from napari_ghanet.models.losses import nll_loss
from napari_ghanet.models.official import _config_from_official, build_official
from napari_ghanet.models.official_mil import nystrom_attention, transmil_square_pad

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "baselines"
TOL = 1e-5
CASES = {"amil": "AMIL", "deepattnmisl": "DeepAttnMISL", "mcat": "MCAT_Surv",
         "transmil": "TransMIL", "survpath": "SurvPath"}
#: our attention name -> the io.npz key
ATTENTION_KEYS = {
    "amil": {"attention_raw": "attention_raw", "attention_softmax": "attention_softmax"},
    "deepattnmisl": {"attention_raw": "attention_raw", "attention_softmax": "attention_softmax"},
    "mcat": {"coattn": "attention_coattn", "path": "attention_path", "omic": "attention_omic"},
    "survpath": {"attn_pathways": "attn_pathways", "cross_attn_pathways": "cross_attn_pathways",
                 "cross_attn_histology": "cross_attn_histology"},
    "transmil": {},
}


def _case(name: str):
    folder = REF / CASES[name]
    assert folder.is_dir(), f"conformance vectors missing: {folder}"
    meta = json.loads((folder / "case_a_meta.json").read_text())
    io = np.load(folder / "case_a_io.npz")
    return folder, meta, io


def _inputs(meta: dict, io) -> dict:
    sizes = meta.get("omic_sizes") or meta.get("pathway_sizes")
    return {
        "x_path": torch.from_numpy(io["x_path"]),
        "omics": [torch.from_numpy(io[f"x_omic{i + 1}"]) for i in range(len(sizes))] if sizes else None,
        "cluster_id": torch.from_numpy(io["cluster_id"]) if "cluster_id" in io else None,
    }


@pytest.fixture(scope="module", params=sorted(CASES))
def official(request):
    name = request.param
    folder, meta, io = _case(name)
    model = load_official_baseline(name, folder / "case_a_official_state_dict.pt",
                                   **meta["constructor_kwargs"])
    with torch.no_grad():
        out = model.forward_bag(**_inputs(meta, io))
    return name, model, meta, io, out


def _err(a: torch.Tensor, e: np.ndarray) -> float:
    a = a.detach().numpy().reshape(-1)
    e = np.asarray(e, np.float64).reshape(-1)
    assert a.shape == e.shape
    return float(np.abs(a - e).max())


def test_reproduces_the_official_outputs(official):
    name, model, _meta, io, out = official
    assert not model.training
    for ours, key in (("hazards", "hazards"), ("survival", "S"), ("risk", "risk"), ("logits", "logits")):
        assert _err(getattr(out, ours), io[key]) < TOL, (name, key)
    for ours, key in ATTENTION_KEYS[name].items():
        assert _err(out.attention[ours], io[key]) < TOL, (name, key)
    if "Y_hat" in io:
        assert int(out.logits.argmax()) == int(np.asarray(io["Y_hat"]).reshape(-1)[0])


def test_official_losses(official):
    name, _model, _meta, _io, out = official
    losses = json.loads((REF / CASES[name] / "case_a_losses.json").read_text())
    assert len(losses) == 24
    for key, value in losses.items():
        _, y, c, a = key.split("_")
        got = nll_loss(out.hazards[None], out.survival[None], torch.tensor([int(y[1:])]),
                       torch.tensor([float(c[1:])]), alpha=float(a[5:]))
        assert abs(float(got) - value) < TOL, (name, key)


def test_transmil_keeps_the_first_rows_of_the_front_padded_sequence():
    """nystrom-attention 0.0.9's quirk: output rows = the first T of the padded sequence."""
    folder, meta, io = _case("transmil")
    model = load_official_baseline("transmil", folder / "case_a_official_state_dict.pt",
                                   **meta["constructor_kwargs"])
    h = torch.from_numpy(io["intermediate_fc1"])
    assert h.shape[1] == 500
    h, g = transmil_square_pad(h)
    assert g == 23 and h.shape[1] == 529
    h = torch.cat([model.cls_token, h], dim=1)
    with torch.no_grad():
        attn = nystrom_attention(model.layer1.attn, model.layer1.norm(h))
        assert _err(attn, io["intermediate_layer1_attn"]) < TOL
        # the rows kept are the FIRST T of the padded sequence; the "fixed" version (the
        # last T rows, as newer nystrom-attention keeps) is another model
        t = h.shape[1]
        padded = torch.nn.functional.pad(model.layer1.norm(h), (0, 0, 768 - t, 0))
        full = nystrom_attention(model.layer1.attn, padded)
        assert full.shape[1] == 768  # front-padded: 238 zero rows, then the T tokens
        assert _err(full[:, :t], io["intermediate_layer1_attn"]) < TOL
        assert _err(full[:, -t:], io["intermediate_layer1_attn"]) > 1e-3
    # repeated patches: the square grid takes the bag's FIRST patches again
    x = torch.arange(5.0).reshape(1, 5, 1)
    padded, g = transmil_square_pad(x)
    assert g == 3 and padded[0, :, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]


SMALL = {
    "amil": dict(input_dim=16, hidden=12, attn_dim=8, rho_dim=8),
    "deepattnmisl": dict(input_dim=16, num_clusters=4, hidden=12, attn_dim=8, rho_dim=8),
    "transmil": dict(input_dim=16, width=16, heads=2, landmarks=4),
    "mcat": dict(input_dim=16, omic_sizes=(3, 5, 4), width=16, heads=2, ffn_dim=32),
    "survpath": dict(input_dim=16, omic_sizes=(3, 5, 4, 2), width=16, dim_head=8, logit_hidden=8),
}


def _bag(name: str, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    sizes = SMALL[name].get("omic_sizes")
    omics = [torch.randn(s, generator=g) for s in sizes] if sizes else None
    cid = torch.randint(0, 4, (n,), generator=g) if name == "deepattnmisl" else None
    return x, omics, cid


#: held-out-like cases: official sizes, other seeds, bag sizes and genomic sizes
HELD_OUT = [(3, 1, (7, 3, 11, 5, 2, 9)), (4, 7, (30, 20, 10, 40, 50, 60)),
            (5, 257, (5, 9, 13, 2, 7, 11, 4)), (6, 600, (100, 200, 300, 400, 500, 600))]


def _official_kwargs(name: str, sizes) -> dict:
    if name == "mcat":
        return {"fusion": "concat", "omic_sizes": list(sizes[:6]), "n_classes": 4}
    if name == "survpath":
        return {"omic_sizes": list(sizes), "num_classes": 4}
    if name == "deepattnmisl":
        return {"omic_input_dim": 0, "fusion": None, "num_clusters": 10, "n_classes": 4}
    if name == "amil":
        return {"omic_input_dim": 0, "fusion": None, "n_classes": 4}
    return {"n_classes": 4}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed, n, sizes", HELD_OUT)
def test_held_out_like_checkpoints_round_trip(name, seed, n, sizes, tmp_path):
    """A checkpoint saved as the official code saves it (.pt) or as safetensors reloads to
    the same outputs; shapes and survival rules hold for any bag size."""
    from safetensors.torch import save_file

    kwargs = _official_kwargs(name, sizes)
    torch.manual_seed(seed)
    model = build_official(name, **_config_from_official(name, kwargs)).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    g = torch.Generator().manual_seed(seed + 1000)
    x = 0.2 + 0.5 * torch.randn(n, 1024, generator=g)
    omics = [torch.randn(s, generator=g) for s in kwargs["omic_sizes"]] if "omic_sizes" in kwargs else None
    cid = torch.randint(0, 10, (n,), generator=g) if name == "deepattnmisl" else None
    with torch.no_grad():
        ref = model.forward_bag(x, omics=omics, cluster_id=cid)
        for file in ("m.pt", "m.safetensors"):
            out = load_official_baseline(name, tmp_path / file, **kwargs).forward_bag(
                x, omics=omics, cluster_id=cid)
            assert torch.equal(out.hazards, ref.hazards)
    assert ref.hazards.shape == ref.survival.shape == (4,) and ref.risk.shape == ()
    assert bool((ref.survival[1:] <= ref.survival[:-1]).all())
    assert bool(((ref.hazards > 0) & (ref.hazards < 1)).all())
    assert torch.isclose(ref.risk, -ref.survival.sum())


@pytest.mark.parametrize("name", ["amil", "deepattnmisl", "mcat", "survpath"])
def test_permutation_invariant_models(name):
    torch.manual_seed(0)
    model = build_official(name, **SMALL[name]).eval()
    x, omics, cid = _bag(name, 40, 1)
    perm = torch.randperm(40)
    with torch.no_grad():
        a = model.forward_bag(x, omics=omics, cluster_id=cid)
        b = model.forward_bag(x[perm], omics=omics, cluster_id=None if cid is None else cid[perm])
    assert torch.allclose(a.hazards, b.hazards, atol=1e-6)


def test_transmil_depends_on_patch_order():
    """PPEG places the patches on a grid in bag order: TransMIL is not a set function."""
    torch.manual_seed(0)
    model = build_official("transmil", **SMALL["transmil"]).eval()
    x, _, _ = _bag("transmil", 40, 1)
    with torch.no_grad():
        a = model.forward_bag(x).hazards
        b = model.forward_bag(x[torch.randperm(40)]).hazards
    assert not torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_padded_batches_match_single_bags(name):
    """The trainer's padded, masked batches give each bag's own result."""
    torch.manual_seed(0)
    model = build_official(name, **SMALL[name]).eval()
    # 26 and 30 patches share TransMIL's 6 x 6 grid: they run stacked
    bags = [_bag(name, n, s) for n, s in ((9, 1), (30, 2), (17, 3), (26, 4))]
    x = torch.zeros(4, 30, 16)
    mask = torch.zeros(4, 30, dtype=torch.bool)
    cid = torch.full((4, 30), -1)
    for i, (b, _, c) in enumerate(bags):
        x[i, : len(b)] = b + 0
        mask[i, : len(b)] = True
        if c is not None:
            cid[i, : len(c)] = c
    x[~mask] = 7.0  # padding content must not matter
    omics = None
    if bags[0][1] is not None:
        omics = [torch.stack([b[1][k] for b in bags]) for k in range(len(bags[0][1]))]
    with torch.no_grad():
        batch = model(x, mask, omics=omics, cluster_id=cid if name == "deepattnmisl" else None)
        for i, (b, om, c) in enumerate(bags):
            one = model.forward_bag(b, omics=om, cluster_id=c)
            assert torch.allclose(batch.hazards[i], one.hazards, atol=1e-5), (name, i)


def test_deepattnmisl_empty_cluster_is_a_zero_row():
    torch.manual_seed(0)
    model = build_official("deepattnmisl", **SMALL["deepattnmisl"]).eval()
    x = torch.randn(6, 16)
    cid = torch.tensor([0, 0, 1, 1, 3, 3])  # cluster 2 empty
    emb, counts = model.cluster_embeddings(x[None], torch.ones(1, 6, dtype=torch.bool), cid[None])
    assert counts[0].tolist() == [2, 2, 0, 2]
    assert float(emb[0, 2].abs().max()) == 0.0
    with torch.no_grad():
        out = model.forward_bag(x, cluster_id=cid)
    # the empty cluster's zero row keeps its attention weight; patches share the rest
    a = out.attention["attention_softmax"]
    assert abs(float(out.morphology_attention.sum()) - (1.0 - float(a[2]))) < 1e-5
    assert torch.allclose(out.morphology_attention[:2], a[0] / 2 * torch.ones(2))
    with pytest.raises(ValueError, match="cluster"):
        model.forward_bag(x)


def test_phenotype_clusters_are_deterministic_and_separate_phenotypes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.1, (30, 8)) for m in range(10)]).astype(np.float32)
    ids = phenotype_clusters(x, k=10, seed=0)
    assert ids.dtype == np.int64 and ids.shape == (300,)
    assert np.array_equal(ids, phenotype_clusters(x, k=10, seed=0))
    assert len(set(ids.tolist())) == 10
    assert all(len(set(ids[i * 30:(i + 1) * 30].tolist())) == 1 for i in range(10))
    assert phenotype_clusters(x[:3], k=10).tolist() == [0, 1, 2]


def test_bad_checkpoints_and_keywords_are_refused(tmp_path):
    folder, meta, _ = _case("mcat")
    with pytest.raises(CheckpointError, match="not found"):
        load_official_baseline("mcat", tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_official_baseline("amil", tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_official_baseline("mcat", folder / "case_a_official_state_dict.pt",
                               omic_sizes=[100, 200, 300, 400, 500, 601], n_classes=4)
    with pytest.raises(CheckpointError, match="does not match"):
        load_official_baseline("amil", folder / "case_a_official_state_dict.pt")
    with pytest.raises(CheckpointError, match="unknown comparison model"):
        load_official_baseline("motcat", folder / "case_a_official_state_dict.pt")
    with pytest.raises(CheckpointError, match="fusion"):
        load_official_baseline("amil", REF / "AMIL" / "case_a_official_state_dict.pt", fusion="bilinear")


def test_lightning_prefix_is_accepted(tmp_path):
    folder, meta, io = _case("transmil")
    state = torch.load(folder / "case_a_official_state_dict.pt", weights_only=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "x.ckpt")
    model = load_official_baseline("transmil", tmp_path / "x.ckpt", **meta["constructor_kwargs"])
    with torch.no_grad():
        out = model.forward_bag(torch.from_numpy(io["x_path"]))
    assert _err(out.hazards, io["hazards"]) < TOL


def test_registry_names_and_inputs():
    assert model_inputs("amil") == ("wsi",)
    assert model_inputs("deepattnmisl") == ("wsi", "clusters")
    assert model_inputs("mcat") == model_inputs("survpath") == ("wsi", "omics")
    assert build_model("amil", input_dim=16).config.input_dim == 16
    assert model_inputs("abmil") == ("wsi",)  # the narrower ABMIL keeps its name
    with pytest.raises(ValueError, match="unknown transmil config"):
        build_model("transmil", nope=1)
