"""Cohort prediction table and external-validation report.

* ``OUT/cohort.csv``: one row per predicted slide (or patient): ``unit, slide, case_id,
  n_patches, risk, percentile, risk_group``, ``survival_bin1..K`` (the predicted
  probability of surviving beyond the end of each survival bin, as in the slide report's
  ``survival_bins_months``) and one ``z_<pathway>`` column per functional category (the
  mean reconstructed z-score).
* With a survival table (``case_id`` or ``slide``, ``survival_months``, ``censorship``
  with 1 = censored): ``OUT/validation.json`` (Harrell's and Uno's c-index of the predicted
  risk, time-dependent AUC and integrated Brier score where computable, and the log-rank
  test of the model's risk groups) and ``OUT/validation_km.png`` (Kaplan-Meier curves of
  the predicted risk groups), computed with :mod:`napari_ghanet.models.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import CohortError, InputFileError
from napari_ghanet.inference.exports import strict_json
from napari_ghanet.io.atomic import atomic_write
from napari_ghanet.io.figures import save_figure
from napari_ghanet.io.safe_read import read_csv_rows
from napari_ghanet.models.metrics import fold_metrics, logrank
from napari_ghanet.models.risk import risk_colour

__all__ = ["cohort_rows", "read_survival", "validation_report", "write_cohort_csv"]

COHORT_FILE = "cohort.csv"
VALIDATION_JSON = "validation.json"
VALIDATION_PNG = "validation_km.png"


def _col(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def cohort_rows(task_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float]]:
    """Rows of ``cohort.csv`` from the prediction reports of the done/skipped tasks, and
    the survival bin edges (months) of the model."""
    rows, edges = [], []
    for r in task_rows:
        if r.get("status") not in ("done", "skipped") or not r.get("output"):
            continue
        rep = json.loads(Path(r["output"]).read_text())
        p = rep["prediction"]
        edges = p.get("survival_bins_months") or edges
        row = {"unit": r.get("unit") or Path(r["output"]).parent.name,
               "slide": ";".join(Path(s).name for s in str(r.get("slide", "")).split(";")),
               "case_id": r.get("case_id") or "", "n_patches": r.get("n_patches"),
               "risk": p["risk"], "percentile": p["percentile_in_training_cohort"],
               "risk_group": p["risk_group"]}
        dist = rep.get("distribution") or {}  # is the slide like the training slides?
        row["distribution"] = dist.get("verdict", "not available")
        row["distribution_reasons"] = "; ".join(dist.get("reasons") or [])
        for k, s in enumerate(p["survival"], start=1):
            row[f"survival_bin{k}"] = s
        for c in rep.get("pathways", []):
            row[f"z_{_col(c['category'])}"] = c["score_z"]
        rows.append(row)
    return rows, [math.inf if v is None else float(v) for v in edges]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_cohort_csv(out_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write ``OUT/cohort.csv`` atomically (columns in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in cols])
    return atomic_write(Path(out_dir) / COHORT_FILE, buf.getvalue())


#: largest survival table read (bytes)
SURVIVAL_MAX_BYTES = 64 * 1024 * 1024
#: longest follow-up accepted (months): 150 years; more is a unit error (days given)
MAX_SURVIVAL_MONTHS = 1800
SurvivalTable = tuple[str, dict[str, tuple[float, int]]]


def _survival_value(text: str, column: str, where: str) -> float | int:
    """One checked cell: survival_months a finite number >= 0, censorship 0 or 1."""
    shown = text if len(text) <= 40 else text[:30] + "..."
    if not text:
        raise CohortError(f"{where}: {column} is empty; give a value or leave the row out")
    try:
        value = float(text)
    except ValueError:
        value = None
    if column == "censorship":
        if value not in (0.0, 1.0):
            raise CohortError(f"{where}: censorship must be 0 (event) or 1 (censored), "
                              f"found {shown!r}")
        return int(value)
    if value is None or not math.isfinite(value):
        raise CohortError(f"{where}: survival_months must be a finite number of months, "
                          f"found {shown!r}")
    if value < 0:
        raise CohortError(f"{where}: survival_months must be 0 or more months, found {shown}")
    if value > MAX_SURVIVAL_MONTHS:
        raise CohortError(f"{where}: survival_months {shown} is more than "
                          f"{MAX_SURVIVAL_MONTHS // 12} years; are the times in days? give months")
    return value


def read_survival(path: str | os.PathLike) -> SurvivalTable:
    """The survival table: (key column, {key: (survival_months, censorship)}).

    A regular UTF-8 CSV file of at most 64 MiB (read through
    :func:`~napari_ghanet.io.safe_read.read_csv_rows`) with a ``case_id`` (or ``slide``)
    column, ``survival_months`` (a number from 0 to 1800, i.e. 150 years) and
    ``censorship`` (0 = event, 1 = censored); other columns are ignored. Every problem is one
    :class:`~napari_ghanet.errors.CohortError` naming the file and the line: a value that
    is empty, not a number, negative, infinite, NaN or above 1800 months (days given?), a
    censorship other than 0 or 1, an empty key, and a key given twice (each id named:
    keeping one row silently would change the c-index).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "survival.csv"
    >>> _ = p.write_text("case_id,survival_months,censorship\\nP1,12.5,0\\nP2,30,1\\n")
    >>> read_survival(p)
    ('case_id', {'P1': (12.5, 0), 'P2': (30.0, 1)})
    >>> _ = p.write_text("case_id,survival_months,censorship\\nP1,12.5,0\\nP1,30,1\\n")
    >>> read_survival(p)
    Traceback (most recent call last):
    ...
    napari_ghanet.errors.CohortError: survival table ...: patient id given on more than one line: 'P1' (lines 2, 3); keep one row per case_id
    """
    path = Path(path).expanduser()
    try:
        header, rows = read_csv_rows(path, "survival table", SURVIVAL_MAX_BYTES)
    except InputFileError as e:
        raise CohortError(str(e)) from None
    key = "case_id" if "case_id" in header else "slide" if "slide" in header else None
    missing = [c for c in ("survival_months", "censorship") if c not in header]
    if key is None or missing:
        raise CohortError(
            f"survival table {path}: needs a case_id or slide column, survival_months and "
            f"censorship (1 = censored); missing: "
            f"{', '.join(missing + ([] if key else ['case_id/slide']))}"
        )
    if not rows:
        raise CohortError(f"survival table {path}: has a header but no rows")
    col = {c: header.index(c) for c in (key, "survival_months", "censorship")}
    out: dict[str, tuple[float, int]] = {}
    lines: dict[str, list[int]] = {}
    for line, cells in rows:
        where = f"survival table {path}, line {line}"
        k = cells[col[key]]
        if not k:
            raise CohortError(f"{where}: the {key} is empty")
        t = _survival_value(cells[col["survival_months"]], "survival_months", where)
        c = _survival_value(cells[col["censorship"]], "censorship", where)
        lines.setdefault(k, []).append(line)
        out[k] = (float(t), int(c))
    dups = {k: v for k, v in lines.items() if len(v) > 1}
    if dups:
        shown = "; ".join(f"{k[:40]!r} (lines {', '.join(map(str, v[:4]))}"
                          f"{', ...' if len(v) > 4 else ''})" for k, v in list(dups.items())[:5])
        more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
        who = "patient id" if key == "case_id" else "slide"
        raise CohortError(
            f"survival table {path}: {who} given on more than one line: {shown}{more}; "
            f"keep one row per {key}")
    return key, out


def _match(row: dict[str, Any], key: str, table: dict[str, tuple[float, int]]):
    if key == "case_id":
        return table.get(str(row.get("case_id") or row.get("unit")))
    for s in str(row["slide"]).split(";"):
        for k in (s, Path(s).stem):
            if k in table:
                return table[k]
    return None


def validation_report(
    rows: list[dict[str, Any]],
    survival_csv: str | os.PathLike | SurvivalTable,
    out_dir: str | os.PathLike,
    bin_edges: list[float] | None = None,
) -> dict[str, Any]:
    """External validation of the cohort's predicted risks against observed survival.

    Writes ``validation.json`` and ``validation_km.png`` into ``out_dir``; returns the
    JSON dict: ``n``, ``n_events``, ``c_index`` (Harrell), ``uno_c_index`` (IPCW, the
    censoring distribution estimated on this cohort, truncated at ``uno_tau_months``),
    ``auc``/``ibs`` where computable, ``km`` (log-rank test of the model's risk groups:
    ``chisq``, ``p_value``, ``groups`` {label: n}) and ``unmatched`` (rows without survival).
    ``survival_csv`` is the table's path or what :func:`read_survival` returned for it
    (read before the predictions, so that a bad table stops the run before any work).
    """

    if isinstance(survival_csv, tuple):  # already read (and checked) by the caller
        key, table = survival_csv
        survival_csv = "the survival table"
    else:
        key, table = read_survival(survival_csv)
    times, events, risks, groups, surv, matched, unmatched = [], [], [], [], [], [], []
    for r in rows:
        hit = _match(r, key, table)
        if hit is None:
            unmatched.append(r["unit"])
            continue
        matched.append(r["unit"])
        times.append(hit[0])
        events.append(hit[1] == 0)
        risks.append(float(r["risk"]))
        groups.append(str(r["risk_group"]))
        surv.append([float(r[c]) for c in sorted((c for c in r if c.startswith("survival_bin")),
                                                 key=lambda c: int(c[12:]))])
    if len(times) < 2:
        raise CohortError(f"{survival_csv}: only {len(times)} predicted slide(s) have survival "
                          f"data (matched on {key}); need at least 2")
    t, e, rk = np.asarray(times), np.asarray(events, bool), np.asarray(risks)
    if bin_edges:
        edges = np.asarray(bin_edges, float)
    else:
        edges = np.linspace(0.0, float(t.max()), len(surv[0]) + 1)
    if not np.isfinite(edges[-1]):  # open last bin: survival stays flat after the last knot
        edges[-1] = 2.0 * max(float(edges[np.isfinite(edges)].max()), float(t.max()))
    fm = fold_metrics(t, e, t, e, rk, np.asarray(surv), edges)
    ga = np.asarray(groups)
    labels = sorted(set(groups), key=lambda g: float(np.median(rk[ga == g])))
    result = {
        "n": int(len(t)),
        "n_events": int(e.sum()),
        "matched_on": key,
        "c_index": fm["c_index"],
        "uno_c_index": fm["uno_c_index"],
        "uno_tau_months": fm.get("uno_tau_months"),
        "auc_times_months": fm.get("auc_times_months"),
        "auc": fm.get("auc"),
        "auc_mean": fm.get("auc_mean"),
        "ibs": fm.get("ibs"),
        "ibs_km_reference": fm.get("ibs_km_reference"),
        "notes": fm.get("notes", {}),
        "km": {**logrank(t, e, np.asarray(groups)),
               "groups": {g: int(sum(1 for x in groups if x == g)) for g in labels}},
        "risk_definition": "higher risk = worse predicted prognosis; c-index 0.5 = chance",
        "units": matched,
        "unmatched": unmatched,
    }
    out_dir = Path(out_dir)
    atomic_write(out_dir / VALIDATION_JSON,
                 json.dumps(strict_json(result), indent=1, allow_nan=False) + "\n")
    _km_plot(t, e, groups, labels, result, out_dir / VALIDATION_PNG)
    return result


def _km_plot(t, e, groups, labels, result, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sksurv.nonparametric import kaplan_meier_estimator

    g = np.asarray(groups)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    try:
        for label in labels:
            sel = g == label
            x, s = kaplan_meier_estimator(e[sel], t[sel])
            ax.step(np.concatenate([[0], x]), np.concatenate([[1], s]), where="post",
                    color=risk_colour(label), label=f"{label} risk (n={int(sel.sum())})")
        p = result["km"].get("p_value")
        c = result.get("c_index")
        title = "predicted risk groups"
        if p is not None:
            title += f", log-rank p = {p:.3g}"
        if c is not None:
            title += f", c-index {c:.3f}"
        ax.set_title(title)
        ax.set_xlabel("months")
        ax.set_ylabel("survival probability")
        ax.set_ylim(0, 1.02)
        ax.legend()
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)
