"""Synthetic slides written to files: one slide, or one per patient with truth tables."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from napari_ghanet.datasets.synthetic.result import ACTIVITY_TRAITS
from napari_ghanet.datasets.synthetic.slide import _activity_vector, _resolve_shape, synthetic_slide
from napari_ghanet.datasets.synthetic.tiff import _auto_levels, write_pyramidal_tiff
from napari_ghanet.errors import ArgumentError
from napari_ghanet.io.atomic import atomic_write

__all__ = ["write_synthetic_cohort_slides", "write_synthetic_slide"]


def write_synthetic_slide(
    path: str | os.PathLike,
    shape_hw: Sequence[int] | None = None,
    *,
    size_um: float | Sequence[float] | None = None,
    mpp: float = 0.5,
    seed: int = 0,
    activity: float | Sequence[float] = 0.5,
    tumour_fraction: float | None = None,
    tissue_fraction: float = 0.5,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    levels: int | None = None,
    downsample: int = 4,
    overwrite: bool = True,
) -> tuple[Path, dict]:
    """Render a synthetic slide (:func:`synthetic_slide`) and write it as a pyramidal TIFF.

    See :func:`synthetic_slide` for the tissue arguments and :func:`write_pyramidal_tiff`
    for the file layout. Returns the path and :meth:`SyntheticSlide.truth` (with the
    path and the level count added).
    """
    slide = synthetic_slide(
        shape_hw,
        size_um=size_um,
        mpp=mpp,
        seed=seed,
        activity=activity,
        tumour_fraction=tumour_fraction,
        tissue_fraction=tissue_fraction,
    )
    n_levels = _auto_levels(slide.shape_hw, tile, downsample) if levels is None else int(levels)
    act = ", ".join(f"{k}={v:.3f}" for k, v in slide.activity.items())
    out = write_pyramidal_tiff(
        path,
        slide.rgb,
        mpp=mpp,
        tile=tile,
        compression=compression,
        quality=quality,
        levels=n_levels,
        downsample=downsample,
        title=f"synthetic H&E-like slide, seed={seed}, {act} (test/demo data)",
        overwrite=overwrite,
    )
    truth = slide.truth()
    truth["path"] = str(out)
    truth["levels"] = n_levels
    return out, truth


_SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _slide_seed(seed: int, slide_id: str) -> int:
    ss = np.random.SeedSequence([int(seed), zlib.crc32(slide_id.encode("utf-8"))])
    return int(ss.generate_state(1, np.uint32)[0])


def write_synthetic_cohort_slides(
    out_dir: str | os.PathLike,
    activities: Mapping[str, float | Sequence[float]],
    *,
    shape_hw: Sequence[int] = (2048, 2048),
    mpp: float = 0.5,
    seed: int = 0,
    suffix: str = ".tiff",
    tissue_fraction: float = 0.55,
    compression: str = "jpeg",
    quality: int = 90,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, dict]:
    """Write one synthetic slide per patient, each shaped by that patient's activity.

    Every slide gets its own seed derived from ``seed`` and its id, so adding or
    removing a patient changes no other slide. A ``synthetic_truth.csv`` with one row
    per slide (id, file, seed, activity traits, tumour fraction, nuclear densities)
    and a ``synthetic_truth.json`` with every slide's full truth (see
    :meth:`SyntheticSlide.truth`) and settings are written next to the slides.

    Parameters
    ----------
    out_dir : path-like
        Folder for the slides (created if missing).
    activities : mapping of slide id to activity
        Activity per slide (see :func:`synthetic_slide`); ids become file names, so
        they may hold letters, digits, ``.``, ``_`` and ``-`` only.
    shape_hw : (int, int)
        Level-0 size of every slide; the default 2048 x 2048 px at 0.5 um/px gives
        ~35 tissue patches of 256 px and takes about half a second.
    overwrite : bool
        Render every slide again. By default a slide whose file exists and whose
        record in ``synthetic_truth.json`` matches (seed, activity, settings) is kept.
    progress : callable(done, total, slide_id), optional
    cancel : callable() -> bool, optional
        Polled before each slide; when it returns True the function stops and
        raises ``InterruptedError`` (slides already written stay, each complete).

    Returns
    -------
    dict
        Slide id -> truth dict (see :meth:`SyntheticSlide.truth`) with ``path``.
    """
    _check_cohort_request(activities, suffix)
    shape = _resolve_shape(shape_hw, None, mpp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_json = out_dir / "synthetic_truth.json"
    previous = {} if overwrite else _previous_records(truth_json)
    settings = {
        "shape_hw": list(shape),
        "mpp": float(mpp),
        "tissue_fraction": float(tissue_fraction),
        "compression": compression,
        "quality": int(quality),
    }
    results: dict[str, dict] = {}
    total = len(activities)
    try:
        for done, (slide_id, act) in enumerate(activities.items()):
            if cancel is not None and cancel():
                raise InterruptedError(f"cancelled after {done} of {total} slides")
            slide_seed = _slide_seed(seed, slide_id)
            path = out_dir / f"{slide_id}{suffix}"
            truth = _kept_truth(path, previous.get(slide_id), slide_seed, act, settings)
            if truth is None:
                _, truth = write_synthetic_slide(
                    path,
                    shape,
                    mpp=mpp,
                    seed=slide_seed,
                    activity=act,
                    tissue_fraction=tissue_fraction,
                    compression=compression,
                    quality=quality,
                )
                truth["settings"] = settings
            results[slide_id] = truth
            if progress is not None:
                progress(done + 1, total, slide_id)
    finally:
        # the records of every complete slide, also when cancelled part way
        if results:
            _write_records(out_dir, truth_json, previous, results)
    return results


def _check_cohort_request(activities: Mapping[str, float | Sequence[float]],
                          suffix: str) -> None:
    """Refuse an empty cohort, slide ids that are not plain file names, an unknown file
    suffix and a malformed activity, before any slide is rendered."""
    if not activities:
        raise ArgumentError("activities is empty: give at least one slide id and its activity")
    bad = [k for k in activities if not isinstance(k, str) or not _SLIDE_ID.match(k)]
    if bad:
        raise ArgumentError(
            f"slide ids must be file-name safe (letters, digits, '.', '_', '-'): {bad[:5]}"
        )
    if suffix not in (".tif", ".tiff", ".svs"):
        raise ArgumentError(f"suffix must be .tif, .tiff or .svs, got {suffix!r}")
    for slide_id, act in activities.items():
        try:
            _activity_vector(act)
        except ValueError as exc:
            raise ArgumentError(f"slide {slide_id!r}: {exc}") from None


def _previous_records(truth_json: Path) -> dict:
    """The slides recorded by an earlier run (empty when there is none or it is
    unreadable: every slide is rendered again)."""
    if not truth_json.is_file():
        return {}
    try:
        return json.loads(truth_json.read_text(encoding="utf-8")).get("slides", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _kept_truth(path: Path, old: object, slide_seed: int, act: float | Sequence[float],
                settings: dict) -> dict | None:
    """The earlier record of the slide at ``path`` when the file exists and was made with
    this seed, activity and settings (the slide is kept), else None (rendered again)."""
    activity = dict(zip(ACTIVITY_TRAITS, _activity_vector(act).tolist()))
    if (
        path.is_file()
        and isinstance(old, dict)
        and old.get("seed") == slide_seed
        and old.get("activity") == activity
        and old.get("settings") == settings
    ):
        return {**old, "path": str(path)}
    return None


def _write_records(out_dir: Path, truth_json: Path, previous: dict,
                   results: dict[str, dict]) -> None:
    """``synthetic_truth.json`` (the earlier records of other slides kept) and
    ``synthetic_truth.csv`` of this run's slides."""
    kept = {k: v for k, v in previous.items() if k not in results}
    record = {
        "generator": "napari_ghanet.datasets.synthetic",
        "slides": {**kept, **results},
    }
    atomic_write(truth_json, json.dumps(record, indent=1, sort_keys=True))
    _write_truth_csv(out_dir / "synthetic_truth.csv", results)


def _write_truth_csv(path: Path, results: Mapping[str, dict]) -> None:
    header = [
        "slide_id",
        "file",
        "seed",
        *ACTIVITY_TRAITS,
        "tumour_fraction",
        "tissue_fraction",
        "nuclear_density_tumour_per_mm2",
        "nuclear_density_non_tumour_per_mm2",
        "mean_tumour_nuclear_diameter_um",
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for slide_id, t in results.items():
        writer.writerow(
            [
                slide_id,
                Path(t["path"]).name,
                t["seed"],
                *(f"{t['activity'][k]:.6g}" for k in ACTIVITY_TRAITS),
                f"{t['tumour_fraction']:.6g}",
                f"{t['tissue_fraction']:.6g}",
                f"{t['nuclear_density_per_mm2']['tumour']:.6g}",
                f"{t['nuclear_density_per_mm2']['non_tumour']:.6g}",
                f"{t['mean_nuclear_diameter_um']['tumour']:.6g}",
            ]
        )
    atomic_write(path, buf.getvalue())
