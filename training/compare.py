"""One comparison table of the models a ``ghanet-train cv`` run trained side by side.

All models of one run share the folds, the features, the survival bins (fitted per fold
on its training patients) and the seeds, so their held-out predictions are paired by
patient. For each model the table gives the folds, Harrell's c-index (mean +- population
sd over folds), Uno's c-index, the integrated Brier score and the time-dependent AUC
(means over folds), the *optimistic* best-epoch-on-test c-index (labelled: the paper's
code selects the epoch on the test fold; it is never used here for selection), and two
p-values of the difference from G-HANet:

* ``p_paired_folds``: paired t-test of the per-fold c-indices (scipy ``ttest_rel``);
* ``p_bootstrap``: patient-level bootstrap of the difference in pooled out-of-fold
  c-index (pairs of patients compared within their fold, as each fold has its own model;
  two-sided, percentile method, ``n_boot`` resamples of the patients with a fixed seed).

Files: ``comparison.csv``, ``comparison.md``, ``comparison.png`` (c-index by model) and,
with several ``ghanet@R`` runs, ``topk.png`` (c-index against the top-k ratio).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
from napari_ghanet.training import metrics as M

from napari_ghanet.errors import ArgumentError
from napari_ghanet.models.baselines import ghanet_overrides, model_inputs, topk_model_name

__all__ = ["expand_models", "comparison_rows", "write_comparison", "bootstrap_c_difference",
           "COLUMNS", "REFERENCE", "SYNTH_MODEL_CONFIG"]

REFERENCE = "ghanet"

#: model sizes that suit the synthetic cohort's 32-d features (CPU-friendly; the
#: ``--model-config`` of benchmarks/compare_synth.py and the training guide's recipes)
SYNTH_MODEL_CONFIG = {
    "ghanet": {"width": 64, "heads": 2, "dim_head": 32, "gate_dim": 32, "compress_dim": 32,
               "ffn_mult": 2},
    "abmil": {"hidden": 64, "attn_dim": 32},
    "snn": {"hidden": 64},
    "abmil_snn": {"hidden": 64, "attn_dim": 32, "omic_hidden": 64, "fusion_dim": 64},
    "amil": {"hidden": 64, "attn_dim": 32, "rho_dim": 64},
    "deepattnmisl": {"hidden": 64, "attn_dim": 32, "rho_dim": 64},
    "transmil": {"width": 64, "heads": 2, "landmarks": 32},
    "mcat": {"width": 64, "heads": 2, "ffn_dim": 128},
    "survpath": {"width": 64, "dim_head": 32, "logit_hidden": 32},
}
COLUMNS = ("model", "inputs", "folds", "c_index_mean", "c_index_std", "uno_c_index_mean",
           "ibs_mean", "auc_mean", "c_index_pooled", "delta_vs_ghanet", "p_paired_folds",
           "p_bootstrap", "c_index_optimistic_mean")


def expand_models(models: list[str], topk_ratios: list[float] | None = None) -> list[str]:
    """The run's model names: ``models`` without repeats, then one ``ghanet@R`` per ratio."""
    names = list(dict.fromkeys(models))
    for r in topk_ratios or []:
        name = topk_model_name(r)
        if ghanet_overrides(name) is None:
            raise ArgumentError(f"--topk-ratio {r} must lie in (0, 1]")
        if name not in names:
            names.append(name)
    return names


def _pairs_matrix(times: np.ndarray, events: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """A[i, j] = 1 when (i, j) is a comparable pair within one fold (i has the event first)."""
    t = times[:, None] < times[None, :]
    return (t & events[:, None] & (folds[:, None] == folds[None, :])).astype(np.float64)


def _concordance(risks: np.ndarray) -> np.ndarray:
    d = risks[:, None] - risks[None, :]
    return (d > 0) + 0.5 * (d == 0)


def bootstrap_c_difference(
    times, events, folds, risk_a, risk_b, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Pooled out-of-fold Harrell c-index of two models' risks on the same patients, their
    difference ``a - b`` and its patient-level bootstrap (resampling patients with
    replacement; comparable pairs are taken within a fold).

    Returns ``{"c_a", "c_b", "delta", "ci95", "p"}``; ``p`` is two-sided (twice the
    smaller tail of the bootstrap differences around 0, at most 1).

    Examples
    --------
    >>> t = np.arange(1.0, 9.0); e = np.ones(8, bool); f = np.zeros(8)
    >>> r = bootstrap_c_difference(t, e, f, -t, t, n_boot=200)
    >>> r["c_a"], r["c_b"], r["p"] < 0.05
    (1.0, 0.0, True)
    """
    times = np.asarray(times, float)
    events = np.asarray(events, bool)
    folds = np.asarray(folds)
    A = _pairs_matrix(times, events, folds)
    Ma = A * _concordance(np.asarray(risk_a, float))
    Mb = A * _concordance(np.asarray(risk_b, float))
    denom = A.sum()
    if denom == 0:
        return {"c_a": None, "c_b": None, "delta": None, "ci95": None, "p": None}
    c_a, c_b = float(Ma.sum() / denom), float(Mb.sum() / denom)
    rng = np.random.default_rng(seed)
    n = len(times)
    deltas = []
    for start in range(0, n_boot, 100):  # weights: counts of each patient in a resample
        w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                      for _ in range(min(100, n_boot - start))]).astype(np.float64)
        den = np.einsum("bi,ij,bj->b", w, A, w)
        ok = den > 0
        d = (np.einsum("bi,ij,bj->b", w, Ma - Mb, w)[ok]) / den[ok]
        deltas.append(d)
    deltas = np.concatenate(deltas) if deltas else np.zeros(0)
    if not len(deltas):
        return {"c_a": c_a, "c_b": c_b, "delta": c_a - c_b, "ci95": None, "p": None}
    p = min(1.0, 2 * min(float((deltas <= 0).mean()), float((deltas >= 0).mean())))
    if c_a == c_b:
        p = 1.0
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    return {"c_a": c_a, "c_b": c_b, "delta": c_a - c_b, "ci95": [float(lo), float(hi)], "p": p}


def _pooled(res: dict) -> dict[str, tuple[float, bool, int, float]]:
    """case_id -> (time, event, fold, risk) of a model's held-out predictions."""
    out = {}
    for f in res["folds"]:
        p = f["predictions"]
        for cid, t, e, r in zip(p["case_id"], p["time"], p["event"], p["risk"]):
            out[cid] = (float(t), bool(e), int(f["fold"]), float(r))
    return out


def _paired_t(a: list, b: list) -> float | None:
    from scipy.stats import ttest_rel

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 2:
        return None
    x, y = np.array(pairs).T
    if np.allclose(x - y, (x - y)[0]):  # no spread: the test is undefined
        return 1.0 if np.allclose(x, y) else 0.0
    return float(ttest_rel(x, y).pvalue)


def comparison_rows(results: list[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per model (see :data:`COLUMNS`); p-values against ``ghanet`` when it ran."""
    by_name = {r["model"]: r for r in results}
    ref = by_name.get(REFERENCE)
    ref_pooled = _pooled(ref) if ref else None
    ref_folds = {f["fold"]: f["c_index"] for f in ref["folds"]} if ref else {}
    rows = []
    for res in results:
        name = res["model"]
        pooled = _pooled(res)
        ids = sorted(pooled)
        t, e, fo, r = (np.array(v) for v in zip(*(pooled[i] for i in ids)))
        solo = bootstrap_c_difference(t, e, fo, r, r, n_boot=0)
        row = {
            "model": name,
            "inputs": "+".join(model_inputs(name)).replace("wsi+clusters", "wsi"),
            "folds": len(res["folds"]),
            "c_index_mean": res.get("c_index_mean"),
            "c_index_std": res.get("c_index_std"),
            "uno_c_index_mean": res.get("uno_c_index_mean"),
            "ibs_mean": res.get("ibs_mean"),
            "auc_mean": res.get("auc_mean_mean"),
            "c_index_pooled": solo["c_a"],
            "delta_vs_ghanet": None, "p_paired_folds": None, "p_bootstrap": None,
            "c_index_optimistic_mean": res.get("c_index_optimistic_mean"),
        }
        if ref is not None and name != REFERENCE:
            folds = [f["fold"] for f in res["folds"] if f["fold"] in ref_folds]
            mine = {f["fold"]: f["c_index"] for f in res["folds"]}
            row["p_paired_folds"] = _paired_t([mine[k] for k in folds], [ref_folds[k] for k in folds])
            common = sorted(set(pooled) & set(ref_pooled))
            if common:
                tt, ee, ff, rr = (np.array(v) for v in zip(*(pooled[i] for i in common)))
                rref = np.array([ref_pooled[i][3] for i in common])
                b = bootstrap_c_difference(tt, ee, ff, rr, rref, n_boot=n_boot, seed=seed)
                row["delta_vs_ghanet"], row["p_bootstrap"] = b["delta"], b["p"]
        rows.append(row)
    return rows


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _markdown(rows: list[dict], selection: str, n_boot: int) -> str:
    head = ("| model | inputs | folds | c-index (mean ± sd) | Uno c-index | IBS | td-AUC | "
            "pooled c-index | Δ vs ghanet | p (paired folds) | p (bootstrap) | "
            "optimistic c-index (best epoch on test) |")
    lines = ["# Model comparison", "",
             f"Model selection: {selection}. All models share folds, features, survival bins "
             "and seeds. p-values test the difference from `ghanet`: a paired t-test of the "
             f"per-fold c-indices and a patient-level bootstrap ({n_boot} resamples) of the "
             "pooled out-of-fold c-index (pairs within a fold). The last column picks the "
             "best epoch on the test fold itself: optimistic, for comparison with published "
             "figures only.", "", head, "|" + "---|" * 12]
    for r in rows:
        cm = _fmt(r["c_index_mean"])
        cs = f" ± {_fmt(r['c_index_std'])}" if r["c_index_std"] is not None else ""
        lines.append(
            f"| {r['model']} | {r['inputs']} | {r['folds']} | {cm}{cs} | "
            f"{_fmt(r['uno_c_index_mean'])} | {_fmt(r['ibs_mean'])} | {_fmt(r['auc_mean'])} | "
            f"{_fmt(r['c_index_pooled'])} | {_fmt(r['delta_vs_ghanet'])} | "
            f"{_fmt(r['p_paired_folds'], 3)} | {_fmt(r['p_bootstrap'], 3)} | "
            f"{_fmt(r['c_index_optimistic_mean'])} |")
    lines += ["", "inputs: what the model reads at prediction time (wsi = the slide's patch "
              "features; omics = genomics, which the plugin never has). IBS: integrated Brier "
              "score (lower is better); td-AUC: cumulative/dynamic AUC at the inner bin edges."]
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict], results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(results) + 2), 3.6))
    for i, res in enumerate(results):
        vals = [f["c_index"] for f in res["folds"] if f["c_index"] is not None]
        ax.scatter([i] * len(vals), vals, s=12, color="0.5", zorder=2)
        if vals:
            ax.errorbar(i, np.mean(vals), yerr=np.std(vals), fmt="o", color="C0", zorder=3)
    ax.axhline(0.5, color="0.8", lw=1, zorder=1)
    ax.set_xticks(range(len(results)), [r["model"] for r in results], rotation=45, ha="right")
    ax.set_ylabel("held-out Harrell c-index")
    ax.set_title("c-index by model (folds in grey, mean ± sd)")
    fig.tight_layout()
    written.append(M.save_figure(fig, out / "comparison.png"))
    plt.close(fig)
    topk = sorted((ghanet_overrides(r["model"])["ratio"], r) for r in rows
                  if r["model"].startswith("ghanet@") and r["c_index_mean"] is not None)
    if len(topk) >= 2:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        x = [k for k, _ in topk]
        y = [r["c_index_mean"] for _, r in topk]
        s = [r["c_index_std"] or 0.0 for _, r in topk]
        ax.errorbar(x, y, yerr=s, fmt="o-", capsize=3)
        ax.set_xlabel("top-k ratio of genome-informed patches")
        ax.set_ylabel("held-out Harrell c-index")
        ax.set_title("G-HANet: c-index against top-k ratio")
        fig.tight_layout()
        written.append(M.save_figure(fig, out / "topk.png"))
        plt.close(fig)
    return written


def write_comparison(results: list[dict], out_dir: str | os.PathLike, n_boot: int = 1000,
                     seed: int = 0) -> list[dict]:
    """Write ``comparison.csv``, ``comparison.md`` and the plots into ``out_dir``; returns
    the rows."""
    out = Path(out_dir)
    rows = comparison_rows(results, n_boot=n_boot, seed=seed)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    M.atomic_write_text(out / "comparison.csv", buf.getvalue())
    selection = results[0].get("selection", "model at the end of training") if results else ""
    M.atomic_write_text(out / "comparison.md", _markdown(rows, selection, n_boot))
    _plots(rows, results, out)
    return rows
