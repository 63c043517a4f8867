"""Cohort tasks: top-level, picklable functions that process one slide (or one patient)
and return a row for ``summary.csv``. They run in this process or on Dask workers and
never raise for a bad slide: the failure becomes the row's ``error``.

* :func:`embed_task` writes ``OUT/<slide stem>.h5`` (features + coordinates) through the
  pipeline's ``inference.stages.embed_to_file``, or skips the
  slide when that file already holds features of the same slide (fingerprint), encoder
  (spec) and patch grid.
* :func:`predict_task` writes the prediction exports of one slide into
  ``OUT/<slide stem>/`` (several slides sharing a ``case_id``: ``OUT/<case_id>/``) and a
  marker ``<name>.cohort.json`` recording the model bundle's SHA-256 and the slides'
  fingerprints and the export kinds written; a re-run with the same model, slides and
  kinds skips it.

Each worker process keeps the encoders and model bundles it built, so a worker that
processes many slides builds them once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from napari_ghanet.cohort.inputs import SlideItem
from napari_ghanet.encoders import EncoderSpec, create_encoder, encoder_mismatch, from_spec
from napari_ghanet.errors import EncoderError, GHANetError
from napari_ghanet.inference.export_registry import check_kinds, export_formats
from napari_ghanet.inference.predict import export_all, predict_patient, predict_slide
from napari_ghanet.inference.stages import embed_to_file
from napari_ghanet.io.atomic import atomic_write
from napari_ghanet.io.names import safe_name
from napari_ghanet.io.slide import open_slide
from napari_ghanet.models.bundle import load_bundle, read_bundle_metadata
from napari_ghanet.options import EmbedOptions, GridOptions, PredictOptions

__all__ = ["build_encoder", "bundle_digest", "check_bundle_file", "cohort_kinds", "embed_task",
           "encoder_recipe", "predict_task", "unit_name"]

MARKER_SUFFIX = ".cohort.json"
MARKER_FORMAT = "napari-ghanet-cohort-task"

_CACHE_LOCK = threading.Lock()
_ENCODERS: dict[str, Any] = {}
_BUNDLES: dict[str, Any] = {}


def _key(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def encoder_recipe(name: str, kwargs: dict[str, Any] | None = None, encoder=None) -> dict:
    """A picklable recipe of an encoder: its :class:`~napari_ghanet.encoders.EncoderSpec`
    (as a dict), the registry constructor ``using`` and the ``overrides`` a spec only names
    (weights or TorchScript files). Workers rebuild it with
    :func:`~napari_ghanet.encoders.from_spec`; ``encoder`` is the already-built encoder
    (built here from ``name`` and ``kwargs`` when None).

    Examples
    --------
    >>> r = encoder_recipe("morphometric", {"patch_px": 64, "target_mpp": 2.0})
    >>> r["using"], r["spec"]["dim"], r["spec"]["patch_px"]
    ('morphometric', 64, 64)
    >>> build_encoder(r).spec().to_dict() == r["spec"]
    True
    """

    kwargs = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v)
              for k, v in (kwargs or {}).items()}
    if encoder is None:
        encoder = create_encoder(name, **kwargs)
    recipe = {"spec": encoder.spec().to_dict(), "using": name, "overrides": kwargs}
    with _CACHE_LOCK:  # this process already has it
        _ENCODERS.setdefault(_key(recipe), encoder)
    return recipe


def build_encoder(recipe: dict[str, Any]):
    """The encoder of a recipe (:func:`encoder_recipe`), built once per process.

    Raises EncoderError when the rebuilt encoder does not give the recipe's features
    (another weights file on this worker, say)."""

    k = _key(recipe)
    with _CACHE_LOCK:
        if k not in _ENCODERS:
            spec = EncoderSpec.from_dict(recipe["spec"])
            enc = from_spec(spec, using=recipe.get("using"), **recipe.get("overrides", {}))
            why = encoder_mismatch(spec, enc.spec())
            if why:
                raise EncoderError(f"the encoder rebuilt on this worker differs: {why}")
            _ENCODERS[k] = enc
        return _ENCODERS[k]


def _failed(item_row: dict, why: str, t0: float) -> dict:
    return {**item_row, "status": "failed", "error": why,
            "seconds": round(time.perf_counter() - t0, 3)}


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, GHANetError) else f"{type(exc).__name__}: {exc}"


class _StageClock:
    """Progress callback noting when the features stage starts (grid time) ."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.t_features: float | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "features" and self.t_features is None:
            self.t_features = time.perf_counter()


def embed_task(
    item: SlideItem, out_dir: str, recipe: dict[str, Any], grid: GridOptions,
    embed: EmbedOptions, overwrite: bool = False,
) -> dict[str, Any]:
    """Embed one slide of a cohort into ``out_dir/<stem>.h5`` with the pipeline's
    :func:`~napari_ghanet.inference.stages.embed_to_file`; returns its summary row.

    Parameters
    ----------
    item : SlideItem
    out_dir : str
    recipe : dict
        The encoder (:func:`encoder_recipe`).
    grid, embed : GridOptions, EmbedOptions
        As ``embed_to_file`` takes them (the item's manifest ``mpp`` wins over the grid's).
    overwrite : bool
        Replace a file made from another slide, encoder or grid.

    Returns
    -------
    dict
        ``slide, case_id, output, status, n_patches, dim, n_unreadable, seconds, error,
        message`` (the one-line outcome) and the stage times ``t_grid`` (open + tissue +
        grid), ``t_embed`` (reading and encoding patches), ``t_write`` (seconds).
    """

    clock = _StageClock()
    row = {"slide": item.path, "case_id": item.case_id,
           "output": str(Path(out_dir) / f"{item.stem}.h5")}
    try:
        encoder = build_encoder(recipe)
        if item.mpp is not None:
            grid = grid.replace(mpp=item.mpp)
        res = embed_to_file(item.path, out_dir, encoder, grid=grid, embed=embed,
                            overwrite=overwrite, progress=clock)
    except Exception as exc:  # noqa: BLE001 - one bad slide never stops the cohort
        return _failed({**row, "output": ""}, _why(exc), clock.t0)
    seconds = time.perf_counter() - clock.t0
    t_grid = (clock.t_features or time.perf_counter()) - clock.t0
    t_embed = res.n_patches / res.rate if res.status == "done" and res.rate > 0 else 0.0
    if res.status == "failed":
        row["output"] = ""  # nothing written
    return {**row, "status": res.status, "error": res.error or "",
            "n_patches": res.n_patches if res.status != "failed" else None, "dim": res.dim,
            "n_unreadable": res.n_skipped, "message": res.summary(),
            "seconds": round(seconds, 3), "t_grid": round(t_grid, 3),
            "t_embed": round(t_embed, 3),
            "t_write": round(max(seconds - t_grid - t_embed, 0.0), 3)
            if res.status == "done" else 0.0}


# --------------------------------------------------------------------------- predict


def bundle_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a model bundle file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_bundle_file(path: str | os.PathLike) -> str:
    """Check a bundle's header and metadata (no weight is read) and return its SHA-256:
    what a cohort's parent process does once before any task."""
    read_bundle_metadata(path)
    return bundle_digest(path)


def _bundle(path: str, digest: str):
    """The bundle, loaded once per process (keyed by its digest)."""
    with _CACHE_LOCK:
        if digest not in _BUNDLES:
            _BUNDLES[digest] = load_bundle(path)
        return _BUNDLES[digest]


def unit_name(items: list[SlideItem]) -> str:
    """Output folder name of a task: the slide's stem, or the case_id of several slides."""
    if len(items) == 1:
        return safe_name(items[0].stem, "slide name")
    return safe_name(str(items[0].case_id), "case_id")


def cohort_kinds(kinds: list[str] | None) -> list[str]:
    """The export keys a cohort unit writes: ``kinds`` (default: the default kinds) as
    registry keys (aliases resolved, repeats dropped), the JSON report first when not
    asked for (``cohort.csv`` and the validation report are read from it)."""
    keys = [f.key for f in check_kinds(kinds)]
    return list(dict.fromkeys(["report", *keys]))


def _exports_present(folder: Path, rec: dict, wanted: list[str]) -> bool:
    """Whether the marker ``rec`` records every kind of ``wanted`` and its file (or
    folder) is still in ``folder``. A marker without ``exports`` (written before the
    kinds were recorded) stands for the default kinds."""
    recorded = rec.get("exports")
    if not isinstance(recorded, dict):
        defaults = [f.key for f in export_formats(source="prediction", default=True)]
        return set(wanted) <= set(defaults)
    return all(isinstance(recorded.get(k), str) and (folder / recorded[k]).exists()
               for k in wanted)


def predict_task(
    items: list[SlideItem], out_dir: str, bundle_path: str, digest: str,
    options: PredictOptions, overwrite: bool = False, kinds: list[str] | None = None,
) -> dict[str, Any]:
    """Predict one slide, or one patient from the union of its slides' patches, and write
    the exports into ``out_dir/<name>/`` (see :func:`unit_name`); returns its summary row.

    ``digest``: the bundle's SHA-256 (:func:`check_bundle_file`); ``options``: the
    :class:`~napari_ghanet.options.PredictOptions` of every task (a manifest's per-slide
    ``mpp`` wins over ``options.grid.mpp``). Each slide is opened once: its fingerprint
    (for the resume marker) and the prediction come from the same open slide. The bundle
    is loaded once per process. A marker records the bundle's digest, the fingerprints
    and :meth:`~napari_ghanet.options.PredictOptions.outcome_settings`; a re-run with
    the same ones skips the unit unless ``overwrite``.

    ``kinds``: the export kinds written (keys of
    :mod:`napari_ghanet.inference.export_registry`; default: the default kinds). The
    JSON report is always among them (``cohort.csv`` is read from it). The marker records
    each kind's file name, and a unit is skipped only when every kind asked for is
    recorded there and its file (or folder) still exists: asking for a kind the earlier
    run did not write predicts the unit again.
    """
    t0 = time.perf_counter()
    items = list(items)
    name = unit_name(items)
    folder = Path(out_dir) / name
    marker = folder / f"{name}{MARKER_SUFFIX}"
    row: dict[str, Any] = {"slide": ";".join(it.path for it in items),
                           "case_id": items[0].case_id, "unit": name}
    settings = options.outcome_settings()
    wanted = cohort_kinds(kinds)
    try:
        with contextlib.ExitStack() as stack:
            slides = []
            for it in items:
                mpp = it.mpp if it.mpp is not None else options.grid.mpp
                slides.append(stack.enter_context(open_slide(it.path, mpp=mpp,
                                                             require_mpp=False)))
            prints = [s.fingerprint() for s in slides]
            if marker.is_file() and not overwrite:
                try:
                    rec = json.loads(marker.read_text())
                except (OSError, ValueError):
                    rec = {}
                report = folder / str(rec.get("report", ""))
                if (rec.get("bundle_sha256") == digest and rec.get("slide_fingerprints") == prints
                        and rec.get("settings") == settings and report.is_file()
                        and _exports_present(folder, rec, wanted)):
                    return {**row, "status": "skipped", "error": "", "output": str(report),
                            "n_patches": rec.get("n_patches"),
                            "seconds": round(time.perf_counter() - t0, 3)}
            bundle = _bundle(bundle_path, digest)
            if len(items) == 1:
                pred = predict_slide(slides[0], bundle, options)
            else:
                pred = predict_patient(slides, bundle, options, patient=name)
        written = export_all(pred, folder, wanted)
        report = Path(written["report"])
        atomic_write(marker, json.dumps({
            "format": MARKER_FORMAT, "bundle_sha256": digest, "slide_fingerprints": prints,
            "slides": [it.path for it in items], "case_id": items[0].case_id,
            "settings": settings, "report": report.name, "n_patches": pred.n_patches,
            "exports": {k: Path(v).name for k, v in written.items()},
        }, indent=1) + "\n")
    except Exception as exc:  # noqa: BLE001 - one bad slide never stops the cohort
        return _failed(row, _why(exc), t0)
    return {**row, "status": "done", "error": "", "output": str(report),
            "n_patches": pred.n_patches, "seconds": round(time.perf_counter() - t0, 3)}
