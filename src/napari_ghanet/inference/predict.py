"""The one prediction function, shared by the dock widget and ``ghanet predict``, and its
exports (JSON report, per-patch CSV, QuPath GeoJSON).

``predict_slide`` runs slide -> tissue mask -> patch grid -> patch features (from the
cache when present) -> G-HANet -> :class:`Prediction`. Everything a viewer or a report
needs is in the Prediction as plain numpy arrays and numbers, so the widget and the
command line show the same numbers from the same call. No napari or Qt import here.

Units: coordinates are level-0 pixels, (x, y) top-left corners; times are months for
the survival curve and seconds for timings; reconstructed genomic values are z-scores
relative to the model's training cohort.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet._version import __version__
from napari_ghanet.errors import Cancelled, NoTissueError, PredictionError
from napari_ghanet.inference.checks import check_prediction_finite
from napari_ghanet.io.atomic import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "CategoryResult",
    "NoTissueError",
    "Prediction",
    "PredictionCancelled",
    "PredictionError",
    "Region",
    "default_cache_dir",
    "export_all",
    "export_paths",
    "predict_slide",
    "resolve_device",
    "write_geojson",
    "write_patch_csv",
    "write_report_json",
]

#: Signature of progress callbacks: (stage, done, total). Stages, in order: "slide",
#: "tissue", "patches", "features" (done/total = patches embedded), "model", "done".
ProgressCallback = Callable[[str, int, int], None]

REPORT_FORMAT = "napari-ghanet-prediction"
REPORT_FORMAT_VERSION = 1






PredictionCancelled = Cancelled  # the package's one cancellation type


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
    strongest on this patch.
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


@dataclass
class Prediction:
    """Everything one prediction produced.

    Per-patch arrays (N patches, T categories): coords int64 (N, 2) level-0 top-left
    (x, y); morphology_attention float32 (N,) summing to 1; genome_attention float32
    (T, N), each row summing to 1 over that category's top-k patches. tissue_mask bool
    (h, w), one pixel per ``tissue_downsample`` level-0 pixels. hazards, survival float32
    (K,), survival[k] = P(survival beyond bin k's end); bin_edges_months float64 (K + 1,)
    (the last may be inf).
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

    @property
    def n_patches(self) -> int:
        return int(self.coords.shape[0])

    @property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def category_scores(self) -> np.ndarray:
        """float32 (T,): mean reconstructed z-score of each category."""
        return np.array([c.score for c in self.categories], dtype=np.float32)

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
            "settings": self.settings,
            "timings_s": self.timings,
            "features_cached": self.features_cached,
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- helpers


def default_cache_dir() -> Path:
    """The patch-feature cache: ``<user cache>/napari-ghanet/features`` (the user cache is
    ``$NAPARI_GHANET_CACHE`` when set, else ``$XDG_CACHE_HOME`` or ~/.cache)."""
    from napari_ghanet.datasets.demo import cache_dir

    return cache_dir() / "features"


def resolve_device(device: str | None = "auto") -> str:
    """"auto" -> "cuda" when a GPU is usable, else "cpu"; other names are checked."""
    from napari_ghanet.inference.embedding import resolve_device as _resolve

    try:
        return str(_resolve(device or "auto"))
    except ValueError as e:
        raise PredictionError(f"{e}; use device 'auto' or 'cpu'") from None


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PredictionCancelled("prediction cancelled")


def _encoder_kwargs(spec, overrides: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Registry name and constructor arguments that rebuild the bundle's encoder."""
    kw: dict[str, Any] = {"patch_px": spec.patch_px, "target_mpp": spec.target_mpp}
    name = spec.name
    if name == "resnet50_trunc":
        kw["resize_to"] = spec.resize
    elif name == "morphometric":
        if "standardize" in spec.extra:
            kw["standardize"] = bool(spec.extra["standardize"])
    elif name.startswith("torchscript"):
        kw.update(
            dim=spec.dim,
            input_size=spec.resize,
            name=name,
        )
        if spec.mean is not None:
            kw["mean"] = spec.mean
        if spec.std is not None:
            kw["std"] = spec.std
        name = "torchscript"
    kw.update(overrides or {})
    if name == "torchscript" and "path" not in kw:
        raise PredictionError(
            f"the model expects features from the user encoder {spec.name!r}: give its "
            "TorchScript file with encoder_kwargs={'path': ...}"
        )
    return name, kw


def _encoder_mismatch(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Differences (beyond name/dim/geometry/resize) that make features incompatible."""
    why = []
    for key in ("version", "standardize", "mean", "std"):
        if key in expected and key in actual and expected[key] is not None:
            a, b = expected[key], actual[key]
            if isinstance(a, list | tuple) and isinstance(b, list | tuple):
                same = len(a) == len(b) and all(
                    math.isclose(float(x), float(y), rel_tol=1e-4, abs_tol=1e-6)
                    for x, y in zip(a, b)
                )
            else:
                same = a == b
            if not same:
                why.append(f"{key} {b!r} instead of {a!r}")
    return why


def _top_genes(genes: list[str], values: np.ndarray, n: int) -> list[tuple[str, float]]:
    order = np.argsort(-np.abs(values), kind="stable")[: max(0, n)]
    return [(genes[i], float(values[i])) for i in order]


def _strongest_category(genome_attention: np.ndarray, similarity: np.ndarray | None) -> np.ndarray:
    """Index (N,) of the category whose attention is strongest on each patch.

    Genome-informed attention is zero outside each category's top-k patches; where a
    patch is in no category's top-k, the category with the highest softmaxed similarity
    (the attention before the top-k cut) decides.
    """
    best = np.argmax(genome_attention, axis=0)
    none = genome_attention.max(axis=0) <= 0
    if none.any() and similarity is not None:
        s = similarity - similarity.max(axis=1, keepdims=True)
        soft = np.exp(s)
        soft /= soft.sum(axis=1, keepdims=True)
        best[none] = np.argmax(soft[:, none], axis=0)
    return best


def _percentile_ranks(values: np.ndarray) -> np.ndarray:
    from napari_ghanet.inference.overlays import percentile_normalise

    return 100.0 * percentile_normalise(values)


def _slide_info(slide) -> dict[str, Any]:
    return {
        "path": str(slide.path),
        "name": Path(slide.path).name,
        "fingerprint": slide.fingerprint(),
        "dimensions_level0": [int(v) for v in slide.dimensions],
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "objective_power": slide.objective_power,
        "vendor": slide.vendor,
    }


def _model_info(bundle) -> dict[str, Any]:
    meta = bundle.metadata
    return {
        "name": bundle.name,
        "path": str(bundle.path) if bundle.path is not None else None,
        "architecture": meta.get("model", {}).get("name"),
        "encoder": bundle.encoder.to_dict(),
        "provenance": bundle.provenance,
        "package_version": meta.get("package_version"),
    }


# --------------------------------------------------------------------------- predict


def predict_slide(
    slide_or_path,
    bundle,
    *,
    device: str = "auto",
    mpp: float | None = None,
    patch_px: int | None = None,
    target_mpp: float | None = None,
    tissue_params=None,
    min_tissue_fraction: float = 0.5,
    batch_size: int | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    encoder_kwargs: dict[str, Any] | None = None,
    top_k: int = 10,
    top_genes: int = 10,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Prediction:
    """Predict prognosis for one slide with a model bundle.

    Parameters
    ----------
    slide_or_path : Slide or path
        An open :class:`~napari_ghanet.io.slide.Slide` or a slide file.
    bundle : ModelBundle or path
        The model (:func:`~napari_ghanet.models.bundle.load_bundle`) or its ``.safetensors`` file.
    device : str
        "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; used for the patch
        encoder and the model.
    mpp : float, optional
        Level-0 microns per pixel, for slides that do not record it (opening a path only).
    patch_px, target_mpp : optional
        Patch side (px) and resolution (um/px); default: the model's encoder spec. Values
        other than the model's are allowed but noted in ``Prediction.warnings``.
    tissue_params : TissueParams or dict, optional
        Tissue detection parameters (default :class:`~napari_ghanet.preprocessing.tissue.TissueParams`).
    min_tissue_fraction : float
        Keep patches at least this fraction tissue.
    batch_size, workers : int, optional
        Encoder batch size and reader threads (embedding defaults).
    cache_dir : path, optional
        Patch-feature cache (default :func:`default_cache_dir`); ``use_cache=False``
        neither reads nor writes it.
    encoder_kwargs : dict, optional
        Extra encoder arguments, e.g. ``{"weights": path}`` for ResNet50 weights or
        ``{"path": file}`` for a TorchScript encoder.
    top_k : int
        Number of top-attention regions.
    top_genes : int
        Genes listed per category.
    progress : callable(stage, done, total), optional
        Called from this thread as the run advances (see ``ProgressCallback``).
    cancel : threading.Event, optional
        Set it (from any thread) to stop the run; raises :class:`PredictionCancelled`
        and leaves no cache file behind.

    Returns
    -------
    Prediction

    Raises
    ------
    SlideError
        Unreadable slide, or no microns per pixel and no ``mpp``.
    BundleError / EncoderMismatchError
        Unusable model, or features that do not fit it.
    NoTissueError
        No patch with enough tissue.
    PredictionCancelled
    """
    import torch

    from napari_ghanet.encoders import EncoderError, create_encoder
    from napari_ghanet.inference.embedding import EmbeddingCancelled, embed_slide
    from napari_ghanet.io.features import cached_features_path, load_cached_features, save_features
    from napari_ghanet.io.slide import Slide, open_slide
    from napari_ghanet.models.bundle import (
        EncoderMismatchError,
        EncoderSpec,
        ModelBundle,
        load_bundle,
    )
    from napari_ghanet.preprocessing.patches import patch_grid
    from napari_ghanet.preprocessing.tissue import TissueParams, tissue_mask

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []

    def report(stage: str, done: int = 0, total: int = 0) -> None:
        if progress is not None:
            progress(stage, int(done), int(total))

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 4)
        return now

    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    spec = bundle.encoder
    warnings.extend(getattr(bundle, "notices", []))  # e.g. fp16 weights converted (issue 12)
    device = resolve_device(device)
    if top_k < 0:
        raise PredictionError(f"top_k must be >= 0, got {top_k}")
    if batch_size is not None and int(batch_size) < 1:
        raise PredictionError(f"batch size must be >= 1, got {batch_size}")

    # -- slide
    report("slide")
    t0 = time.perf_counter()
    own_slide = not isinstance(slide_or_path, Slide)
    slide = open_slide(slide_or_path, mpp=mpp) if own_slide else slide_or_path
    try:
        if slide.mpp is None:
            from napari_ghanet.io.slide import SlideError

            raise SlideError(
                f"{slide.path}: the slide records no microns per pixel; give the level-0 "
                "resolution (mpp), e.g. 0.25 for 40x or 0.5 for 20x scans"
            )
        t0 = lap("open", t0)
        _check_cancel(cancel)

        # -- tissue
        report("tissue")
        if isinstance(tissue_params, dict):
            tissue_params = TissueParams(**tissue_params)
        mask = tissue_mask(slide, tissue_params)
        t0 = lap("tissue", t0)
        _check_cancel(cancel)
        if mask.empty:
            raise NoTissueError(
                f"{slide.path.name}: no tissue found. Check that this is a brightfield H&E "
                "slide, or lower the tissue threshold in the advanced settings"
            )

        # -- patch grid
        report("patches")
        eff_patch_px = int(patch_px) if patch_px is not None else spec.patch_px
        eff_mpp = float(target_mpp) if target_mpp is not None else spec.target_mpp
        if eff_patch_px != spec.patch_px or not math.isclose(
            eff_mpp, spec.target_mpp, rel_tol=0.05
        ):
            warnings.append(
                f"patches of {eff_patch_px} px at {eff_mpp:g} um/px differ from the "
                f"{spec.patch_px} px at {spec.target_mpp:g} um/px the model was trained on: "
                "results are outside the model's validated use"
            )
        grid = patch_grid(
            slide,
            mask,
            patch_px=eff_patch_px,
            target_mpp=eff_mpp,
            min_tissue_fraction=min_tissue_fraction,
        )
        t0 = lap("patches", t0)
        if grid.empty:
            raise NoTissueError(
                (grid.message or f"{slide.path.name}: no patch holds enough tissue")
                + ". Nothing to predict from."
            )
        _check_cancel(cancel)

        # -- encoder and features
        enc_name, enc_kw = _encoder_kwargs(spec, encoder_kwargs)
        enc_kw["patch_px"], enc_kw["target_mpp"] = eff_patch_px, eff_mpp
        try:
            encoder = create_encoder(enc_name, **enc_kw)
        except EncoderError as e:
            raise PredictionError(f"cannot build the model's patch encoder: {e}") from e
        # The spec stored with the features: the encoder's, at the grid's geometry.
        enc_spec = encoder.spec()
        enc_spec["patch_px"], enc_spec["target_mpp"] = int(grid.patch_px), float(grid.target_mpp)
        expected = replace(spec, patch_px=eff_patch_px, target_mpp=eff_mpp)
        why = expected.mismatch(EncoderSpec.from_dict(enc_spec)) + _encoder_mismatch(
            spec.to_dict() | spec.extra, enc_spec
        )
        if why:
            raise EncoderMismatchError(
                f"the model {bundle.name!r} expects features from {spec.name!r} "
                f"({spec.dim}-d) but this encoder gives " + ", ".join(why)
            )
        trained_weights = str(spec.extra.get("weights", ""))
        if "sha256:" in trained_weights and "sha256:" in str(enc_spec.get("weights", "")):
            if trained_weights.split("sha256:")[-1] != str(enc_spec["weights"]).split("sha256:")[-1]:
                warnings.append(
                    f"the encoder weights ({enc_spec['weights']}) differ from those the model "
                    f"was trained with ({trained_weights}): features may not match"
                )
        cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        feats = (
            load_cached_features(cache_root, slide, enc_spec, grid, notices=warnings)
            if use_cache
            else None
        )
        features_cached = feats is not None
        features_path = None
        if feats is None:
            report("features", 0, len(grid))
            try:
                embed_kw: dict[str, Any] = {}
                if batch_size is not None:
                    embed_kw["batch_size"] = int(batch_size)
                if workers is not None:
                    embed_kw["workers"] = int(workers)
                feats = embed_slide(
                    slide,
                    grid,
                    encoder,
                    device=device,
                    progress=lambda done, total: report("features", done, total),
                    cancel=cancel,
                    **embed_kw,
                )
            except EmbeddingCancelled as e:
                raise PredictionCancelled("prediction cancelled during embedding") from e
            _check_cancel(cancel)
            if use_cache:
                path = cached_features_path(cache_root, slide, enc_spec, grid)
                try:
                    features_path = str(save_features(path, feats))
                except OSError as e:
                    warnings.append(f"could not cache the patch features in {path}: {e}")
        else:
            features_path = str(cached_features_path(cache_root, slide, enc_spec, grid))
            report("features", len(feats), len(feats))
        t0 = lap("features", t0)
        _check_cancel(cancel)
        if len(feats) == 0:
            raise NoTissueError(f"{slide.path.name}: no patch could be read; nothing to score")
        if feats.dim != spec.dim:
            raise EncoderMismatchError(
                f"the features have dimension {feats.dim} but the model {bundle.name!r} "
                f"expects {spec.dim} ({spec.name})"
            )
        n_skipped = len(grid) - len(feats)
        if n_skipped:
            warnings.append(f"{n_skipped} unreadable patch(es) were skipped")

        # -- model
        report("model", 0, 1)
        model = bundle.model
        model_device = next(model.parameters()).device
        try:
            if str(model_device) != device:
                model.to(device)
            x = torch.from_numpy(feats.features).to(device)
            with torch.inference_mode():
                out = model.forward_bag(x)
        finally:
            if str(model_device) != device:
                model.to(model_device)
        report("model", 1, 1)
        t0 = lap("model", t0)
        _check_cancel(cancel)

        def npy(t) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        risk = float(npy(out.risk))
        hazards = npy(out.hazards).astype(np.float32)
        survival = npy(out.survival).astype(np.float32)
        morph = npy(out.morphology_attention).astype(np.float32)
        genome = npy(out.genome_attention).astype(np.float32)
        similarity = npy(out.similarity) if out.similarity is not None else None

        edges = np.asarray(
            [float("inf") if v is None else float(v) for v in bundle.bin_edges_months],
            dtype=np.float64,
        )
        if edges.size != survival.size + 1:
            raise PredictionError(
                f"the bundle has {edges.size} survival bin edges for {survival.size} bins "
                f"(needs {survival.size + 1})"
            )

        names = bundle.category_names
        gene_names = bundle.gene_names
        categories = []
        for i, rec in enumerate(out.reconstructed):
            values = npy(rec).astype(np.float32).ravel()
            genes = list(gene_names[i]) if i < len(gene_names) else []
            if len(genes) != values.size:
                genes = [f"{names[i] if i < len(names) else i}_{j}" for j in range(values.size)]
            categories.append(
                CategoryResult(
                    name=names[i] if i < len(names) else f"category {i + 1}",
                    score=float(values.mean()) if values.size else 0.0,
                    genes=genes,
                    values=values,
                    top_genes=_top_genes(genes, values, top_genes),
                )
            )

        coords = np.asarray(feats.coords, dtype=np.int64)
        size0 = int(grid.patch_size_level0)
        strongest = _strongest_category(genome, similarity)
        pct = _percentile_ranks(morph)
        order = np.argsort(-morph, kind="stable")[: min(top_k, len(morph))]
        regions = [
            Region(
                rank=r + 1,
                index=int(i),
                x=int(coords[i, 0]),
                y=int(coords[i, 1]),
                width=size0,
                height=size0,
                attention=float(morph[i]),
                percentile=float(pct[i]),
                category=categories[int(strongest[i])].name,
                category_index=int(strongest[i]),
            )
            for r, i in enumerate(order)
        ]

        timings["total"] = round(time.perf_counter() - t_start, 4)
        settings = {
            "device": device,
            "patch_px": eff_patch_px,
            "target_mpp": eff_mpp,
            "patch_size_level0": size0,
            "min_tissue_fraction": float(min_tissue_fraction),
            "tissue": mask.describe(),
            "batch_size": batch_size,
            "encoder": enc_spec,
            "top_k": int(top_k),
        }
        prediction = Prediction(
            risk=risk,
            percentile=float(bundle.percentile(risk)),
            risk_group=str(bundle.risk_group(risk)),
            hazards=hazards,
            survival=survival,
            bin_edges_months=edges,
            categories=categories,
            coords=coords,
            patch_size_level0=size0,
            step_level0=int(grid.step_level0),
            morphology_attention=morph,
            genome_attention=genome,
            tissue_mask=np.asarray(mask.mask, dtype=bool),
            tissue_downsample=float(mask.downsample),
            top_regions=regions,
            slide=_slide_info(slide),
            model=_model_info(bundle),
            intended_use=bundle.intended_use,
            settings=settings,
            timings=timings,
            features_cached=features_cached,
            features_path=features_path,
            warnings=warnings,
        )
        check_prediction_finite(prediction)  # NaN/inf -> PredictionError, never a report
        report("done", 1, 1)
        return prediction
    finally:
        if own_slide:
            slide.close()


# --------------------------------------------------------------------------- exports


def _finite(obj):
    """Replace non-finite floats (inf bin edges, NaN) by None: strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report_json(prediction: Prediction, path: str | os.PathLike) -> Path:
    """The JSON report (all numbers, model provenance, intended use), written atomically."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    from napari_ghanet.io.features import json_default

    report = json.loads(json.dumps(prediction.to_dict(), default=json_default))
    text = json.dumps(_finite(report), indent=2, allow_nan=False)
    return atomic_write(path, text + "\n")


def patch_table(prediction: Prediction) -> tuple[list[str], np.ndarray]:
    """Column names and a float64 (N, 6 + T) table: x, y, width, height, morphology
    attention and one genome-informed attention column per category."""
    names = ["x", "y", "width", "height", "morphology_attention"] + [
        f"genome_attention_{_column_name(c)}" for c in prediction.category_names
    ]
    n = prediction.n_patches
    size = prediction.patch_size_level0
    table = np.column_stack(
        [
            prediction.coords[:, 0],
            prediction.coords[:, 1],
            np.full(n, size),
            np.full(n, size),
            prediction.morphology_attention,
            prediction.genome_attention.T,
        ]
    ).astype(np.float64)
    return names, table


def _column_name(name: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in name.strip())
    return "_".join(p for p in out.split("_") if p) or "category"


def write_patch_csv(prediction: Prediction, path: str | os.PathLike) -> Path:
    """Per-patch CSV: x, y, width, height (level-0 px), morphology attention and the
    genome-informed attention of each category; written atomically."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    names, table = patch_table(prediction)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in table:
        writer.writerow(
            [str(int(v)) for v in row[:4]] + [f"{float(v):.9g}" for v in row[4:]]
        )
    return atomic_write(path, buf.getvalue())


def geojson_dict(prediction: Prediction, object_type: str = "tile") -> dict[str, Any]:
    """GeoJSON FeatureCollection of the patch tiles (level-0 pixel coordinates) with
    their attentions as QuPath ``measurements`` (QuPath >= 0.4 layout)."""
    if object_type not in ("tile", "detection", "annotation"):
        raise ValueError(f"object_type must be tile, detection or annotation, got {object_type}")
    names, table = patch_table(prediction)
    measure_names = ["Morphology attention"] + [
        f"Genome attention: {c}" for c in prediction.category_names
    ]
    pct = _percentile_ranks(prediction.morphology_attention)
    features = []
    for i, row in enumerate(table):
        x, y, w, h = (int(v) for v in row[:4])
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        measurements = {m: float(v) for m, v in zip(measure_names, row[4:])}
        measurements["Morphology attention percentile"] = float(pct[i])
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.UUID(int=i + 1)),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": object_type,
                    "isLocked": True,
                    "name": f"patch {i}",
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    prediction: Prediction, path: str | os.PathLike, object_type: str = "tile"
) -> Path:
    """GeoJSON of the patch tiles with attention measurements, which QuPath imports
    (File > Import objects, or drag and drop) and shows as a measurement map
    (Measure > Show measurement maps). Written atomically."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    text = json.dumps(geojson_dict(prediction, object_type), allow_nan=False)
    return atomic_write(path, text + "\n")


def export_paths(prediction: Prediction, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where :func:`export_all` writes: ``<slide stem>.ghanet.json``, ``.patches.csv``,
    ``.patches.geojson`` in ``out_dir``."""
    stem = Path(prediction.slide.get("name") or "slide").stem
    out = Path(out_dir)
    return {
        "report": out / f"{stem}.ghanet.json",
        "csv": out / f"{stem}.patches.csv",
        "geojson": out / f"{stem}.patches.geojson",
    }


def export_all(prediction: Prediction, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the JSON report, per-patch CSV and GeoJSON into ``out_dir``."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    paths = export_paths(prediction, out_dir)
    write_report_json(prediction, paths["report"])
    write_patch_csv(prediction, paths["csv"])
    write_geojson(prediction, paths["geojson"])
    return paths
