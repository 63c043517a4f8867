"""A prediction as a SpatialData store (``.zarr``), for napari-spatialdata and LazySlide.

Layout written by :func:`write_spatialdata` (``spatialdata`` package, the ``spatial`` extra):

* shapes ``ghanet_patches`` (one element per slide, ``ghanet_patches_<i>``, for a patient
  of several slides): one square polygon per patch the model scored, level-0 pixels,
  with wsidata's tile columns ``tile_id``, ``x``, ``y`` (and ``patch``, the row in the
  prediction);
* shapes ``ghanet_qc_flagged``: the patches artifact QC removed, with a ``reason`` column
  (``pen``, ``fold``, ``blur``); absent when none were flagged;
* table ``ghanet_table`` annotating the patch shapes (``region`` / ``tile_id``):
  ``X`` float32 (N, 1 + T) = morphology attention and the genome-informed attention of
  each category (``var`` names as in the per-patch CSV of :mod:`.exports`), ``obs``
  columns ``x``, ``y``, ``width``, ``height`` (level-0 pixels, int64), ``slide`` (index)
  and ``qc_flag`` (``"passed"``); ``uns["ghanet_report_json"]`` the slide-level report
  exactly as :func:`~napari_ghanet.inference.exports.write_report_json` writes it, plus
  ``risk``, ``percentile``, ``risk_group`` and ``mpp`` for quick reading;
* coordinate systems: ``global`` = level-0 pixels (identity, as LazySlide/wsidata store a
  slide's tiles, so the store overlays the slide's own wsidata store) and ``micrometers``
  (scale by the slide's um/px).

The store is written atomically: into a temporary folder beside ``path``, then renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import GHANetError
from napari_ghanet.inference.checks import check_prediction_finite
from napari_ghanet.inference.exports import patch_table, strict_json
from napari_ghanet.inference.result import Prediction
from napari_ghanet.io.atomic import (
    WRITING_MARKER,
    clean_folder_once,
    interrupted_folder,
    temp_name,
    writer_tag,
)
from napari_ghanet.io.features import json_default

__all__ = [
    "WRITING_MARKER",
    "interrupted_store",
    "PATCHES_KEY",
    "QC_KEY",
    "TABLE_KEY",
    "SpatialDataMissing",
    "read_spatialdata_report",
    "write_spatialdata",
]

PATCHES_KEY = "ghanet_patches"
QC_KEY = "ghanet_qc_flagged"
TABLE_KEY = "ghanet_table"


class SpatialDataMissing(GHANetError):
    """The optional ``spatialdata`` package is not installed."""


def _spatialdata():
    try:
        import spatialdata  # noqa: F401
    except ImportError as exc:
        raise SpatialDataMissing(
            "SpatialData export needs the spatialdata package: pip install "
            "'napari-ghanet[spatial]'"
        ) from exc
    import spatialdata

    return spatialdata


def _region_names(prediction: Prediction) -> list[str]:
    if prediction.n_slides == 1:
        return [PATCHES_KEY]
    return [f"{PATCHES_KEY}_{i}" for i in range(prediction.n_slides)]


def _slide_mpp(prediction: Prediction, i: int) -> float | None:
    mpp = (prediction.slides[i] if i < len(prediction.slides) else prediction.slide).get("mpp")
    try:
        mpp = float(mpp)
    except (TypeError, ValueError):
        return None
    return mpp if np.isfinite(mpp) and mpp > 0 else None


def _transforms(mpp: float | None) -> dict[str, Any]:
    from spatialdata.transformations import Identity, Scale

    out: dict[str, Any] = {"global": Identity()}
    if mpp is not None:
        out["micrometers"] = Scale([mpp, mpp], axes=("x", "y"))
    return out


def _squares(xs: np.ndarray, ys: np.ndarray, sizes: np.ndarray) -> list:
    import shapely

    return list(shapely.box(xs, ys, xs + sizes, ys + sizes))


def report_json(prediction: Prediction) -> str:
    """The slide-level report as the JSON report file holds it (strict JSON text)."""
    report = json.loads(json.dumps(prediction.to_dict(), default=json_default))
    return json.dumps(strict_json(report), indent=2, allow_nan=False)


def build_spatialdata(prediction: Prediction):
    """The :class:`spatialdata.SpatialData` object :func:`write_spatialdata` writes.

    Raises
    ------
    SpatialDataMissing
        Without the ``spatialdata`` package.
    PredictionError
        Non-finite numbers in the prediction.
    """
    sd = _spatialdata()
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from spatialdata.models import ShapesModel, TableModel

    check_prediction_finite(prediction)
    names, table = patch_table(prediction)
    n_att = 1 + len(prediction.category_names)
    coords = prediction.coords.astype(np.int64)
    sizes = prediction.patch_sizes_level0().astype(np.int64)
    slide = np.asarray(prediction.slide_index, np.int64)
    regions = _region_names(prediction)
    shapes: dict[str, Any] = {}
    region_col: list[str] = []
    instance: list[int] = []
    order: list[np.ndarray] = []
    for i, region in enumerate(regions):
        rows = np.flatnonzero(slide == i)
        gdf = gpd.GeoDataFrame(
            {
                "tile_id": np.arange(len(rows), dtype=np.int64),
                "x": coords[rows, 0],
                "y": coords[rows, 1],
                "patch": rows.astype(np.int64),
            },
            geometry=_squares(coords[rows, 0], coords[rows, 1], sizes[rows]),
            index=pd.RangeIndex(len(rows)),
        )
        shapes[region] = ShapesModel.parse(gdf, transformations=_transforms(_slide_mpp(prediction, i)))
        region_col += [region] * len(rows)
        instance += list(range(len(rows)))
        order.append(rows)
    rows = np.concatenate(order) if order else np.zeros(0, np.int64)
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(region_col, categories=regions),
            "tile_id": np.asarray(instance, np.int64),
            "patch": rows,
            "x": coords[rows, 0],
            "y": coords[rows, 1],
            "width": sizes[rows],
            "height": sizes[rows],
            "slide": slide[rows],
            "qc_flag": pd.Categorical(["passed"] * len(rows)),
        },
        index=pd.Index([str(r) for r in rows], dtype=object),
    )
    var = pd.DataFrame(index=pd.Index(names[4 : 4 + n_att], dtype=object))
    mpp = _slide_mpp(prediction, 0)
    uns = {
        "ghanet_report_json": report_json(prediction),
        "risk": float(prediction.risk),
        "percentile": float(prediction.percentile),
        "risk_group": str(prediction.risk_group),
        "mpp": float(mpp) if mpp is not None else float("nan"),
        "categories": [str(c) for c in prediction.category_names],
    }
    adata = ad.AnnData(
        X=table[rows, 4 : 4 + n_att].astype(np.float32), obs=obs, var=var, uns=uns
    )
    tables = {
        TABLE_KEY: TableModel.parse(
            adata, region=regions, region_key="region", instance_key="tile_id"
        )
    }
    qc_xy = np.asarray(prediction.qc_coords, np.int64).reshape(-1, 2)
    if len(qc_xy):
        size = int(prediction.patch_size_level0)
        qc_slide = np.asarray(prediction.qc_slide_index, np.int64)
        gdf = gpd.GeoDataFrame(
            {
                "reason": [str(r) for r in prediction.qc_reasons],
                "x": qc_xy[:, 0],
                "y": qc_xy[:, 1],
                "slide": qc_slide,
            },
            geometry=_squares(qc_xy[:, 0], qc_xy[:, 1], np.full(len(qc_xy), size)),
            index=pd.RangeIndex(len(qc_xy)),
        )
        shapes[QC_KEY] = ShapesModel.parse(gdf, transformations=_transforms(mpp))
    return sd.SpatialData(shapes=shapes, tables=tables)


def write_spatialdata(
    prediction: Prediction, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``prediction`` as a SpatialData ``.zarr`` store (layout: module docstring).

    Parameters
    ----------
    prediction : Prediction
    path : str or Path
        The store folder to create (conventionally ``<name>.zarr``).
    overwrite : bool
        Replace an existing store at ``path`` (after the new one is complete). A store
        whose writing run was killed before it finished (:func:`interrupted_store`) is
        replaced without it, so re-running the command finishes the job.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    SpatialDataMissing
        Without the ``spatialdata`` package (``pip install 'napari-ghanet[spatial]'``).
    GHANetError
        ``path`` exists and ``overwrite`` is False, or it cannot be written.
    """
    path = Path(path)
    if path.exists() and not overwrite and not interrupted_store(path):
        raise GHANetError(f"{path} already exists: choose another name or allow overwriting")
    sdata = build_spatialdata(prediction)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    # temporaries carry this process's id: a killed run's are removed by the next one
    clean_folder_once(parent)
    tmp = temp_name(path)
    try:
        sdata.write(tmp)
        # the store names its writer until it is in place and the one it replaced is gone:
        # a run killed meanwhile leaves a store a re-run may replace (interrupted_store)
        (tmp / WRITING_MARKER).write_text(writer_tag(), encoding="ascii")
        old = None
        if os.path.lexists(path):
            old = temp_name(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
        (path / WRITING_MARKER).unlink()
    except OSError as exc:
        raise GHANetError(f"cannot write the SpatialData store {path}: {exc}") from exc
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
    return path


def interrupted_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store :func:`write_spatialdata` put in place but whose run was
    killed before it finished (:func:`napari_ghanet.io.atomic.interrupted_folder`): a
    re-run replaces such a store without ``overwrite``."""
    return interrupted_folder(path)


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree; what cannot be removed is left for the next
    run's cleanup (its name carries this process's id)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        pass


def read_spatialdata_report(path: str | os.PathLike) -> dict[str, Any]:
    """The slide-level report stored in a store :func:`write_spatialdata` wrote."""
    sd = _spatialdata()
    sdata = sd.read_zarr(Path(path))
    return json.loads(sdata.tables[TABLE_KEY].uns["ghanet_report_json"])


