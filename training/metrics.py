"""Survival metrics of a cross-validated run, and their report (JSON, markdown, PNG).

* Harrell's c-index (:func:`harrell_c_index`), identical to scikit-survival's
  ``concordance_index_censored``, vectorised.
* Uno's IPCW c-index, time-dependent (cumulative/dynamic) AUC and the integrated Brier
  score, from scikit-survival, with the censoring distribution estimated on the fold's
  training patients.
* Kaplan-Meier curves of the low- and high-risk groups (each fold's test patients split
  at the median of their predicted risk, pooled over folds) and the log-rank p-value.

A metric that cannot be computed on a fold (e.g. no event in the test set) is recorded as
``None`` with the reason, never as a made-up number.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from napari_ghanet.io.atomic import atomic_path, atomic_write

__all__ = [
    "harrell_c_index",
    "survival_at",
    "fold_metrics",
    "risk_groups",
    "logrank",
    "summarize",
    "markdown_table",
    "write_plots",
    "atomic_write_text",
]


def harrell_c_index(
    event_times: np.ndarray, events: np.ndarray, risks: np.ndarray, tied_tol: float = 1e-8
) -> float:
    """Harrell's concordance index of risk scores (higher = earlier event).

    event_times float (n,), events bool (n,) (True = event observed), risks float (n,).
    A pair (i, j) is comparable when i has an event and t_j > t_i, or t_j == t_i and j is
    censored; it is concordant when risk_i > risk_j, and counts 1/2 when the risks are
    within ``tied_tol``. Equals ``sksurv.metrics.concordance_index_censored(...)[0]``.
    Raises ValueError without comparable pairs.
    """
    t = np.asarray(event_times, np.float64)
    e = np.asarray(events).astype(bool)
    r = np.asarray(risks, np.float64)
    if not (t.shape == e.shape == r.shape) or t.ndim != 1:
        raise ValueError(f"shapes differ: times {t.shape}, events {e.shape}, risks {r.shape}")
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
        raise ValueError("no comparable pairs: the c-index needs at least one observed event "
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


def _mean_std(values) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


def summarize(folds: list[dict]) -> dict:
    """Mean and standard deviation (over folds, population std as the paper's code) of
    each metric, and the pooled Kaplan-Meier log-rank test.

    Each fold dict needs ``metrics`` (from :func:`fold_metrics`), ``c_index_optimistic``
    and ``predictions`` (lists ``time``, ``event``, ``risk``).
    """
    out: dict = {}
    for key in ("c_index", "uno_c_index", "auc_mean", "ibs", "ibs_km_reference"):
        m, s = _mean_std([f["metrics"].get(key) for f in folds])
        out[f"{key}_mean"], out[f"{key}_std"] = m, s
    m, s = _mean_std([f.get("c_index_optimistic") for f in folds])
    out["c_index_optimistic_mean"], out["c_index_optimistic_std"] = m, s
    times, events, high = [], [], []
    for f in folds:
        p = f["predictions"]
        times += list(p["time"])
        events += list(p["event"])
        high += list(risk_groups(p["risk"]))
    out["km"] = {
        "n_low": int(np.sum(~np.asarray(high, bool))),
        "n_high": int(np.sum(high)),
        **logrank(np.asarray(times), np.asarray(events, bool), np.asarray(high, bool)),
    }
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(results: dict) -> str:
    """Per-fold and summary table of a run's results, as markdown."""
    lines = [
        f"# {results.get('model', 'model')} — {results.get('cohort_name', '')}".rstrip(" —"),
        "",
        f"Score per fold: {results.get('selection', 'last epoch')} (honest). "
        "'optimistic' = best epoch on the held-out fold, as the paper's code reports it. "
        "Uno's c-index is truncated at tau (training censoring survival >= 0.25); the IBS "
        "of the training Kaplan-Meier curve (no model) is the reference for the IBS.",
        "",
        "| fold | n_train | n_test | events | c-index | optimistic | Uno c-index | mean AUC | IBS | IBS of KM |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in results["folds"]:
        m = f["metrics"]
        lines.append(
            f"| {f['fold']} | {f['n_train']} | {f['n_test']} | {m.get('n_events', 'n/a')} | "
            f"{_fmt(f['c_index'])} | {_fmt(f['c_index_optimistic'])} | "
            f"{_fmt(m.get('uno_c_index'))} | {_fmt(m.get('auc_mean'))} | {_fmt(m.get('ibs'))} | "
            f"{_fmt(m.get('ibs_km_reference'))} |"
        )

    def ms(key):
        return f"{_fmt(results.get(key + '_mean'))} ± {_fmt(results.get(key + '_std'))}"

    lines.append(
        f"| **mean ± std** | | | | **{ms('c_index')}** | {ms('c_index_optimistic')} | "
        f"{ms('uno_c_index')} | {ms('auc_mean')} | {ms('ibs')} | {ms('ibs_km_reference')} |"
    )
    km = results.get("km") or {}
    p = km.get("p_value")
    p_text = "n/a" if p is None else f"{p:.3g}"
    lines += [
        "",
        f"Kaplan-Meier, median split of predicted risk per fold, pooled: "
        f"{km.get('n_low', 'n/a')} low / {km.get('n_high', 'n/a')} high risk, "
        f"log-rank p = {p_text}.",
    ]
    skipped = results.get("skipped_counts") or {}
    if any(skipped.values()):
        lines.append(f"Skipped (--allow-missing): {skipped}.")
    return "\n".join(lines) + "\n"


def write_plots(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """km.png (pooled Kaplan-Meier by risk group), c_index_folds.png (honest vs optimistic
    per fold) and learning_curves.png (held-out c-index and training loss per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sksurv.nonparametric import kaplan_meier_estimator

    out_dir = Path(out_dir)
    written = []
    folds = results["folds"]

    times, events, high = [], [], []
    for f in folds:
        p = f["predictions"]
        times += list(p["time"])
        events += list(p["event"])
        high += list(risk_groups(p["risk"]))
    times, events, high = np.asarray(times, float), np.asarray(events, bool), np.asarray(high)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for flag, name, color in ((False, "low risk", "tab:blue"), (True, "high risk", "tab:red")):
        sel = high == flag
        if sel.sum() == 0:
            continue
        t, s = kaplan_meier_estimator(events[sel], times[sel])
        ax.step(np.concatenate([[0], t]), np.concatenate([[1], s]), where="post",
                color=color, label=f"{name} (n={int(sel.sum())})")
    p = (results.get("km") or {}).get("p_value")
    ax.set_title(f"{results.get('model')}: held-out risk groups"
                 + (f", log-rank p = {p:.3g}" if p is not None else ""))
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.legend()
    written.append(save_figure(fig, out_dir / "km.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(folds))
    honest = [f["c_index"] or 0 for f in folds]
    opt = [f["c_index_optimistic"] or 0 for f in folds]
    ax.bar(x - 0.2, honest, 0.4, label="honest")
    ax.bar(x + 0.2, opt, 0.4, label="optimistic (best test epoch)", alpha=0.6)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, [str(f["fold"]) for f in folds])
    ax.set_ylim(0.3, 1.0)
    ax.set_xlabel("fold")
    ax.set_ylabel("c-index")
    ax.legend()
    written.append(save_figure(fig, out_dir / "c_index_folds.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for f in folds:
        h = f.get("history") or []
        if not h:
            continue
        ep = [r["epoch"] for r in h]
        a1.plot(ep, [r.get("test_c_index") for r in h], label=f"fold {f['fold']}")
        a2.plot(ep, [r.get("train_loss") for r in h], label=f"fold {f['fold']}")
    a1.set_xlabel("epoch")
    a1.set_ylabel("held-out c-index (monitor only)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("training loss")
    a1.legend(fontsize=7)
    written.append(save_figure(fig, out_dir / "learning_curves.png"))
    return written


def save_figure(fig, path: Path) -> Path:
    """Lay out ``fig``, write it as a PNG atomically (120 dpi) and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` atomically."""
    return atomic_write(path, text)
