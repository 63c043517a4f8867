"""Cohort tasks: top-level, picklable functions that process one slide (or one patient)
and return a row for ``summary.csv``. They run in this process or on Dask workers and
never raise for a bad slide: the failure becomes the row's ``error``.

* :func:`embed_task` writes ``OUT/<slide stem>.h5`` (features + coordinates), or skips the
  slide when that file already holds features of the same slide (fingerprint), encoder
  (spec) and patch grid.
* :func:`predict_task` writes the prediction exports of one slide into
  ``OUT/<slide stem>/`` (several slides sharing a ``case_id``: ``OUT/<case_id>/``) and a
  marker ``<name>.cohort.json`` recording the model bundle's SHA-256 and the slides'
  fingerprints; a re-run with the same model and slides skips it.

Each worker process keeps the encoders and model bundles it built, so a worker that
processes many slides builds them once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from napari_ghanet.cohort.inputs import SlideItem
from napari_ghanet.errors import GHANetError
from napari_ghanet.io.atomic import atomic_write

__all__ = ["bundle_digest", "embed_task", "embed_to_file", "predict_task", "unit_name"]

MARKER_SUFFIX = ".cohort.json"
MARKER_FORMAT = "napari-ghanet-cohort-task"

_CACHE_LOCK = threading.Lock()
_ENCODERS: dict[str, Any] = {}
_BUNDLES: dict[str, Any] = {}


def _key(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _encoder(recipe: dict[str, Any]):
    """The encoder ``create_encoder(recipe["name"], **rest)``, built once per process."""
    from napari_ghanet.encoders import create_encoder

    k = _key(recipe)
    with _CACHE_LOCK:
        if k not in _ENCODERS:
            rest = {n: v for n, v in recipe.items() if n != "name"}
            _ENCODERS[k] = create_encoder(recipe["name"], **rest)
        return _ENCODERS[k]


def _failed(item_row: dict, why: str, t0: float) -> dict:
    return {**item_row, "status": "failed", "error": why,
            "seconds": round(time.perf_counter() - t0, 3)}


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, GHANetError) else f"{type(exc).__name__}: {exc}"


def embed_to_file(
    item: SlideItem,
    out_path: str | os.PathLike,
    encoder,
    *,
    mpp: float | None = None,
    patch_px: int = 256,
    target_mpp: float = 0.5,
    min_tissue: float = 0.5,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 4,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed one slide into ``out_path`` (HDF5) unless a matching file is there.

    Built only from the library's stages (open_slide, tissue_mask, patch_grid,
    embed_slide, save_features) as ``ghanet embed`` does; the pipeline's
    ``inference.stages.embed_to_file`` will replace it.

    Returns
    -------
    dict
        ``status`` ("done" or "skipped"), ``n_patches``, ``dim`` and the stage times
        ``t_grid``, ``t_embed``, ``t_write`` (seconds).

    Raises
    ------
    SlideError, NoTissueError, FeaturesError
        Unreadable slide, no tissue patch, or an existing file made from another slide,
        encoder or grid (without ``overwrite``).
    """
    from napari_ghanet.errors import FeaturesError, NoTissueError
    from napari_ghanet.inference.embedding import embed_slide
    from napari_ghanet.io.features import load_matching_features, save_features
    from napari_ghanet.io.slide import open_slide
    from napari_ghanet.preprocessing.patches import patch_grid
    from napari_ghanet.preprocessing.tissue import tissue_mask

    out = Path(out_path)
    t0 = time.perf_counter()
    with open_slide(item.path, mpp=item.mpp if item.mpp is not None else mpp) as slide:
        grid = patch_grid(slide, tissue_mask(slide), patch_px=patch_px, target_mpp=target_mpp,
                          min_tissue_fraction=min_tissue)
        if grid.empty:
            raise NoTissueError(f"{item.name}: {grid.message}")
        spec = encoder.spec().with_geometry(int(grid.patch_px), float(grid.target_mpp))
        t1 = time.perf_counter()
        if out.exists() and not overwrite:
            hit = load_matching_features(out, slide_fingerprint=slide.fingerprint(),
                                         encoder_spec=spec, grid=grid)
            if hit is not None:
                return {"status": "skipped", "n_patches": len(hit), "dim": hit.dim,
                        "t_grid": round(t1 - t0, 3), "t_embed": 0.0, "t_write": 0.0}
            raise FeaturesError(f"{out} exists but was made from another slide, encoder or "
                                "grid; pass overwrite (--overwrite) to replace it")
        feats = embed_slide(slide, grid, encoder, device=device, batch_size=batch_size,
                            workers=workers)
        t2 = time.perf_counter()
        save_features(out, feats)
        t3 = time.perf_counter()
    return {"status": "done", "n_patches": len(feats), "dim": feats.dim,
            "n_unreadable": int(feats.attrs.get("n_skipped", 0) or 0),
            "t_grid": round(t1 - t0, 3), "t_embed": round(t2 - t1, 3),
            "t_write": round(t3 - t2, 3)}


def embed_task(
    item: SlideItem, out_dir: str, encoder_recipe: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """Embed one slide of a cohort into ``out_dir/<stem>.h5``; returns its summary row.

    Parameters
    ----------
    item : SlideItem
    out_dir : str
    encoder_recipe : dict
        ``{"name": registered encoder, **create_encoder keyword arguments}``, e.g.
        ``{"name": "morphometric", "patch_px": 64, "target_mpp": 2.0}``.
    options : dict
        ``embed_to_file`` keywords: mpp, patch_px, target_mpp, min_tissue, device,
        batch_size, workers, overwrite.
    """
    t0 = time.perf_counter()
    out = Path(out_dir) / f"{item.stem}.h5"
    row = {"slide": item.path, "case_id": item.case_id, "output": str(out)}
    try:
        encoder = _encoder(encoder_recipe)
        res = embed_to_file(item, out, encoder, **options)
    except Exception as exc:  # noqa: BLE001 - one bad slide never stops the cohort
        return _failed(row, _why(exc), t0)
    return {**row, **res, "error": "", "seconds": round(time.perf_counter() - t0, 3)}


# --------------------------------------------------------------------------- predict


def bundle_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a model bundle file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bundle(path: str, digest: str):
    from napari_ghanet.models.bundle import load_bundle

    with _CACHE_LOCK:
        if digest not in _BUNDLES:
            _BUNDLES[digest] = load_bundle(path)
        return _BUNDLES[digest]


def unit_name(items: list[SlideItem]) -> str:
    """Output folder name of a task: the slide's stem, or the case_id of several slides."""
    if len(items) == 1:
        return items[0].stem
    return str(items[0].case_id)


def _fingerprints(items: list[SlideItem], mpp: float | None) -> list[str]:
    from napari_ghanet.io.slide import open_slide

    out = []
    for it in items:
        with open_slide(it.path, mpp=it.mpp if it.mpp is not None else mpp,
                        require_mpp=False) as s:
            out.append(s.fingerprint())
    return out


_PREDICT_SETTINGS = ("mpp", "top_k", "min_tissue_fraction", "patch_px", "target_mpp")


def predict_task(
    items: list[SlideItem], out_dir: str, bundle_path: str, options: dict[str, Any]
) -> dict[str, Any]:
    """Predict one slide, or one patient from the union of its slides' patches, and write
    the exports into ``out_dir/<name>/`` (see :func:`unit_name`); returns its summary row.

    ``options``: ``bundle_digest`` (see :func:`bundle_digest`; computed when absent),
    ``overwrite``, and :func:`~napari_ghanet.inference.predict.predict_slide` keywords
    (device, mpp, batch_size, workers, cache_dir, use_cache, top_k...).
    """
    t0 = time.perf_counter()
    items = list(items)
    name = unit_name(items)
    folder = Path(out_dir) / name
    marker = folder / f"{name}{MARKER_SUFFIX}"
    row: dict[str, Any] = {"slide": ";".join(it.path for it in items),
                           "case_id": items[0].case_id, "unit": name}
    opts = dict(options)
    digest = opts.pop("bundle_digest", None)
    overwrite = bool(opts.pop("overwrite", False))
    settings = {k: opts.get(k) for k in _PREDICT_SETTINGS if opts.get(k) is not None}
    try:
        from napari_ghanet.inference.predict import export_all

        digest = digest or bundle_digest(bundle_path)
        prints = _fingerprints(items, opts.get("mpp"))
        if marker.is_file() and not overwrite:
            try:
                rec = json.loads(marker.read_text())
            except (OSError, ValueError):
                rec = {}
            report = folder / str(rec.get("report", ""))
            if (rec.get("bundle_sha256") == digest and rec.get("slide_fingerprints") == prints
                    and rec.get("settings") == settings and report.is_file()):
                return {**row, "status": "skipped", "error": "", "output": str(report),
                        "n_patches": rec.get("n_patches"),
                        "seconds": round(time.perf_counter() - t0, 3)}
        bundle = _bundle(bundle_path, digest)
        if len(items) == 1:
            from napari_ghanet.inference.predict import predict_slide

            mpp = items[0].mpp if items[0].mpp is not None else opts.pop("mpp", None)
            opts.pop("mpp", None)
            pred = predict_slide(items[0].path, bundle, mpp=mpp, **opts)
        else:
            from napari_ghanet.inference.predict import predict_patient

            default = opts.pop("mpp", None)
            mpps = [it.mpp if it.mpp is not None else default for it in items]
            pred = predict_patient([it.path for it in items], bundle, mpp=mpps, **opts)
        written = export_all(pred, folder)
        report = Path(written["report"])
        atomic_write(marker, json.dumps({
            "format": MARKER_FORMAT, "bundle_sha256": digest, "slide_fingerprints": prints,
            "slides": [it.path for it in items], "case_id": items[0].case_id,
            "settings": settings, "report": report.name, "n_patches": pred.n_patches,
        }, indent=1) + "\n")
    except Exception as exc:  # noqa: BLE001 - one bad slide never stops the cohort
        return _failed(row, _why(exc), t0)
    return {**row, "status": "done", "error": "", "output": str(report),
            "n_patches": pred.n_patches, "seconds": round(time.perf_counter() - t0, 3)}
