"""What a prediction produced: :class:`Prediction` and its parts, as plain numpy arrays.

A Prediction holds everything a viewer or a report needs, so the dock widget, the
command line and the exports (:mod:`napari_ghanet.inference.exports`) show the same
numbers. It covers one slide, or several slides of one patient scored as one bag
(:func:`napari_ghanet.inference.predict.predict_patient`): then ``slide_index`` names each
patch's slide and ``slides`` describes every slide. No torch, napari or Qt import here.

Units: coordinates are level-0 pixels of the patch's own slide, (x, y) top-left corners;
times are months for the survival curve and seconds for timings; reconstructed genomic
values are z-scores relative to the model's training cohort.

Examples
--------
>>> import numpy as np
>>> from napari_ghanet.inference.result import CategoryResult
>>> c = CategoryResult("Oncogenes", 0.5, ["A", "B"], np.array([1.0, 0.0], np.float32),
...                    [("A", 1.0)])
>>> c.name, c.score
('Oncogenes', 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_ghanet._version import __version__
from napari_ghanet.inference.distribution import DistributionReport, not_available
from napari_ghanet.models.risk import risk_text

__all__ = ["REPORT_FORMAT", "REPORT_FORMAT_VERSION", "CategoryResult", "Prediction", "Region"]

REPORT_FORMAT = "napari-ghanet-prediction"
REPORT_FORMAT_VERSION = 1


@dataclass
class CategoryResult:
    """One functional gene category's reconstructed profile.

    values: float32 (n_genes,) reconstructed expression, z-scores relative to the training
    cohort (0 = cohort mean); score: their mean, the category's activity relative to the
    cohort; top_genes: (gene, z) of the genes furthest from the cohort mean, largest |z|
    first.
    """

    name: str
    score: float
    genes: list[str]
    values: np.ndarray
    top_genes: list[tuple[str, float]]


@dataclass
class Region:
    """A top-attention patch: rank 1 is the patch with the highest morphology attention.

    x, y, width, height are level-0 pixels; attention is the patch's morphology attention
    (the patches' attentions sum to 1); percentile its rank among the slide's patches
    (0-100); category the functional category whose genome-informed attention is
    strongest on this patch. slide is the index of the patch's slide in
    ``Prediction.slides`` (0 for a one-slide prediction); x, y are in its level-0 pixels.
    """

    rank: int
    index: int
    x: int
    y: int
    width: int
    height: int
    attention: float
    percentile: float
    category: str
    category_index: int
    slide: int = 0


@dataclass
class Prediction:
    """Everything one prediction produced.

    Per-patch arrays (N patches, T categories): coords int64 (N, 2) level-0 top-left
    (x, y); morphology_attention float32 (N,) summing to 1; genome_attention float32
    (T, N), each row summing to 1 over that category's top-k patches. tissue_mask bool
    (h, w), one pixel per ``tissue_downsample`` level-0 pixels. hazards, survival float32
    (K,), survival[k] = P(survival beyond bin k's end); bin_edges_months float64 (K + 1,)
    (the last may be inf).

    Several slides of one patient (S slides): ``slide_index`` int64 (N,) is each patch's
    slide (0..S-1), ``slides`` one dict per slide (path, name, fingerprint, mpp,
    patch_size_level0, n_patches, tissue, features_path, features_cached); ``slide`` is the
    first slide's description (plus the patient name when given), ``tissue_mask`` the
    first slide's mask and ``tissue_masks`` every slide's. A one-slide prediction has
    S = 1 and ``slide_index`` all zeros.

    What the model did not see: ``regions_report`` (the include/exclude regions and the
    patches they removed, :meth:`RegionReport.to_dict
    <napari_ghanet.preprocessing.roi.RegionReport.to_dict>`; a list with one entry per
    slide when S > 1; None without regions) and ``qc_report`` (artifact-QC counts by
    reason and the thresholds used, :meth:`QCResult.to_dict
    <napari_ghanet.preprocessing.qc.QCResult.to_dict>`, summed over slides with a
    ``slides`` list when S > 1; None when QC was off). The flagged patches: ``qc_coords``
    int64 (M, 2) level-0 top-left, ``qc_reasons`` str (M,) "pen" | "fold" | "blur",
    ``qc_slide_index`` int64 (M,).

    ``heatmaps``: smooth attention maps from overlapping patches (empty when the overlap
    is 0), one :class:`~napari_ghanet.inference.heatmap.Heatmap` per attention:
    "morphology" and each category name; the first slide's, and ``heatmaps_by_slide``
    every slide's. ``horizon_months`` / ``horizon_note``: how far the survival curve is
    meaningful and why (:func:`napari_ghanet.models.risk.survival_horizon`).
    ``distribution``: is the slide like the model's training slides (the verdict, its
    checks and reasons, and ``patch_unlike`` per patch,
    :class:`~napari_ghanet.inference.distribution.DistributionReport`); None when the
    check did not run. It never changes the risk.
    """

    risk: float
    percentile: float
    risk_group: str
    hazards: np.ndarray
    survival: np.ndarray
    bin_edges_months: np.ndarray
    categories: list[CategoryResult]
    coords: np.ndarray
    patch_size_level0: int
    step_level0: int
    morphology_attention: np.ndarray
    genome_attention: np.ndarray
    tissue_mask: np.ndarray
    tissue_downsample: float
    top_regions: list[Region]
    slide: dict[str, Any]
    model: dict[str, Any]
    intended_use: str
    settings: dict[str, Any]
    timings: dict[str, float]
    features_cached: bool
    features_path: str | None = None
    warnings: list[str] = field(default_factory=list)
    slide_index: np.ndarray | None = None
    slides: list[dict[str, Any]] = field(default_factory=list)
    tissue_masks: list[np.ndarray] = field(default_factory=list)
    regions_report: dict[str, Any] | list[dict[str, Any] | None] | None = None
    qc_report: dict[str, Any] | None = None
    qc_coords: np.ndarray | None = None
    qc_reasons: np.ndarray | None = None
    qc_slide_index: np.ndarray | None = None
    heatmaps: dict[str, Any] = field(default_factory=dict)
    heatmaps_by_slide: list[dict[str, Any]] = field(default_factory=list)
    horizon_months: float | None = None
    horizon_note: str = ""
    distribution: DistributionReport | None = None

    def __post_init__(self) -> None:
        if self.slide_index is None:
            self.slide_index = np.zeros(int(self.coords.shape[0]), np.int64)
        if self.qc_coords is None:
            self.qc_coords = np.zeros((0, 2), np.int64)
        if self.qc_reasons is None:
            self.qc_reasons = np.zeros(0, "<U4")
        if self.qc_slide_index is None:
            self.qc_slide_index = np.zeros(len(self.qc_reasons), np.int64)
        if self.heatmaps and not self.heatmaps_by_slide:
            self.heatmaps_by_slide = [self.heatmaps]
        if self.heatmaps_by_slide and not self.heatmaps:
            self.heatmaps = self.heatmaps_by_slide[0]
        if not self.slides:
            self.slides = [dict(self.slide)]
        if not self.tissue_masks:
            self.tissue_masks = [self.tissue_mask]

    @property
    def n_patches(self) -> int:
        return int(self.coords.shape[0])

    @property
    def n_slides(self) -> int:
        return len(self.slides)

    def patch_sizes_level0(self) -> np.ndarray:
        """int64 (N,): each patch's side in level-0 pixels of its own slide."""
        sizes = np.array(
            [int(s.get("patch_size_level0", self.patch_size_level0)) for s in self.slides],
            dtype=np.int64,
        )
        return sizes[self.slide_index]

    def slide_patches(self, slide: int) -> np.ndarray:
        """Indices (into the per-patch arrays) of the patches of slide number ``slide``."""
        if not 0 <= slide < self.n_slides:
            raise IndexError(f"slide {slide} out of range: the prediction has {self.n_slides}")
        return np.flatnonzero(self.slide_index == slide)

    def slide_attention(self, slide: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One slide's patches: coords (n, 2), morphology attention (n,) and genome
        attention (T, n), as the whole bag's attention (they sum to that slide's share)."""
        idx = self.slide_patches(slide)
        return self.coords[idx], self.morphology_attention[idx], self.genome_attention[:, idx]

    @property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def survival_curve(self, last_month: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Step curve for plotting: months (K + 1,) and survival (K + 1,) starting at
        (0, 1); an infinite last edge is drawn at ``last_month`` (default 1.5x the last
        finite edge)."""
        edges = np.asarray(self.bin_edges_months, dtype=np.float64).copy()
        finite = edges[np.isfinite(edges)]
        if not np.isfinite(edges[-1]):
            edges[-1] = last_month or (1.5 * float(finite.max()) if finite.size else 1.0)
        months = edges
        surv = np.concatenate([[1.0], np.asarray(self.survival, dtype=np.float64)])
        return months, surv

    def to_dict(self) -> dict[str, Any]:
        """JSON-able report: every number except the per-patch arrays (see the CSV)."""
        months = [None if not math.isfinite(v) else float(v) for v in self.bin_edges_months]
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_FORMAT_VERSION,
            "package_version": __version__,
            "intended_use": self.intended_use,
            "slide": self.slide,
            "model": self.model,
            "prediction": {
                "risk": self.risk,
                "risk_definition": "-sum of the predicted survival probabilities over the "
                "bins; higher means worse prognosis",
                "percentile_in_training_cohort": self.percentile,
                "risk_group": self.risk_group,
                "risk_group_text": risk_text(self.risk_group, self.percentile),
                "risk_group_definition": "tertiles of the training cohort's risks (low: "
                "below the 33rd percentile, high: above the 67th)",
                "survival_bins_months": months,
                "hazards": [float(v) for v in self.hazards],
                "survival": [float(v) for v in self.survival],
            },
            "pathways": [
                {
                    "category": c.name,
                    "score_z": c.score,
                    "top_genes": [{"gene": g, "z": z} for g, z in c.top_genes],
                    "reconstructed_z": {g: float(v) for g, v in zip(c.genes, c.values)},
                }
                for c in self.categories
            ],
            "top_regions": [
                {
                    "rank": r.rank,
                    "patch_index": r.index,
                    "x": r.x,
                    "y": r.y,
                    "width": r.width,
                    "height": r.height,
                    "morphology_attention": r.attention,
                    "attention_percentile": r.percentile,
                    "strongest_category": r.category,
                }
                | ({"slide": r.slide} if self.n_slides > 1 else {})
                for r in self.top_regions
            ],
            "patches": {
                "count": self.n_patches,
                "patch_size_level0": self.patch_size_level0,
                "step_level0": self.step_level0,
                "coordinates": "level-0 pixels, top-left (x, y)",
            },
            "tissue": {
                "downsample": self.tissue_downsample,
                "fraction": float(self.tissue_mask.mean()) if self.tissue_mask.size else 0.0,
            },
            "horizon_months": self.horizon_months,
            "horizon_note": self.horizon_note,
            "regions": self.regions_report,
            "qc": self.qc_report,
            "settings": self.settings,
            "timings_s": self.timings,
            "features_cached": self.features_cached,
            "warnings": list(self.warnings),
            "distribution": (self.distribution or not_available(
                "the training-distribution check was not run")).to_dict(),
        } | (self._slides_dict() if self.n_slides > 1 else {})

    def _slides_dict(self) -> dict[str, Any]:
        """Report entries of a several-slide prediction (absent for one slide)."""
        counts = np.bincount(self.slide_index, minlength=self.n_slides)
        share = np.bincount(
            self.slide_index, weights=self.morphology_attention, minlength=self.n_slides
        )
        return {
            "slides": [
                dict(s) | {"n_patches": int(n), "morphology_attention_share": float(a)}
                for s, n, a in zip(self.slides, counts, share)
            ],
        }
