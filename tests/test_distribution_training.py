"""The training side of issue 27: the bundle's training-distribution summary from a cohort's
features files, and D-calibration of the cross-validated survival curves."""

from __future__ import annotations

import numpy as np
import pytest
from napari_ghanet.training.calibration import d_calibration, survival_at, write_calibration
from napari_ghanet.training.cli import main

from napari_ghanet.inference.distribution import IN, OUT, assess
from napari_ghanet.models.distribution_summary import summary_problems


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--patients", "30", "--folds", "2",
                 "--feature-dim", "16", "--patches-min", "20", "--patches-max", "40"]) == 0
    return out


def test_training_summary_of_a_feature_cohort(synth):
    from napari_ghanet.training.bundle_cmd import training_summary
    from napari_ghanet.training.cohort import FeatureStore, read_cohort

    cohort = read_cohort(synth / "cohort.csv", synth / "signatures.csv")
    store = FeatureStore(cohort, synth / "features")
    s = training_summary(cohort, store, np.arange(len(cohort.patients)),
                         {"name": "synthetic", "target_mpp": 0.5})
    assert summary_problems(s, 16) == []
    assert s["n_slides"] > 30  # some patients have two slides
    # feature files of another tool record no acquisition: those checks are left out
    assert set(s["checks"]) == {"slide_distance", "patch_outlier_share"}
    from napari_ghanet.training.cohort import _read_features

    slide = next(iter(store.index.values()))
    feats, _ = _read_features(slide)
    assert assess(s, feats, [{}]).verdict == IN
    assert assess(s, feats * 5 + 3, [{}]).verdict == OUT
    # too few slides: no summary, and the bundle is written without one
    assert training_summary(cohort, store, np.arange(2), {"name": "x"}) is None


def test_d_calibration_tells_calibrated_curves_from_overconfident_ones(tmp_path):
    rng = np.random.default_rng(3)
    edges = [0.0, 12.0, 24.0, 48.0, None]
    curve = np.array([0.7, 0.45, 0.2, 0.0])
    mass = -np.diff(np.concatenate([[1.0], curve]))
    n = 400
    k = rng.choice(4, n, p=mass)
    width = np.array([12.0, 12.0, 24.0, 0.0])
    t = np.where(k < 3, np.asarray([0, 12, 24, 48.0])[k] + rng.random(n) * width[k],
                 48.0 + rng.exponential(24.0, n))
    censor = rng.uniform(0, 120, n)
    event = t <= censor
    times = np.minimum(t, censor)
    e = np.array([0, 12, 24, 48, np.inf])
    assert survival_at(np.array([0.0, 6.0, 12.0, 100.0]), np.tile(curve, (4, 1)), e) == \
        pytest.approx([1.0, 0.85, 0.7, 0.2])
    good = d_calibration(times, event, np.tile(curve, (n, 1)), e)
    assert good["p_value"] > 0.01 and sum(good["bin_shares"]) == pytest.approx(1.0)
    over = d_calibration(times, event, np.tile(curve**0.3, (n, 1)), e)  # too optimistic
    assert over["p_value"] < 1e-6
    fold = {"fold": 0, "bin_edges_months": edges,
            "predictions": {"time": times.tolist(), "event": event.astype(int).tolist(),
                            "survival": np.tile(curve, (n, 1)).tolist()}}
    rows = write_calibration([fold, dict(fold, fold=1)], tmp_path, "ghanet")
    assert [r["plot"] for r in rows] == ["calibration_fold_0.png", "calibration_fold_1.png"]
    assert (tmp_path / "calibration_fold_1.png").read_bytes()[:4] == b"\x89PNG"
    assert rows[0]["p_value"] == pytest.approx(good["p_value"])


def test_cv_writes_calibration_for_every_fold(synth, tmp_path):
    import json

    out = tmp_path / "run"
    assert main(["cv", "--cohort", str(synth / "cohort.csv"),
                 "--signatures", str(synth / "signatures.csv"), "--splits", str(synth / "splits"),
                 "--features", str(synth / "features"), "--model", "abmil", "--out", str(out),
                 "--epochs", "1", "--batch-size", "8"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["calibration"]) == res["n_folds"] == 2
    for row in res["calibration"]:
        assert 0 <= row["p_value"] <= 1 and row["statistic"] >= 0
        assert (out / row["plot"]).is_file()
