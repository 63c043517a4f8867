"""What a predicted risk means: its risk group, its percentile, and how far to plot survival.

**Risk groups** are the training cohort's risk tertiles: a slide is "low" risk when its
risk is below the cohort's 33rd percentile, "high" above the 67th, "intermediate" between.
Bundles written by ``ghanet-train bundle`` store the cut points
(``risk_groups = {"cutpoints": [t1, t2], "labels": ["low", "intermediate", "high"]}``);
for older bundles they are interpolated from the stored ``risk_quantiles``. The wording
and colours (:data:`RISK_COLOURS`, :func:`risk_text`) are defined here once for the widget,
the reports and the exports.

**Survival horizon**: the last survival-bin edge is the cohort's longest follow-up (e.g.
651 months), where almost no patient is still observed. Curves are shown up to the last
finite bin edge within the 90th percentile of the cohort's follow-up
(``followup_p90_months``, stored by new bundles); older bundles fall back to the last
finite interior bin edge. Risks are in the model's units (``-sum(S(k))``, higher = worse);
times in months.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_ghanet.errors import BundleError, CohortError

__all__ = [
    "RISK_COLOURS",
    "RISK_LABELS",
    "followup_p90",
    "risk_colour",
    "risk_group",
    "risk_group_cutpoints",
    "risk_groups_metadata",
    "risk_percentile",
    "risk_text",
    "survival_horizon",
]

#: Risk-group labels, lowest risk first.
RISK_LABELS: tuple[str, ...] = ("low", "intermediate", "high")

#: One colour per risk group (hex RGB), shared by the widget, reports and exports.
RISK_COLOURS: dict[str, str] = {
    "low": "#1a9850",
    "intermediate": "#e08214",
    "high": "#d73027",
}

_UNKNOWN_COLOUR = "#666666"


def risk_colour(label: str) -> str:
    """Hex colour of a risk group ("#666666" for a label a custom bundle defines).

    Examples
    --------
    >>> risk_colour("high"), risk_colour("other")
    ('#d73027', '#666666')
    """
    return RISK_COLOURS.get(label, _UNKNOWN_COLOUR)


def risk_text(label: str, percentile: float | None = None) -> str:
    """The wording used everywhere: "Intermediate risk (53rd percentile of the training
    cohort)".

    Examples
    --------
    >>> risk_text("intermediate", 53.2)
    'Intermediate risk (53rd percentile of the training cohort)'
    >>> risk_text("low")
    'Low risk'
    """
    text = f"{label.capitalize()} risk"
    if percentile is None:
        return text
    p = int(round(float(percentile)))
    suffix = "th" if 10 <= p % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(p % 10, "th")
    return f"{text} ({p}{suffix} percentile of the training cohort)"


def _quantiles(metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    q = metadata.get("risk_quantiles")
    try:
        probs = np.asarray(q["probs"], dtype=float)
        values = np.asarray(q["values"], dtype=float)
    except (KeyError, TypeError, ValueError):
        raise BundleError(
            "the model bundle has no usable 'risk_quantiles' (probs/values): rebuild it with "
            "`ghanet-train bundle`"
        ) from None
    if probs.shape != values.shape or probs.size == 0:
        raise BundleError("the bundle's 'risk_quantiles' need equal-length 'probs' and 'values'")
    order = np.argsort(values, kind="stable")
    return probs[order], values[order]


def risk_percentile(risk: float, metadata: dict[str, Any]) -> float:
    """Percentile (0-100) of ``risk`` among the training cohort's risks.

    Interpolated in the bundle's ``risk_quantiles``; tied quantile values (a flat stretch
    of risks) take their mean probability.

    Examples
    --------
    >>> meta = {"risk_quantiles": {"probs": [0, 0.5, 1], "values": [-3.0, -2.0, -1.0]}}
    >>> risk_percentile(-1.5, meta)
    75.0
    """
    probs, values = _quantiles(metadata)
    uniq, inverse = np.unique(values, return_inverse=True)
    uprobs = np.bincount(inverse, weights=probs) / np.bincount(inverse)
    return float(100.0 * np.interp(float(risk), uniq, uprobs, left=0.0, right=1.0))


def risk_group_cutpoints(metadata: dict[str, Any]) -> tuple[list[float], list[str], str]:
    """The risk-group cut points, their labels, and where they come from.

    Returns
    -------
    cutpoints : list of float
        Increasing risks separating the groups (two tertiles).
    labels : list of str
        ``len(cutpoints) + 1`` labels, lowest risk first.
    source : str
        "bundle" when stored, "risk_quantiles" when interpolated (older bundles).

    Raises
    ------
    BundleError
        When stored cut points are malformed.

    Examples
    --------
    >>> meta = {"risk_quantiles": {"probs": [0, 1], "values": [-3.0, 0.0]}}
    >>> risk_group_cutpoints(meta)
    ([-2.0, -1.0], ['low', 'intermediate', 'high'], 'risk_quantiles')
    """
    groups = metadata.get("risk_groups")
    if isinstance(groups, dict) and "cutpoints" in groups:
        cut = groups.get("cutpoints")
        labels = groups.get("labels") or list(RISK_LABELS)
        try:
            cut = [float(c) for c in cut]
        except (TypeError, ValueError):
            raise BundleError("the bundle's risk_groups 'cutpoints' must be numbers") from None
        if (
            not cut
            or not all(math.isfinite(c) for c in cut)
            or any(b < a for a, b in zip(cut, cut[1:]))
            or len(labels) != len(cut) + 1
        ):
            raise BundleError(
                "the bundle's risk_groups need increasing finite 'cutpoints' and one more "
                f"label than cut points (got {cut} and {labels})"
            )
        return cut, [str(v) for v in labels], "bundle"
    probs, values = _quantiles(metadata)
    cut = [float(np.interp(p, probs, values)) for p in (1 / 3, 2 / 3)]
    return cut, list(RISK_LABELS), "risk_quantiles"


def risk_group(risk: float, metadata: dict[str, Any]) -> tuple[str, float]:
    """Risk group and percentile of a predicted ``risk`` in the training cohort.

    Parameters
    ----------
    risk : float
        The model's risk (``-sum(S(k))``; higher = worse).
    metadata : dict
        The bundle's metadata (``models.bundle.read_bundle_metadata``).

    Returns
    -------
    label : str
        "low", "intermediate" or "high" (a risk on a cut point goes to the higher group).
    percentile : float
        0-100, see :func:`risk_percentile`.

    Examples
    --------
    >>> meta = {"risk_quantiles": {"probs": [0, 0.5, 1], "values": [-3.0, -2.0, -1.0]},
    ...         "risk_groups": {"cutpoints": [-2.4, -1.6],
    ...                         "labels": ["low", "intermediate", "high"]}}
    >>> label, pct = risk_group(-1.9, meta)
    >>> label, round(pct, 1)
    ('intermediate', 55.0)
    """
    cut, labels, _ = risk_group_cutpoints(metadata)
    idx = int(np.searchsorted(np.asarray(cut, float), float(risk), side="right"))
    return labels[idx], risk_percentile(risk, metadata)


def risk_groups_metadata(risks: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """The ``risk_groups`` entry a new bundle stores: the cohort's risk tertiles.

    Examples
    --------
    >>> risk_groups_metadata([1.0, 2.0, 3.0, 4.0])["cutpoints"]
    [2.0, 3.0]
    """
    r = np.asarray(risks, float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise CohortError("risk tertiles need at least one finite risk")
    return {
        "cutpoints": [float(v) for v in np.quantile(r, [1 / 3, 2 / 3])],
        "labels": list(RISK_LABELS),
        "source": f"tertiles of the bundled model's risks on the run's {r.size} patients",
    }


def followup_p90(months: Sequence[float] | np.ndarray) -> float:
    """90th percentile of the cohort's follow-up times (months, events and censored).

    Examples
    --------
    >>> followup_p90(np.arange(1, 101))
    90.1
    """
    m = np.asarray(months, float)
    m = m[np.isfinite(m)]
    if m.size == 0:
        raise CohortError("follow-up percentile needs at least one finite time")
    return round(float(np.quantile(m, 0.9)), 6)


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def survival_horizon(metadata: dict[str, Any]) -> tuple[float, str]:
    """How far the survival curve is meaningful, in months, and a sentence saying why.

    The last finite survival-bin edge within the 90th percentile of the training cohort's
    follow-up (``followup_p90_months``); for bundles without it, the last finite interior
    bin edge (the last edge is the cohort's longest follow-up).

    Parameters
    ----------
    metadata : dict
        The bundle's metadata (``survival_bins_months``, optionally ``followup_p90_months``).

    Returns
    -------
    horizon_months : float
    reason : str

    Examples
    --------
    >>> meta = {"survival_bins_months": [0, 7.7, 27.0, 65.3, 651.2]}
    >>> survival_horizon(meta)[0]
    65.3
    >>> horizon, reason = survival_horizon({**meta, "followup_p90_months": 50.0})
    >>> horizon
    27.0
    >>> print(reason[:72])
    Survival is shown to 27 months: the last survival-bin edge within the 90
    """
    edges = metadata.get("survival_bins_months")
    if not isinstance(edges, list | tuple) or len(edges) < 2:
        raise BundleError("the bundle's 'survival_bins_months' must list at least two bin edges")
    later = [float(e) for e in edges[1:] if _finite(e)]
    p90 = metadata.get("followup_p90_months")
    if _finite(p90) and float(p90) > 0:
        p90 = float(p90)
        within = [e for e in later if e <= p90 * (1 + 1e-9)]
        if within:
            h = max(within)
            return h, (
                f"Survival is shown to {h:.3g} months: the last survival-bin edge within the "
                f"90th percentile of the training cohort's follow-up ({p90:.3g} months); "
                "later times are too sparsely followed to estimate."
            )
        return p90, (
            f"Survival is shown to {p90:.3g} months, the 90th percentile of the training "
            "cohort's follow-up (every survival-bin edge lies beyond it)."
        )
    interior = [float(e) for e in edges[1:-1] if _finite(e)]
    if interior:
        h = interior[-1]
        return h, (
            f"Survival is shown to {h:.3g} months, the last finite interior survival-bin "
            "edge: the last bin runs to the training cohort's longest follow-up, where few "
            "patients are still observed (this bundle does not store the cohort's follow-up)."
        )
    if later:
        h = later[-1]
        return h, f"Survival is shown to {h:.3g} months, the model's only finite bin edge."
    raise BundleError("the bundle's 'survival_bins_months' have no finite edge after the first")
