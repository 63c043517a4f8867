"""The per-slide stages: open -> tissue mask + patch grid -> regions -> features (from
the cache or embedded, with QC measures) -> QC flags, and the patch encoder a bundle needs.

Units: coordinates are level-0 pixels, (x, y) top-left; ``patch_px`` pixels at
``target_mpp`` um/px; times in seconds.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_ghanet.encoders import (
    EncoderSpec,
    PatchEncoder,
    encoder_mismatch,
    from_spec,
    takes_weights,
)
from napari_ghanet.errors import (
    Cancelled,
    EncoderError,
    EncoderMismatchError,
    NoTissueError,
    PredictionError,
    SlideError,
)
from napari_ghanet.inference.embedding import embed_slide, iter_patch_batches
from napari_ghanet.inference.stages.run import Clock, ProgressCallback, check_cancel, report
from napari_ghanet.io.features import (
    PatchFeatures,
    load_matching_features,
    save_features,
)
from napari_ghanet.io.slide import Slide, open_slide
from napari_ghanet.models.bundle import ModelBundle
from napari_ghanet.options import CPU_READERS, EmbedOptions, GridOptions
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


def feature_spec(encoder: PatchEncoder, patch_px: int, target_mpp: float) -> EncoderSpec:
    """The encoder spec stored with features: the encoder's, at the grid's geometry
    (``patch_px`` pixels at ``target_mpp`` um/px)."""
    return encoder.spec().with_geometry(int(patch_px), float(target_mpp))


def build_encoder(
    bundle: ModelBundle,
    *,
    patch_px: int,
    target_mpp: float,
    weights: str | os.PathLike | None = None,
) -> tuple[PatchEncoder, EncoderSpec, list[str]]:
    """The patch encoder a bundle was trained with, at this patch geometry.

    The encoder is rebuilt from the bundle's spec by
    :func:`~napari_ghanet.encoders.from_spec`; ``weights`` is the encoder's weights file
    when the spec only names it (a TorchScript encoder's file is its weights). Returns
    the encoder, the spec its features carry (:func:`feature_spec`) and warnings (other
    encoder weights than the model's). Raises
    :class:`~napari_ghanet.errors.EncoderMismatchError` when its features cannot fit the
    model, :class:`~napari_ghanet.errors.PredictionError` when it cannot be built.
    """
    spec = bundle.encoder
    expected = spec.with_geometry(int(patch_px), float(target_mpp))
    overrides: dict[str, Any] = {}
    warnings: list[str] = []
    scripted = spec.name.startswith("torchscript")
    if weights is not None and not takes_weights(spec.name):
        warnings.append(
            f"the model's encoder {spec.name!r} needs no weights file: the one given was "
            "not used"
        )
    elif weights is not None:
        overrides["path" if scripted else "weights"] = weights
    if scripted and weights is None:
        raise PredictionError(
            f"the model expects features from the user encoder {spec.name!r}: give that "
            "encoder's TorchScript file as the encoder weights"
        )
    try:
        encoder = from_spec(expected, using="torchscript" if scripted else None, **overrides)
    except EncoderError as e:
        raise PredictionError(f"cannot build the model's patch encoder: {e}") from e
    enc_spec = feature_spec(encoder, patch_px, target_mpp)
    # other weights only warn (a re-trained copy of the same network); anything else refuses
    why = encoder_mismatch(expected.replace(weights=None), enc_spec.replace(weights=None),
                           model=bundle.name)
    if why:
        raise EncoderMismatchError(why)
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
    report(progress, "slide")
    clock = Clock(timings)
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
    patch_px: int = EncoderSpec.patch_px,
    target_mpp: float = EncoderSpec.target_mpp,
    tissue_params: TissueParams | dict | None = None,
    min_tissue_fraction: float = GridOptions.min_tissue_fraction,
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
    report(progress, "tissue")
    clock = Clock(timings)
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
    report(progress, "patches")
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
        batch_size=int(batch_size or EmbedOptions.batch_size),
        workers=CPU_READERS if workers is None else int(workers),
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
    read_ahead: int | None = None,
    qc: QCParams | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    timings: dict[str, float] | None = None,
    backend: str = "auto",
    compile: bool = False,
    on_encoded: Callable[[np.ndarray, np.ndarray, np.ndarray | None], Any] | None = None,
    attrs: dict[str, Any] | None = None,
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

    ``on_encoded(index, features, measures)`` is called after each batch is embedded
    (not for cached features): int64 (B,) grid indices, float32 (B, D) features and
    float32 (B, 3) their QC measures (None without ``qc``). With it, patches are embedded
    in the spread order of :func:`~napari_ghanet.inference.progressive.visit_order`
    (the features are the same).

    ``attrs``: more attributes recorded with newly embedded features (``embed_to_file``
    records the slide's acquisition: mpp, tissue area, stain colour).
    """
    clock = Clock(timings)
    spec = feature_spec(encoder, grid.patch_px, grid.target_mpp)
    cache_warnings: list[str] = []
    key = measure_key(qc) if qc is not None else None
    if cache_path is not None and reuse:
        hit = _cached_features(slide, grid, cache_path, spec, qc, key, cache_warnings,
                               batch_size=batch_size, workers=workers, progress=progress,
                               cancel=cancel)
        if hit is not None:
            clock.lap("features")
            return hit
    report(progress, "features", 0, len(grid))
    feats = _embedded_features(
        slide, grid, encoder, qc, key, device=device, batch_size=batch_size,
        workers=workers, read_ahead=read_ahead, progress=progress, cancel=cancel,
        backend=backend, compile=compile, on_encoded=on_encoded)
    feats.attrs.update(attrs or {})
    result = SlideFeatures(feats, False, warnings=cache_warnings,
                           qc_source="embedding" if qc is not None else None)
    if cache_path is not None:
        try:
            result.path = str(save_features(cache_path, feats))
        except OSError as e:
            if strict_save:
                raise
            result.warnings.append(f"could not cache the patch features in {cache_path}: {e}")
    clock.lap("features")
    return result


def _cached_features(
    slide: Slide, grid: PatchGrid, cache_path: str | os.PathLike, spec: Any,
    qc: QCParams | None, key: str | None, cache_warnings: list[str], *,
    batch_size: int | None, workers: int | None, progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> SlideFeatures | None:
    """The features in ``cache_path`` when they are this slide's, encoder's and grid's
    (with QC measures of these settings, measured now and written back when missing), else
    None; a damaged cache file is a warning added to ``cache_warnings``."""
    notices: list[str] = []  # a damaged cache is recomputed, never trusted: say so
    hit = load_matching_features(
        cache_path,
        slide_fingerprint=slide.fingerprint(),
        encoder_spec=spec,
        grid=grid,
        notices=notices,
    )
    if hit is None:
        cache_warnings.extend(notices)
        return None
    report(progress, "features", len(hit), len(hit))
    result = SlideFeatures(hit, True, str(cache_path))
    if qc is None:
        return result
    if hit.qc_measures is not None and hit.attrs.get("qc_measure_key") == key:
        result.qc_source = "cache"
        return result
    report(progress, "qc", 0, len(hit))
    hit.qc_measures = _qc_pass(
        slide, grid, hit.coords, qc,
        batch_size=batch_size, workers=workers, cancel=cancel,
    )
    hit.attrs["qc_measure_key"] = key
    result.qc_source = "qc pass"
    report(progress, "qc", len(hit), len(hit))
    # a hit is signed with this user's key (an unsigned file is never
    # reused), so rewriting it with the measures blesses nothing new
    try:
        save_features(cache_path, hit)
    except OSError as e:
        result.warnings.append(
            f"could not add the QC measures to the cache {cache_path}: {e}"
        )
    return result


def _embedded_features(
    slide: Slide, grid: PatchGrid, encoder: PatchEncoder, qc: QCParams | None,
    key: str | None, *, device: str, batch_size: int | None, workers: int | None,
    read_ahead: int | None, progress: ProgressCallback | None,
    cancel: threading.Event | None, backend: str, compile: bool,
    on_encoded: Callable[[np.ndarray, np.ndarray, np.ndarray | None], Any] | None,
) -> PatchFeatures:
    """The grid's patches embedded (:func:`embed_slide`), with their QC measures taken on
    the same reads when ``qc`` is given (in grid order, like the features)."""
    embed_kw: dict[str, Any] = {}
    if batch_size is not None:
        embed_kw["batch_size"] = int(batch_size)
    if workers is not None:
        embed_kw["workers"] = int(workers)
    if read_ahead is not None:
        embed_kw["read_ahead"] = int(read_ahead)
    acc = QCAccumulator(measure_params(qc)) if qc is not None else None
    seen: list[np.ndarray] = []  # grid indices in the order the patches were measured

    def measure(batch: np.ndarray, index: np.ndarray) -> None:
        acc.update(batch)
        seen.append(index)

    def encoded(index: np.ndarray, f: np.ndarray) -> None:
        m = acc.measures()[-len(index):] if acc is not None and len(index) else None
        on_encoded(index, f, m)

    try:
        feats = embed_slide(
            slide,
            grid,
            encoder,
            device=device,
            progress=lambda done, total: report(progress, "features", done, total),
            cancel=cancel,
            on_batch=measure if acc is not None else None,
            on_encoded=encoded if on_encoded is not None else None,
            order="spread" if on_encoded is not None else "grid",
            backend=backend,
            compile=compile,
            **embed_kw,
        )
    except Cancelled as e:
        raise Cancelled("prediction cancelled during embedding") from e
    check_cancel(cancel)
    if acc is not None:
        # measured in visiting order; the features are in grid order
        order = np.argsort(np.concatenate(seen), kind="stable") if seen else slice(None)
        feats.qc_measures = acc.measures()[order]
        feats.attrs["qc_measure_key"] = key
        feats.__post_init__()  # check the measures' shape
    return feats


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
