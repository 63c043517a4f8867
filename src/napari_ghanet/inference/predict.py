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
    model_stage,
    open_stage,
    prediction_device,
    slide_info,
)
from napari_ghanet.io.features import cached_features_path
from napari_ghanet.io.slide import Slide
from napari_ghanet.models.bundle import ModelBundle, load_bundle

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
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    several = len(slides) > 1
    encoder = enc_spec = None
    runs: list[SlideRun] = []
    for source, slide_mpp in zip(slides, mpps):
        with contextlib.ExitStack() as stack:
            slide, opened = open_stage(
                source, mpp=slide_mpp, progress=progress, cancel=cancel, timings=timings
            )
            if opened:
                stack.callback(slide.close)
            info = slide_info(slide)
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
            feats = features_stage(
                slide,
                grid,
                encoder,
                cache_path=cached_features_path(cache_root, slide, enc_spec, grid)
                if use_cache
                else None,
                device=device,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                cancel=cancel,
                timings=timings,
            )
            warnings.extend(feats.warnings)
            check_cancel(cancel)
            name = f"{slide.path.name}: " if several else ""
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
            runs.append(SlideRun(info=info, mask=mask, grid=grid, features=feats))

    bag = np.concatenate([r.features.features.features for r in runs])
    outputs = model_stage(bundle, bag, device=device, progress=progress, timings=timings)
    check_cancel(cancel)
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
    )
    check_prediction_finite(prediction)  # NaN/inf -> PredictionError naming the model, never a report
    if progress is not None:
        progress("done", 1, 1)
    return prediction
