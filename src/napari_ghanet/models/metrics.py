"""Survival metrics of predicted risks: the one place the library and the training
package compute them.

Home of every survival metric (``napari_ghanet.models.metrics``): the cohort's
external-validation report (:mod:`napari_ghanet.cohort.report`) and the researcher's
cross-validation (:mod:`napari_ghanet.training.metrics`, which re-exports these names)
import them from here, so the library never imports the training package. New metrics
(for baselines, other estimators) belong in this module.

* Harrell's c-index (:func:`harrell_c_index`), identical to scikit-survival's
  ``concordance_index_censored``, vectorised.
* Uno's IPCW c-index (truncated at :func:`uno_tau`), time-dependent (cumulative/dynamic)
  AUC and the integrated Brier score, from scikit-survival, with the censoring
  distribution estimated on the training patients (:func:`fold_metrics`).
* The K-bin survival head as a curve (:func:`survival_at`), the median risk split
  (:func:`risk_groups`) and the log-rank test between groups (:func:`logrank`).

Times are in months, events bool (True = event observed), risks higher = worse. A metric
that cannot be computed (e.g. no event in the test set) is recorded as ``None`` with the
reason, never as a made-up number. scikit-survival is imported by the functions that use
it.

Examples
--------
>>> import numpy as np
>>> harrell_c_index(np.array([1.0, 2.0, 3.0]), np.array([True, True, False]),
...                 np.array([3.0, 2.0, 1.0]))
1.0
>>> risk_groups(np.array([0.1, 0.5, 0.9])).tolist()
[False, False, True]
"""

from __future__ import annotations

import numpy as np

from napari_ghanet.errors import CohortError

__all__ = [
    "fold_metrics",
    "harrell_c_index",
    "logrank",
    "risk_groups",
    "survival_at",
    "uno_tau",
]


def harrell_c_index(
    event_times: np.ndarray, events: np.ndarray, risks: np.ndarray, tied_tol: float = 1e-8
) -> float:
    """Harrell's concordance index of risk scores (higher = earlier event).

    event_times float (n,), events bool (n,) (True = event observed), risks float (n,).
    A pair (i, j) is comparable when i has an event and t_j > t_i, or t_j == t_i and j is
    censored; it is concordant when risk_i > risk_j, and counts 1/2 when the risks are
    within ``tied_tol``. Equals ``sksurv.metrics.concordance_index_censored(...)[0]``.
    Raises CohortError (a ValueError) without comparable pairs.
    """
    t = np.asarray(event_times, np.float64)
    e = np.asarray(events).astype(bool)
    r = np.asarray(risks, np.float64)
    if not (t.shape == e.shape == r.shape) or t.ndim != 1:
        raise CohortError(f"shapes differ: times {t.shape}, events {e.shape}, risks {r.shape}")
    num = 0.0
    den = 0
    idx = np.flatnonzero(e)
    for start in range(0, len(idx), 512):  # bounded memory: 512 x n booleans per block
        i = idx[start : start + 512]
        ti = t[i, None]
        comparable = (t[None, :] > ti) | ((t[None, :] == ti) & ~e[None, :])
        diff = r[i, None] - r[None, :]
        tied = np.abs(diff) <= tied_tol
        num += np.count_nonzero(comparable & (diff > 0) & ~tied)
        num += 0.5 * np.count_nonzero(comparable & tied)
        den += np.count_nonzero(comparable)
    if den == 0:
        raise CohortError("no comparable pairs: the c-index needs at least one observed event "
                          "before another patient's time")
    return float(num / den)


def _structured(times: np.ndarray, events: np.ndarray):
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(events).astype(bool), time=np.asarray(times, float))


def survival_at(
    survival: np.ndarray, bin_edges: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Survival probability of each patient at ``times`` (months) from the K-bin head.

    survival (n, K): S_k = P(T >= edges[k+1]); bin_edges (K + 1,) months. The curve is
    linear between the knots (0, 1), (edges[1], S_0), ..., (edges[K], S_{K-1}) and flat
    after the last. Returns float64 (n, len(times)).
    """
    survival = np.asarray(survival, np.float64)
    edges = np.asarray(bin_edges, np.float64)
    knots_t = edges
    out = np.empty((survival.shape[0], len(times)))
    for n, s in enumerate(survival):
        knots_s = np.concatenate([[1.0], s])
        out[n] = np.interp(times, knots_t, knots_s)
    return out


def _km_at(times: np.ndarray, events: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Kaplan-Meier survival estimate of (times, events) evaluated at ``at``."""
    from sksurv.nonparametric import kaplan_meier_estimator

    x, s = kaplan_meier_estimator(np.asarray(events, bool), np.asarray(times, float))
    pos = np.searchsorted(x, at, side="right") - 1
    return np.where(pos >= 0, s[np.clip(pos, 0, None)], 1.0)


def uno_tau(
    train_times: np.ndarray, train_events: np.ndarray, test_times: np.ndarray,
    min_censoring_survival: float = 0.25,
) -> float:
    """Truncation time of Uno's c-index, months: the latest time at which the training
    patients' censoring distribution G(t) (Kaplan-Meier of censoring) is still >=
    ``min_censoring_survival``, within both follow-ups. Later events would get inverse
    weights > 1/0.25 and a handful of late patients would decide the score."""
    censored = ~np.asarray(train_events, bool)
    from sksurv.nonparametric import kaplan_meier_estimator

    x, g = kaplan_meier_estimator(censored, np.asarray(train_times, float))
    ok = x[g >= min_censoring_survival]
    tau = float(ok.max()) if len(ok) else float(np.max(train_times))
    return float(min(tau, np.max(train_times), np.max(test_times)))


def _safe(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except Exception as exc:  # sksurv raises ValueError / NoComparablePairException
        return None, f"{type(exc).__name__}: {exc}"


def fold_metrics(
    train_times: np.ndarray,
    train_events: np.ndarray,
    test_times: np.ndarray,
    test_events: np.ndarray,
    risks: np.ndarray,
    survival: np.ndarray,
    bin_edges: np.ndarray,
) -> dict:
    """Every metric of one fold's held-out predictions.

    Times in months, events bool (True = event), risks (n,), survival (n, K) from the
    survival head, bin_edges (K + 1,) months. Returns a JSON-able dict; metrics that
    cannot be computed are None with a reason under ``notes``.
    """
    from sksurv.metrics import (
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )

    test_times = np.asarray(test_times, float)
    test_events = np.asarray(test_events, bool)
    risks = np.asarray(risks, float)
    y_train = _structured(train_times, train_events)
    y_test = _structured(test_times, test_events)
    notes: dict[str, str] = {}
    out: dict = {"n_test": int(len(risks)), "n_events": int(test_events.sum())}

    c, why = _safe(harrell_c_index, test_times, test_events, risks)
    out["c_index"] = c
    if why:
        notes["c_index"] = why

    tau = uno_tau(train_times, train_events, test_times)
    res, why = _safe(concordance_index_ipcw, y_train, y_test, risks, tau=tau)
    out["uno_c_index"] = None if res is None else float(res[0])
    out["uno_tau_months"] = tau
    if why:
        notes["uno_c_index"] = why

    # Time points: the inner survival bin edges that lie within both follow-ups.
    lo, hi = float(test_times.min()), float(min(test_times.max(), np.max(train_times)))
    auc_times = np.array([t for t in np.asarray(bin_edges)[1:-1] if lo <= t < hi])
    if len(auc_times):
        res, why = _safe(cumulative_dynamic_auc, y_train, y_test, risks, auc_times)
    else:
        res, why = None, "no bin edge inside the test follow-up"
    if res is None:
        out["auc_times_months"], out["auc"], out["auc_mean"] = [], [], None
        notes["auc"] = why
    else:
        out["auc_times_months"] = auc_times.tolist()
        out["auc"] = [float(a) for a in res[0]]
        out["auc_mean"] = float(res[1])

    grid_lo = float(np.quantile(test_times, 0.1))
    grid_hi = float(min(np.quantile(test_times, 0.9), np.max(train_times) * 0.999))
    if grid_hi > grid_lo:
        grid = np.linspace(grid_lo, grid_hi, 20)
        est = survival_at(survival, bin_edges, grid)
        res, why = _safe(integrated_brier_score, y_train, y_test, est, grid)
        out["ibs"] = None if res is None else float(res)
        out["ibs_range_months"] = [grid_lo, grid_hi]
        # Reference: the training patients' Kaplan-Meier curve for everyone (no model).
        km = np.tile(_km_at(train_times, train_events, grid), (len(test_times), 1))
        ref, _ = _safe(integrated_brier_score, y_train, y_test, km, grid)
        out["ibs_km_reference"] = None if ref is None else float(ref)
    else:
        out["ibs"], why = None, "test follow-up too short for a time grid"
        out["ibs_km_reference"] = None
    if why:
        notes["ibs"] = why
    out["notes"] = notes
    return out


def risk_groups(risks: np.ndarray) -> np.ndarray:
    """Median split of predicted risk: bool (n,), True = high risk (above the median)."""
    risks = np.asarray(risks, float)
    return risks > np.median(risks)


def logrank(times: np.ndarray, events: np.ndarray, groups: np.ndarray) -> dict:
    """Log-rank test between groups (sksurv.compare.compare_survival)."""
    from sksurv.compare import compare_survival

    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        return {"chisq": None, "p_value": None, "note": "a single risk group"}
    chisq, p = compare_survival(_structured(times, events), groups)
    return {"chisq": float(chisq), "p_value": float(p)}
