"""Patch features from a LazySlide / wsidata SpatialData store (``<slide>.zarr``).

wsidata (rendeirolab/wsidata, ``wsidata/io/_elems.py``) keeps a slide's work in one
SpatialData store: the tiles as shapes ``<tile key>`` (default ``tiles``; one square
polygon per tile in level-0 pixels, columns ``tile_id``, ``x``, ``y``, ``tissue_id``), the
tile geometry in the store's attributes ``tile_spec[<tile key>]`` (``width`` / ``height``
in pixels at ``mpp``, ``base_width`` in level-0 pixels), the slide's properties in the
table ``slide_properties`` (``uns``: ``mpp``, ...), and the features of each model in the
table ``<model>_<tile key>`` (LazySlide ``Key.feature``; ``X`` = (N, D) features, ``obs``
``tile_id`` and ``library_id`` = the tile key it annotates).

:func:`read_wsidata_features` turns one such table into :class:`PatchFeatures`: features
float32 (N, D) and coordinates int64 (N, 2) in level-0 pixels, in the table's row order,
with ``attrs`` ``feature_key``, ``tile_key``, ``patch_size``, ``patch_size_level0``,
``target_mpp`` and ``slide_mpp`` where the store records them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import FeaturesError
from napari_ghanet.io.features import PatchFeatures

__all__ = ["feature_tables", "read_wsidata_features"]

_NOT_FEATURES = {"slide_properties"}


def _read(path: Path):
    try:
        import spatialdata
    except ImportError as exc:
        raise FeaturesError(
            f"{path}: reading a SpatialData store needs the spatialdata package: "
            "pip install 'napari-ghanet[spatial]'"
        ) from exc
    try:
        return spatialdata.read_zarr(path)
    except Exception as exc:  # zarr / anndata errors of many kinds: name the store
        raise FeaturesError(f"{path}: not a readable SpatialData store ({exc})") from exc


def _region(table) -> str | None:
    attrs = table.uns.get("spatialdata_attrs", {}) if table.uns is not None else {}
    region = attrs.get("region")
    if isinstance(region, list | tuple | np.ndarray):
        region = region[0] if len(region) == 1 else None
    return str(region) if region is not None else None


def feature_tables(sdata) -> dict[str, str]:
    """{table key: tile key} of the tables that hold per-tile features (a 2-D ``X``
    annotating a shapes element)."""
    out = {}
    for key, table in sdata.tables.items():
        if key in _NOT_FEATURES or table.X is None or len(table.X.shape) != 2:
            continue
        region = _region(table)
        if region is not None and region in sdata.shapes and table.shape[1] > 0:
            out[key] = region
    return out


def read_wsidata_features(
    path: str | os.PathLike, feature_key: str | None = None
) -> PatchFeatures:
    """Patch features and tile coordinates from a wsidata/LazySlide store.

    Parameters
    ----------
    path : str or Path
        The ``.zarr`` store.
    feature_key : str, optional
        The feature table (``<model>_<tile key>``, e.g. ``uni_tiles``); needed only when
        the store holds several.

    Returns
    -------
    PatchFeatures
        ``coords`` are the tiles' level-0 top-left corners (columns ``x``/``y``, else
        the polygons' bounds).

    Raises
    ------
    FeaturesError
        No store, no feature table, several without ``feature_key``, or tiles missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise FeaturesError(f"{path}: no such SpatialData store")
    sdata = _read(path)
    tables = feature_tables(sdata)
    if feature_key is None:
        if not tables:
            raise FeaturesError(f"{path}: no feature table (run feature extraction first)")
        if len(tables) > 1:
            raise FeaturesError(
                f"{path}: several feature tables ({', '.join(sorted(tables))}); keep one per "
                "store or name the one to use"
            )
        feature_key = next(iter(tables))
    if feature_key not in tables:
        raise FeaturesError(
            f"{path}: no feature table {feature_key!r} (found: {', '.join(sorted(tables)) or 'none'})"
        )
    tile_key = tables[feature_key]
    table = sdata.tables[feature_key]
    x = table.X
    feats = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
    tiles = sdata.shapes[tile_key]
    if "tile_id" in table.obs and "tile_id" in tiles:
        ids = np.asarray(tiles["tile_id"]).astype(np.int64)
        pos = {int(t): i for i, t in enumerate(ids)}
        want = np.asarray(table.obs["tile_id"]).astype(np.int64)
        missing = [int(t) for t in want if int(t) not in pos]
        if missing:
            raise FeaturesError(
                f"{path}: {len(missing)} feature rows of {feature_key!r} have no tile in "
                f"{tile_key!r} (e.g. tile_id {missing[0]})"
            )
        rows = np.array([pos[int(t)] for t in want], dtype=np.int64)
    else:
        if len(tiles) != len(feats):
            raise FeaturesError(
                f"{path}: {len(feats)} feature rows but {len(tiles)} tiles in {tile_key!r}"
            )
        rows = np.arange(len(feats))
    if "x" in tiles and "y" in tiles:
        xy = np.stack([np.asarray(tiles["x"]), np.asarray(tiles["y"])], 1)[rows]
    else:
        xy = tiles.geometry.bounds[["minx", "miny"]].to_numpy()[rows]
    coords = np.rint(xy).astype(np.int64)
    attrs: dict[str, Any] = {"feature_key": feature_key, "tile_key": tile_key,
                             "feature_dim": int(feats.shape[1]), "source": "wsidata"}
    spec = (getattr(sdata, "attrs", None) or {}).get("tile_spec", {})
    spec = spec.get(tile_key, {}) if isinstance(spec, dict) else {}
    if spec.get("width"):
        attrs["patch_size"] = int(spec["width"])
    if spec.get("base_width"):
        attrs["patch_size_level0"] = int(round(float(spec["base_width"])))
    if spec.get("mpp"):
        attrs["target_mpp"] = float(spec["mpp"])
    if "slide_properties" in sdata.tables:
        mpp = (sdata.tables["slide_properties"].uns or {}).get("mpp")
        if mpp is not None:
            attrs["slide_mpp"] = float(mpp)
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise FeaturesError(f"{path}: {bad} feature rows contain NaN or infinity")
    return PatchFeatures(feats, coords, attrs)
