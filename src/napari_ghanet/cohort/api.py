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

from napari_ghanet.cohort.engine import _say, run_tasks
from napari_ghanet.cohort.inputs import SlideItem, patient_groups, resolve_inputs
from napari_ghanet.cohort.report import (
    VALIDATION_JSON,
    VALIDATION_PNG,
    cohort_rows,
    validation_report,
    write_cohort_csv,
)
from napari_ghanet.cohort.summary import CohortSummary, write_summary
from napari_ghanet.cohort.tasks import bundle_digest, embed_task, encoder_recipe, predict_task
from napari_ghanet.io.atomic import check_writable_dir
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

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
    encoder: str | Any = "resnet50_trunc",
    *,
    encoder_kwargs: dict[str, Any] | None = None,
    manifest: str | os.PathLike | None = None,
    mpp: float | None = None,
    patch_px: int | None = 256,
    target_mpp: float | None = 0.5,
    min_tissue: float = 0.5,
    tissue_params: Any = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 4,
    overwrite: bool = False,
    backend: str = "auto",
    compile: bool = False,
    cluster: str | None = None,
    scheduler: str | None = None,
    progress: bool | Callable | None = True,
    cancel: threading.Event | None = None,
    notify: Callable[[str], None] | None = None,
    say: Callable[[str], None] | None = _say,
) -> CohortSummary:
    """Embed every slide into ``out_dir/<slide stem>.h5``, one task per slide, each through
    :func:`~napari_ghanet.inference.stages.embed_to_file` (the pipeline ``ghanet embed``
    and predictions share).

    Parameters
    ----------
    inputs : iterable
        Slide files, folders, glob patterns (or :class:`SlideItem`).
    out_dir : path
        Checked writable before any work.
    encoder : str or PatchEncoder
        Registered encoder name built with ``create_encoder(encoder, **encoder_kwargs)``
        (an :class:`~napari_ghanet.errors.EncoderError` before any work when it cannot
        be), or an encoder. Workers rebuild it from its spec
        (:func:`~napari_ghanet.cohort.tasks.encoder_recipe`).
    manifest : path, optional
        CSV with ``slide`` and optional ``mpp``, ``case_id`` columns.
    mpp : float, optional
        Level-0 um/px for slides that do not record it (a manifest's ``mpp`` wins).
    patch_px, target_mpp : optional
        Patch side (px) at this resolution (um/px); None: the encoder's.
    min_tissue, tissue_params
        Least tissue fraction of a kept patch; tissue detection parameters.
    device, batch_size, workers, backend, compile
        Encoder device, patches per batch, reader threads per slide, CPU engine
        (``auto``, ``onnx``, ``torch``) and ``torch.compile`` on CUDA (see
        :func:`~napari_ghanet.inference.embedding.embed_slide`).
    overwrite : bool
        Replace outputs made from another slide, encoder or grid.
    cluster, scheduler
        Where to run: see :func:`~napari_ghanet.cohort.engine.run_tasks`.
    progress, cancel
        tqdm bar (True) or callable(done, total, TaskResult); threading.Event.
    say : callable(str), optional
        Receives the cluster line (workers, dashboard address); default: stderr.

    Returns
    -------
    CohortSummary
        Rows also written to ``out_dir/summary.csv``. A slide whose features file exists
        for the same slide, encoder and grid is ``skipped``.

    Examples
    --------
    >>> import numpy as np, tempfile, tifffile
    >>> tmp = tempfile.mkdtemp()
    >>> rgb = np.full((512, 512, 3), 240, np.uint8); rgb[128:384, 128:384] = (180, 90, 160)
    >>> tifffile.imwrite(tmp + "/s.tif", rgb, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    >>> s = embed_cohort([tmp + "/s.tif"], tmp + "/out", "morphometric", patch_px=64,
    ...                  target_mpp=2.0, device="cpu", workers=0, progress=False)
    >>> s.line, s.rows[0]["n_patches"]
    ('1 done, 0 skipped, 0 failed', 4)
    """

    items = _items(inputs, manifest, notify)
    out = check_writable_dir(out_dir)
    kwargs = dict(encoder_kwargs or {})
    if isinstance(encoder, str):
        if encoder in ("resnet50_trunc", "torchscript", "morphometric"):
            for k, v in (("patch_px", patch_px), ("target_mpp", target_mpp)):
                if v is not None:
                    kwargs.setdefault(k, v)
        recipe = encoder_recipe(encoder, kwargs)
    else:
        recipe = encoder_recipe(None, kwargs, encoder=encoder)
    options = {"mpp": mpp, "patch_px": patch_px, "target_mpp": target_mpp,
               "min_tissue_fraction": min_tissue, "tissue_params": tissue_params,
               "device": device, "batch_size": batch_size, "workers": workers,
               "overwrite": overwrite, "backend": backend, "compile": compile}
    results = run_tasks(embed_task, items, args=(str(out), recipe, options), cluster=cluster,
                        scheduler=scheduler, gpu=None if device != "cpu" else False,
                        progress=progress, cancel=cancel, say=say)
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
    say: Callable[[str], None] | None = _say,
    **predict_options: Any,
) -> CohortSummary:
    """Predict every slide (or every patient: slides sharing a manifest ``case_id``) with
    a model bundle, one task each.

    Writes each unit's exports into ``out_dir/<slide stem>/`` (or ``<case_id>/``),
    ``out_dir/summary.csv``, ``out_dir/cohort.csv`` and, with ``survival`` (CSV with
    ``case_id`` or ``slide``, ``survival_months``, ``censorship``), the external-validation
    report ``validation.json`` + ``validation_km.png``. ``out_dir`` and the model are
    checked before any work.

    Parameters
    ----------
    inputs, manifest, mpp, cluster, scheduler, progress, cancel, notify, say
        As :func:`embed_cohort`.
    bundle_path : path, optional
        Model bundle (default: the bundled demonstration model).
    survival : path, optional
        Observed survival table for the external-validation report.
    device, batch_size, workers, cache_dir, use_cache, top_k, overwrite
        As ``ghanet predict``.
    **predict_options
        Further keywords of :func:`~napari_ghanet.inference.predict.predict_slide` /
        :func:`~napari_ghanet.inference.predict.predict_patient` (e.g. ``regions``,
        ``qc``, ``heatmap_overlap``, ``patch_px``), passed to every task (picklable
        values); they are part of the resume key.

    Returns
    -------
    CohortSummary
        ``extra`` holds ``cohort`` (path of cohort.csv), and ``validation`` (the report
        dict) and ``validation_json``/``validation_png`` paths when ``survival`` is given.
    """

    items = _items(inputs, manifest, notify)
    out = check_writable_dir(out_dir)
    bundle_path = Path(bundle_path) if bundle_path is not None else demo_bundle_path()
    load_bundle(bundle_path)  # a bad model is a usage error, not N failed slides
    options: dict[str, Any] = {"bundle_digest": bundle_digest(bundle_path), "device": device,
                               "mpp": mpp, "top_k": top_k, "use_cache": use_cache,
                               "overwrite": overwrite, **predict_options}
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
                        cancel=cancel, say=say,
                        unit="slide" if len(groups) == len(items) else "patient")
    summary = _summary(out, results)
    rows, edges = cohort_rows(summary.rows)
    summary.extra["cohort"] = write_cohort_csv(out, rows)
    if survival is not None:

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
