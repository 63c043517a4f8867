"""`ghanet-train cv` with the comparison models, ablations and top-k ratios side by side:
one comparison table with p-values against G-HANet; resumable; bundles refuse what the
plugin cannot run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from napari_ghanet.training.cli import main
from napari_ghanet.training.compare import bootstrap_c_difference, expand_models

ALL = ["ghanet", "amil", "deepattnmisl", "transmil", "mcat", "survpath", "ghanet-no-recon",
       "ghanet-no-genome", "ghanet-no-hyper", "snn", "abmil_snn"]
SMALL = json.dumps({
    "ghanet": {"width": 16, "heads": 2, "dim_head": 8, "gate_dim": 8, "compress_dim": 8,
               "ffn_mult": 2},
    "amil": {"hidden": 16, "attn_dim": 8, "rho_dim": 8},
    "deepattnmisl": {"num_clusters": 4, "hidden": 16, "attn_dim": 8, "rho_dim": 8},
    "transmil": {"width": 16, "heads": 2, "landmarks": 8},
    "mcat": {"width": 16, "heads": 2, "ffn_dim": 16},
    "survpath": {"width": 16, "dim_head": 8, "logit_hidden": 8},
    "snn": {"hidden": 16}, "abmil_snn": {"hidden": 16, "attn_dim": 8, "omic_hidden": 16,
                                        "fusion_dim": 16},
})


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--patients", "40", "--folds", "2",
                 "--feature-dim", "16", "--patches-min", "12", "--patches-max", "30"]) == 0
    return out


def _cv(synth, out, models, *extra):
    return main(["cv", "--cohort", str(synth / "cohort.csv"),
                 "--signatures", str(synth / "signatures.csv"), "--splits", str(synth / "splits"),
                 "--features", str(synth / "features"), "--model", *models, "--out", str(out),
                 "--epochs", "1", "--lr", "1e-3", "--accumulation", "8", "--batch-size", "8",
                 "--model-config", SMALL, *extra])


def test_every_model_in_one_comparison(synth, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cv(synth, run, ALL, "--topk-ratio", "0.1", "0.5") == 0
    names = ALL + ["ghanet@0.1", "ghanet@0.5"]
    table = pd.read_csv(run / "comparison.csv")
    assert table["model"].tolist() == names
    assert (table["folds"] == 2).all()
    assert table["c_index_mean"].between(0, 1).all()
    assert table["ibs_mean"].notna().all() and table["uno_c_index_mean"].notna().all()
    ref = table.set_index("model").loc["ghanet"]
    assert np.isnan(ref["p_bootstrap"]) and np.isnan(ref["delta_vs_ghanet"])
    others = table[table["model"] != "ghanet"]
    assert others["p_bootstrap"].between(0, 1).all()
    assert others["p_paired_folds"].between(0, 1).all()
    # ghanet@0.2 would be plain ghanet; the ratios are their own runs
    cfg = json.loads((run / "ghanet@0.1" / "run.json").read_text())
    assert cfg["model"] == "ghanet@0.1"
    for name in names:
        res = json.loads((run / name / "results.json").read_text())
        assert res["model"] == name and len(res["folds"]) == 2
        # same folds and patients for every model
        assert [f["predictions"]["case_id"] for f in res["folds"]] == [
            f["predictions"]["case_id"] for f in json.loads(
                (run / "ghanet" / "results.json").read_text())["folds"]]
    md = (run / "comparison.md").read_text()
    assert "optimistic" in md and "| mcat | wsi+omics |" in md and "| amil | wsi |" in md
    assert (run / "comparison.png").stat().st_size > 1000
    assert (run / "topk.png").stat().st_size > 1000
    # DeepAttnMISL's phenotype clusters are computed once and cached beside the features
    cached = sorted((synth / "features").glob("*.clusters4.npy"))
    assert len(cached) == len(list((synth / "features").glob("*.h5")))
    # multimodal models read genomics at inference: the plugin cannot run them
    capsys.readouterr()
    assert main(["bundle", str(run / "mcat"), "--out", str(tmp_path / "m.safetensors"),
                 "--mode", "fold", "--fold", "0"]) == 2
    assert "genomics at inference" in capsys.readouterr().err
    # resumable: a second call keeps every fold and rewrites the same table
    before = (run / "comparison.csv").read_text()
    assert _cv(synth, run, ALL, "--topk-ratio", "0.1", "0.5", "--resume") == 0
    assert "kept from the interrupted run" in capsys.readouterr().err
    assert (run / "comparison.csv").read_text() == before


def test_survpath_pathway_file(synth, tmp_path):
    sig = pd.read_csv(synth / "signatures.csv")
    genes = [g for g in sig.iloc[:, 0].dropna().tolist()] + [g for g in sig.iloc[:, 1].dropna()]
    pathways = pd.DataFrame({"P1": pd.Series(genes[:5]), "P2": pd.Series(genes[5:12]),
                             "P3": pd.Series(genes[12:20]), "NONE": pd.Series(["NOT_A_GENE"])})
    path = tmp_path / "pathways.csv"
    pathways.to_csv(path, index=False)
    run = tmp_path / "sp"
    assert _cv(synth, run, ["survpath"], "--pathways", str(path), "--folds", "0") == 0
    res = json.loads((run / "results.json").read_text())
    from safetensors import safe_open

    with safe_open(str(run / "fold_0.safetensors"), "pt") as f:
        header = json.loads(f.metadata()["ghanet_fold"])
    sizes = header["model_config"]["omic_sizes"]
    assert len(sizes) == 3 and all(1 <= s <= 8 for s in sizes)  # NONE matched nothing
    assert res["run"]["pathways"] == str(path)


def test_bad_ratio_and_names():
    assert expand_models(["ghanet", "amil", "ghanet"], [0.1, 0.1]) == ["ghanet", "amil", "ghanet@0.1"]
    with pytest.raises(ValueError, match="topk-ratio 1.5"):
        expand_models(["ghanet"], [1.5])


def test_bootstrap_difference_detects_a_better_model():
    rng = np.random.default_rng(0)
    n = 120
    t = rng.exponential(10, n)
    e = rng.random(n) < 0.7
    folds = np.arange(n) % 3
    good = -t + rng.normal(0, 2, n)
    noise = rng.normal(0, 1, n)
    r = bootstrap_c_difference(t, e, folds, good, noise, n_boot=300)
    assert r["c_a"] > 0.8 and 0.35 < r["c_b"] < 0.65 and r["p"] < 0.01
    assert r["ci95"][0] > 0
    same = bootstrap_c_difference(t, e, folds, good, good, n_boot=100)
    assert same["delta"] == 0 and same["p"] == 1.0
