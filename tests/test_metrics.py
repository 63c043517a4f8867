"""Survival metrics: Harrell's c-index equals scikit-survival's, and the fold metrics,
summary, markdown and plots behave on real survival times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from napari_ghanet.training import metrics as M
from sksurv.compare import compare_survival
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
UCEC = SHARED / "data" / "tcga" / "tcga_ucec_all_clean.csv.zip"


def _real_survival():
    t = pd.read_csv(UCEC).drop_duplicates("case_id")
    return t["survival_months"].to_numpy(float), t["censorship"].to_numpy() == 0


@pytest.mark.parametrize("seed", range(6))
def test_harrell_equals_sksurv_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    # Integer times and rounded risks make tied times and tied risks common.
    times = rng.integers(1, 30, n).astype(float)
    events = rng.random(n) < 0.5
    events[0] = True
    risks = np.round(rng.normal(size=n), 1)
    want = concordance_index_censored(events, times, risks)[0]
    assert M.harrell_c_index(times, events, risks) == pytest.approx(want, abs=1e-12)


def test_harrell_equals_sksurv_on_real_ucec_times():
    times, events = _real_survival()
    risks = np.random.default_rng(0).normal(size=len(times)) - 0.01 * times
    want = concordance_index_censored(events, times, risks)[0]
    got = M.harrell_c_index(times, events, risks)
    assert got == pytest.approx(want, abs=1e-12)
    assert got > 0.5  # risk falls with time, so the ranking is better than chance


def test_harrell_perfect_reverse_and_no_pairs():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([True, True, True, False])
    assert M.harrell_c_index(t, e, -t) == 1.0
    assert M.harrell_c_index(t, e, t) == 0.0
    assert M.harrell_c_index(t, e, np.zeros(4)) == 0.5
    with pytest.raises(ValueError, match="no comparable pairs"):
        M.harrell_c_index(t, np.zeros(4, bool), t)


def test_survival_at_interpolates_the_bin_curve():
    edges = np.array([0.0, 10.0, 20.0, 30.0, 100.0])
    s = np.array([[0.9, 0.7, 0.5, 0.2]])
    got = M.survival_at(s, edges, np.array([0.0, 5.0, 10.0, 25.0, 100.0, 200.0]))
    np.testing.assert_allclose(got, [[1.0, 0.95, 0.9, 0.6, 0.2, 0.2]])


def test_fold_metrics_on_real_times():
    times, events = _real_survival()
    rng = np.random.default_rng(1)
    train = rng.random(len(times)) < 0.8
    risk = -times / 50 + rng.normal(scale=0.5, size=len(times))
    edges = np.array([0.0, 15.0, 30.0, 50.0, times.max()])
    surv = np.exp(-np.outer(np.exp(risk[~train]), [0.1, 0.2, 0.3, 0.5]))
    m = M.fold_metrics(times[train], events[train], times[~train], events[~train],
                       risk[~train], surv, edges)
    assert m["c_index"] == pytest.approx(
        concordance_index_censored(events[~train], times[~train], risk[~train])[0])
    tau = m["uno_tau_months"]
    assert tau <= min(times[train].max(), times[~train].max())
    want_uno = concordance_index_ipcw(Surv.from_arrays(events[train], times[train]),
                                      Surv.from_arrays(events[~train], times[~train]),
                                      risk[~train], tau=tau)[0]
    assert m["uno_c_index"] == pytest.approx(want_uno)
    assert 0.5 < m["c_index"] <= 1 and 0.5 < m["uno_c_index"] <= 1
    assert m["auc_times_months"] == [15.0, 30.0, 50.0]
    assert all(0 <= a <= 1 for a in m["auc"]) and m["auc_mean"] > 0.5
    assert 0 < m["ibs"] < 1 and 0 < m["ibs_km_reference"] < 1
    assert m["notes"] == {}


def test_fold_metrics_without_events_reports_why():
    times = np.array([5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    events = np.array([True, True, False, True, False, False])
    m = M.fold_metrics(times, events, times[2:], np.zeros(4, bool), np.arange(4.0),
                       np.full((4, 4), 0.5), np.array([0.0, 5.5, 7.5, 9.0, 10.0]))
    assert m["c_index"] is None and "comparable" in m["notes"]["c_index"]
    assert m["uno_c_index"] is None


def _fold(k, rng, n=60):
    t = rng.exponential(20, n)
    e = rng.random(n) < 0.5
    r = -t / 20 + rng.normal(size=n)
    return {
        "fold": k, "c_index": 0.6 + 0.01 * k, "c_index_optimistic": 0.7, "n_train": 200,
        "n_test": n, "metrics": {"c_index": 0.6 + 0.01 * k, "uno_c_index": 0.55, "auc_mean": 0.6,
                                 "ibs": 0.2, "ibs_km_reference": 0.22, "n_events": int(e.sum())},
        "history": [{"epoch": i + 1, "test_c_index": 0.6, "train_loss": 1.0 / (i + 1)} for i in range(3)],
        "predictions": {"time": t.tolist(), "event": e.astype(int).tolist(), "risk": r.tolist()},
    }


def test_summary_markdown_and_plots(tmp_path):
    rng = np.random.default_rng(2)
    folds = [_fold(k, rng) for k in range(3)]
    s = M.summarize(folds)
    assert s["c_index_mean"] == pytest.approx(0.61)
    assert s["c_index_std"] == pytest.approx(np.std([0.6, 0.61, 0.62]))
    assert s["c_index_optimistic_mean"] == pytest.approx(0.7)
    # The pooled log-rank test is scikit-survival's on the per-fold median split.
    t = np.concatenate([f["predictions"]["time"] for f in folds])
    e = np.concatenate([f["predictions"]["event"] for f in folds]).astype(bool)
    g = np.concatenate([M.risk_groups(f["predictions"]["risk"]) for f in folds])
    assert s["km"]["p_value"] == pytest.approx(compare_survival(Surv.from_arrays(e, t), g)[1])
    assert s["km"]["n_high"] + s["km"]["n_low"] == 180
    results = {"model": "snn", "folds": folds, **s}
    md = M.markdown_table(results)
    assert "| 0 | 200 | 60 |" in md and "0.610 ± 0.008" in md and "log-rank p" in md
    written = M.write_plots(results, tmp_path)
    assert [p.name for p in written] == ["km.png", "c_index_folds.png", "learning_curves.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    M.atomic_write_text(tmp_path / "r.json", json.dumps(results))
    assert json.loads((tmp_path / "r.json").read_text())["model"] == "snn"
    assert not list(tmp_path.glob(".*.tmp"))
