"""The stages of a prediction, each callable on its own.

slide -> :func:`open_stage` -> :func:`grid_stage` (tissue mask + patch grid) ->
:func:`features_stage` (cached features, or embed and cache) -> :func:`model_stage`
(model bundle on the bag of features) -> :func:`assemble_stage` (a
:class:`~napari_ghanet.inference.result.Prediction`).

:func:`napari_ghanet.inference.predict.predict_slide` and ``predict_patient`` compose
them; ``ghanet embed`` and cohort runners use :func:`embed_to_file`, the grid and feature
stages writing one slide's features file. Stages report progress as
``progress(stage, done, total)`` and stop with :class:`~napari_ghanet.errors.Cancelled`
when ``cancel`` (a :class:`threading.Event`) is set. No napari or Qt import here.

Units: coordinates are level-0 pixels, (x, y) top-left; ``patch_px`` pixels at
``target_mpp`` um/px; times in seconds.

Examples
--------
>>> from napari_ghanet.inference.stages import check_cancel
>>> import threading
>>> check_cancel(threading.Event())  # not set: nothing happens
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.device import DeviceError, resolve_device
from napari_ghanet.encoders import (
    EncoderSpec,
    PatchEncoder,
    create_encoder,
    from_spec,
    takes_weights,
)
from napari_ghanet.errors import (
    Cancelled,
    EncoderError,
    EncoderMismatchError,
    GHANetError,
    NoTissueError,
    PredictionError,
    SlideError,
)
from napari_ghanet.inference.embedding import embed_slide, iter_patch_batches
from napari_ghanet.inference.heatmap import Heatmap, overlap_factor, overlap_grid, overlap_heatmap
from napari_ghanet.inference.overlays import percentile_normalise
from napari_ghanet.inference.result import CategoryResult, Prediction, Region
from napari_ghanet.io.cache import cache_dir as _user_cache_dir
from napari_ghanet.io.features import (
    PatchFeatures,
    cached_features_path,
    load_matching_features,
    save_features,
)
from napari_ghanet.io.slide import Slide, open_slide
from napari_ghanet.models.bundle import ModelBundle
from napari_ghanet.models.risk import survival_horizon
from napari_ghanet.preprocessing.patches import PatchGrid, patch_grid
from napari_ghanet.preprocessing.qc import (
    QCAccumulator,
    QCParams,
    QCResult,
    measure_key,
    measure_params,
)
from napari_ghanet.preprocessing.roi import RegionReport, Regions, filter_grid
from napari_ghanet.preprocessing.tissue import TissueMask, TissueParams, tissue_mask

__all__ = [
    "BagEncoder",
    "BagOptions",
    "EmbedOutcome",
    "ModelOutputs",
    "ProgressCallback",
    "SlideFeatures",
    "SlideRun",
    "assemble_stage",
    "bag_heatmap_stage",
    "bag_settings",
    "bag_stage",
    "build_encoder",
    "check_cancel",
    "check_counts",
    "check_qc_overlap",
    "default_cache_dir",
    "embed_to_file",
    "feature_spec",
    "features_stage",
    "grid_stage",
    "heatmap_stage",
    "model_stage",
    "open_stage",
    "patch_geometry",
    "patch_scorers",
    "patient_slides",
    "prediction_device",
    "qc_stage",
    "regions_stage",
    "score_patches_stage",
    "slide_info",
    "slide_regions",
    "slide_stage",
]

#: Signature of progress callbacks: (stage, done, total). Stages, in order: "slide",
#: "tissue", "patches", "features" (done/total = patches embedded), "model", "done".
#: A patient's slides each go through "slide" ... "features" before "model".
ProgressCallback = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- helpers


def default_cache_dir() -> Path:
    """The patch-feature cache: ``<user cache>/napari-ghanet/features`` (the user cache is
    ``$NAPARI_GHANET_CACHE`` when set, else ``$XDG_CACHE_HOME`` or ~/.cache)."""
    return _user_cache_dir() / "features"


def check_cancel(cancel: threading.Event | None, what: str = "prediction cancelled") -> None:
    """Raise :class:`~napari_ghanet.errors.Cancelled` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(what)


def prediction_device(device: str | None = "auto") -> str:
    """The device name a prediction runs on ("auto" -> "cuda" or "cpu"), checked.

    Raises :class:`~napari_ghanet.errors.PredictionError` for a device this machine lacks.

    Examples
    --------
    >>> prediction_device("cpu")
    'cpu'
    """
    try:
        return str(resolve_device(device or "auto"))
    except DeviceError as e:
        raise PredictionError(f"{e}; use device 'auto' or 'cpu'") from None


def _report(progress: ProgressCallback | None, stage: str, done: int = 0, total: int = 0) -> None:
    if progress is not None:
        progress(stage, int(done), int(total))


class _Clock:
    """Adds the seconds since the last lap to ``timings[name]`` (summed over slides)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.t0 = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = round(self.timings.get(name, 0.0) + now - self.t0, 4)
        self.t0 = now


def slide_info(slide: Slide) -> dict[str, Any]:
    """JSON-able description of an open slide (path, name, fingerprint, level-0 size in
    pixels, mpp in um/px and where it came from, objective power, vendor)."""
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


def _model_info(bundle: ModelBundle) -> dict[str, Any]:
    meta = bundle.metadata
    return {
        "name": bundle.name,
        "path": str(bundle.path) if bundle.path is not None else None,
        "architecture": meta.get("model", {}).get("name"),
        "encoder": bundle.encoder.to_dict(),
        "provenance": bundle.provenance,
        "package_version": meta.get("package_version"),
    }


# ------------------------------------------------------- encoder spec <-> encoder (private)
# These two are the only places that map a bundle's EncoderSpec onto the encoder registry;
# the encoders package may take them over (from_spec / one mismatch check).


def feature_spec(encoder: PatchEncoder, patch_px: int, target_mpp: float) -> EncoderSpec:
    """The encoder spec stored with features: the encoder's, at the grid's geometry
    (``patch_px`` pixels at ``target_mpp`` um/px)."""
    return encoder.spec().with_geometry(int(patch_px), float(target_mpp))


def build_encoder(
    bundle: ModelBundle,
    *,
    patch_px: int,
    target_mpp: float,
    encoder_kwargs: dict[str, Any] | None = None,
) -> tuple[PatchEncoder, EncoderSpec, list[str]]:
    """The patch encoder a bundle was trained with, at this patch geometry.

    The encoder is rebuilt from the bundle's spec by
    :func:`~napari_ghanet.encoders.from_spec`; ``encoder_kwargs`` add what a spec only
    names (``weights=PATH``, a TorchScript ``path=FILE``). Returns the encoder, the spec
    its features carry (:func:`feature_spec`) and warnings (other encoder weights than
    the model's). Raises :class:`~napari_ghanet.errors.EncoderMismatchError` when its
    features cannot fit the model, :class:`~napari_ghanet.errors.PredictionError` when it
    cannot be built.
    """
    spec = bundle.encoder
    expected = spec.with_geometry(int(patch_px), float(target_mpp))
    overrides = dict(encoder_kwargs or {})
    warnings: list[str] = []
    if "weights" in overrides and not takes_weights(spec.name):
        overrides.pop("weights")
        warnings.append(
            f"the model's encoder {spec.name!r} needs no weights file: the one given was "
            "not used"
        )
    if spec.name.startswith("torchscript") and "weights" in overrides:
        overrides.setdefault("path", overrides.pop("weights"))  # a TorchScript file is its weights
    if spec.name.startswith("torchscript") and "path" not in overrides:
        raise PredictionError(
            f"the model expects features from the user encoder {spec.name!r}: give its "
            "TorchScript file with encoder_kwargs={'path': ...}"
        )
    try:
        encoder = from_spec(
            expected, using="torchscript" if spec.name.startswith("torchscript") else None,
            **overrides,
        )
    except EncoderError as e:
        raise PredictionError(f"cannot build the model's patch encoder: {e}") from e
    enc_spec = feature_spec(encoder, patch_px, target_mpp)
    # other weights only warn (a re-trained copy of the same network); anything else refuses
    why = expected.replace(weights=None).differences(enc_spec.replace(weights=None))
    if why:
        raise EncoderMismatchError(
            f"the model {bundle.name!r} expects features from {spec.name!r} "
            f"({spec.dim}-d) but this encoder gives " + ", ".join(why)
        )
    if spec.weights_digest and enc_spec.weights_digest and (
        spec.weights_digest != enc_spec.weights_digest
    ):
        warnings.append(
            f"the encoder weights ({enc_spec.weights}) differ from those the model "
            f"was trained with ({spec.weights}): features may not match"
        )
    return encoder, enc_spec, warnings


# --------------------------------------------------------------------------- stages


def open_stage(
    slide_or_path: Slide | str | os.PathLike,
    *,
    mpp: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[Slide, bool]:
    """Open a slide (or take an open one) and check that it knows its pixel size.

    Returns ``(slide, opened)``: close the slide when ``opened`` is True. ``mpp`` (level-0
    um/px) is used for slide files that do not record it. Raises
    :class:`~napari_ghanet.errors.SlideError`.
    """
    _report(progress, "slide")
    clock = _Clock(timings)
    opened = not isinstance(slide_or_path, Slide)
    slide = open_slide(slide_or_path, mpp=mpp) if opened else slide_or_path
    try:
        if slide.mpp is None:
            raise SlideError(
                f"{slide.path}: the slide records no microns per pixel; give the level-0 "
                "resolution (mpp), e.g. 0.25 for 40x or 0.5 for 20x scans"
            )
        clock.lap("open")
        check_cancel(cancel)
    except BaseException:
        if opened:
            slide.close()
        raise
    return slide, opened


def grid_stage(
    slide: Slide,
    *,
    patch_px: int = 256,
    target_mpp: float = 0.5,
    tissue_params: TissueParams | dict | None = None,
    min_tissue_fraction: float = 0.5,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    timings: dict[str, float] | None = None,
    purpose: str = "predict from",
) -> tuple[TissueMask, PatchGrid]:
    """Tissue mask and the patch grid on it: patches of ``patch_px`` pixels at
    ``target_mpp`` um/px that are at least ``min_tissue_fraction`` tissue.

    Raises :class:`~napari_ghanet.errors.NoTissueError` when no patch qualifies (its
    message ends "Nothing to <purpose>.").

    Examples
    --------
    >>> import numpy as np, tempfile, tifffile
    >>> from napari_ghanet.io.slide import open_slide
    >>> rgb = np.full((512, 512, 3), 240, np.uint8); rgb[128:384, 128:384] = (180, 90, 160)
    >>> path = tempfile.mkdtemp() + "/s.tif"
    >>> tifffile.imwrite(path, rgb, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    >>> with open_slide(path) as s:
    ...     mask, grid = grid_stage(s, patch_px=64, target_mpp=2.0)
    >>> len(grid), grid.patch_size_level0
    (4, 128)
    """
    _report(progress, "tissue")
    clock = _Clock(timings)
    if isinstance(tissue_params, dict):
        tissue_params = TissueParams(**tissue_params)
    mask = tissue_mask(slide, tissue_params)
    clock.lap("tissue")
    check_cancel(cancel)
    if mask.empty:
        raise NoTissueError(
            f"{slide.path.name}: no tissue found. Check that this is a brightfield H&E "
            "slide, or lower the tissue threshold in the advanced settings"
        )
    _report(progress, "patches")
    grid = patch_grid(
        slide,
        mask,
        patch_px=int(patch_px),
        target_mpp=float(target_mpp),
        min_tissue_fraction=min_tissue_fraction,
    )
    clock.lap("patches")
    if grid.empty:
        raise NoTissueError(
            (grid.message or f"{slide.path.name}: no patch holds enough tissue")
            + f". Nothing to {purpose}."
        )
    check_cancel(cancel)
    return mask, grid


@dataclass
class SlideFeatures:
    """One slide's patch features and where they came from.

    ``cached``: read from ``path`` rather than computed; ``path``: the features file
    (None when nothing was read or written); ``warnings``: e.g. the cache was not writable.
    ``qc_source``: where ``features.qc_measures`` came from: "embedding" (measured on the
    patches as they were embedded), "cache" (stored with the cached features), "qc pass"
    (the cache had none, or other QC measuring settings: the patches were read once more
    for QC only), or None when QC was not asked for.
    """

    features: PatchFeatures
    cached: bool
    path: str | None = None
    warnings: list[str] = field(default_factory=list)
    qc_source: str | None = None


def _qc_pass(
    slide: Slide,
    grid: PatchGrid,
    coords: np.ndarray,
    qc: QCParams,
    *,
    batch_size: int | None,
    workers: int | None,
    cancel: threading.Event | None,
) -> np.ndarray:
    """QC measures (N, 3) of the patches at ``coords`` (rows of ``grid``), read once."""
    lookup = {tuple(c): i for i, c in enumerate(np.asarray(grid.coords).tolist())}
    index = np.array([lookup[tuple(c)] for c in np.asarray(coords).tolist()], np.int64)
    sub = grid.select(index)
    acc = QCAccumulator(measure_params(qc))
    for _lo, _hi, batch, _ok in iter_patch_batches(
        slide,
        sub,
        batch_size=int(batch_size or 64),
        workers=4 if workers is None else int(workers),
        cancel=cancel,
    ):
        acc.update(batch)
    return acc.measures()


def features_stage(
    slide: Slide,
    grid: PatchGrid,
    encoder: PatchEncoder,
    *,
    cache_path: str | os.PathLike | None = None,
    reuse: bool = True,
    strict_save: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    qc: QCParams | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    timings: dict[str, float] | None = None,
    backend: str = "auto",
    compile: bool = False,
) -> SlideFeatures:
    """The grid's patch features: from ``cache_path`` when it holds features of this slide,
    encoder and grid (and ``reuse``), else embedded and then saved there (atomically).

    A failed save is a warning, or an ``OSError`` with ``strict_save``. Cancelling leaves
    no file behind. ``batch_size`` / ``workers``: encoder batch and reader threads
    (:func:`~napari_ghanet.inference.embedding.embed_slide` defaults when None);
    ``backend`` / ``compile``: passed to ``embed_slide``.

    With ``qc`` (:class:`~napari_ghanet.preprocessing.qc.QCParams`), the features also
    carry each patch's artifact-QC *measures* (``features.qc_measures``, float32 (N, 3)),
    taken on the patches as they are embedded and cached with the features, so thresholds
    can change later without re-embedding. Cached features without measures (older
    files), or measured with other colour/density settings (:func:`measure_key`), get them
    from one QC-only read of the patches, and the cache file is rewritten with them.
    """
    clock = _Clock(timings)
    spec = feature_spec(encoder, grid.patch_px, grid.target_mpp)
    cache_warnings: list[str] = []
    key = measure_key(qc) if qc is not None else None
    if cache_path is not None and reuse:
        notices: list[str] = []  # a damaged cache is recomputed, never trusted: say so
        hit = load_matching_features(
            cache_path,
            slide_fingerprint=slide.fingerprint(),
            encoder_spec=spec,
            grid=grid,
            notices=notices,
        )
        if hit is None and notices:
            cache_warnings.extend(notices)
        if hit is not None:
            _report(progress, "features", len(hit), len(hit))
            result = SlideFeatures(hit, True, str(cache_path))
            if qc is not None:
                if hit.qc_measures is not None and hit.attrs.get("qc_measure_key") == key:
                    result.qc_source = "cache"
                else:
                    _report(progress, "qc", 0, len(hit))
                    hit.qc_measures = _qc_pass(
                        slide, grid, hit.coords, qc,
                        batch_size=batch_size, workers=workers, cancel=cancel,
                    )
                    hit.attrs["qc_measure_key"] = key
                    result.qc_source = "qc pass"
                    _report(progress, "qc", len(hit), len(hit))
                    # files of version 0.1 (no digest) are not rewritten: a read never
                    # blesses data whose integrity cannot be checked
                    if hit.attrs.get("content_sha256"):
                        try:
                            save_features(cache_path, hit)
                        except OSError as e:
                            result.warnings.append(
                                f"could not add the QC measures to the cache {cache_path}: {e}"
                            )
            clock.lap("features")
            return result
    _report(progress, "features", 0, len(grid))
    embed_kw: dict[str, Any] = {}
    if batch_size is not None:
        embed_kw["batch_size"] = int(batch_size)
    if workers is not None:
        embed_kw["workers"] = int(workers)
    acc = QCAccumulator(measure_params(qc)) if qc is not None else None
    try:
        feats = embed_slide(
            slide,
            grid,
            encoder,
            device=device,
            progress=lambda done, total: _report(progress, "features", done, total),
            cancel=cancel,
            on_batch=(lambda batch, _index: acc.update(batch)) if acc is not None else None,
            backend=backend,
            compile=compile,
            **embed_kw,
        )
    except Cancelled as e:
        raise Cancelled("prediction cancelled during embedding") from e
    check_cancel(cancel)
    if acc is not None:
        feats.qc_measures = acc.measures()
        feats.attrs["qc_measure_key"] = key
        feats.__post_init__()  # check the measures' shape
    result = SlideFeatures(feats, False, warnings=cache_warnings,
                           qc_source="embedding" if acc is not None else None)
    if cache_path is not None:
        try:
            result.path = str(save_features(cache_path, feats))
        except OSError as e:
            if strict_save:
                raise
            result.warnings.append(f"could not cache the patch features in {cache_path}: {e}")
    clock.lap("features")
    return result


def regions_stage(
    slide: Slide,
    grid: PatchGrid,
    regions: Regions | None,
    *,
    purpose: str = "predict from",
) -> tuple[PatchGrid, RegionReport | None]:
    """The patches of ``grid`` the regions keep (centre inside an include region, or any
    when there is none, and outside every exclude region), before anything is embedded.

    Returns the kept grid and the :class:`~napari_ghanet.preprocessing.roi.RegionReport`
    (areas in mm^2 from the slide's mpp); ``(grid, None)`` without regions. Raises
    :class:`~napari_ghanet.errors.NoTissueError` when no patch is left.
    """
    if regions is None or regions.empty:
        return grid, None
    keep, report = filter_grid(grid.coords, grid.patch_size_level0, regions, mpp=slide.mpp)
    if not keep.any():
        where = "outside the include regions" if regions.include else "inside exclude regions"
        if regions.include and report.n_outside_include < report.n_patches:
            where = "outside the include regions or inside exclude regions"
        raise NoTissueError(
            f"{slide.path.name}: all {len(grid)} patches were {where}. Nothing to {purpose}: "
            "draw the regions over tissue (level-0 pixel coordinates)"
        )
    return grid.select(np.flatnonzero(keep)), report


def qc_stage(features: PatchFeatures, qc: QCParams) -> QCResult:
    """Artifact flags of a slide's patches from their measures (``features.qc_measures``,
    see :func:`features_stage`) and the thresholds of ``qc``; blur is judged against the
    median of these patches."""
    if features.qc_measures is None:
        raise PredictionError("these features carry no QC measures: run features_stage with qc")
    acc = QCAccumulator(qc)
    acc.add_measures(features.qc_measures)
    return acc.result()


@dataclass
class ModelOutputs:
    """A model's outputs on one bag of N patches, as numpy (T categories, K bins).

    risk: float; hazards, survival float32 (K,); morphology_attention float32 (N,);
    genome_attention float32 (T, N); similarity float (T, N) or None; reconstructed:
    T float32 arrays, one per category's genes.
    """

    risk: float
    hazards: np.ndarray
    survival: np.ndarray
    morphology_attention: np.ndarray
    genome_attention: np.ndarray
    similarity: np.ndarray | None
    reconstructed: list[np.ndarray]


def model_stage(
    bundle: ModelBundle,
    features: np.ndarray,
    *,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> ModelOutputs:
    """Run the bundle's model on a bag of patch features, float32 (N, D), on ``device``
    (the model returns to its own device afterwards)."""
    import torch

    _report(progress, "model", 0, 1)
    clock = _Clock(timings)
    model = bundle.model
    model_device = next(model.parameters()).device
    try:
        if str(model_device) != device:
            model.to(device)
        x = torch.from_numpy(np.ascontiguousarray(features)).to(device)
        with torch.inference_mode():
            out = model.forward_bag(x)
    finally:
        if str(model_device) != device:
            model.to(model_device)

    def npy(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    result = ModelOutputs(
        risk=float(npy(out.risk)),
        hazards=npy(out.hazards).astype(np.float32),
        survival=npy(out.survival).astype(np.float32),
        morphology_attention=npy(out.morphology_attention).astype(np.float32),
        genome_attention=npy(out.genome_attention).astype(np.float32),
        similarity=npy(out.similarity) if out.similarity is not None else None,
        reconstructed=[npy(r).astype(np.float32).ravel() for r in out.reconstructed],
    )
    _report(progress, "model", 1, 1)
    clock.lap("model")
    return result


@dataclass
class SlideRun:
    """What the per-slide stages produced for one slide of a bag.

    ``features`` hold only the patches in the bag (kept by the regions and QC); ``grid``
    is the grid after the regions; ``regions`` / ``qc`` what the regions and artifact QC
    did (None when not used); ``qc_coords`` / ``qc_reasons`` the flagged patches;
    ``extra`` the features of the overlapping heatmap patches (None at overlap 0) and
    ``n_extra`` how many were embedded or read (before QC).
    """

    info: dict[str, Any]
    mask: TissueMask
    grid: PatchGrid
    features: SlideFeatures
    regions: RegionReport | None = None
    qc: QCResult | None = None
    qc_coords: np.ndarray | None = None
    qc_reasons: np.ndarray | None = None
    extra: PatchFeatures | None = None
    n_extra: int = 0


def patch_scorers(model: Any) -> list[Any] | None:
    """The G-HANet models whose ``score_patches`` score patches outside a bag (the
    members of an ensemble); None for models without it (baselines)."""
    if callable(getattr(model, "score_patches", None)):
        return [model]
    members = getattr(model, "members", None)
    if members is not None and all(callable(getattr(m, "score_patches", None)) for m in members):
        return list(members)
    return None


def score_patches_stage(
    bundle: ModelBundle,
    bag: np.ndarray,
    patches: np.ndarray,
    *,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray] | None:
    """Attention-scale scores of ``patches`` (M, D) in the context of ``bag`` (N, D).

    Returns ``morphology`` float32 (M,) = ``exp(logit - logsumexp(bag logits))`` (for a
    bag patch this is its morphology attention) and ``genome`` float32 (T, M) = each
    category's softmax over the bag of the second-round cross-attention similarity, before
    the top-k cut (a smooth map; the reported genome attention keeps only the top-k
    patches); members of an ensemble are averaged. None for models without
    ``score_patches``.
    """
    import torch

    scorers = patch_scorers(bundle.model)
    if scorers is None:
        return None
    b = torch.from_numpy(np.ascontiguousarray(bag, np.float32))
    x = torch.from_numpy(np.ascontiguousarray(patches, np.float32))
    morph = np.zeros(len(patches), np.float64)
    genome = None
    model_device = next(bundle.model.parameters()).device
    try:
        if str(model_device) != device:
            bundle.model.to(device)
        b, x = b.to(device), x.to(device)
        with torch.inference_mode():
            for m in scorers:
                lb, sb = m.score_patches(b, b)
                lx, sx = m.score_patches(b, x)
                mo = torch.exp(lx - torch.logsumexp(lb, dim=0))
                ge = torch.exp(sx - torch.logsumexp(sb, dim=1, keepdim=True))
                morph += mo.double().cpu().numpy()
                g = ge.double().cpu().numpy()
                genome = g if genome is None else genome + g
    finally:
        if str(model_device) != device:
            bundle.model.to(model_device)
    n = len(scorers)
    return (morph / n).astype(np.float32), (genome / n).astype(np.float32)


def heatmap_stage(
    bundle: ModelBundle,
    bag: np.ndarray,
    runs: Sequence[SlideRun],
    overlap: float,
    *,
    device: str = "cpu",
    timings: dict[str, float] | None = None,
) -> list[dict[str, Heatmap]]:
    """One dict of smooth attention maps per slide ("morphology" and each category
    name): the bag's patches and the slide's overlapping extra patches (``run.extra``),
    all scored by :func:`score_patches_stage`, averaged per cell of pitch
    ``patch * (1 - overlap)`` (:func:`~napari_ghanet.inference.heatmap.overlap_heatmap`).
    Empty dicts when ``overlap`` is 0 or the model cannot score patches."""
    clock = _Clock(timings)
    out: list[dict[str, Heatmap]] = []
    if not overlap_factor(overlap) > 1:
        return [{} for _ in runs]
    names = bundle.category_names
    for run in runs:
        own = run.features.features
        parts = [own.features]
        coords = [np.asarray(own.coords, np.int64)]
        if run.extra is not None and len(run.extra):
            parts.append(run.extra.features)
            coords.append(np.asarray(run.extra.coords, np.int64))
        feats = np.concatenate(parts)
        scored = score_patches_stage(bundle, bag, feats, device=device)
        if scored is None or len(feats) == 0:
            out.append({})
            continue
        morph, genome = scored
        xy = np.concatenate(coords)
        size = int(run.grid.patch_size_level0)
        maps = {"morphology": (morph, "morphology")}
        for t in range(genome.shape[0]):
            name = names[t] if t < len(names) else f"category {t + 1}"
            maps[name] = (genome[t], name)
        out.append({
            key: replace(overlap_heatmap(xy, size, sc, overlap), coords=xy, scores=sc)
            for key, (sc, _n) in maps.items()
        })
    clock.lap("heatmap")
    return out


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

    coords = np.concatenate(
        [np.asarray(r.features.features.coords, dtype=np.int64) for r in runs]
    )
    slide_index = np.concatenate(
        [np.full(len(r.features.features), k, np.int64) for k, r in enumerate(runs)]
    )
    sizes = np.array([int(r.grid.patch_size_level0) for r in runs], np.int64)
    morph = outputs.morphology_attention
    genome = outputs.genome_attention
    strongest = _strongest_category(genome, outputs.similarity)
    pct = 100.0 * percentile_normalise(morph)
    order = np.argsort(-morph, kind="stable")[: min(top_k, len(morph))]
    regions = [
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
    first = runs[0]
    slide = dict(first.info)
    if patient:
        slide["patient"] = str(patient)
    slides = [
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
    several = len(runs) > 1
    region_dicts = [r.regions.to_dict() if r.regions is not None else None for r in runs]
    regions_report = (
        region_dicts if several and any(d is not None for d in region_dicts)
        else region_dicts[0] if not several else None
    )
    qc_report = None
    if qc is not None:
        per = [r.qc.to_dict() if r.qc is not None else None for r in runs]
        if not several:
            qc_report = per[0]
        else:
            flagged: dict[str, int] = {}
            by_det: dict[str, int] = {}
            for d in per:
                for k, v in (d or {}).get("flagged", {}).items():
                    flagged[k] = flagged.get(k, 0) + int(v)
                for k, v in (d or {}).get("flagged_by_detector", {}).items():
                    by_det[k] = by_det.get(k, 0) + int(v)
            qc_report = {
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
    by_slide = [dict(h) for h in heatmaps] if heatmaps is not None else []
    if not any(by_slide):
        by_slide = []
    horizon, note = survival_horizon(bundle.metadata)
    risk = outputs.risk
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


# --------------------------------------------------------------------------- a patient's bag
# predict_patient = checks below -> slide_stage per slide -> bag_stage -> model_stage ->
# bag_heatmap_stage -> assemble_stage (with bag_settings).


def patient_slides(
    slides: Sequence[Slide | str | os.PathLike] | Slide | str | os.PathLike,
    mpp: float | Sequence[float | None] | None,
) -> tuple[list[Any], list[float | None]]:
    """The slides of a bag as a list (one slide or path alone is a list of one) and one
    level-0 ``mpp`` (um/px, or None) per slide. Raises
    :class:`~napari_ghanet.errors.PredictionError` for no slide or a wrong count of mpp.

    Examples
    --------
    >>> patient_slides("a.svs", 0.25)
    (['a.svs'], [0.25])
    """
    if isinstance(slides, str | os.PathLike | Slide):
        slides = [slides]
    slides = list(slides)
    if not slides:
        raise PredictionError("no slide given: a patient needs at least one slide")
    if mpp is None or isinstance(mpp, int | float):
        return slides, [mpp] * len(slides)
    mpps = list(mpp)
    if len(mpps) != len(slides):
        raise PredictionError(f"{len(mpps)} mpp values for {len(slides)} slides")
    return slides, mpps


def check_counts(*, top_k: int, batch_size: int | None) -> None:
    """Raise :class:`~napari_ghanet.errors.PredictionError` for ``top_k < 0`` or a batch
    size under 1."""
    if top_k < 0:
        raise PredictionError(f"top_k must be >= 0, got {top_k}")
    if batch_size is not None and int(batch_size) < 1:
        raise PredictionError(f"batch size must be >= 1, got {batch_size}")


def patch_geometry(
    spec: EncoderSpec, patch_px: int | None, target_mpp: float | None
) -> tuple[int, float, str | None]:
    """The patch side (px) and resolution (um/px) to use (default: the model's ``spec``)
    and a warning when they differ from the model's (None when they do not)."""
    px = int(patch_px) if patch_px is not None else spec.patch_px
    um = float(target_mpp) if target_mpp is not None else spec.target_mpp
    if px == spec.patch_px and math.isclose(um, spec.target_mpp, rel_tol=0.05):
        return px, um, None
    return px, um, (
        f"patches of {px} px at {um:g} um/px differ from the "
        f"{spec.patch_px} px at {spec.target_mpp:g} um/px the model was trained on: "
        "results are outside the model's validated use"
    )


def slide_regions(
    regions: Regions | Sequence[Regions | None] | None, n_slides: int
) -> list[Regions | None]:
    """One Regions (or None) per slide; a single Regions only for a single slide. Raises
    :class:`~napari_ghanet.errors.PredictionError` otherwise."""
    if regions is None or isinstance(regions, Regions):
        if isinstance(regions, Regions) and n_slides > 1:
            raise PredictionError(
                f"one Regions for {n_slides} slides: give one Regions (or None) per slide"
            )
        return [regions] * n_slides
    region_list = list(regions)
    if len(region_list) != n_slides:
        raise PredictionError(f"{len(region_list)} region sets for {n_slides} slides")
    return region_list


def check_qc_overlap(qc: QCParams | None, heatmap_overlap: float) -> int:
    """Check the QC thresholds and the heatmap overlap; returns the overlap's patch factor
    (1 at overlap 0). Raises :class:`~napari_ghanet.errors.PredictionError`."""
    if qc is not None:
        try:
            qc.validate()
        except ValueError as e:
            raise PredictionError(f"invalid QC settings: {e}") from None
    try:
        return overlap_factor(heatmap_overlap)
    except ValueError as e:
        raise PredictionError(f"heatmap overlap: {e}") from None


@dataclass
class BagOptions:
    """What every slide of one bag shares (see ``predict_patient`` for each setting).

    ``patch_px`` / ``target_mpp``: the patch geometry used; ``cache_root``: the feature
    cache folder (None: no cache read or written); ``several``: the bag has several slides
    (warnings then name their slide, and a slide emptied by QC is a warning, not an error).
    """

    bundle: ModelBundle
    device: str
    patch_px: int
    target_mpp: float
    tissue_params: TissueParams | dict | None = None
    min_tissue_fraction: float = 0.5
    batch_size: int | None = None
    workers: int | None = None
    cache_root: Path | None = None
    encoder_kwargs: dict[str, Any] | None = None
    qc: QCParams | None = None
    heatmap_overlap: float = 0.0
    several: bool = False
    progress: ProgressCallback | None = None
    cancel: threading.Event | None = None

    def stage_kw(self) -> dict[str, Any]:
        """The keyword arguments of :func:`features_stage` that come from these options."""
        return dict(device=self.device, batch_size=self.batch_size, workers=self.workers,
                    qc=self.qc, cancel=self.cancel)


class BagEncoder:
    """The bag's patch encoder, built once by :func:`build_encoder` on first use (after
    the first slide's grid, so slide problems are reported first).

    ``note``: a warning (the geometry note) added to the run's warnings just before the
    encoder's own notes; ``spec``: the spec its features carry, once built.
    """

    def __init__(self, options: BagOptions, note: str | None = None):
        self.options = options
        self.note = note
        self.encoder: PatchEncoder | None = None
        self.spec: EncoderSpec | None = None

    def get(self, warnings: list[str]) -> tuple[PatchEncoder, EncoderSpec]:
        if self.note is not None:
            warnings.append(self.note)
            self.note = None
        if self.encoder is None:
            o = self.options
            self.encoder, self.spec, notes = build_encoder(
                o.bundle, patch_px=o.patch_px, target_mpp=o.target_mpp,
                encoder_kwargs=o.encoder_kwargs,
            )
            warnings.extend(notes)
        return self.encoder, self.spec


def slide_stage(
    source: Slide | str | os.PathLike,
    options: BagOptions,
    encoder: BagEncoder,
    *,
    mpp: float | None = None,
    regions: Regions | None = None,
    warnings: list[str],
    timings: dict[str, float],
) -> SlideRun:
    """One slide of a bag through open -> tissue/grid -> regions -> features (and QC
    measures) -> QC decision -> overlapping heatmap patches, as a :class:`SlideRun`.

    ``mpp``: level-0 um/px when the slide records none; ``regions``: this slide's.
    Appends this slide's warnings to ``warnings`` and adds its seconds to ``timings``
    ("open", "tissue", "patches", "features", "qc", "heatmap"). A slide opened here is
    closed before returning. Raises as the stages it runs; also
    :class:`~napari_ghanet.errors.NoTissueError` when no patch could be read (or, alone in
    its bag, QC flags them all) and :class:`~napari_ghanet.errors.EncoderMismatchError`
    when the features do not fit the model.
    """
    o = options
    spec = o.bundle.encoder
    with contextlib.ExitStack() as stack:
        slide, opened = open_stage(
            source, mpp=mpp, progress=o.progress, cancel=o.cancel, timings=timings
        )
        if opened:
            stack.callback(slide.close)
        info = slide_info(slide)
        name = f"{slide.path.name}: " if o.several else ""
        mask, grid = grid_stage(
            slide,
            patch_px=o.patch_px,
            target_mpp=o.target_mpp,
            tissue_params=o.tissue_params,
            min_tissue_fraction=o.min_tissue_fraction,
            progress=o.progress,
            cancel=o.cancel,
            timings=timings,
        )
        grid, region_report = regions_stage(slide, grid, regions)
        t0 = time.perf_counter()
        enc, enc_spec = encoder.get(warnings)
        dt = time.perf_counter() - t0
        timings["features"] = round(timings.get("features", 0.0) + dt, 4)
        feats = features_stage(
            slide,
            grid,
            enc,
            cache_path=cached_features_path(o.cache_root, slide, enc_spec, grid)
            if o.cache_root is not None
            else None,
            progress=o.progress,
            timings=timings,
            **o.stage_kw(),
        )
        warnings.extend(feats.warnings)
        check_cancel(o.cancel)
        if len(feats.features) == 0:
            raise NoTissueError(f"{slide.path.name}: no patch could be read; nothing to score")
        if feats.features.dim != spec.dim:
            raise EncoderMismatchError(
                f"the features have dimension {feats.features.dim} but the model "
                f"{o.bundle.name!r} expects {spec.dim} ({spec.name})"
            )
        n_skipped = len(grid) - len(feats.features)
        if n_skipped:
            warnings.append(f"{name}{n_skipped} unreadable patch(es) were skipped")
        run = SlideRun(info=info, mask=mask, grid=grid, features=feats, regions=region_report)
        if o.qc is not None:
            t0 = time.perf_counter()
            _qc_decision(run, o, slide.path.name, name, warnings)
            timings["qc"] = round(timings.get("qc", 0.0) + time.perf_counter() - t0, 4)
        if overlap_factor(o.heatmap_overlap) > 1:
            t0 = time.perf_counter()
            run.extra, run.n_extra = _overlap_features(
                slide, run, mask, regions, enc, enc_spec, o,
                own_measures=feats.features.qc_measures,
            )
            timings["heatmap"] = round(
                timings.get("heatmap", 0.0) + time.perf_counter() - t0, 4
            )
        warnings.extend(f"{name}{w}" for w in slide.warnings)
        return run


def _qc_decision(
    run: SlideRun, options: BagOptions, slide_name: str, prefix: str, warnings: list[str]
) -> None:
    """Judge ``run``'s patches with QC: flagged ones leave ``run.features`` and are listed
    in ``run.qc_coords`` / ``qc_reasons``. A slide losing every patch is an error alone,
    a warning in a bag of several."""
    feats = run.features
    run.qc = qc_stage(feats.features, options.qc)
    keep = run.qc.keep
    run.qc_coords = np.asarray(feats.features.coords, np.int64)[~keep]
    run.qc_reasons = run.qc.reason[~keep]
    if not keep.all():
        run.features = replace(feats, features=feats.features.select(keep))
    if keep.any():
        return
    counts = ", ".join(f"{r} {n}" for r, n in run.qc.counts.items() if n and r != "total")
    if not options.several:
        raise NoTissueError(
            f"{slide_name}: all {len(keep)} patches were flagged by QC "
            f"({counts}). Nothing to predict from: check the slide, or relax "
            "the QC thresholds or switch QC off"
        )
    warnings.append(
        f"{prefix}all {len(keep)} patches were flagged by QC ({counts}): the "
        "slide adds nothing to the patient's bag"
    )


def _overlap_features(
    slide: Slide,
    run: SlideRun,
    mask: TissueMask,
    regions: Regions | None,
    encoder: PatchEncoder,
    enc_spec: EncoderSpec,
    options: BagOptions,
    own_measures: np.ndarray | None = None,
) -> tuple[PatchFeatures | None, int]:
    """Features of the overlapping heatmap patches of one slide (regions applied, and QC
    flags judged with the slide's bag patches), and how many were embedded or read."""
    ogrid = overlap_grid(run.grid, options.heatmap_overlap, mask)
    if regions is not None and not regions.empty and len(ogrid):
        keep, _ = filter_grid(ogrid.coords, ogrid.patch_size_level0, regions, mpp=slide.mpp)
        ogrid = ogrid.select(np.flatnonzero(keep))
    if len(ogrid) == 0:
        return None, 0
    progress = options.progress

    def relay(stage: str, done: int, total: int) -> None:
        if progress is not None and stage == "features":
            progress("heatmap", done, total)

    extra = features_stage(
        slide,
        ogrid,
        encoder,
        cache_path=cached_features_path(options.cache_root, slide, enc_spec, ogrid)
        if options.cache_root is not None
        else None,
        progress=relay,
        **options.stage_kw(),
    )
    feats = extra.features
    qc = options.qc
    if qc is not None and len(feats) and feats.qc_measures is not None:
        acc = QCAccumulator(qc)
        if own_measures is not None:
            acc.add_measures(own_measures)  # the slide's bag patches set the blur median
        n_ref = len(acc)
        acc.add_measures(feats.qc_measures)
        feats = feats.select(acc.result().keep[n_ref:])
    return feats, len(ogrid)


def bag_stage(runs: Sequence[SlideRun]) -> np.ndarray:
    """The bag: the features of ``runs``' kept patches in slide order, float32 (N, D).
    Raises :class:`~napari_ghanet.errors.NoTissueError` when QC left it empty."""
    bag = np.concatenate([r.features.features.features for r in runs])
    if len(bag) == 0:
        raise NoTissueError(
            f"all {sum(len(r.qc_reasons) for r in runs)} patches of the {len(runs)} slides "
            "were flagged by QC. Nothing to predict from: check the slides, or relax the QC "
            "thresholds or switch QC off"
        )
    return bag


def bag_heatmap_stage(
    options: BagOptions,
    bag: np.ndarray,
    runs: Sequence[SlideRun],
    *,
    warnings: list[str],
    timings: dict[str, float],
) -> list[dict[str, Heatmap]]:
    """:func:`heatmap_stage` with progress ("heatmap") and a warning when the model cannot
    score patches outside its bag."""
    _report(options.progress, "heatmap", 0, 1)
    heatmaps = heatmap_stage(
        options.bundle, bag, runs, options.heatmap_overlap, device=options.device,
        timings=timings,
    )
    if patch_scorers(options.bundle.model) is None:
        warnings.append(
            f"the model {options.bundle.name!r} cannot score patches outside its bag: no "
            "overlapping heatmaps"
        )
    return heatmaps


def bag_settings(
    options: BagOptions,
    runs: Sequence[SlideRun],
    enc_spec: EncoderSpec | None,
    region_list: Sequence[Regions | None],
    *,
    top_k: int,
) -> dict[str, Any]:
    """What ``Prediction.settings`` records of a bag's run (the first slide's grid and
    tissue mask; regions per slide, see :func:`_regions_settings`)."""
    first = runs[0]
    qc = options.qc
    return {
        "device": options.device,
        "patch_px": options.patch_px,
        "target_mpp": options.target_mpp,
        "patch_size_level0": int(first.grid.patch_size_level0),
        "min_tissue_fraction": float(options.min_tissue_fraction),
        "tissue": first.mask.describe(),
        "batch_size": options.batch_size,
        "encoder": enc_spec,
        "top_k": int(top_k),
        "regions": _regions_settings(region_list, runs),
        "qc": qc.to_dict() if qc is not None else None,
        "heatmap_overlap": float(options.heatmap_overlap),
        "heatmap_extra_patches": int(sum(r.n_extra for r in runs)),
    }


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


# --------------------------------------------------------------------------- embed to file


@dataclass
class EmbedOutcome:
    """What :func:`embed_to_file` did with one slide.

    status: "done" (features computed and written), "skipped" (``path`` already held
    features of this slide, encoder and grid) or "failed" (``error`` says why; nothing
    written). n_patches: patches in the file; seconds: wall time; n_skipped: unreadable
    patches left out; rate: patches embedded per second.
    """

    slide: str
    status: str
    n_patches: int = 0
    seconds: float = 0.0
    path: str | None = None
    error: str | None = None
    dim: int = 0
    n_skipped: int = 0
    rate: float = 0.0
    encoder: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def summary(self) -> str:
        """One line for a terminal, naming the slide."""
        name = Path(self.slide).name
        if self.status == "failed":
            return f"{name}: FAILED: {self.error}"
        if self.status == "skipped":
            return (
                f"{name}: {self.n_patches} patches, {self.dim}-d features already in "
                f"{self.path} (same slide, encoder and grid)"
            )
        skip = f" ({self.n_skipped} unreadable skipped)" if self.n_skipped else ""
        return (
            f"{name}: {self.n_patches} patches{skip}, {self.dim}-d {self.encoder} features, "
            f"{self.rate:.1f} patches/s, {self.seconds:.1f} s -> {self.path}"
        )


def embed_to_file(
    slide_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    encoder: PatchEncoder | str,
    *,
    encoder_kwargs: dict[str, Any] | None = None,
    mpp: float | None = None,
    patch_px: int | None = None,
    target_mpp: float | None = None,
    tissue_params: TissueParams | dict | None = None,
    min_tissue_fraction: float = 0.5,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 4,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    backend: str = "auto",
    compile: bool = False,
) -> EmbedOutcome:
    """Embed one slide's tissue patches into ``out_dir/<slide stem>.h5`` (CLAM layout).

    The same grid and feature stages as a prediction. A file already made from this
    slide with this encoder and grid is kept (status "skipped"); one made otherwise is
    replaced only with ``overwrite``. Failures (unreadable slide, no tissue, unwritable
    folder) come back as status "failed" with the reason, never as an exception;
    cancelling raises :class:`~napari_ghanet.errors.Cancelled`. A plain function of
    picklable arguments (give ``encoder`` as a registry name with ``encoder_kwargs``), so a
    process pool or Dask can run it per slide.

    Parameters
    ----------
    slide_path : path
        The slide file.
    out_dir : path
        Output folder (created).
    encoder : PatchEncoder or str
        An encoder, or its registry name (built with ``encoder_kwargs``).
    mpp : float, optional
        Level-0 um/px for slides that do not record it.
    patch_px, target_mpp : optional
        Patch side (px) at this resolution (um/px); default: the encoder's.
    tissue_params, min_tissue_fraction
        Tissue detection and the least tissue fraction of a kept patch.
    device, batch_size, workers, backend, compile
        Where and how the encoder runs (see ``embed_slide``).
    progress : callable(stage, done, total), optional
    cancel : threading.Event, optional

    Returns
    -------
    EmbedOutcome

    Examples
    --------
    >>> import numpy as np, tempfile, tifffile
    >>> rgb = np.full((512, 512, 3), 240, np.uint8); rgb[128:384, 128:384] = (180, 90, 160)
    >>> tmp = tempfile.mkdtemp()
    >>> tifffile.imwrite(tmp + "/s.tif", rgb, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    >>> kw = dict(encoder_kwargs={"patch_px": 64, "target_mpp": 2.0}, device="cpu", workers=0)
    >>> out = embed_to_file(tmp + "/s.tif", tmp + "/out", "morphometric", **kw)
    >>> out.status, out.n_patches, out.dim
    ('done', 4, 64)
    >>> embed_to_file(tmp + "/s.tif", tmp + "/out", "morphometric", **kw).status
    'skipped'
    """
    t0 = time.perf_counter()
    slide_path = Path(slide_path)
    out = Path(out_dir) / f"{slide_path.stem}.h5"
    outcome = EmbedOutcome(slide=str(slide_path), status="failed", path=str(out))
    try:
        if isinstance(encoder, str):
            encoder = create_encoder(encoder, **(encoder_kwargs or {}))
        outcome.encoder = encoder.name
        spec = encoder.spec()
        px = int(patch_px) if patch_px is not None else spec.patch_px
        um = float(target_mpp) if target_mpp is not None else spec.target_mpp
        slide, opened = open_stage(slide_path, mpp=mpp, progress=progress, cancel=cancel)
        try:
            _mask, grid = grid_stage(
                slide,
                patch_px=px,
                target_mpp=um,
                tissue_params=tissue_params,
                min_tissue_fraction=min_tissue_fraction,
                progress=progress,
                cancel=cancel,
                purpose="embed",
            )
            if out.exists() and not overwrite:
                hit = load_matching_features(
                    out,
                    slide_fingerprint=slide.fingerprint(),
                    encoder_spec=feature_spec(encoder, grid.patch_px, grid.target_mpp),
                    grid=grid,
                )
                if hit is None:
                    outcome.error = (
                        f"{out} exists but was made from another slide, encoder or grid; "
                        "pass --overwrite to replace it"
                    )
                    return outcome
                outcome.status, outcome.n_patches, outcome.dim = "skipped", len(hit), hit.dim
                return outcome
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            result = features_stage(
                slide,
                grid,
                encoder,
                cache_path=out,
                reuse=False,
                strict_save=True,
                device=device,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                cancel=cancel,
                backend=backend,
                compile=compile,
            )
        finally:
            if opened:
                slide.close()
    except Cancelled:
        raise
    except (GHANetError, ValueError, OSError, RuntimeError) as exc:
        outcome.error = str(exc)
        outcome.seconds = time.perf_counter() - t0
        return outcome
    feats = result.features
    outcome.seconds = time.perf_counter() - t0
    outcome.status = "done"
    outcome.n_patches, outcome.dim = len(feats), feats.dim
    outcome.n_skipped = int(feats.attrs.get("n_skipped", 0))
    outcome.rate = len(feats) / max(float(feats.attrs.get("seconds", outcome.seconds)), 1e-9)
    return outcome

