"""Cohort entry points: embed or predict every slide of a cohort, in-process or on Dask.

Both write ``OUT/summary.csv`` (one row per slide or patient) and return a
:class:`~napari_ghanet.cohort.summary.CohortSummary` whose ``line`` is the last line a
command prints and whose ``exit_code`` is 0 only when nothing failed.
"""

from __future__ import annotations

import contextlib
import errno
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
    read_survival,
    validation_report,
    write_cohort_csv,
)
from napari_ghanet.cohort.summary import CohortSummary, write_summary
from napari_ghanet.cohort.tasks import (
    check_bundle_file,
    cohort_kinds,
    embed_task,
    encoder_recipe,
    predict_task,
    unit_name,
)
from napari_ghanet.device import resolve_device
from napari_ghanet.errors import NotWritableError, UnsafeNameError
from napari_ghanet.io.atomic import check_writable_dir
from napari_ghanet.io.names import check_name_fits
from napari_ghanet.models.bundle import demo_bundle_path
from napari_ghanet.options import (
    EmbedOptions,
    ExecutionOptions,
    GridOptions,
    PredictOptions,
    apply,
    fields_of,
)

__all__ = ["embed_cohort", "predict_cohort"]


def _items(inputs, manifest, notify) -> list[SlideItem]:
    inputs = list(inputs or [])
    if inputs and all(isinstance(i, SlideItem) for i in inputs) and manifest is None:
        return inputs
    return resolve_inputs(inputs, manifest, notify=notify)


@contextlib.contextmanager
def _writing(out: Path, what: str):
    """An OS error (a full disk, a folder made read-only) while writing the cohort's own
    files as one line naming the file, not a traceback."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        hint = "; free some space" if e.errno == errno.ENOSPC else ""
        raise NotWritableError(f"cannot write {Path(out) / what}: {reason}{hint}; the "
                               "slides' own results are in their folders") from None


def _check_unit_names(out: Path, groups: list[list[SlideItem]]) -> None:
    """Every unit's output name (``OUT/<name>/<name>.ghanet.json``...) is a safe name that
    fits the output folder's file system, checked before any slide is predicted; the
    names that do not are listed in one line."""
    bad = []
    for g in groups:
        try:
            check_name_fits(out, unit_name(g), "slide name" if len(g) == 1 else "case_id")
        except UnsafeNameError as e:
            bad.append(str(e).split(";")[0])
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UnsafeNameError("; ".join(bad[:3]) + more + "; rename the slides (or give "
                              "their patients plain case_id names)")


def _summary(out: Path, results, extra=None) -> CohortSummary:
    rows = []
    for r in results:
        row = dict(r.row)
        row["attempts"] = r.attempts
        rows.append(row)
    with _writing(out, "summary.csv"):
        path = write_summary(out, rows)
    return CohortSummary(rows, out, path, dict(extra or {}))


def embed_cohort(
    inputs: Iterable[str | os.PathLike | SlideItem] | None,
    out_dir: str | os.PathLike,
    encoder: str | Any = "resnet50_trunc",
    *,
    encoder_kwargs: dict[str, Any] | None = None,
    grid: GridOptions | None = None,
    embed: EmbedOptions | None = None,
    execution: ExecutionOptions | None = None,
    manifest: str | os.PathLike | None = None,
    progress: bool | Callable | None = True,
    cancel: threading.Event | None = None,
    notify: Callable[[str], None] | None = None,
    say: Callable[[str], None] | None = _say,
    **options: Any,
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
    grid : GridOptions, optional
        Level-0 um/px for slides that record none (a manifest's ``mpp`` wins), patch size
        and resolution (None: the encoder's), tissue.
    embed : EmbedOptions, optional
        Encoder device, CPU engine, patches per batch, reader threads per slide, compile.
    execution : ExecutionOptions, optional
        Where to run (``cluster`` / ``scheduler``: see
        :func:`~napari_ghanet.cohort.engine.run_tasks`) and ``overwrite`` (replace outputs
        made from another slide, encoder or grid).
    manifest : path, optional
        CSV with ``slide`` and optional ``mpp``, ``case_id`` columns.
    **options
        Fields of those groups by name (``batch_size=16``, ``cluster="local:2"``).
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

    g = apply({"grid": grid or GridOptions(), "embed": embed or EmbedOptions(),
               "execution": execution or ExecutionOptions()}, **options)
    grid, embed, execution = g["grid"], g["embed"], g["execution"]
    items = _items(inputs, manifest, notify)
    _check_unit_names(Path(out_dir), [[it] for it in items])  # OUT/<stem>.h5, before work
    resolve_device(embed.device)  # a wrong device fails once here, not once per slide
    out = check_writable_dir(out_dir)
    kwargs = dict(encoder_kwargs or {})
    if embed.weights is not None:
        kwargs.setdefault("path" if encoder == "torchscript" else "weights", str(embed.weights))
    if isinstance(encoder, str):
        recipe = encoder_recipe(encoder, kwargs)
    else:
        recipe = encoder_recipe(None, kwargs, encoder=encoder)
    embed = embed.replace(weights=None)  # in the recipe
    results = run_tasks(embed_task, items, args=(str(out), recipe, grid, embed,
                                                 execution.overwrite),
                        execution=execution,
                        gpu=None if embed.device != "cpu" else False,
                        progress=progress, cancel=cancel, say=say)
    return _summary(out, results)


def predict_cohort(
    inputs: Iterable[str | os.PathLike | SlideItem] | None,
    out_dir: str | os.PathLike,
    bundle_path: str | os.PathLike | None = None,
    options: PredictOptions | None = None,
    *,
    execution: ExecutionOptions | None = None,
    survival: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    exports: Iterable[str] | None = None,
    progress: bool | Callable | None = True,
    cancel: threading.Event | None = None,
    notify: Callable[[str], None] | None = None,
    say: Callable[[str], None] | None = _say,
    **shortcuts: Any,
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
    inputs, manifest, execution, progress, cancel, notify, say
        As :func:`embed_cohort`.
    bundle_path : path, optional
        Model bundle (default: the bundled demonstration model). Its header is checked
        here, once; each worker loads it once.
    options : PredictOptions, optional
        As :func:`~napari_ghanet.inference.predict.predict_slide`, for every task; the
        options that change the numbers are part of the resume key
        (:meth:`~napari_ghanet.options.PredictOptions.outcome_settings`).
    survival : path, optional
        Observed survival table for the external-validation report.
    exports : iterable of str, optional
        Export kinds written per unit (keys of
        :mod:`napari_ghanet.inference.export_registry`, as ``ghanet predict --export``;
        default: the default kinds). The JSON report is always written (``cohort.csv``
        is read from it). Checked before any work; recorded in each unit's resume marker.
    **shortcuts
        Option fields by name (``device="cpu"``, ``batch_size=16``, ``cluster=...``,
        ``overwrite=True``, ``qc=None``...).

    Returns
    -------
    CohortSummary
        ``extra`` holds ``cohort`` (path of cohort.csv), and ``validation`` (the report
        dict) and ``validation_json``/``validation_png`` paths when ``survival`` is given.
    """

    exec_fields = {f.name for f in fields_of(ExecutionOptions)}
    execution = apply({"execution": execution or ExecutionOptions()},
                      **{k: shortcuts.pop(k) for k in list(shortcuts) if k in exec_fields}
                      )["execution"]  # the same object when nothing changes: parsed once
    options = PredictOptions.create(options, **shortcuts)
    items = _items(inputs, manifest, notify)
    # every input checked before any work: the survival table is read now, not after the
    # last slide was predicted
    table = read_survival(survival) if survival is not None else None
    kinds = cohort_kinds(None if exports is None else list(exports))
    out = check_writable_dir(out_dir)
    bundle_path = Path(bundle_path) if bundle_path is not None else demo_bundle_path()
    digest = check_bundle_file(bundle_path)  # a bad model is a usage error, not N failed slides
    device = options.embed.device
    resolve_device(device)  # a wrong device fails once here, not once per slide
    groups = patient_groups(items)
    _check_unit_names(out, groups)
    results = run_tasks(predict_task, groups,
                        args=(str(out), str(bundle_path), digest, options, execution.overwrite,
                              kinds),
                        execution=execution,
                        gpu=None if device != "cpu" else False, progress=progress,
                        cancel=cancel, say=say,
                        unit="slide" if len(groups) == len(items) else "patient")
    summary = _summary(out, results)
    rows, edges = cohort_rows(summary.rows)
    with _writing(out, "cohort.csv"):
        summary.extra["cohort"] = write_cohort_csv(out, rows)
    if table is not None:
        with _writing(out, VALIDATION_JSON):
            summary.extra["validation"] = validation_report(rows, table, out, edges)
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
