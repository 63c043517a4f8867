"""From a model's outputs on a bag to the :class:`~napari_ghanet.inference.result.Prediction`
(categories, top regions, QC and region reports, per-slide records)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import (
    PredictionError,
)
from napari_ghanet.inference.heatmap import Heatmap
from napari_ghanet.inference.overlays import percentile_normalise
from napari_ghanet.inference.result import CategoryResult, Prediction, Region
from napari_ghanet.inference.stages.model import ModelOutputs
from napari_ghanet.inference.stages.slide import SlideRun
from napari_ghanet.models.bundle import ModelBundle, demo_bundle_path
from napari_ghanet.models.risk import survival_horizon
from napari_ghanet.preprocessing.qc import (
    QCParams,
)

#: the warning every prediction made with the demonstration model carries
DEMO_MODEL_WARNING = (
    "made with the bundled DEMONSTRATION model, trained on synthetic slides: its numbers "
    "say nothing about a real patient; load your own model bundle"
)


def is_demo_bundle(bundle: ModelBundle) -> bool:
    """Whether ``bundle`` is the demonstration model: the file shipped with the package, or
    a bundle whose intended use says it is one (a copy, a rebuilt demo)."""
    use = str(bundle.metadata.get("intended_use", ""))
    if use.startswith("DEMONSTRATION MODEL"):
        return True
    try:
        return bundle.path is not None and Path(bundle.path).resolve() == demo_bundle_path()
    except OSError:
        return False


def _model_info(bundle: ModelBundle) -> dict[str, Any]:
    meta = bundle.metadata
    return {
        "name": bundle.name,
        "demo": is_demo_bundle(bundle),
        "path": str(bundle.path) if bundle.path is not None else None,
        "architecture": meta.get("model", {}).get("name"),
        "encoder": bundle.encoder.to_dict(),
        "provenance": bundle.provenance,
        "package_version": meta.get("package_version"),
    }


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


def _categories(bundle: ModelBundle, outputs: ModelOutputs,
                top_genes: int) -> list[CategoryResult]:
    """One :class:`CategoryResult` per genomic category: its reconstructed profile and
    its top genes (placeholder gene names when the bundle's do not fit)."""
    names = bundle.category_names
    gene_names = bundle.gene_names
    categories = []
    for i, values in enumerate(outputs.reconstructed):
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
    return categories


def _top_regions(outputs: ModelOutputs, categories: Sequence[CategoryResult],
                 coords: np.ndarray, slide_index: np.ndarray, sizes: np.ndarray,
                 top_k: int) -> list[Region]:
    """The ``top_k`` patches by morphology attention, each with its strongest category."""
    morph = outputs.morphology_attention
    strongest = _strongest_category(outputs.genome_attention, outputs.similarity)
    pct = 100.0 * percentile_normalise(morph)
    order = np.argsort(-morph, kind="stable")[: min(top_k, len(morph))]
    return [
        Region(
            rank=r + 1,
            index=int(i),
            x=int(coords[i, 0]),
            y=int(coords[i, 1]),
            width=int(sizes[slide_index[i]]),
            height=int(sizes[slide_index[i]]),
            attention=float(morph[i]),
            percentile=float(pct[i]),
            category=categories[int(strongest[i])].name,
            category_index=int(strongest[i]),
            slide=int(slide_index[i]),
        )
        for r, i in enumerate(order)
    ]


def _slide_records(runs: Sequence[SlideRun]) -> list[dict[str, Any]]:
    """What ``Prediction.slides`` says of each slide of the bag."""
    return [
        dict(r.info)
        | {
            "patch_size_level0": int(r.grid.patch_size_level0),
            "step_level0": int(r.grid.step_level0),
            "n_patches": len(r.features.features),
            "tissue": r.mask.describe(),
            "features_path": r.features.path,
            "features_cached": r.features.cached,
            "qc_measures": r.features.qc_source,
        }
        for r in runs
    ]


def _qc_report(runs: Sequence[SlideRun], qc: QCParams | None) -> dict[str, Any] | None:
    """The QC report: the slide's own, or for several slides the counts added up with
    each slide's report (None when QC was off)."""
    if qc is None:
        return None
    per = [r.qc.to_dict() if r.qc is not None else None for r in runs]
    if len(runs) == 1:
        return per[0]
    flagged: dict[str, int] = {}
    by_det: dict[str, int] = {}
    for d in per:
        for k, v in (d or {}).get("flagged", {}).items():
            flagged[k] = flagged.get(k, 0) + int(v)
        for k, v in (d or {}).get("flagged_by_detector", {}).items():
            by_det[k] = by_det.get(k, 0) + int(v)
    return {
        "n_patches": sum((d or {}).get("n_patches", 0) for d in per),
        "flagged": flagged,
        "flagged_by_detector": by_det,
        "params": qc.to_dict(),
        "note": "; ".join(
            f"{r.info.get('name')}: {d['note']}" for r, d in zip(runs, per)
            if d and d.get("note")
        ),
        "slides": per,
    }


def _qc_patches(runs: Sequence[SlideRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flagged patches of every slide: coordinates, reasons and slide index."""
    empty_xy = np.zeros((0, 2), np.int64)
    qc_coords = np.concatenate(
        [r.qc_coords if r.qc_coords is not None else empty_xy for r in runs]
    ).astype(np.int64)
    qc_reasons = np.concatenate(
        [r.qc_reasons if r.qc_reasons is not None else np.zeros(0, "<U4") for r in runs]
    ).astype("<U4")
    qc_slide_index = np.concatenate([
        np.full(0 if r.qc_reasons is None else len(r.qc_reasons), k, np.int64)
        for k, r in enumerate(runs)
    ])
    return qc_coords, qc_reasons, qc_slide_index


def assemble_stage(
    bundle: ModelBundle,
    outputs: ModelOutputs,
    runs: Sequence[SlideRun],
    *,
    settings: dict[str, Any],
    timings: dict[str, float],
    warnings: list[str],
    top_k: int = 10,
    top_genes: int = 10,
    patient: str | None = None,
    qc: QCParams | None = None,
    heatmaps: Sequence[dict[str, Heatmap]] | None = None,
) -> Prediction:
    """The :class:`~napari_ghanet.inference.result.Prediction` of a bag made of ``runs``'
    patches (in that order) from the model's ``outputs``; ``qc`` the QC thresholds used
    (None: QC off), ``heatmaps`` one dict per slide from :func:`heatmap_stage`."""
    edges = np.asarray(
        [float("inf") if v is None else float(v) for v in bundle.bin_edges_months],
        dtype=np.float64,
    )
    survival = outputs.survival
    if edges.size != survival.size + 1:
        raise PredictionError(
            f"the bundle has {edges.size} survival bin edges for {survival.size} bins "
            f"(needs {survival.size + 1})"
        )
    categories = _categories(bundle, outputs, top_genes)
    coords = np.concatenate(
        [np.asarray(r.features.features.coords, dtype=np.int64) for r in runs]
    )
    slide_index = np.concatenate(
        [np.full(len(r.features.features), k, np.int64) for k, r in enumerate(runs)]
    )
    sizes = np.array([int(r.grid.patch_size_level0) for r in runs], np.int64)
    morph = outputs.morphology_attention
    genome = outputs.genome_attention
    regions = _top_regions(outputs, categories, coords, slide_index, sizes, top_k)
    first = runs[0]
    slide = dict(first.info)
    if patient:
        slide["patient"] = str(patient)
    slides = _slide_records(runs)
    several = len(runs) > 1
    region_dicts = [r.regions.to_dict() if r.regions is not None else None for r in runs]
    regions_report = (
        region_dicts if several and any(d is not None for d in region_dicts)
        else region_dicts[0] if not several else None
    )
    qc_report = _qc_report(runs, qc)
    qc_coords, qc_reasons, qc_slide_index = _qc_patches(runs)
    by_slide = [dict(h) for h in heatmaps] if heatmaps is not None else []
    if not any(by_slide):
        by_slide = []
    horizon, note = survival_horizon(bundle.metadata)
    risk = outputs.risk
    if is_demo_bundle(bundle) and DEMO_MODEL_WARNING not in warnings:
        warnings = [DEMO_MODEL_WARNING, *warnings]
    return Prediction(
        risk=risk,
        percentile=float(bundle.percentile(risk)),
        risk_group=str(bundle.risk_group(risk)),
        hazards=outputs.hazards,
        survival=survival,
        bin_edges_months=edges,
        categories=categories,
        coords=coords,
        patch_size_level0=int(first.grid.patch_size_level0),
        step_level0=int(first.grid.step_level0),
        morphology_attention=morph,
        genome_attention=genome,
        tissue_mask=np.asarray(first.mask.mask, dtype=bool),
        tissue_downsample=float(first.mask.downsample),
        top_regions=regions,
        slide=slide,
        model=_model_info(bundle),
        intended_use=bundle.intended_use,
        settings=settings,
        timings=timings,
        features_cached=all(r.features.cached for r in runs),
        features_path=first.features.path,
        warnings=warnings,
        slide_index=slide_index,
        slides=slides,
        tissue_masks=[np.asarray(r.mask.mask, dtype=bool) for r in runs],
        regions_report=regions_report,
        qc_report=qc_report,
        qc_coords=qc_coords,
        qc_reasons=qc_reasons,
        qc_slide_index=qc_slide_index,
        heatmaps=by_slide[0] if by_slide else {},
        heatmaps_by_slide=by_slide,
        horizon_months=float(horizon),
        horizon_note=note,
    )
