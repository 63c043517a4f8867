"""A patient's bag: each slide through the per-slide stages, their kept patches
concatenated, the heatmap patches and what the run records.

``predict_patient`` = checks -> :func:`slide_stage` per slide -> :func:`bag_stage` ->
``model_stage`` -> :func:`bag_heatmap_stage` -> ``assemble_stage`` (with
:func:`bag_settings`).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ghanet.device import resolve_device
from napari_ghanet.encoders import (
    EncoderSpec,
    PatchEncoder,
    encoder_mismatch,
)
from napari_ghanet.errors import (
    EncoderMismatchError,
    NoTissueError,
    PredictionError,
)
from napari_ghanet.inference.heatmap import Heatmap, overlap_factor, overlap_grid
from napari_ghanet.inference.progressive import (
    BagPreliminary,
    PreliminaryCallback,
    ProgressiveEstimator,
)
from napari_ghanet.inference.stages.model import heatmap_stage, patch_scorers
from napari_ghanet.inference.stages.run import (
    ProgressCallback,
    check_cancel,
    default_cache_dir,
    report,
    slide_info,
)
from napari_ghanet.inference.stages.slide import (
    SlideRun,
    build_encoder,
    features_stage,
    grid_stage,
    open_stage,
    qc_stage,
    regions_stage,
)
from napari_ghanet.io.features import (
    PatchFeatures,
    cached_features_path,
)
from napari_ghanet.io.slide import Slide
from napari_ghanet.models.bundle import ModelBundle
from napari_ghanet.options import PredictOptions
from napari_ghanet.preprocessing.qc import (
    QCAccumulator,
    QCParams,
)
from napari_ghanet.preprocessing.roi import Regions, filter_grid
from napari_ghanet.preprocessing.tissue import TissueMask, TissueParams


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


@dataclass
class BagRun:
    """What every slide of one bag shares: the model, the run's options and context.

    Made once per prediction by :meth:`create`, which resolves the device, the patch
    geometry (the model's unless the options say otherwise) and the cache folder. The
    flat attributes are read by the stages: ``patch_px`` / ``target_mpp`` the geometry
    used; ``cache_root`` the feature cache folder (None: no cache read or written); ``qc``
    the QC thresholds (None: off); ``several``: the bag has several slides (warnings then
    name their slide, and a slide emptied by QC is a warning, not an error).
    """

    bundle: ModelBundle
    options: PredictOptions
    device: str
    patch_px: int
    target_mpp: float
    cache_root: Path | None = None
    several: bool = False
    progress: ProgressCallback | None = None
    cancel: threading.Event | None = None
    geometry_note: str | None = None
    preliminary: BagPreliminary | None = None
    qc: QCParams | None = field(init=False)

    def __post_init__(self) -> None:
        self.qc = self.options.qc.params()

    @classmethod
    def create(cls, bundle: ModelBundle, options: PredictOptions, *, several: bool = False,
               progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None,
               preliminary: PreliminaryCallback | ProgressiveEstimator | None = None,
               ) -> BagRun:
        grid = options.grid
        px, um, note = patch_geometry(bundle.encoder, grid.patch_px, grid.target_mpp)
        cache = options.cache
        root = (Path(cache.cache_dir) if cache.cache_dir is not None else default_cache_dir())
        device = str(resolve_device(options.embed.device))
        run = cls(bundle=bundle, options=options, device=device, patch_px=px,
                  target_mpp=um, cache_root=root if cache.use_cache else None,
                  several=several, progress=progress, cancel=cancel, geometry_note=note)
        if isinstance(preliminary, ProgressiveEstimator):
            run.preliminary = BagPreliminary(preliminary, run.qc)
        elif preliminary is not None:
            run.preliminary = BagPreliminary(
                ProgressiveEstimator(bundle, preliminary, device=device), run.qc)
        return run

    @property
    def tissue_params(self) -> TissueParams | None:
        return self.options.grid.tissue_params()

    @property
    def min_tissue_fraction(self) -> float:
        return self.options.grid.min_tissue_fraction

    @property
    def heatmap_overlap(self) -> float:
        return self.options.heatmap.overlap

    def cache_path(self, slide: Slide, enc_spec: EncoderSpec, grid) -> Path | None:
        """Where this run caches a grid's features (None: no cache). 8-bit features
        (``backend="onnx-int8"``) are kept apart from full-precision ones, so neither
        run ever reuses the other's."""
        if self.cache_root is None:
            return None
        path = cached_features_path(self.cache_root, slide, enc_spec, grid)
        if self.options.embed.backend == "onnx-int8":
            path = path.with_name(f"{path.stem}.int8{path.suffix}")
        return path

    def stage_kw(self) -> dict[str, Any]:
        """The keyword arguments of :func:`features_stage` that come from these options."""
        e = self.options.embed
        # the device as resolved once for the run (a torch.device is not resolved again)
        return dict(device=torch.device(self.device), batch_size=e.batch_size,
                    workers=e.workers, read_ahead=e.read_ahead, backend=e.backend,
                    compile=e.compile, qc=self.qc, cancel=self.cancel)


class BagEncoder:
    """The bag's patch encoder, built once by :func:`build_encoder` on first use (after
    the first slide's grid, so slide problems are reported first).

    ``note``: a warning (the geometry note) added to the run's warnings just before the
    encoder's own notes; ``spec``: the spec its features carry, once built.
    """

    def __init__(self, options: BagRun):
        self.options = options
        self.note = options.geometry_note
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
                weights=o.options.embed.weights,
            )
            warnings.extend(notes)
        return self.encoder, self.spec


def slide_stage(
    source: Slide | str | os.PathLike,
    options: BagRun,
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
        if o.preliminary is not None:
            o.preliminary.start_slide(grid.coords, grid.step_level0)
        feats = features_stage(
            slide,
            grid,
            enc,
            cache_path=o.cache_path(slide, enc_spec, grid),
            progress=o.progress,
            timings=timings,
            on_encoded=o.preliminary.on_encoded if o.preliminary is not None else None,
            **o.stage_kw(),
        )
        warnings.extend(feats.warnings)
        check_cancel(o.cancel)
        if len(feats.features) == 0:
            raise NoTissueError(f"{slide.path.name}: no patch could be read; nothing to score")
        why = encoder_mismatch(spec, spec.replace(dim=feats.features.dim), model=o.bundle.name)
        if why:
            raise EncoderMismatchError(why)
        n_skipped = len(grid) - len(feats.features)
        if n_skipped:
            warnings.append(f"{name}{n_skipped} unreadable patch(es) were skipped")
        run = SlideRun(info=info, mask=mask, grid=grid, features=feats, regions=region_report)
        if o.qc is not None:
            t0 = time.perf_counter()
            _qc_decision(run, o, slide.path.name, name, warnings)
            timings["qc"] = round(timings.get("qc", 0.0) + time.perf_counter() - t0, 4)
        if o.preliminary is not None:
            kept = run.features.features
            o.preliminary.finish_slide(kept.features, kept.coords, grid.step_level0)
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
    run: SlideRun, options: BagRun, slide_name: str, prefix: str, warnings: list[str]
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
    options: BagRun,
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
        cache_path=options.cache_path(slide, enc_spec, ogrid),
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
    options: BagRun,
    bag: np.ndarray,
    runs: Sequence[SlideRun],
    *,
    warnings: list[str],
    timings: dict[str, float],
) -> list[dict[str, Heatmap]]:
    """:func:`heatmap_stage` with progress ("heatmap") and a warning when the model cannot
    score patches outside its bag."""
    report(options.progress, "heatmap", 0, 1)
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
    options: BagRun,
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
        "batch_size": options.options.embed.batch_size,
        "backend": first.features.features.attrs.get("backend"),  # engine that computed them
        "encoder": enc_spec,
        "top_k": int(top_k),
        "regions": _regions_settings(region_list, runs),
        "qc": qc.to_dict() if qc is not None else None,
        "heatmap_overlap": float(options.heatmap_overlap),
        "options": options.options.to_dict(),
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
