"""Survival metrics of a cross-validated run, and their report (JSON, markdown, PNG).

The metrics themselves live in the library, :mod:`napari_ghanet.models.metrics` (the
cohort's validation report uses them too); they are re-exported here under their names.
This module adds the cross-validation summary, its markdown table and its plots.

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

from napari_ghanet.io.atomic import atomic_write
from napari_ghanet.io.figures import save_figure
from napari_ghanet.models.metrics import (
    fold_metrics,
    harrell_c_index,
    logrank,
    risk_groups,
    survival_at,
    uno_tau,
)

__all__ = [
    "harrell_c_index",
    "survival_at",
    "uno_tau",
    "fold_metrics",
    "risk_groups",
    "logrank",
    "summarize",
    "markdown_table",
    "write_plots",
    "atomic_write_text",
    "save_figure",
]


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


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` atomically."""
    return atomic_write(path, text)
