"""Regions of interest of the dock: napari Shapes layers <-> level-0 polygons.

The include/exclude Shapes layers chosen in the dock become a
:class:`~napari_ghanet.preprocessing.roi.Regions` in level-0 pixels of a slide layer, and
QuPath GeoJSON annotations (level-0 pixels) become a Shapes layer laid over the slide.
napari only, no Qt.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_ghanet._qt import layers as qt_layers
from napari_ghanet._qt.notify import notify
from napari_ghanet.errors import GHANetError
from napari_ghanet.preprocessing.roi import Regions, polygons_from_shapes, read_geojson
from napari_ghanet.preprocessing.roi import level0_transform as shapes_to_level0

__all__ = ["import_geojson", "slide_level0_transform", "shapes_regions"]


def slide_level0_transform(layer) -> tuple[tuple[float, float], tuple[float, float]]:
    """World (scale, translate) of slide layer ``layer``'s level-0 pixels."""
    geometry = qt_layers.SlideGeometry.of(layer)
    dims = (layer.metadata.get("level_dimensions") or [None])[0]
    if not dims:
        dims = (geometry.shape[1], geometry.shape[0])
    return geometry.level0_transform(tuple(int(v) for v in dims))


def _imported(shapes) -> list | None:
    """The regions a GeoJSON import made this layer from (holes included), while its
    shapes and transform are as imported; None once the user edited them."""
    meta = getattr(shapes, "metadata", None) or {}
    regions, snapshot = meta.get("ghanet_regions"), meta.get("ghanet_snapshot")
    if regions is None or snapshot is None:
        return None
    data, scale, translate = snapshot
    same = (
        len(data) == len(shapes.data)
        and all(np.array_equal(a, b) for a, b in zip(data, shapes.data))
        and np.allclose(scale, shapes.scale[-2:])
        and np.allclose(translate, shapes.translate[-2:])
    )
    return list(regions) if same else None


def _polygons(shapes, layer) -> list:
    imported = _imported(shapes)
    if imported is not None:
        return imported
    scale, translate = slide_level0_transform(layer)
    to_level0 = shapes_to_level0(scale, translate, shapes.scale[-2:], shapes.translate[-2:])
    return polygons_from_shapes(shapes.data, to_level0, shapes.shape_type,
                                source=f"shapes layer {shapes.name!r}")


def shapes_regions(include, exclude, layer):
    """Shapes layers ``include`` / ``exclude`` (either may be None) as a
    :class:`~napari_ghanet.preprocessing.roi.Regions` in level-0 pixels of slide layer
    ``layer``; None when there is no slide layer or no Shapes layer.

    Raises
    ------
    RegionError
        A layer has no shape with an area.
    """

    if layer is None or (include is None and exclude is None):
        return None
    return Regions(
        include=_polygons(include, layer) if include is not None else [],
        exclude=_polygons(exclude, layer) if exclude is not None else [],
    )


def import_geojson(viewer, layer, path: str | os.PathLike, kind: str = "include"):
    """Read QuPath GeoJSON annotations (level-0 pixels) into a Shapes layer of ``viewer``
    laid over slide layer ``layer`` (green for "include", red for "exclude"). Returns the
    layer (None, with a notification, on failure).

    Each polygon's outer ring (and each part of a MultiPolygon) becomes one shape; napari
    shapes have no holes, so the layer also keeps the annotations as read, and the
    prediction uses those (holes included) for as long as the shapes are left unedited.
    """

    if layer is None:
        notify("error", "Open the slide first: the annotations are laid over it")
        return None
    try:
        regions = read_geojson(path)
    except GHANetError as e:
        notify("error", f"Cannot import the regions: {e}")
        return None
    import shapely

    polygons, names = [], []
    for region in regions:
        for part in shapely.get_parts(region.geometry):
            xy = shapely.get_coordinates(part.exterior)[:-1]
            polygons.append(xy[:, ::-1].astype(float))  # (row, col) = (y, x)
            names.append(region.name)
    scale, translate = slide_level0_transform(layer)
    colour = "#00c853" if kind == "include" else "#ff1744"
    shapes = viewer.add_shapes(
        polygons, shape_type="polygon", scale=scale, translate=translate,
        edge_color=colour, face_color="transparent",
        edge_width=max(abs(scale[0]), 1e-9) * 20, features={"name": names},
        name=f"{Path(path).stem} ({kind})", units=getattr(layer, "units", None),
    )
    shapes.metadata["ghanet_regions"] = list(regions)
    shapes.metadata["ghanet_snapshot"] = (
        [np.array(d, copy=True) for d in shapes.data],
        np.array(shapes.scale[-2:], dtype=float),
        np.array(shapes.translate[-2:], dtype=float),
    )
    return shapes
