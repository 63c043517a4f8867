"""Risk groups by the training cohort's tertiles, and the survival plot's horizon."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_ghanet.errors import BundleError
from napari_ghanet.models.bundle import demo_bundle_path, read_bundle_metadata
from napari_ghanet.models.risk import (
    RISK_COLOURS,
    RISK_LABELS,
    followup_p90,
    risk_colour,
    risk_group,
    risk_group_cutpoints,
    risk_groups_metadata,
    risk_percentile,
    risk_text,
    survival_horizon,
)


@pytest.fixture(scope="module")
def demo_meta() -> dict:
    return read_bundle_metadata(demo_bundle_path())


@pytest.fixture(scope="module")
def old_demo_meta(demo_meta) -> dict:
    """The demo bundle as bundles written before the stored risk tertiles and follow-up
    were (the shipped one stores both, see test_the_demo_bundle_stores_...)."""
    return {k: v for k, v in demo_meta.items()
            if k not in ("risk_groups", "followup_p90_months")}


def test_the_demo_bundle_stores_its_tertiles_and_followup(demo_meta):
    cut, labels, source = risk_group_cutpoints(demo_meta)
    assert source == "bundle" and labels == list(RISK_LABELS)
    assert risk_percentile(cut[0], demo_meta) == pytest.approx(100 / 3, abs=2)
    assert risk_percentile(cut[1], demo_meta) == pytest.approx(200 / 3, abs=2)
    h, why = survival_horizon(demo_meta)
    assert demo_meta["followup_p90_months"] > h == pytest.approx(65.295)
    assert "90th percentile of the training cohort's follow-up" in why
    assert "does not store" not in why


def risk_at(meta: dict, p: float) -> float:
    q = meta["risk_quantiles"]
    return float(np.interp(p, q["probs"], q["values"]))


def test_old_demo_bundle_falls_back_to_tertiles_of_its_quantiles(old_demo_meta):
    demo_meta = old_demo_meta
    assert "cutpoints" not in demo_meta.get("risk_groups", {})  # a pre-tertile bundle
    cut, labels, source = risk_group_cutpoints(demo_meta)
    assert source == "risk_quantiles" and labels == list(RISK_LABELS)
    assert cut == pytest.approx([risk_at(demo_meta, 1 / 3), risk_at(demo_meta, 2 / 3)])
    # the slide at the 53rd percentile is intermediate, not "High risk"
    label, pct = risk_group(risk_at(demo_meta, 0.53), demo_meta)
    assert label == "intermediate" and pct == pytest.approx(53.0, abs=0.5)
    assert risk_group(risk_at(demo_meta, 0.10), demo_meta)[0] == "low"
    assert risk_group(risk_at(demo_meta, 0.90), demo_meta)[0] == "high"
    assert risk_group(-1e6, demo_meta) == ("low", 0.0)
    assert risk_group(1e6, demo_meta) == ("high", 100.0)


def test_stored_cutpoints_are_used_and_checked():
    meta = {
        "risk_quantiles": {"probs": np.linspace(0, 1, 11).tolist(),
                           "values": np.linspace(-4, -1, 11).tolist()},
        "risk_groups": {"cutpoints": [-3.5, -3.0], "labels": ["low", "intermediate", "high"]},
    }
    assert risk_group_cutpoints(meta)[2] == "bundle"
    assert risk_group(-3.6, meta)[0] == "low"
    assert risk_group(-3.5, meta)[0] == "intermediate"  # on a cut point: the higher group
    label, pct = risk_group(-2.5, meta)
    assert label == "high" and pct == pytest.approx(50.0)
    assert risk_percentile(-4.0, meta) == 0.0 and risk_percentile(-1.0, meta) == 100.0
    for bad in ([-3.0, -3.5], [float("nan"), 1.0], "x"):
        with pytest.raises(BundleError, match="cutpoints"):
            risk_group_cutpoints({**meta, "risk_groups": {"cutpoints": bad}})
    with pytest.raises(BundleError, match="one more label"):
        risk_group_cutpoints({**meta, "risk_groups": {"cutpoints": [-3.0], "labels": ["a"]}})
    with pytest.raises(BundleError, match="risk_quantiles"):
        risk_group(0.0, {"survival_bins_months": [0, 1]})


def test_colours_and_wording_are_defined_once_per_label():
    assert set(RISK_COLOURS) == set(RISK_LABELS)
    assert len(set(RISK_COLOURS.values())) == 3
    assert all(c.startswith("#") and len(c) == 7 for c in RISK_COLOURS.values())
    assert risk_colour("unknown") == "#666666"
    assert risk_text("high", 91.0) == "High risk (91st percentile of the training cohort)"
    assert risk_text("low", 12) == "Low risk (12th percentile of the training cohort)"
    assert risk_text("intermediate", 52.6) == (
        "Intermediate risk (53rd percentile of the training cohort)")


def test_horizon_of_the_old_demo_bundle_is_the_last_interior_edge(old_demo_meta):
    demo_meta = old_demo_meta
    edges = demo_meta["survival_bins_months"]
    assert edges[-1] > 600  # the cohort's longest follow-up: the 651-month axis of the issue
    h, why = survival_horizon(demo_meta)
    assert h == pytest.approx(edges[-2]) and h < 100
    assert "last finite interior" in why and f"{h:.3g} months" in why


def test_horizon_with_the_stored_followup_percentile():
    meta = {"survival_bins_months": [0.0, 7.7, 26.9, 65.3, 651.2]}
    assert survival_horizon({**meta, "followup_p90_months": 98.0})[0] == 65.3
    h, why = survival_horizon({**meta, "followup_p90_months": 40.0})
    assert h == 26.9 and "90th percentile" in why and "40 months" in why
    h, why = survival_horizon({**meta, "followup_p90_months": 5.0})
    assert h == 5.0 and "every survival-bin edge lies beyond" in why
    # an infinite last edge is stored as null in JSON
    assert survival_horizon({"survival_bins_months": [0, 12.0, 30.0, None]})[0] == 30.0
    assert survival_horizon({"survival_bins_months": [0, 12.0, None],
                             "followup_p90_months": 60.0})[0] == 12.0
    with pytest.raises(BundleError, match="at least two"):
        survival_horizon({"survival_bins_months": [0]})


def test_bundle_metadata_helpers():
    rng = np.random.default_rng(0)
    risks = rng.normal(size=300)
    groups = risk_groups_metadata(risks)
    assert groups["labels"] == list(RISK_LABELS)
    assert groups["cutpoints"] == pytest.approx(np.quantile(risks, [1 / 3, 2 / 3]).tolist())
    json.dumps(groups)
    months = rng.exponential(40, 500)
    assert followup_p90(months) == pytest.approx(np.quantile(months, 0.9))
    with pytest.raises(ValueError):
        followup_p90([np.nan])


@pytest.fixture
def _one_torch_thread():
    """One torch thread for this test only (it was left set for every later test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("_one_torch_thread")
def test_new_bundles_store_tertiles_and_followup(tmp_path):
    """`ghanet-train bundle` writes risk_groups cut points and followup_p90_months."""
    import pandas as pd
    from napari_ghanet.training.cli import main

    synth = tmp_path / "synth"
    assert main(["synth", "--out", str(synth), "--patients", "40", "--folds", "2",
                 "--feature-dim", "16", "--patches-min", "10", "--patches-max", "20"]) == 0
    run = tmp_path / "run"
    small = json.dumps({"width": 16, "heads": 2, "dim_head": 8, "gate_dim": 8,
                        "compress_dim": 4, "ffn_mult": 2})
    assert main(["cv", "--cohort", str(synth / "cohort.csv"),
                 "--signatures", str(synth / "signatures.csv"), "--splits", str(synth / "splits"),
                 "--features", str(synth / "features"), "--model", "ghanet", "--out", str(run),
                 "--folds", "0", "--epochs", "1", "--batch-size", "8", "--accumulation", "8",
                 "--model-config", small]) == 0
    out = tmp_path / "model.safetensors"
    assert main(["bundle", str(run), "--out", str(out), "--mode", "fold"]) == 0
    meta = read_bundle_metadata(out)
    cut, labels, source = risk_group_cutpoints(meta)
    assert source == "bundle" and labels == list(RISK_LABELS) and cut[0] <= cut[1]
    # the cut points are the tertiles of the risks the quantiles describe
    assert risk_percentile(cut[0], meta) == pytest.approx(100 / 3, abs=2)
    assert risk_percentile(cut[1], meta) == pytest.approx(200 / 3, abs=2)
    patients = pd.read_csv(synth / "cohort.csv").drop_duplicates("case_id")
    p90 = meta["followup_p90_months"]
    assert p90 == pytest.approx(np.quantile(patients["survival_months"].to_numpy(float), 0.9))
    h, why = survival_horizon(meta)
    assert h <= p90 and h in [float(e) for e in meta["survival_bins_months"]]
    assert "90th percentile" in why
