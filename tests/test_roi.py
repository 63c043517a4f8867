"""Regions of interest: QuPath GeoJSON, napari Shapes data, and the patch filter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from napari_ghanet.errors import GHANetError
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.roi import (
    Region,
    RegionError,
    Regions,
    filter_grid,
    level0_transform,
    polygons_from_shapes,
    read_geojson,
)
from napari_ghanet.preprocessing.tissue import tissue_mask


def ring(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def qupath_doc():
    """What QuPath's "Export objects as GeoJSON" writes (coordinates: level-0 px)."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "a1",
                "geometry": {"type": "Polygon",
                             "coordinates": [ring(0, 0, 1000, 800), ring(200, 200, 400, 400)]},
                "properties": {"objectType": "annotation",
                               "classification": {"name": "Tumor", "color": [200, 0, 0]}},
            },
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": [
                    [ring(1200, 0, 1400, 200)], [ring(1500, 0, 1700, 200)]]},
                "properties": {"objectType": "annotation", "name": "islands"},
            },
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
             "properties": {}},
        ],
    }


def write(tmp_path, doc, name="roi.geojson"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def test_qupath_featurecollection_polygons_multipolygons_and_holes(tmp_path):
    regions = read_geojson(write(tmp_path, qupath_doc()))
    assert [r.name for r in regions] == ["Tumor 1", "islands"]
    assert regions[0].geometry.area == 1000 * 800 - 200 * 200  # the hole is honoured
    assert regions[1].geometry.geom_type == "MultiPolygon" and regions[1].geometry.area == 80000
    assert not shapely.contains_xy(regions[0].geometry, 300, 300)
    assert shapely.contains_xy(regions[0].geometry, 100, 100)
    # the same features as a bare list, one Feature, or one geometry
    feats = qupath_doc()["features"]
    assert len(read_geojson(write(tmp_path, feats, "list.json"))) == 2
    assert read_geojson(write(tmp_path, feats[1], "one.json"))[0].name == "islands"
    assert read_geojson(write(tmp_path, feats[0]["geometry"], "geom.json"))[0].name == "region 1"


def test_self_intersecting_polygon_is_repaired(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    (r,) = read_geojson(write(tmp_path, bowtie))
    assert r.geometry.is_valid and r.geometry.area == pytest.approx(5000)


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json at all {", "not a GeoJSON text file"),
        ({"foo": 1}, "is not GeoJSON"),
        ({"type": "FeatureCollection"}, "no 'features' list"),
        ({"type": "Point", "coordinates": [1, 2]}, "holds no polygon with an area"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1]]]}, "malformed Polygon"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]] * 0},
         "holds no polygon"),
    ],
)
def test_bad_region_files_raise_a_clear_error(tmp_path, content, match):
    with pytest.raises(RegionError, match=match) as info:
        read_geojson(write(tmp_path, content))
    assert isinstance(info.value, GHANetError)


def test_missing_region_file(tmp_path):
    with pytest.raises(RegionError, match="region file .*nope.geojson: not found"):
        read_geojson(tmp_path / "nope.geojson")


def test_shapes_layer_data_to_level0_polygons():
    # slide layer shown in um at 0.5 um/px, shifted by (10, 20) um; shapes layer at scale 1
    to0 = level0_transform(image_scale=(0.5, 0.5), image_translate=(10.0, 20.0))
    rect = np.array([[10, 20], [10, 70], [60, 70], [60, 20]], float)  # (row, col) in um
    ell = np.array([[110, 20], [110, 120], [160, 120], [160, 20]], float)
    path = np.array([[0, 0], [5, 5]], float)
    tri3d = np.array([[0, 200, 200], [0, 200, 260], [0, 260, 200]], float)  # nD: (z, y, x)
    regions = polygons_from_shapes(
        [rect, ell, path, tri3d], to0, ["rectangle", "ellipse", "path", "polygon"]
    )
    assert [r.name for r in regions] == ["shape 1", "shape 2", "shape 4"]
    assert regions[0].geometry.bounds == (0.0, 0.0, 100.0, 100.0)  # level-0 (x, y)
    a, b = 100.0, 50.0  # ellipse semi-axes in level-0 px
    assert regions[1].geometry.area == pytest.approx(np.pi * a * b, rel=0.01)
    assert regions[1].geometry.centroid.coords[0] == pytest.approx((100.0, 250.0))
    assert regions[2].geometry.area == pytest.approx(0.5 * 120 * 120)
    # a shapes layer with its own scale composes with the slide layer's transform
    to0b = level0_transform(image_scale=(0.5, 0.5), shapes_scale=(2.0, 2.0))
    (r,) = polygons_from_shapes([rect], to0b)
    assert r.geometry.bounds == (80.0, 40.0, 280.0, 240.0)
    with pytest.raises(RegionError, match="no shape with an area"):
        polygons_from_shapes([path], to0, ["path"])


def test_filter_grid_keeps_centres_inside_include_and_outside_exclude(tiled_tiff):
    with open_slide(tiled_tiff) as slide:
        grid = patch_grid(slide, tissue_mask(slide), patch_px=128)
    size = grid.patch_size_level0
    assert len(grid) > 40
    include = Region(box(0, 0, 1100, 1536).difference(box(300, 300, 600, 600)), "left")
    exclude = [Region(Point(800, 800).buffer(200), "pen"), Region(box(0, 1000, 2048, 1536), "low")]
    keep, rep = filter_grid(grid.coords, size, Regions([include], exclude), mpp=slide.mpp)
    centres = grid.coords + size / 2
    want = np.array([
        include.geometry.contains(Point(c))
        and not any(e.geometry.contains(Point(c)) for e in exclude)
        for c in centres
    ])
    assert keep.tolist() == want.tolist() and 0 < keep.sum() < len(grid)
    inside = np.array([include.geometry.contains(Point(c)) for c in centres])
    assert rep.n_patches == len(grid) and rep.n_kept == int(keep.sum())
    assert rep.n_outside_include == int((~inside).sum())
    assert rep.n_excluded == int((inside & ~keep).sum())
    pen, low = rep.regions[1], rep.regions[2]
    assert pen["removed"] == sum(
        inside[i] and exclude[0].geometry.contains(Point(c)) for i, c in enumerate(centres))
    assert low["kind"] == "exclude" and low["removed"] > 0
    # areas in mm^2 at 0.5 um/px: 1 level-0 px = 0.25 um^2
    assert rep.regions[0]["area_mm2"] == pytest.approx((1100 * 1536 - 300 * 300) * 0.25e-6)
    d = rep.to_dict()
    assert d["n_include_regions"] == 1 and d["n_exclude_regions"] == 2
    json.dumps(d)


def test_without_include_every_tissue_patch_is_kept_but_the_excluded():
    coords = np.array([[x, y] for y in range(0, 1024, 256) for x in range(0, 1024, 256)])
    keep, rep = filter_grid(coords, 256, Regions(exclude=[Region(box(0, 0, 300, 300))]))
    assert keep.sum() == 15 and not keep[0]
    assert rep.n_outside_include == 0 and rep.n_excluded == 1
    assert np.isnan(rep.regions[0]["area_mm2"])  # no mpp given
    keep, rep = filter_grid(coords, 256, Regions())
    assert keep.all() and rep.regions == []


def test_filter_grid_handles_100k_patches_and_a_detailed_polygon():
    """Vectorised: 100,000 centres against a 2,000-vertex polygon (figures in benchmarks)."""
    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    star = np.c_[50_000 + (30_000 + 5_000 * np.sin(7 * t)) * np.cos(t),
                 50_000 + (30_000 + 5_000 * np.sin(7 * t)) * np.sin(t)]
    region = Region(shapely.Polygon(star), "star")
    xs = np.arange(0, 100_000, 316)
    coords = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)[:100_000]
    keep, rep = filter_grid(coords, 256, Regions([region]), mpp=0.25)
    sample = np.random.default_rng(0).choice(len(coords), 300, replace=False)
    for i in sample:
        assert keep[i] == region.geometry.contains(Point(coords[i] + 128))
    assert rep.n_kept == keep.sum() > 0
