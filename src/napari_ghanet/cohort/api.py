"""Cohort entry points: embed or predict every slide of a cohort, in-process or on Dask.

Both write ``OUT/summary.csv`` (one row per slide or patient) and return a
:class:`~napari_ghanet.cohort.summary.CohortSummary` whose ``line`` is the last line a
command prints and whose ``exit_code`` is 0 only when nothing failed.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from napari_ghanet.cohort.engine import run_tasks
from napari_ghanet.cohort.inputs import SlideItem, patient_groups, resolve_inputs
from napari_ghanet.cohort.summary import CohortSummary, write_summary
from napari_ghanet.cohort.tasks import bundle_digest, embed_task, predict_task

__all__ = ["embed_cohort", "predict_cohort"]


def _items(inputs, manifest, notify) -> list[SlideItem]:
    inputs = list(inputs or [])
    if inputs and all(isinstance(i, SlideItem) for i in inputs) and manifest is None:
        return inputs
    return resolve_inputs(inputs, manifest, notify=notify)


def _summary(out: Path, results, extra=None) -> CohortSummary:
    rows = []
    for r in results:
        row = dict(r.row)
        row["attempts"] = r.attempts
        rows.append(row)
    path = write_summary(out, rows)
    return CohortSummary(rows, out, path, dict(extra or {}))


def embed_cohort(
    inputs: Iterable[str | os.PathLike | SlideItem] | None,
    out_dir: str | os.PathLike,
    encoder: str = "resnet50_trunc",
    *,
    encoder_kwargs: dict[str, Any] | None = None,
    manifest: str | os.PathLike | None = None,
    mpp: float | None = None,
    patch_px: int = 256,
    target_mpp: float = 0.5,
    min_tissue: float = 0.5,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 4,
    overwrite: bool = False,
    cluster: str | None = None,
    scheduler: str | None = None,
    progress: bool | Callable | None = True,
    cancel: threading.Event | None = None,
    notify: Callable[[str], None] | None = None,
) -> CohortSummary:
    """Embed every slide into ``out_dir/<slide stem>.h5``, one task per slide.

    Parameters
    ----------
    inputs : iterable
        Slide files, folders, glob patterns (or :class:`SlideItem`).
    out_dir : path
    encoder : str
        Registered encoder name; ``encoder_kwargs`` are passed to ``create_encoder``
        (``patch_px`` and ``target_mpp`` are added).
    manifest : path, optional
        CSV with ``slide`` and optional ``mpp``, ``case_id`` columns.
    mpp, patch_px, target_mpp, min_tissue, device, batch_size, workers, overwrite
        As ``ghanet embed`` (um/px, pixels, fraction...).
    cluster, scheduler
        Where to run: see :func:`~napari_ghanet.cohort.engine.run_tasks`.
    progress, cancel
        tqdm bar (True) or callable(done, total, TaskResult); threading.Event.

    Returns
    -------
    CohortSummary
        Rows also written to ``out_dir/summary.csv``. A slide whose features file exists
        for the same slide, encoder and grid is ``skipped``.
    """
    items = _items(inputs, manifest, notify)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = {"name": encoder, **{k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in (encoder_kwargs or {}).items()}}
    if encoder in ("resnet50_trunc", "torchscript", "morphometric"):
        recipe.update(patch_px=patch_px, target_mpp=target_mpp)
    options = {"mpp": mpp, "patch_px": patch_px, "target_mpp": target_mpp,
               "min_tissue": min_tissue, "device": device, "batch_size": batch_size,
               "workers": workers, "overwrite": overwrite}
    results = run_tasks(embed_task, items, args=(str(out), recipe, options), cluster=cluster,
                        scheduler=scheduler, gpu=None if device != "cpu" else False,
                        progress=progress, cancel=cancel)
    return _summary(out, results)


def predict_cohort(
    inputs: Iterable[str | os.PathLike | SlideItem] | None,
    out_dir: str | os.PathLike,
    bundle_path: str | os.PathLike | None = None,
    *,
    survival: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    mpp: float | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    top_k: int = 10,
    overwrite: bool = False,
    cluster: str | None = None,
    scheduler: str | None = None,
    progress: bool | Callable | None = True,
    cancel: threading.Event | None = None,
    notify: Callable[[str], None] | None = None,
) -> CohortSummary:
    """Predict every slide (or every patient: slides sharing a manifest ``case_id``) with
    a model bundle, one task each.

    Writes each unit's exports into ``out_dir/<slide stem>/`` (or ``<case_id>/``),
    ``out_dir/summary.csv``, ``out_dir/cohort.csv`` and, with ``survival`` (CSV with
    ``case_id`` or ``slide``, ``survival_months``, ``censorship``), the external-validation
    report ``validation.json`` + ``validation_km.png``.

    Returns
    -------
    CohortSummary
        ``extra`` holds ``cohort`` (path of cohort.csv), and ``validation`` (the report
        dict) and ``validation_json``/``validation_png`` paths when ``survival`` is given.
    """
    from napari_ghanet.cohort.report import cohort_rows, validation_report, write_cohort_csv
    from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

    items = _items(inputs, manifest, notify)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle_path = Path(bundle_path) if bundle_path is not None else demo_bundle_path()
    load_bundle(bundle_path)  # a bad model is a usage error, not N failed slides
    options: dict[str, Any] = {"bundle_digest": bundle_digest(bundle_path), "device": device,
                               "mpp": mpp, "top_k": top_k, "use_cache": use_cache,
                               "overwrite": overwrite}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if workers is not None:
        options["workers"] = workers
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    groups = patient_groups(items)
    results = run_tasks(predict_task, groups, args=(str(out), str(bundle_path), options),
                        cluster=cluster, scheduler=scheduler,
                        gpu=None if device != "cpu" else False, progress=progress,
                        cancel=cancel, unit="slide" if len(groups) == len(items) else "patient")
    summary = _summary(out, results)
    rows, edges = cohort_rows(summary.rows)
    summary.extra["cohort"] = write_cohort_csv(out, rows)
    if survival is not None:
        from napari_ghanet.cohort.report import VALIDATION_JSON, VALIDATION_PNG

        summary.extra["validation"] = validation_report(rows, survival, out, edges)
        summary.extra["validation_json"] = out / VALIDATION_JSON
        summary.extra["validation_png"] = out / VALIDATION_PNG
    return summary


def print_summary(summary: CohortSummary, stream=None) -> None:
    """Print failures and the last line ``N done, N skipped, N failed``."""
    stream = stream or sys.stderr
    for r in summary.rows:
        if r.get("status") == "failed":
            print(f"FAILED {r.get('slide')}: {r.get('error')}", file=stream)
    print(summary.line, file=stream, flush=True)
