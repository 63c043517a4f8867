"""The one prediction entry point, shared by the dock widget and ``ghanet predict``.

``predict_slide`` runs slide -> tissue mask -> patch grid -> patch features (from the
cache when present) -> G-HANet -> :class:`Prediction`, composing the named stages of
:mod:`napari_ghanet.inference.stages`. ``predict_patient`` scores several slides of one
patient as one bag: the grid and feature stages run per slide, the model once on all
their patches; ``predict_slide`` is its one-slide case. Everything a viewer or a report
needs is in the Prediction as plain numpy arrays and numbers
(:mod:`napari_ghanet.inference.result`); the JSON/CSV/GeoJSON writers live in
:mod:`napari_ghanet.inference.exports` and are re-exported here. No napari or Qt import.

Units: coordinates are level-0 pixels, (x, y) top-left corners; times are months for
the survival curve and seconds for timings; reconstructed genomic values are z-scores
relative to the model's training cohort.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import Cancelled, EncoderMismatchError, NoTissueError, PredictionError
from napari_ghanet.inference.checks import check_prediction_finite
from napari_ghanet.inference.exports import (
    export_all,
    export_paths,
    geojson_dict,
    patch_table,
    write_geojson,
    write_patch_csv,
    write_report_json,
)
from napari_ghanet.inference.heatmap import overlap_factor, overlap_grid
from napari_ghanet.inference.result import (
    REPORT_FORMAT,
    REPORT_FORMAT_VERSION,
    CategoryResult,
    Prediction,
    Region,
)
from napari_ghanet.inference.stages import (
    ProgressCallback,
    SlideRun,
    assemble_stage,
    build_encoder,
    check_cancel,
    default_cache_dir,
    features_stage,
    grid_stage,
    heatmap_stage,
    model_stage,
    open_stage,
    patch_scorers,
    prediction_device,
    qc_stage,
    regions_stage,
    slide_info,
)
from napari_ghanet.io.features import cached_features_path
from napari_ghanet.io.slide import Slide
from napari_ghanet.models.bundle import ModelBundle, load_bundle
from napari_ghanet.preprocessing.qc import QCAccumulator, QCParams
from napari_ghanet.preprocessing.roi import Regions, filter_grid

#: QC on by default, with the documented thresholds.
DEFAULT_QC = QCParams()

logger = logging.getLogger(__name__)

__all__ = [
    "REPORT_FORMAT",
    "REPORT_FORMAT_VERSION",
    "CategoryResult",
    "NoTissueError",
    "Prediction",
    "PredictionCancelled",
    "PredictionError",
    "ProgressCallback",
    "Region",
    "default_cache_dir",
    "export_all",
    "export_paths",
    "geojson_dict",
    "patch_table",
    "predict_patient",
    "predict_slide",
    "resolve_device",
    "write_geojson",
    "write_patch_csv",
    "write_report_json",
]

PredictionCancelled = Cancelled  # the package's one cancellation type

resolve_device = prediction_device  # "auto" -> "cuda"/"cpu", checked (PredictionError)


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
    regions: Regions | None = None,
    qc: QCParams | None = DEFAULT_QC,
    heatmap_overlap: float = 0.0,
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
    regions : Regions, optional
        Include / exclude regions in level-0 pixels
        (:class:`~napari_ghanet.preprocessing.roi.Regions`): only patches whose centre is
        inside an include region (anywhere when there is none) and outside every exclude
        region are embedded and scored. Recorded in ``Prediction.regions_report``.
    qc : QCParams or None
        Artifact QC (pen marks, dark folds, blur; :mod:`napari_ghanet.preprocessing.qc`),
        on by default; None switches it off. Flagged patches leave the bag; they are
        listed in ``Prediction.qc_coords`` / ``qc_reasons`` and counted in ``qc_report``.
        The per-patch measures are cached with the features, so other thresholds need no
        re-embedding.
    heatmap_overlap : float
        0 (default), 0.5 or 0.75: also embed the patches of grids shifted by
        ``patch * (1 - overlap)`` and score them in the bag's context for smooth attention
        maps (``Prediction.heatmaps``); the prediction itself is unchanged. Costs about
        ``1 / (1 - overlap)**2 - 1`` times the patches to embed (3x at 0.5, 15x at 0.75),
        cached too.
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
        No patch with enough tissue, or none left by the regions or QC (the message
        says which).
    PredictionCancelled
    """
    return predict_patient(
        [slide_or_path],
        bundle,
        device=device,
        mpp=mpp,
        patch_px=patch_px,
        target_mpp=target_mpp,
        tissue_params=tissue_params,
        min_tissue_fraction=min_tissue_fraction,
        batch_size=batch_size,
        workers=workers,
        cache_dir=cache_dir,
        use_cache=use_cache,
        encoder_kwargs=encoder_kwargs,
        top_k=top_k,
        top_genes=top_genes,
        regions=regions,
        qc=qc,
        heatmap_overlap=heatmap_overlap,
        progress=progress,
        cancel=cancel,
    )


def predict_patient(
    slides: Sequence[Slide | str | os.PathLike],
    bundle,
    *,
    patient: str | None = None,
    device: str = "auto",
    mpp: float | Sequence[float | None] | None = None,
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
    regions: Regions | Sequence[Regions | None] | None = None,
    qc: QCParams | None = DEFAULT_QC,
    heatmap_overlap: float = 0.0,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Prediction:
    """Predict prognosis for one patient from several slides, scored as one bag.

    Each slide goes through the open, tissue/grid and feature stages (features cached
    per slide); their patches are concatenated in slide order and the model runs once on
    the union, as G-HANet does for a patient with several slides. ``Prediction.slide_index``
    names each patch's slide, ``Prediction.slides`` describes them and
    ``Prediction.slide_attention(k)`` gives slide k's share of the attention. With one
    slide this is :func:`predict_slide`, number for number.

    Parameters
    ----------
    slides : sequence of Slide or path
        The patient's slides (at least one).
    bundle : ModelBundle or path
    patient : str, optional
        Patient name: recorded in ``Prediction.slide["patient"]`` and used for export file
        names.
    mpp : float or sequence, optional
        Level-0 um/px for slides that do not record it: one value for all, or one per slide.
    regions : Regions or sequence of (Regions or None), optional
        One per slide (a single Regions only for a single slide).
    qc, heatmap_overlap
        As for :func:`predict_slide`; QC judges each slide's patches on their own (blur
        against that slide's median). A slide that loses every patch to QC is a warning;
        a bag left empty is a NoTissueError.
    device, patch_px, target_mpp, tissue_params, min_tissue_fraction, batch_size, workers,
    cache_dir, use_cache, encoder_kwargs, top_k, top_genes, progress, cancel
        As for :func:`predict_slide`; progress runs "slide" ... "features" once per slide.

    Returns
    -------
    Prediction

    Raises
    ------
    PredictionError
        No slide given, or ``mpp`` does not give one value per slide.
    SlideError, BundleError, EncoderMismatchError, NoTissueError, PredictionCancelled
        As for :func:`predict_slide` (the first slide that fails stops the run).

    Examples
    --------
    >>> import numpy as np, tempfile, tifffile
    >>> from napari_ghanet.models.bundle import demo_bundle_path
    >>> tmp = tempfile.mkdtemp()
    >>> for k in range(2):  # two small H&E-coloured slides at 0.5 um/px
    ...     rgb = np.full((768, 768, 3), 240, np.uint8); rgb[128:640, 128:640] = (190, 90, 160)
    ...     tifffile.imwrite(f"{tmp}/s{k}.tif", rgb, resolution=(2e4, 2e4),
    ...                      resolutionunit="CENTIMETER")
    >>> p = predict_patient([f"{tmp}/s0.tif", f"{tmp}/s1.tif"], demo_bundle_path(),
    ...                     patient="P1", device="cpu", use_cache=False)
    >>> p.n_slides, np.bincount(p.slide_index).tolist()  # patches per slide
    (2, [5, 5])
    >>> bool(np.isclose(p.morphology_attention.sum(), 1.0, atol=1e-5))
    True
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    if isinstance(slides, str | os.PathLike | Slide):
        slides = [slides]
    slides = list(slides)
    if not slides:
        raise PredictionError("no slide given: a patient needs at least one slide")
    if mpp is None or isinstance(mpp, int | float):
        mpps = [mpp] * len(slides)
    else:
        mpps = list(mpp)
        if len(mpps) != len(slides):
            raise PredictionError(f"{len(mpps)} mpp values for {len(slides)} slides")

    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    spec = bundle.encoder
    warnings.extend(bundle.notices)  # e.g. half-precision weights converted on load
    device = prediction_device(device)
    if top_k < 0:
        raise PredictionError(f"top_k must be >= 0, got {top_k}")
    if batch_size is not None and int(batch_size) < 1:
        raise PredictionError(f"batch size must be >= 1, got {batch_size}")

    eff_patch_px = int(patch_px) if patch_px is not None else spec.patch_px
    eff_mpp = float(target_mpp) if target_mpp is not None else spec.target_mpp
    geometry_note = None
    if eff_patch_px != spec.patch_px or not math.isclose(eff_mpp, spec.target_mpp, rel_tol=0.05):
        geometry_note = (
            f"patches of {eff_patch_px} px at {eff_mpp:g} um/px differ from the "
            f"{spec.patch_px} px at {spec.target_mpp:g} um/px the model was trained on: "
            "results are outside the model's validated use"
        )
    if regions is None or isinstance(regions, Regions):
        if isinstance(regions, Regions) and len(slides) > 1:
            raise PredictionError(
                f"one Regions for {len(slides)} slides: give one Regions (or None) per slide"
            )
        region_list: list[Regions | None] = [regions] * len(slides)
    else:
        region_list = list(regions)
        if len(region_list) != len(slides):
            raise PredictionError(f"{len(region_list)} region sets for {len(slides)} slides")
    if qc is not None:
        try:
            qc.validate()
        except ValueError as e:
            raise PredictionError(f"invalid QC settings: {e}") from None
    try:
        k_overlap = overlap_factor(heatmap_overlap)
    except ValueError as e:
        raise PredictionError(f"heatmap overlap: {e}") from None
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    several = len(slides) > 1
    encoder = enc_spec = None
    runs: list[SlideRun] = []
    n_extra = 0
    for source, slide_mpp, slide_regions in zip(slides, mpps, region_list):
        with contextlib.ExitStack() as stack:
            slide, opened = open_stage(
                source, mpp=slide_mpp, progress=progress, cancel=cancel, timings=timings
            )
            if opened:
                stack.callback(slide.close)
            info = slide_info(slide)
            name = f"{slide.path.name}: " if several else ""
            mask, grid = grid_stage(
                slide,
                patch_px=eff_patch_px,
                target_mpp=eff_mpp,
                tissue_params=tissue_params,
                min_tissue_fraction=min_tissue_fraction,
                progress=progress,
                cancel=cancel,
                timings=timings,
            )
            grid, region_report = regions_stage(slide, grid, slide_regions)
            if geometry_note is not None:
                warnings.append(geometry_note)
                geometry_note = None
            t0 = time.perf_counter()
            if encoder is None:
                encoder, enc_spec, notes = build_encoder(
                    bundle,
                    patch_px=eff_patch_px,
                    target_mpp=eff_mpp,
                    encoder_kwargs=encoder_kwargs,
                )
                warnings.extend(notes)
            dt = time.perf_counter() - t0
            timings["features"] = round(timings.get("features", 0.0) + dt, 4)
            stage_kw = dict(
                device=device, batch_size=batch_size, workers=workers, qc=qc, cancel=cancel
            )
            feats = features_stage(
                slide,
                grid,
                encoder,
                cache_path=cached_features_path(cache_root, slide, enc_spec, grid)
                if use_cache
                else None,
                progress=progress,
                timings=timings,
                **stage_kw,
            )
            warnings.extend(feats.warnings)
            check_cancel(cancel)
            if len(feats.features) == 0:
                raise NoTissueError(f"{slide.path.name}: no patch could be read; nothing to score")
            if feats.features.dim != spec.dim:
                raise EncoderMismatchError(
                    f"the features have dimension {feats.features.dim} but the model "
                    f"{bundle.name!r} expects {spec.dim} ({spec.name})"
                )
            n_skipped = len(grid) - len(feats.features)
            if n_skipped:
                warnings.append(f"{name}{n_skipped} unreadable patch(es) were skipped")
            run = SlideRun(info=info, mask=mask, grid=grid, features=feats,
                           regions=region_report)
            if qc is not None:
                t0 = time.perf_counter()
                run.qc = qc_stage(feats.features, qc)
                keep = run.qc.keep
                run.qc_coords = np.asarray(feats.features.coords, np.int64)[~keep]
                run.qc_reasons = run.qc.reason[~keep]
                if not keep.all():
                    run.features = dc_replace(feats, features=feats.features.select(keep))
                if not keep.any():
                    counts = ", ".join(
                        f"{r} {n}" for r, n in run.qc.counts.items() if n and r != "total"
                    )
                    if not several:
                        raise NoTissueError(
                            f"{slide.path.name}: all {len(keep)} patches were flagged by QC "
                            f"({counts}). Nothing to predict from: check the slide, or relax "
                            "the QC thresholds or switch QC off"
                        )
                    warnings.append(
                        f"{name}all {len(keep)} patches were flagged by QC ({counts}): the "
                        "slide adds nothing to the patient's bag"
                    )
                timings["qc"] = round(timings.get("qc", 0.0) + time.perf_counter() - t0, 4)
            if k_overlap > 1:
                t0 = time.perf_counter()
                run.extra, n = _overlap_features(
                    slide, run, mask, heatmap_overlap, slide_regions, encoder, enc_spec,
                    cache_root if use_cache else None, progress, stage_kw,
                    own_measures=feats.features.qc_measures,
                )
                n_extra += n
                timings["heatmap"] = round(
                    timings.get("heatmap", 0.0) + time.perf_counter() - t0, 4
                )
            warnings.extend(f"{name}{w}" for w in slide.warnings)
            runs.append(run)

    bag = np.concatenate([r.features.features.features for r in runs])
    if len(bag) == 0:
        raise NoTissueError(
            f"all {sum(len(r.qc_reasons) for r in runs)} patches of the {len(runs)} slides "
            "were flagged by QC. Nothing to predict from: check the slides, or relax the QC "
            "thresholds or switch QC off"
        )
    outputs = model_stage(bundle, bag, device=device, progress=progress, timings=timings)
    check_cancel(cancel)
    heatmaps = None
    if k_overlap > 1:
        _report_stage(progress, "heatmap", 0, 1)
        heatmaps = heatmap_stage(
            bundle, bag, runs, heatmap_overlap, device=device, timings=timings
        )
        if patch_scorers(bundle.model) is None:
            warnings.append(
                f"the model {bundle.name!r} cannot score patches outside its bag: no "
                "overlapping heatmaps"
            )
    first = runs[0]
    settings = {
        "device": device,
        "patch_px": eff_patch_px,
        "target_mpp": eff_mpp,
        "patch_size_level0": int(first.grid.patch_size_level0),
        "min_tissue_fraction": float(min_tissue_fraction),
        "tissue": first.mask.describe(),
        "batch_size": batch_size,
        "encoder": enc_spec,
        "top_k": int(top_k),
        "regions": _regions_settings(region_list, runs),
        "qc": qc.to_dict() if qc is not None else None,
        "heatmap_overlap": float(heatmap_overlap),
        "heatmap_extra_patches": int(n_extra),
    }
    timings["total"] = round(time.perf_counter() - t_start, 4)
    prediction = assemble_stage(
        bundle,
        outputs,
        runs,
        settings=settings,
        timings=timings,
        warnings=warnings,
        top_k=top_k,
        top_genes=top_genes,
        patient=patient,
        qc=qc,
        heatmaps=heatmaps,
    )
    check_prediction_finite(prediction)  # NaN/inf -> PredictionError naming the model, never a report
    if progress is not None:
        progress("done", 1, 1)
    return prediction


def _report_stage(progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, int(done), int(total))


def _regions_settings(
    region_list: Sequence[Regions | None], runs: Sequence[SlideRun]
) -> list[dict[str, Any]] | dict[str, Any] | None:
    """What ``settings["regions"]`` records: the regions used per slide (names, sources,
    areas in mm^2), None without regions."""
    out = []
    for regs, run in zip(region_list, runs):
        if regs is None or regs.empty or run.regions is None:
            out.append(None)
            continue
        out.append({
            "include": [r["name"] for r in run.regions.regions if r["kind"] == "include"],
            "exclude": [r["name"] for r in run.regions.regions if r["kind"] == "exclude"],
            "sources": sorted({r["source"] for r in run.regions.regions}),
        })
    if all(o is None for o in out):
        return None
    return out[0] if len(out) == 1 else out


def _overlap_features(
    slide: Slide,
    run: SlideRun,
    mask,
    overlap: float,
    regions: Regions | None,
    encoder,
    enc_spec,
    cache_root: Path | None,
    progress: ProgressCallback | None,
    stage_kw: dict[str, Any],
    own_measures: np.ndarray | None = None,
):
    """Features of the overlapping heatmap patches of one slide (regions applied, and QC
    flags judged with the slide's bag patches), and how many were embedded or read."""
    ogrid = overlap_grid(run.grid, overlap, mask)
    if regions is not None and not regions.empty and len(ogrid):
        keep, _ = filter_grid(ogrid.coords, ogrid.patch_size_level0, regions, mpp=slide.mpp)
        ogrid = ogrid.select(np.flatnonzero(keep))
    if len(ogrid) == 0:
        return None, 0

    def relay(stage: str, done: int, total: int) -> None:
        if progress is not None and stage == "features":
            progress("heatmap", done, total)

    extra = features_stage(
        slide,
        ogrid,
        encoder,
        cache_path=cached_features_path(cache_root, slide, enc_spec, ogrid)
        if cache_root is not None
        else None,
        progress=relay,
        **stage_kw,
    )
    feats = extra.features
    qc = stage_kw.get("qc")
    if qc is not None and len(feats) and feats.qc_measures is not None:
        acc = QCAccumulator(qc)
        if own_measures is not None:
            acc.add_measures(own_measures)  # the slide's bag patches set the blur median
        n_ref = len(acc)
        acc.add_measures(feats.qc_measures)
        feats = feats.select(acc.result().keep[n_ref:])
    return feats, len(ogrid)
