"""Are the predicted survival curves calibrated? D-calibration on each held-out fold.

"60 % survival at 24 months" means what it says when, among patients given that curve,
60 % are alive at 24 months. D-calibration (Haider et al., JMLR 2020) checks the whole
curve at once: if the curves are right, each patient's predicted survival probability at
their own event time, S_i(T_i), is uniformly distributed on [0, 1]. The probabilities are
counted in ten equal bins and a chi-square test against equal counts gives the statistic
and its p-value (a small p-value, e.g. < 0.05, says the curves are not calibrated). The
plot shows each bin's share against the ideal 10 %.

The model predicts discrete time: S_k, the probability of surviving past bin k's end
(S_0 = 1), the last bin open-ended. A death in bin k puts S_i(T_i) somewhere in
[S_k, S_(k-1)] (in [0, S_(K-1)] for the open last bin), counted spread evenly over it; a
patient censored at c (alive at c, S_i(c) = s, interpolated linearly inside a finite bin,
S_(K-1) in the open last bin) has S_i(T_i) uniform on [0, s]. Times in months.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> edges = np.array([0.0, 10.0, 20.0, 40.0, np.inf])
>>> curve = np.array([0.6, 0.35, 0.15, 0.0])
>>> mass = -np.diff(np.concatenate([[1.0], curve]))
>>> k = rng.choice(4, 500, p=mass)  # each patient's bin, then a time inside it
>>> width = np.array([10.0, 10.0, 20.0, 0.0])
>>> t = np.where(k < 3, edges[k] + rng.random(500) * width[k], 40.0 + rng.exponential(20, 500))
>>> good = d_calibration(t, np.ones(500, bool), np.tile(curve, (500, 1)), edges)
>>> bad = d_calibration(t, np.ones(500, bool), np.tile(curve ** 0.3, (500, 1)), edges)
>>> good["p_value"] > 0.05, bad["p_value"] < 1e-6
(True, True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.io.figures import save_figure

__all__ = ["d_calibration", "survival_at", "write_calibration"]

N_BINS = 10


def _bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The survival bin (0..K-1) each time falls in (times past the last edge: the last)."""
    k = np.searchsorted(np.asarray(edges, np.float64)[1:-1], times, side="right")
    return np.clip(k, 0, len(edges) - 2)


def survival_at(times: np.ndarray, survival: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each patient's predicted survival probability at their own time (months):
    linear inside a finite bin, S_(K-1) in the open last bin.

    ``survival``: (n, K) predicted S at the end of each of the K bins; ``edges``: the
    K + 1 bin edges in months (the last may be inf)."""
    times = np.asarray(times, np.float64)
    surv = np.asarray(survival, np.float64)
    edges = np.asarray(edges, np.float64)
    k = _bins(times, edges)
    rows = np.arange(len(times))
    start = np.concatenate([np.ones((len(times), 1)), surv], axis=1)[rows, k]
    end = surv[rows, k]
    lo, hi = edges[k], edges[k + 1]
    frac = np.where(np.isfinite(hi), (times - lo) / np.where(np.isfinite(hi), hi - lo, 1.0), 0.0)
    return np.clip(start + np.clip(frac, 0, 1) * (end - start), 0.0, 1.0)


def _spread(a: float, b: float, n_bins: int) -> np.ndarray:
    """Shares of a uniform on [a, b] in the ``n_bins`` equal bins of [0, 1]."""
    lo = np.linspace(0.0, 1.0, n_bins + 1)
    if b - a <= 1e-12:
        out = np.zeros(n_bins)
        out[min(int(a * n_bins), n_bins - 1)] = 1.0
        return out
    return np.clip(np.minimum(lo[1:], b) - np.maximum(lo[:-1], a), 0, None) / (b - a)


def d_calibration(times, events, survival, edges, n_bins: int = N_BINS) -> dict[str, Any]:
    """D-calibration of predicted discrete-time curves (see the module doc).

    Parameters
    ----------
    times : (n,) months; events : (n,) bool, True for an observed death;
    survival : (n, K); edges : (K + 1,) months.

    Returns
    -------
    dict
        ``statistic`` (chi-square, ``n_bins - 1`` degrees of freedom), ``p_value``,
        ``n``, ``bin_shares`` (the share of patients per probability bin, lowest first,
        ideal ``1 / n_bins`` each).
    """
    from scipy.stats import chi2

    times = np.asarray(times, np.float64)
    surv = np.clip(np.asarray(survival, np.float64), 0.0, 1.0)
    edges = np.asarray(edges, np.float64)
    events = np.asarray(events, bool)
    n_k = surv.shape[1]
    k = _bins(times, edges)
    at = survival_at(times, surv, edges)
    counts = np.zeros(n_bins)
    for i in range(len(times)):
        if events[i]:
            upper = 1.0 if k[i] == 0 else surv[i, k[i] - 1]
            lower = 0.0 if k[i] == n_k - 1 else surv[i, k[i]]
            counts += _spread(min(lower, upper), upper, n_bins)
        else:
            counts += _spread(0.0, at[i], n_bins)
    n = len(times)
    expected = n / n_bins
    stat = float(((counts - expected) ** 2).sum() / expected) if n else float("nan")
    return {"statistic": stat, "p_value": float(chi2.sf(stat, n_bins - 1)) if n else None,
            "n": int(n), "bin_shares": (counts / max(n, 1)).tolist()}


def write_calibration(folds: list[dict], out_dir: str | os.PathLike,
                      model: str = "") -> list[dict[str, Any]]:
    """D-calibration of every held-out fold of a cv run, and ``calibration_fold_K.png``
    per fold (bin shares against the ideal). Returns one dict per fold: ``fold``,
    ``statistic``, ``p_value``, ``n``, ``bin_shares``, ``plot`` (file name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    rows = []
    for f in folds:
        p = f["predictions"]
        cal = d_calibration(p["time"], np.asarray(p["event"], bool), p["survival"],
                            [np.inf if v is None else v for v in f["bin_edges_months"]])
        name = f"calibration_fold_{f['fold']}.png"
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        shares = np.asarray(cal["bin_shares"])
        centres = (np.arange(len(shares)) + 0.5) / len(shares)
        ax.bar(centres, shares, width=0.9 / len(shares), color="#4575b4",
               label="held-out patients")
        ax.axhline(1 / len(shares), color="#d73027", ls="--", label="calibrated")
        ax.set_xlabel("predicted survival probability at the patient's time")
        ax.set_ylabel("share of patients")
        ax.set_xlim(0, 1)
        ax.set_title(f"{model + ' ' if model else ''}fold {f['fold']}: D-calibration "
                     f"χ² {cal['statistic']:.1f}, p = {cal['p_value']:.3g} (n = {cal['n']})",
                     fontsize=8)
        ax.legend(fontsize=7)
        save_figure(fig, out_dir / name)
        rows.append({"fold": f["fold"], **cal, "plot": name})
    return rows
