"""End to end: synthetic cohort -> `ghanet-train cv` -> resume -> `bundle` -> load_bundle,
and the SNN baseline's honest c-index on the real TCGA genomics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from napari_ghanet.training.cli import main
from napari_ghanet.training.cv import load_fold_checkpoint

from napari_ghanet.io.features import load_features
from napari_ghanet.models.bundle import load_bundle

TCGA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga"
@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are small: one thread is as fast, and immune to oversubscribed CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL_GHANET = json.dumps({"width": 32, "heads": 2, "dim_head": 16, "gate_dim": 16,
                           "compress_dim": 8, "ffn_mult": 2})


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--patients", "60", "--folds", "3",
                 "--feature-dim", "16", "--patches-min", "20", "--patches-max", "50"]) == 0
    return out


def _cv(synth, out, *extra):
    return main(["cv", "--cohort", str(synth / "cohort.csv"),
                 "--signatures", str(synth / "signatures.csv"), "--splits", str(synth / "splits"),
                 "--features", str(synth / "features"), "--model", "ghanet", "--out", str(out),
                 "--folds", "0", "1", "--epochs", "3", "--lr", "1e-3", "--accumulation", "8",
                 "--batch-size", "8", "--model-config", SMALL_GHANET, *extra])


def test_synthetic_cohort_has_the_real_formats(synth):
    table = pd.read_csv(synth / "cohort.csv")
    assert list(table.columns[:4]) == ["case_id", "slide_id", "survival_months", "censorship"]
    assert table.case_id.nunique() == 60 and len(table) > 60  # some patients have 2 slides
    genes = [c for c in table.columns[4:]]
    assert genes and all(c.endswith(("_rnaseq", "_cnv")) for c in genes)
    assert set(table.censorship) == {0, 1}
    sig = pd.read_csv(synth / "signatures.csv")
    assert sig.shape[1] == 6
    split = pd.read_csv(synth / "splits" / "splits_0.csv")
    assert not set(split.train.dropna()) & set(split.val.dropna())
    slide = table.slide_id[0]
    assert slide.endswith(".svs")
    feats = load_features(synth / "features" / f"{slide[:-4]}.h5")
    assert feats.features.shape[1] == 16 and feats.coords.shape == (len(feats), 2)
    assert feats.attrs["encoder"] == "synthetic" and feats.encoder_spec["dim"] == 16
    # Survival depends on the pathway activities that the genes read.
    latent = pd.read_csv(synth / "latent.csv")
    assert latent.case_id.tolist() == table.drop_duplicates("case_id").case_id.tolist()
    assert "Generative model" in (synth / "README.md").read_text()


def test_cv_resume_bundle_end_to_end(synth, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cv(synth, run) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["model"] == "ghanet" and res["n_folds"] == 2
    for key in ("c_index_mean", "c_index_std", "c_index_optimistic_mean", "uno_c_index_mean",
                "auc_mean_mean", "ibs_mean", "km"):
        assert key in res
    f0, f1 = res["folds"]
    for f in (f0, f1):
        assert set(f) >= {"c_index", "c_index_optimistic", "n_train", "n_test", "history"}
        assert f["n_train"] + f["n_test"] == 60 and len(f["history"]) == 3
        assert f["c_index_optimistic"] >= max(h["test_c_index"] for h in f["history"]) - 1e-12
        assert f["c_index"] == pytest.approx(f["history"][-1]["test_c_index"])  # last epoch
    assert np.mean([f0["c_index"], f1["c_index"]]) == pytest.approx(res["c_index_mean"])
    for name in ("metrics.md", "km.png", "c_index_folds.png", "learning_curves.png",
                 "fold_0.safetensors", "fold_1.safetensors", "run.json"):
        assert (run / name).is_file(), name
    err = capsys.readouterr().err
    assert "epoch   3/3" in err and "held-out c-index" in err

    # The same folds as parallel tasks on a local Dask cluster: the same results.
    assert _cv(synth, tmp_path / "dask", "--cluster", "local:2") == 0
    assert "Dask local cluster: 2 worker process(es)" in capsys.readouterr().err
    par = json.loads((tmp_path / "dask" / "results.json").read_text())
    assert par["c_index_mean"] == res["c_index_mean"]
    for a, b in zip(res["folds"], par["folds"]):
        assert a["predictions"] == b["predictions"] and a["c_index"] == b["c_index"]
    assert _cv(synth, tmp_path / "bad", "--cluster", "remote:9") == 2
    assert "use local:N" in capsys.readouterr().err

    # A fold checkpoint reproduces its held-out predictions.
    model, header = load_fold_checkpoint(run / "fold_0.safetensors")
    assert header["model_config"]["omic_sizes"] == f0["recon_gene_counts"]
    case = f0["predictions"]["case_id"][0]
    table = pd.read_csv(synth / "cohort.csv")
    bags = [load_features(synth / "features" / f"{s[:-4]}.h5").features
            for s in table.slide_id[table.case_id == case]]
    with torch.no_grad():
        risk = model(torch.from_numpy(np.concatenate(bags))[None]).risk.item()
    assert risk == pytest.approx(f0["predictions"]["risk"][0], abs=1e-5)

    # Interrupted run: fold 1 lost. Without --resume the folder is protected.
    before = (run / "fold_0.json").stat().st_mtime_ns
    for name in ("fold_1.json", "fold_1.safetensors", "results.json"):
        (run / name).unlink()
    assert _cv(synth, run) == 2
    assert "--resume" in capsys.readouterr().err
    assert _cv(synth, run, "--resume") == 0
    assert "kept from the interrupted run" in capsys.readouterr().err
    assert (run / "fold_0.json").stat().st_mtime_ns == before
    again = json.loads((run / "results.json").read_text())
    assert again["folds"][1]["c_index"] == pytest.approx(f1["c_index"], abs=1e-6)  # seeded
    assert _cv(synth, run, "--resume", "--lr", "1e-2") == 2
    assert "different settings (train)" in capsys.readouterr().err

    # Bundles: final model on all patients, and one fold's model.
    final = tmp_path / "final.safetensors"
    assert main(["bundle", str(run), "--out", str(final)]) == 0
    b = load_bundle(final)
    meta = b.metadata
    assert meta["model"]["name"] == "ghanet" and meta["provenance"]["n_patients"] == 60
    assert b.encoder.name == "synthetic" and b.encoder.dim == 16
    assert [len(g) for g in b.gene_names] == meta["model"]["config"]["omic_sizes"]
    assert [len(s) for s in meta["genomic_stats"]["std"]] == meta["model"]["config"]["omic_sizes"]
    assert len(b.bin_edges_months) == 5 and b.bin_edges_months[0] == 0
    assert meta["metrics"]["c_index_mean"] == pytest.approx(res["c_index_mean"], abs=0.2)
    assert "Research use only" in b.intended_use
    q = np.asarray(b.risk_quantiles["values"])
    assert np.all(np.diff(q) >= 0) and 0 <= b.percentile(float(np.median(q))) <= 100
    with torch.no_grad():
        out = b.model.forward_bag(torch.from_numpy(bags[0]))
    assert out.genome_attention.shape == (6, len(bags[0]))

    fold = tmp_path / "fold.safetensors"
    assert main(["bundle", str(run), "--out", str(fold), "--mode", "fold", "--fold", "0"]) == 0
    fb = load_bundle(fold)
    assert fb.bin_edges_months == pytest.approx(header["bin_edges_months"])
    with torch.no_grad():
        torch.testing.assert_close(fb.model.forward_bag(torch.from_numpy(bags[0])).risk,
                                   model.forward_bag(torch.from_numpy(bags[0])).risk)
    # Folds that reconstruct different significant genes cannot be averaged.
    other = load_fold_checkpoint(run / "fold_1.safetensors")[1]
    rc = main(["bundle", str(run), "--out", str(tmp_path / "e.safetensors"), "--mode", "ensemble"])
    if header["categories"] != other["categories"]:
        assert rc == 2 and "--recon-genes all" in capsys.readouterr().err
    else:
        assert rc == 0


def test_ensemble_bundle_of_a_recon_all_run(synth, tmp_path):
    run = tmp_path / "run_all"
    assert _cv(synth, run, "--recon-genes", "all", "--epochs", "1") == 0
    out = tmp_path / "ens.safetensors"
    assert main(["bundle", str(run), "--out", str(out), "--mode", "ensemble"]) == 0
    b = load_bundle(out)
    assert b.metadata["model"]["name"] == "ensemble" and b.metadata["model"]["n_members"] == 2
    members = [load_fold_checkpoint(run / f"fold_{k}.safetensors")[0] for k in (0, 1)]
    x = torch.randn(30, 16)
    with torch.no_grad():
        want = torch.stack([m.forward_bag(x).survival for m in members]).mean(0)
        torch.testing.assert_close(b.model.forward_bag(x).survival, want)


def test_bad_inputs_give_clear_errors(synth, tmp_path, capsys):
    assert main(["cv", "--cohort", str(synth / "nope.csv"), "--signatures", "x", "--splits", "y",
                 "--model", "snn", "--out", str(tmp_path / "r")]) == 2
    assert "cohort table not found" in capsys.readouterr().err
    feats = tmp_path / "few"
    feats.mkdir()
    for p in sorted((synth / "features").glob("*.h5"))[:40]:
        (feats / p.name).symlink_to(p)
    args = ["cv", "--cohort", str(synth / "cohort.csv"), "--signatures",
            str(synth / "signatures.csv"), "--splits", str(synth / "splits"), "--features",
            str(feats), "--model", "abmil", "--epochs", "1", "--folds", "0"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "have no feature file" in err and "--allow-missing" in err
    assert main([*args, "--out", str(tmp_path / "r2"), "--allow-missing",
                 "--model-config", '{"hidden": 16, "attn_dim": 8}']) == 0
    res = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert res["skipped_counts"]["no_features"] > 0
    assert res["folds"][0]["n_train"] + res["folds"][0]["n_test"] < 60
    assert main(["bundle", str(tmp_path / "r2"), "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "only ghanet runs can be bundled" in capsys.readouterr().err


# The SNN recipe below (width 64, AlphaDropout 0.5, weight decay 0.01, otherwise the
# paper's defaults) was chosen by inner cross-validation on the training patients only.
SNN_RECIPE = ["--model", "snn", "--weight-decay", "0.01", "--model-config",
              '{"hidden": 64, "dropout": 0.5}']


@pytest.mark.parametrize("cancer,floor", [("blca", 0.58), ("ucec", 0.62)])
def test_snn_honest_c_index_on_real_tcga(cancer, floor, tmp_path):
    out = tmp_path / cancer
    assert main(["cv", "--cohort", str(TCGA / f"tcga_{cancer}_all_clean.csv.zip"),
                 "--signatures", str(TCGA / "signatures.csv"),
                 "--splits", str(TCGA / "splits" / f"tcga_{cancer}"), "--out", str(out),
                 *SNN_RECIPE]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["folds"]) == 5
    assert res["c_index_mean"] >= floor
    assert res["c_index_optimistic_mean"] >= res["c_index_mean"]
    assert res["uno_c_index_mean"] > 0.5 and res["km"]["p_value"] < 0.05
