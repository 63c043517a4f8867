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

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_ghanet.errors import Cancelled, NoTissueError, PredictionError
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
from napari_ghanet.inference.result import (
    REPORT_FORMAT,
    REPORT_FORMAT_VERSION,
    CategoryResult,
    Prediction,
    Region,
)
from napari_ghanet.inference.stages import (
    BagEncoder,
    BagOptions,
    ProgressCallback,
    assemble_stage,
    bag_heatmap_stage,
    bag_settings,
    bag_stage,
    check_cancel,
    check_counts,
    check_qc_overlap,
    default_cache_dir,
    model_stage,
    patch_geometry,
    patient_slides,
    prediction_device,
    slide_regions,
    slide_stage,
)
from napari_ghanet.io.slide import Slide
from napari_ghanet.models.bundle import ModelBundle, load_bundle
from napari_ghanet.preprocessing.qc import QCParams
from napari_ghanet.preprocessing.roi import Regions

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
    # the same keywords as predict_patient (a new one must be added to both signatures)
    options = dict(locals())
    return predict_patient([options.pop("slide_or_path")], **options)


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
    slides, mpps = patient_slides(slides, mpp)
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    warnings: list[str] = list(bundle.notices)  # e.g. half-precision weights converted
    device = prediction_device(device)
    check_counts(top_k=top_k, batch_size=batch_size)
    eff_patch_px, eff_mpp, geometry_note = patch_geometry(bundle.encoder, patch_px, target_mpp)
    region_list = slide_regions(regions, len(slides))
    k_overlap = check_qc_overlap(qc, heatmap_overlap)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    options = BagOptions(
        bundle=bundle,
        device=device,
        patch_px=eff_patch_px,
        target_mpp=eff_mpp,
        tissue_params=tissue_params,
        min_tissue_fraction=min_tissue_fraction,
        batch_size=batch_size,
        workers=workers,
        cache_root=cache_root if use_cache else None,
        encoder_kwargs=encoder_kwargs,
        qc=qc,
        heatmap_overlap=heatmap_overlap,
        several=len(slides) > 1,
        progress=progress,
        cancel=cancel,
    )
    encoder = BagEncoder(options, note=geometry_note)
    runs = [
        slide_stage(source, options, encoder, mpp=slide_mpp, regions=regs,
                    warnings=warnings, timings=timings)
        for source, slide_mpp, regs in zip(slides, mpps, region_list)
    ]
    bag = bag_stage(runs)
    outputs = model_stage(bundle, bag, device=device, progress=progress, timings=timings)
    check_cancel(cancel)
    heatmaps = None
    if k_overlap > 1:
        heatmaps = bag_heatmap_stage(options, bag, runs, warnings=warnings, timings=timings)
    settings = bag_settings(options, runs, encoder.spec, region_list, top_k=top_k)
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
