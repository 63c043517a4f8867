"""Is this slide like the slides the model was trained on? The verdict of one prediction.

A model extrapolates silently on slides unlike its training slides (another cancer
type, stain protocol, scanner, magnification). The bundle's training-distribution
summary (:mod:`napari_ghanet.models.distribution_summary`) describes the training slides;
:func:`assess` compares the new slide with them, check by check, and gives an overall
verdict: ``in distribution``, ``unusual`` or ``out of distribution``, with the reasons in
plain words. The verdict never changes the risk; it says how far to trust it.

Each check compares one measure of the slide with the training slides' quantiles:

* the slide's mean patch feature and the share of its patches unlike any training patch
  (beyond the 99th percentile of the training patches' distance), as the encoder sees
  them;
* the stain colour on the tissue thumbnail (haematoxylin share, intensity, colour outside
  the H&E plane), the level-0 resolution, the tissue area and the number of patches.

A value within the training slides' range (widened by ``unusual_margin`` of that range) is
fine; beyond it is *unusual*; beyond the range widened by ``ood_margin`` is *out of
distribution*. Tissue area and patch count are never more than unusual, and only when
about twice or half the training range's ends (a biopsy is smaller than a resection, not
another kind of tissue). A slide whose level-0 resolution is
coarser than the model's patches is out of distribution: its patches were enlarged.

Units: resolutions in µm/px, areas in mm², shares as fractions (the reasons print %).

Examples
--------
>>> import numpy as np
>>> from napari_ghanet.models.distribution_summary import build_summary
>>> rng = np.random.default_rng(0)
>>> train = [rng.normal(size=(50, 8)).astype(np.float32) for _ in range(40)]
>>> acq = [{"mpp": 0.5, "n_patches": 50} for _ in train]
>>> summary = build_summary(train, acq, encoder="demo", target_mpp=0.5)
>>> like = assess(summary, rng.normal(size=(50, 8)), [{"mpp": 0.5, "n_patches": 50}])
>>> like.verdict
'in distribution'
>>> far = assess(summary, rng.normal(3.0, 1.0, size=(50, 8)), [{"mpp": 1.0, "n_patches": 50}])
>>> far.verdict
'out of distribution'
>>> for reason in far.reasons: print(reason)
the tissue as a whole looks unlike any training slide (as the model's encoder sees it)
100 % of patches unlike any training patch
resolution 1.00 µm/px, model trained at 0.50 µm/px (patches were enlarged)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_ghanet.models.distribution_summary import SUMMARY_VERSION, Pca

__all__ = [
    "IN",
    "NOT_AVAILABLE",
    "OUT",
    "UNUSUAL",
    "Check",
    "DistributionReport",
    "assess",
    "distribution_stage",
    "not_available",
    "slide_acquisition",
]

IN, UNUSUAL, OUT = "in distribution", "unusual", "out of distribution"
NOT_AVAILABLE = "not available"
_RANK = {"ok": 0, "unusual": 1, "out": 2}

# How each check reads: label, unit, scale ("lin" or "log"), smallest spread of the
# training values that counts (on that scale), the most it can say ("out" or "unusual"),
# and the words for a value above / below the training range.
_CHECKS: dict[str, tuple[str, str, str, float, str, str, str]] = {
    "slide_distance": (
        "overall appearance", "", "lin", 0.25, "out",
        "the tissue as a whole looks unlike any training slide (as the model's encoder "
        "sees it)", "",
    ),
    "patch_outlier_share": (
        "patches unlike training", "%", "lin", 0.05, "out",
        "{pct} of patches unlike any training patch", "",
    ),
    "hematoxylin_share": (
        "stain balance (haematoxylin share)", "", "lin", 0.05, "out",
        "staining far bluer (more haematoxylin) than any training slide",
        "staining far pinker (more eosin) than any training slide",
    ),
    "stain_intensity": (
        "stain intensity", "OD", "log", 0.15, "out",
        "staining far darker than any training slide",
        "staining far paler than any training slide",
    ),
    "off_stain": (
        "colour outside H&E", "", "lin", 0.1, "out",
        "colours unlike H&E staining (another stain, e.g. immunohistochemistry?)", "",
    ),
    "mpp": (
        "resolution", "µm/px", "log", 0.25, "out",
        "resolution {value} µm/px, training slides {train} µm/px",
        "resolution {value} µm/px, training slides {train} µm/px",
    ),
    "tissue_area_mm2": (
        "tissue area", "mm²", "log", 10.0, "unusual",
        "more tissue ({value} mm²) than any training slide ({train} mm²)",
        "less tissue ({value} mm²) than any training slide ({train} mm²)",
    ),
    "patch_count": (
        "patches", "", "log", 10.0, "unusual",
        "more patches ({value}) than any training slide ({train})",
        "fewer patches ({value}) than any training slide ({train})",
    ),
}
_ONE_SIDED = ("slide_distance", "patch_outlier_share", "off_stain")


@dataclass
class Check:
    """One measure of the slide against the training slides.

    ``value`` in ``unit``; ``percentile``: the share (0-100) of training slides with a
    lower value; ``training_range``: the training slides' lowest and highest value;
    ``status``: "ok", "unusual" or "out"; ``reason``: plain words when not ok.
    """

    name: str
    label: str
    value: float
    unit: str
    percentile: float
    training_range: tuple[float, float]
    status: str = "ok"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "label": self.label, "value": self.value,
                "unit": self.unit, "training_percentile": self.percentile,
                "training_range": list(self.training_range), "status": self.status,
                "reason": self.reason}


@dataclass
class DistributionReport:
    """The verdict of one prediction (see the module doc).

    ``patch_unlike``: float32 (N,) per bag patch, its distance to the training patches
    divided by the 99th percentile of the training patches' (above 1: unlike any
    training patch); None when not available.
    """

    verdict: str
    checks: list[Check] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    note: str = ""
    patch_unlike: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.verdict != NOT_AVAILABLE

    @property
    def headline(self) -> str:
        """One line: the verdict and its first reason."""
        if not self.available:
            return "Training distribution: not available"
        text = self.verdict[0].upper() + self.verdict[1:]
        return f"{text}: {self.reasons[0]}" if self.reasons else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "note": self.note,
            "checks": [c.to_dict() for c in self.checks],
            "settings": dict(self.settings),
            "meaning": "whether this slide is like the model's training slides; the risk "
            "is unchanged by it, but a slide unlike them makes the model extrapolate",
        }


def not_available(note: str) -> DistributionReport:
    """The report of a prediction without a verdict (``note`` says why)."""
    return DistributionReport(NOT_AVAILABLE, note=note)


def slide_acquisition(mpp: float | None, mask: Any, n_patches: int | None) -> dict[str, Any]:
    """What the checks read of one slide: level-0 ``mpp`` (µm/px), the tissue mask's area
    (mm²) and stain (:class:`~napari_ghanet.preprocessing.tissue.TissueMask`), the
    patch count (None when regions or QC changed it)."""
    area = getattr(mask, "area_um2", None)
    return {
        "mpp": None if mpp is None else float(mpp),
        "tissue_area_mm2": None if area is None else float(area) / 1e6,
        "n_patches": None if n_patches is None else int(n_patches),
        "stain": getattr(mask, "stain", None),
    }


def _fmt(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 1e4:
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return f"{v:.2g}"


def _percentile(q: np.ndarray, v: float) -> float:
    below = np.searchsorted(q, v, side="left")
    above = np.searchsorted(q, v, side="right")
    return float(np.clip((below + above) / 2 - 0.5, 0, 100))


def _judge(name: str, value: float, quantiles: Sequence[float], unusual_margin: float,
           ood_margin: float, target_mpp: float | None) -> Check:
    label, unit, scale, floor, cap, high, low = _CHECKS[name]
    q = np.asarray(quantiles, np.float64)
    check = Check(name, label, float(value), unit, _percentile(q, value),
                  (float(q[0]), float(q[-1])))
    f = (lambda x: math.log2(max(x, 1e-9))) if scale == "log" else (lambda x: x)
    lo, hi, v = f(q[0]), f(q[-1]), f(value)
    span = max(hi - lo, floor)
    beyond = max(v - hi, 0.0 if name in _ONE_SIDED else lo - v, 0.0)
    if beyond > ood_margin * span:
        check.status = "out"
    elif beyond > unusual_margin * span:
        check.status = "unusual"
    fmt = (lambda x: f"{x:.2f}") if name == "mpp" else _fmt
    if name == "mpp" and target_mpp and value > 1.1 * target_mpp:
        check.status = "out"
        check.reason = (f"resolution {fmt(value)} µm/px, model trained at "
                        f"{fmt(target_mpp)} µm/px (patches were enlarged)")
        return check
    if check.status == "out" and cap == "unusual":
        check.status = "unusual"
    if check.status != "ok":
        words = high if v > hi else low
        train = fmt(q[0]) if q[0] == q[-1] else f"{fmt(q[0])}-{fmt(q[-1])}"
        check.reason = words.format(value=fmt(value), train=train,
                                    pct=f"{100 * value:.0f} %")
    return check


def assess(
    summary: dict[str, Any] | None,
    features: np.ndarray,
    slides: Sequence[dict[str, Any]],
    *,
    unusual_margin: float = 0.1,
    ood_margin: float = 0.5,
    slide_names: Sequence[str] | None = None,
) -> DistributionReport:
    """Compare one bag (one slide, or a patient's slides) with the training slides.

    Parameters
    ----------
    summary : dict or None
        The bundle's summary (``ModelBundle.distribution``); None gives "not available".
    features : float32 (N, D)
        The bag's patch features, as the model read them.
    slides : sequence of dict
        Per slide, :func:`slide_acquisition` (``mpp``, ``tissue_area_mm2``, ``n_patches``,
        ``stain``); a missing value skips that check for that slide.
    unusual_margin, ood_margin : float
        How far beyond the training slides' range (as a fraction of that range) a value
        is unusual / out of distribution.
    slide_names : sequence of str, optional
        Prefixes of the reasons of a several-slide bag.

    Returns
    -------
    DistributionReport
    """
    if summary is None:
        return not_available("this model bundle carries no summary of its training slides "
                             "(made before napari-ghanet could record one)")
    if summary.get("version", 0) > SUMMARY_VERSION:
        return not_available("this model's training summary is of a newer napari-ghanet")
    features = np.asarray(features, np.float32)
    checks_q = summary.get("checks", {})
    tm = summary.get("target_mpp")
    settings = {"unusual_margin": unusual_margin, "ood_margin": ood_margin,
                "training_slides": summary.get("n_slides")}
    slide_pca = Pca.from_dict(summary["slide_pca"])
    patch_pca = Pca.from_dict(summary["patch_pca"])
    if features.ndim != 2 or features.shape[1] != slide_pca.mean.shape[0] or not len(features):
        return not_available("the features do not match the model's training summary")
    unlike = (patch_pca.distances(features) / summary["patch_threshold"]).astype(np.float32)
    measured: list[tuple[str, str, float]] = [
        ("", "slide_distance", float(slide_pca.distances(features.mean(axis=0)[None])[0])),
        ("", "patch_outlier_share", float((unlike > 1.0).mean())),
    ]
    names = list(slide_names or [""] * len(slides))
    for name, acq in zip(names, slides):
        stain = acq.get("stain") or {}
        for key, value in (("hematoxylin_share", stain.get("hematoxylin_share")),
                           ("stain_intensity", stain.get("stain_intensity")),
                           ("off_stain", stain.get("off_stain")), ("mpp", acq.get("mpp")),
                           ("tissue_area_mm2", acq.get("tissue_area_mm2")),
                           ("patch_count", acq.get("n_patches"))):
            if isinstance(value, int | float) and math.isfinite(value):
                measured.append((f"{name}: " if name else "", key, float(value)))
    checks: list[Check] = []
    for prefix, key, value in measured:
        if key not in checks_q:
            continue
        c = _judge(key, value, checks_q[key]["quantiles"], unusual_margin, ood_margin, tm)
        if c.reason and prefix:
            c.reason = prefix + c.reason
        checks.append(c)
    worst = max((_RANK[c.status] for c in checks), default=0)
    verdict = (IN, UNUSUAL, OUT)[worst]
    ordered = sorted((c for c in checks if c.status != "ok"), key=lambda c: -_RANK[c.status])
    missing = [k for k in ("hematoxylin_share", "mpp") if k not in checks_q]
    note = (f"compared with the {summary.get('n_slides')} training slides"
            + (f"; not recorded for them: {', '.join(missing)}" if missing else ""))
    return DistributionReport(verdict, checks, [c.reason for c in ordered], note, unlike,
                              settings)


def distribution_stage(summary: dict[str, Any] | None, bag: np.ndarray, runs: Sequence[Any],
                       options: Any) -> DistributionReport:
    """The verdict of a prediction: :func:`assess` on the bag's features and each slide's
    acquisition (``runs``: the per-slide stages' results, with ``info``, ``mask``, ``grid``
    and ``regions``), with the thresholds of ``options``
    (:class:`~napari_ghanet.options.DistributionOptions`)."""
    if not options.distribution_check:
        return not_available("the training-distribution check was switched off")
    slides = [slide_acquisition(r.info.get("mpp"), r.mask,
                                len(r.grid) if r.regions is None else None) for r in runs]
    names = [str(r.info.get("name", "")) for r in runs] if len(runs) > 1 else None
    try:
        return assess(summary, bag, slides, unusual_margin=options.unusual_margin,
                      ood_margin=options.ood_margin, slide_names=names)
    except (KeyError, TypeError, ValueError) as e:  # a summary this version cannot read
        return not_available(f"the model's training summary cannot be read ({e})")
