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
from typing import Any

from napari_ghanet.errors import Cancelled, NoTissueError, PredictionError
from napari_ghanet.inference.checks import check_prediction_finite
from napari_ghanet.inference.distribution import distribution_stage
from napari_ghanet.inference.export_registry import export_all, export_paths
from napari_ghanet.inference.exports import (
    geojson_dict,
    patch_table,
    write_geojson,
    write_patch_csv,
    write_report_json,
)
from napari_ghanet.inference.progressive import (
    PreliminaryCallback,
    PreliminaryRisk,
    ProgressiveEstimator,
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
    BagRun,
    ProgressCallback,
    assemble_stage,
    bag_heatmap_stage,
    bag_settings,
    bag_stage,
    check_cancel,
    default_cache_dir,
    model_stage,
    patient_slides,
    slide_regions,
    slide_stage,
)
from napari_ghanet.io.names import safe_name
from napari_ghanet.io.slide import Slide
from napari_ghanet.models.bundle import ModelBundle, load_bundle
from napari_ghanet.options import PredictOptions
from napari_ghanet.preprocessing.roi import Regions

logger = logging.getLogger(__name__)

__all__ = [
    "REPORT_FORMAT",
    "REPORT_FORMAT_VERSION",
    "CategoryResult",
    "NoTissueError",
    "Prediction",
    "PredictionCancelled",
    "PredictionError",
    "PredictOptions",
    "PreliminaryRisk",
    "ProgressCallback",
    "Region",
    "default_cache_dir",
    "export_all",
    "export_paths",
    "geojson_dict",
    "patch_table",
    "predict_patient",
    "predict_slide",
    "write_geojson",
    "write_patch_csv",
    "write_report_json",
]

PredictionCancelled = Cancelled  # the package's one cancellation type


def predict_slide(
    slide_or_path,
    bundle,
    options: PredictOptions | None = None,
    *,
    regions: Regions | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    preliminary: PreliminaryCallback | ProgressiveEstimator | None = None,
    **shortcuts: Any,
) -> Prediction:
    """Predict prognosis for one slide with a model bundle.

    Parameters
    ----------
    slide_or_path : Slide or path
        An open :class:`~napari_ghanet.io.slide.Slide` or a slide file.
    bundle : ModelBundle or path
        The model (:func:`~napari_ghanet.models.bundle.load_bundle`) or its ``.safetensors`` file.
    options : PredictOptions, optional
        Everything the run is told (:class:`~napari_ghanet.options.PredictOptions`; the
        tables of ``docs/options.md``): ``grid`` (level-0 ``mpp`` for slides that record
        none; patch size and resolution, default the model's, other values noted in
        ``Prediction.warnings``; tissue), ``embed`` (encoder weights file, device "auto" /
        "cpu" / "cuda:N" for the encoder and the model, CPU engine, batch size, reader
        threads), ``qc`` (artifact QC, on by default: flagged patches leave the bag and
        are listed in ``Prediction.qc_coords`` / ``qc_reasons``; the measures are cached
        with the features, so other thresholds need no re-embedding), ``heatmap``
        (``overlap`` 0, 0.5 or 0.75: also embed shifted grids and score them in the bag's
        context for smooth maps in ``Prediction.heatmaps``, the prediction unchanged;
        about ``1 / (1 - overlap)**2 - 1`` times the patches more), ``report`` (top-k
        regions, genes per category) and ``cache`` (the patch-feature cache, default
        :func:`default_cache_dir`; ``use_cache=False`` neither reads nor writes it).
        Recorded verbatim in ``Prediction.settings["options"]``.
    regions : Regions, optional
        Include / exclude regions in level-0 pixels
        (:class:`~napari_ghanet.preprocessing.roi.Regions`): only patches whose centre is
        inside an include region (anywhere when there is none) and outside every exclude
        region are embedded and scored. Recorded in ``Prediction.regions_report``.
    progress : callable(stage, done, total), optional
        Called from this thread as the run advances (see ``ProgressCallback``).
    cancel : threading.Event, optional
        Set it (from any thread) to stop the run; raises :class:`PredictionCancelled`
        and leaves no cache file behind.
    preliminary : callable(PreliminaryRisk) or ProgressiveEstimator, optional
        A first answer in seconds: while patches are embedded, called from this thread
        with :class:`~napari_ghanet.inference.progressive.PreliminaryRisk` estimates
        from the patches embedded so far (risk, bootstrap interval, risk group), at most
        about 10 % of the embedding time, and finally with the exact full-bag answer
        (``final=True``). A
        :class:`~napari_ghanet.inference.progressive.ProgressiveEstimator` (of the same
        bundle) sets the cadence, bootstrap size and interval level. The prediction itself is the same with or without it (features
        cached from an earlier run give no preliminary answers: the model runs at once).
    **shortcuts
        Option fields by name, applied to ``options`` (``device="cpu"``, ``mpp=0.25``,
        ``batch_size=16``, ``use_cache=False``, ``overlap=0.5``...), and the older
        spellings ``qc`` (a :class:`~napari_ghanet.preprocessing.qc.QCParams`, or None
        for QC off) and ``encoder_kwargs={"weights": FILE}``.

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
    return predict_patient([slide_or_path], bundle, options, regions=regions,
                           progress=progress, cancel=cancel, preliminary=preliminary,
                           **shortcuts)


def predict_patient(
    slides: Sequence[Slide | str | os.PathLike],
    bundle,
    options: PredictOptions | None = None,
    *,
    patient: str | None = None,
    mpp: float | Sequence[float | None] | None = None,
    regions: Regions | Sequence[Regions | None] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    preliminary: PreliminaryCallback | ProgressiveEstimator | None = None,
    **shortcuts: Any,
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
    options, progress, cancel, preliminary, **shortcuts
        As for :func:`predict_slide` (preliminary bags hold the finished slides and the
        current slide's patches embedded so far); progress runs "slide" ... "features" once per
        slide. QC judges each slide's patches on their own (blur against that slide's
        median); a slide that loses every patch to QC is a warning, a bag left empty a
        NoTissueError.

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
    per_slide_mpp = mpp is not None and not isinstance(mpp, int | float)
    if mpp is not None and not per_slide_mpp:
        shortcuts["mpp"] = mpp
    options = PredictOptions.create(options, **shortcuts)  # every value checked here, once
    if patient is not None:  # becomes the export file names: refused before any work
        safe_name(patient, "patient name")
    slides, mpps = patient_slides(slides, mpp if per_slide_mpp else options.grid.mpp)
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    warnings: list[str] = list(bundle.notices)  # e.g. half-precision weights converted
    region_list = slide_regions(regions, len(slides))
    run = BagRun.create(bundle, options, several=len(slides) > 1, progress=progress,
                        cancel=cancel, preliminary=preliminary)
    encoder = BagEncoder(run)
    runs = [
        slide_stage(source, run, encoder, mpp=slide_mpp, regions=regs,
                    warnings=warnings, timings=timings)
        for source, slide_mpp, regs in zip(slides, mpps, region_list)
    ]
    bag = bag_stage(runs)
    outputs = model_stage(bundle, bag, device=run.device, progress=progress, timings=timings)
    check_cancel(cancel)
    heatmaps = None
    if options.heatmap.overlap > 0:
        heatmaps = bag_heatmap_stage(run, bag, runs, warnings=warnings, timings=timings)
    settings = bag_settings(run, runs, encoder.spec, region_list, top_k=options.report.top_k)
    timings["total"] = round(time.perf_counter() - t_start, 4)
    prediction = assemble_stage(
        bundle,
        outputs,
        runs,
        settings=settings,
        timings=timings,
        warnings=warnings,
        top_k=options.report.top_k,
        top_genes=options.report.top_genes,
        patient=patient,
        qc=run.qc,
        heatmaps=heatmaps,
    )
    check_prediction_finite(prediction)  # NaN/inf -> PredictionError naming the model, never a report
    # is the slide like the training slides? (never changes the risk)
    prediction.distribution = distribution_stage(bundle.distribution, bag, runs,
                                                 options.distribution)
    if run.preliminary is not None:
        run.preliminary.estimator.final(prediction.risk, len(bag))
    if progress is not None:
        progress("done", 1, 1)
    return prediction
