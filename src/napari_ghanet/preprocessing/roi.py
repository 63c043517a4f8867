"""Regions of interest: which tissue the model sees.

A pathologist restricts a prediction to *include* regions (e.g. the tumour outlined in
QuPath) and removes *exclude* regions (pen marks, necrosis, a fold). Regions come from
QuPath GeoJSON annotations (polygons and multipolygons in level-0 pixels, x to the right,
y down, as QuPath exports them) or from the shapes drawn on a napari Shapes layer
(converted here from the layer's (row, col) data coordinates; no napari import).

A patch is kept when its **centre** lies inside an include region (anywhere on the tissue
when there is none) and outside every exclude region. The test is vectorised with shapely
2's ``contains_xy``: 100,000 patch centres take a few milliseconds per region.

Coordinates are level-0 pixels throughout; areas are reported in mm^2 from the slide's
microns per pixel.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape

from napari_ghanet.errors import InputFileError, RegionError
from napari_ghanet.io.safe_read import read_text_file

logger = logging.getLogger(__name__)

__all__ = [
    "Region",
    "RegionError",
    "RegionReport",
    "Regions",
    "filter_grid",
    "level0_transform",
    "polygons_from_shapes",
    "read_geojson",
]

_AREA_TYPES = ("Polygon", "MultiPolygon")
#: largest region file read (bytes): QuPath exports of thousands of detailed annotations
#: stay far below; a bigger file is refused before it is read
MAX_GEOJSON_BYTES = 256 * 1024 * 1024
#: deepest nesting of plain lists around the Features
MAX_LIST_DEPTH = 32
#: largest |coordinate| (level-0 px): 2^31, far beyond any slide, so areas stay finite
MAX_COORDINATE = float(2**31)
#: longest region name kept for reports (characters)
MAX_NAME_CHARS = 200


@dataclass
class Region:
    """One region of interest.

    Attributes
    ----------
    geometry : shapely Polygon or MultiPolygon
        Valid area in level-0 pixels (x, y); holes are honoured.
    name : str
        Shown in reports (the QuPath annotation's name or class, or "shape 3").
    source : str
        Where it came from (a file path or "shapes layer").
    """

    geometry: Polygon | MultiPolygon
    name: str = ""
    source: str = ""

    def area_mm2(self, mpp: float) -> float:
        """Area in mm^2 for a slide of ``mpp`` um per level-0 pixel."""
        return float(self.geometry.area) * (float(mpp) * 1e-3) ** 2


def _clean(geom, where: str) -> Polygon | MultiPolygon | None:
    """A valid polygonal geometry (self-intersections repaired), or None when empty."""
    if geom is None or geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    # make_valid may return a collection holding lines or points next to the polygons.
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in _AREA_TYPES]
    if not parts:
        logger.warning("%s: a shape has no area; ignored", where)
        return None
    geom = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    if geom.is_empty or geom.area <= 0:
        return None
    shapely.prepare(geom)  # fast repeated contains_xy
    return geom


def _features(doc: Any, where: str) -> list[dict]:
    """The list of GeoJSON Features (or bare geometries wrapped as Features) in ``doc``.

    Walked without recursion: lists (QuPath's "Export objects" without a
    FeatureCollection) may nest at most :data:`MAX_LIST_DEPTH` deep, and every member
    that is not an object is refused in one line naming what it is."""
    out: list[dict] = []
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= MAX_LIST_DEPTH:
                raise RegionError(f"{where}: lists nested more than {MAX_LIST_DEPTH} deep; "
                                  "export the annotations from QuPath as GeoJSON")
            stack.extend((x, depth + 1) for x in reversed(item))
            continue
        if not isinstance(item, dict) or "type" not in item:
            raise RegionError(
                f"{where} is not GeoJSON: expected a FeatureCollection, a Feature or a "
                f"geometry, found {_kind(item)} (export the annotations from QuPath with "
                "File > Export objects as GeoJSON)"
            )
        kind = item["type"]
        if kind == "FeatureCollection":
            feats = item.get("features")
            if not isinstance(feats, list):
                raise RegionError(f"{where}: the FeatureCollection has no 'features' list")
            stack.append((feats, depth))
        elif kind == "Feature":
            out.append(item)
        elif kind == "GeometryCollection":
            geoms = item.get("geometries", [])
            if not isinstance(geoms, list):
                raise RegionError(f"{where}: a GeometryCollection's 'geometries' is "
                                  f"{_kind(geoms)}, not a list of geometries")
            out += [{"type": "Feature", "geometry": g, "properties": {}} for g in geoms]
        else:
            out.append({"type": "Feature", "geometry": item, "properties": {}})
    return out


def _kind(value: Any) -> str:
    """What a JSON value is, for a message ("a list", "a number", ...)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _feature_name(props: Any, index: int) -> str:
    """The region's name from a Feature's ``properties`` (QuPath: ``name``, else its
    ``classification``), at most :data:`MAX_NAME_CHARS` characters; properties that are
    not an object (a list, a string) give the plain "region N"."""
    if not isinstance(props, dict):
        return f"region {index + 1}"
    name = props.get("name")
    cls = props.get("classification")
    if isinstance(name, str | int | float) and not isinstance(name, bool) and str(name).strip():
        text = str(name)
    elif isinstance(cls, dict) and isinstance(cls.get("name"), str) and cls["name"].strip():
        text = f"{cls['name']} {index + 1}"
    elif isinstance(cls, str) and cls.strip():
        text = f"{cls} {index + 1}"
    else:
        return f"region {index + 1}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_NAME_CHARS else text[:MAX_NAME_CHARS - 3] + "..."


def _geometry(geom_doc: dict, gtype: str, where: str) -> Polygon | MultiPolygon | None:
    """A feature's polygon(s), checked: well-formed coordinates, every one a finite number
    within :data:`MAX_COORDINATE` level-0 pixels of the origin (so areas stay finite), and
    a finite area; None when nothing of area is left (a degenerate ring)."""
    try:
        geom = shape(geom_doc)
        xy = shapely.get_coordinates(geom)
    except Exception as e:  # noqa: BLE001 - shapely raises many types for bad coordinates
        msg = " ".join(str(e).split())[:120] or type(e).__name__
        raise RegionError(f"{where} has malformed {gtype} coordinates ({msg})") from None
    if not np.all(np.isfinite(xy)):
        raise RegionError(f"{where} has non-finite coordinates")
    if xy.size and float(np.abs(xy).max()) > MAX_COORDINATE:
        raise RegionError(
            f"{where} has a coordinate of {float(np.abs(xy).max()):.3g} px, beyond any slide "
            f"(at most {MAX_COORDINATE:.0f} level-0 pixels); check the file's coordinates")
    try:
        geom = _clean(geom, where)
    except Exception as e:  # noqa: BLE001 - GEOS errors on pathological rings
        raise RegionError(f"{where}: cannot repair its {gtype} ({e})") from None
    if geom is not None and not math.isfinite(float(geom.area)):
        raise RegionError(f"{where}: its area is not a finite number")
    return geom


def read_geojson(path: str | Path) -> list[Region]:
    """Polygonal regions of a QuPath GeoJSON export.

    Parameters
    ----------
    path : str or Path
        A ``.geojson``/``.json`` file holding a FeatureCollection, a list of Features, one
        Feature or a bare geometry. Coordinates are level-0 pixels (x, y), as QuPath
        exports them.

    Returns
    -------
    list of Region
        One per Polygon/MultiPolygon feature (holes kept; invalid rings repaired). Points
        and lines (no area) are skipped with a logged warning.

    Raises
    ------
    RegionError
        One line naming the file: missing, a folder or not a regular file (a FIFO is never
        opened), larger than 256 MiB, not UTF-8, not JSON or nested too deeply, not
        GeoJSON, malformed coordinates or coordinates beyond 2^31 px, or no polygon at all.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> square = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    >>> hole = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    >>> doc = {"type": "FeatureCollection", "features": [{"type": "Feature",
    ...     "properties": {"name": "tumour"},
    ...     "geometry": {"type": "Polygon", "coordinates": [square, hole]}}]}
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "roi.geojson"
    >>> _ = p.write_text(json.dumps(doc))
    >>> [(r.name, r.geometry.area) for r in read_geojson(p)]
    [('tumour', 9600.0)]
    """
    path = Path(path).expanduser()
    where = str(path)
    try:
        text = read_text_file(path, "region file", MAX_GEOJSON_BYTES)
    except InputFileError as e:
        raise RegionError(str(e)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RegionError(
            f"{path} is not a GeoJSON text file (line {e.lineno}: {e.msg}); export the "
            "annotations from QuPath as GeoJSON"
        ) from None
    except RecursionError:  # json nests arrays/objects by recursion
        raise RegionError(f"{path}: nested too deeply to be GeoJSON; export the annotations "
                          "from QuPath as GeoJSON") from None
    del text
    regions: list[Region] = []
    skipped: dict[str, int] = {}
    for i, feat in enumerate(_features(doc, where)):
        geom_doc = feat.get("geometry") if isinstance(feat, dict) else None
        if not isinstance(geom_doc, dict):
            skipped["no geometry"] = skipped.get("no geometry", 0) + 1
            continue
        gtype = geom_doc.get("type")
        if gtype not in _AREA_TYPES:
            label = gtype if isinstance(gtype, str) and len(gtype) <= 40 else _kind(gtype)
            skipped[label] = skipped.get(label, 0) + 1
            continue
        geom = _geometry(geom_doc, gtype, f"{where}: feature {i + 1}")
        if geom is None:
            continue
        regions.append(Region(geom, _feature_name(feat.get("properties"), i), where))
    if skipped:
        logger.warning(
            "%s: skipped features without area: %s",
            where,
            ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())),
        )
    if not regions:
        raise RegionError(
            f"{where} holds no polygon with an area (found "
            f"{', '.join(sorted(skipped)) or 'nothing'}): draw area annotations "
            "(rectangle, ellipse, polygon, brush) in QuPath"
        )
    return regions


def level0_transform(
    image_scale: Sequence[float] = (1.0, 1.0),
    image_translate: Sequence[float] = (0.0, 0.0),
    shapes_scale: Sequence[float] = (1.0, 1.0),
    shapes_translate: Sequence[float] = (0.0, 0.0),
) -> Callable[[np.ndarray], np.ndarray]:
    """A function from Shapes-layer data (row, col) to level-0 pixels (x, y).

    napari maps data to world as ``world = data * scale + translate`` per layer. The
    shapes' world position is mapped back through the slide image layer's transform of its
    level-0 pixels (``image_scale``/``image_translate``, e.g. (mpp, mpp) for a layer in
    um). Only the last two (row, col) axes are used.

    Examples
    --------
    >>> f = level0_transform(image_scale=(0.5, 0.5))  # slide layer in um at 0.5 um/px
    >>> f(np.array([[10.0, 20.0]]))  # a vertex at y = 10 um, x = 20 um
    array([[40., 20.]])
    """
    isc = np.asarray(image_scale, float)[-2:]
    itr = np.asarray(image_translate, float)[-2:]
    ssc = np.asarray(shapes_scale, float)[-2:]
    st = np.asarray(shapes_translate, float)[-2:]
    if np.any(isc == 0) or np.any(ssc == 0):
        raise RegionError("a layer scale of 0 cannot be inverted")

    def to_level0(rc: np.ndarray) -> np.ndarray:
        rc = np.asarray(rc, float)[:, -2:]
        world = rc * ssc + st
        yx = (world - itr) / isc
        return yx[:, ::-1]

    return to_level0


def _ellipse(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """Polygon (n, 2) of the ellipse inscribed in a napari ellipse's 4 box corners."""
    centre = corners.mean(axis=0)
    a = (corners[1] - corners[0]) / 2.0
    b = (corners[3] - corners[0]) / 2.0
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def polygons_from_shapes(
    data: Sequence[np.ndarray],
    to_level0: Callable[[np.ndarray], np.ndarray],
    shape_types: Sequence[str] | None = None,
    *,
    source: str = "shapes layer",
) -> list[Region]:
    """Regions from napari Shapes-layer data (no napari import).

    Parameters
    ----------
    data : list of ndarray, each (M, 2) or (M, D)
        ``layer.data``: vertices in (row, col) = (y, x) layer-data coordinates (the last
        two axes are used for nD layers).
    to_level0 : callable
        Maps an (M, 2) array of (row, col) data coordinates to (M, 2) level-0 (x, y)
        pixels, e.g. :func:`level0_transform` of the slide and shapes layers' transforms.
    shape_types : list of str, optional
        ``layer.shape_type``; ellipses (given by their 4 box corners) become 64-gons,
        lines and paths (no area) are skipped. None treats every shape as a polygon.

    Returns
    -------
    list of Region
        Named "shape 1", "shape 2", ... after the shapes' index in the layer.

    Raises
    ------
    RegionError
        When no shape has an area.

    Examples
    --------
    >>> square = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)  # (row, col)
    >>> r = polygons_from_shapes([square], level0_transform(image_scale=(0.5, 0.5)))
    >>> r[0].name, r[0].geometry.area  # 20 x 20 level-0 pixels
    ('shape 1', 400.0)
    """
    regions: list[Region] = []
    types = list(shape_types) if shape_types is not None else ["polygon"] * len(data)
    if len(types) != len(data):
        raise RegionError(f"{len(data)} shapes but {len(types)} shape types")
    for i, (verts, kind) in enumerate(zip(data, types)):
        verts = np.asarray(verts, float)
        if verts.ndim != 2 or verts.shape[1] < 2:
            raise RegionError(f"shape {i + 1}: expected (M, 2) vertices, got {verts.shape}")
        if kind in ("line", "path"):
            continue
        xy = np.asarray(to_level0(verts[:, -2:]), float)
        if kind == "ellipse" and len(xy) == 4:
            xy = _ellipse(xy)
        if len(xy) < 3 or not np.all(np.isfinite(xy)):
            continue
        geom = _clean(Polygon(xy), source)
        if geom is not None:
            regions.append(Region(geom, f"shape {i + 1}", source))
    if not regions:
        raise RegionError(
            f"the {source} has no shape with an area: draw rectangles, ellipses or polygons"
        )
    return regions


@dataclass
class Regions:
    """Include and exclude regions for one slide (level-0 pixels).

    Attributes
    ----------
    include : list of Region
        Patches must have their centre inside one of these; empty = all tissue.
    exclude : list of Region
        Patches with their centre inside any of these are removed.
    """

    include: list[Region] = field(default_factory=list)
    exclude: list[Region] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.include and not self.exclude

    @classmethod
    def from_files(
        cls, include: Sequence[str | Path] = (), exclude: Sequence[str | Path] = ()
    ) -> Regions:
        """Regions read from QuPath GeoJSON files (see :func:`read_geojson`)."""
        return cls(
            [r for p in include for r in read_geojson(p)],
            [r for p in exclude for r in read_geojson(p)],
        )


@dataclass
class RegionReport:
    """What the regions did to a patch grid.

    Attributes
    ----------
    n_patches : int
        Patches before the regions were applied.
    n_kept : int
    n_outside_include : int
        Removed because their centre is in no include region (0 without include regions).
    n_excluded : int
        Removed by exclude regions (among those inside the include regions).
    regions : list of dict
        Per region: ``kind`` ("include"/"exclude"), ``name``, ``source``, ``area_mm2``,
        ``patches`` (patch centres inside it) and ``removed`` (patches this region removed:
        for an exclude region, those inside it and inside the include area; 0 for include
        regions).
    """

    n_patches: int
    n_kept: int
    n_outside_include: int
    n_excluded: int
    regions: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able form for reports."""
        return {
            "n_patches": self.n_patches,
            "n_kept": self.n_kept,
            "n_outside_include": self.n_outside_include,
            "n_excluded": self.n_excluded,
            "n_include_regions": sum(r["kind"] == "include" for r in self.regions),
            "n_exclude_regions": sum(r["kind"] == "exclude" for r in self.regions),
            "include_area_mm2": sum(r["area_mm2"] for r in self.regions if r["kind"] == "include"),
            "exclude_area_mm2": sum(r["area_mm2"] for r in self.regions if r["kind"] == "exclude"),
            "regions": [dict(r) for r in self.regions],
        }


def filter_grid(
    coords: np.ndarray,
    patch_size_level0: float,
    regions: Regions,
    mpp: float | None = None,
) -> tuple[np.ndarray, RegionReport]:
    """Which patches the regions keep.

    Parameters
    ----------
    coords : ndarray, shape (N, 2)
        Top-left (x, y) of each patch, level-0 pixels (``PatchGrid.coords``).
    patch_size_level0 : float
        Patch side in level-0 pixels; the centre is ``coords + size / 2``.
    regions : Regions
    mpp : float, optional
        Slide um per level-0 pixel, for the areas in mm^2 (NaN when not given).

    Returns
    -------
    keep : ndarray of bool, shape (N,)
        True where the patch centre is inside an include region (or there is none) and
        outside every exclude region.
    report : RegionReport

    Examples
    --------
    >>> from shapely.geometry import box
    >>> coords = np.array([[0, 0], [256, 0], [512, 0]])
    >>> regs = Regions(include=[Region(box(0, 0, 700, 256), "tumour")],
    ...                exclude=[Region(box(200, 0, 400, 256), "pen")])
    >>> keep, rep = filter_grid(coords, 256, regs, mpp=0.5)
    >>> keep.tolist(), rep.n_outside_include, rep.n_excluded
    ([True, False, True], 0, 1)
    >>> round(rep.regions[0]["area_mm2"], 4)
    0.0448
    """
    coords = np.asarray(coords, float).reshape(-1, 2)
    n = len(coords)
    half = float(patch_size_level0) / 2.0
    cx, cy = coords[:, 0] + half, coords[:, 1] + half
    scale_mm2 = (float(mpp) * 1e-3) ** 2 if mpp else float("nan")
    rows: list[dict] = []
    if regions.include:
        inside = np.zeros(n, bool)
        for r in regions.include:
            hit = shapely.contains_xy(r.geometry, cx, cy)
            inside |= hit
            rows.append(_row("include", r, scale_mm2, int(hit.sum()), 0))
    else:
        inside = np.ones(n, bool)
    keep = inside.copy()
    for r in regions.exclude:
        hit = shapely.contains_xy(r.geometry, cx, cy)
        rows.append(_row("exclude", r, scale_mm2, int(hit.sum()), int((hit & inside).sum())))
        keep &= ~hit
    report = RegionReport(
        n_patches=n,
        n_kept=int(keep.sum()),
        n_outside_include=int(n - inside.sum()),
        n_excluded=int((inside & ~keep).sum()),
        regions=rows,
    )
    return keep, report


def _row(kind: str, r: Region, scale_mm2: float, patches: int, removed: int) -> dict:
    return {
        "kind": kind,
        "name": r.name,
        "source": r.source,
        "area_mm2": float(r.geometry.area) * scale_mm2,
        "patches": patches,
        "removed": removed,
    }
