"""Result layers of a prediction of a few thousand patches over a whole-slide extent: the
arrays, their transforms in level-0 pixels, the QC layer's colours, and the dock adding
them a few per turn (glyphs of the labels rendered ahead, a layer's text shown a turn
after it) over a lazy multiscale slide layer (run under xvfb-run). No timing here: the
stalls are measured by ``benchmarks/ui_responsiveness.py --patches 20480``."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest

from _large_prediction import MASK_DOWN, MPP, PATCH0, large_prediction
from napari_ghanet._qt import layers as qt_layers
from napari_ghanet._widget import PrognosisWidget
from napari_ghanet.inference import overlays
from napari_ghanet.inference.exports import geojson_dict
from napari_ghanet.models.bundle import demo_bundle_path

TIMEOUT_MS = 60_000
#: where the slide layer lies in the world (um): not at the origin
TRANSLATE = (120.0, -40.0)


@pytest.fixture(scope="module")
def prediction(tmp_path_factory):
    p = large_prediction(tmp_path_factory.mktemp("large"), 3000)
    assert p.n_patches == 3000 and len(p.qc_coords) == 60
    return p


def _geometry(p) -> qt_layers.SlideGeometry:
    w0, h0 = p.slide["dimensions_level0"]
    return qt_layers.SlideGeometry(scale=(MPP, MPP), translate=TRANSLATE, shape=(h0, w0),
                                   units=("micrometer", "micrometer"))


def _world(p, i: int) -> np.ndarray:
    """World (row, col) um of the centre of patch ``i``."""
    x, y = p.coords[i]
    return np.array(TRANSLATE) + (np.array([y, x]) + PATCH0 / 2 - 0.5) * MPP


def test_layers_of_a_large_prediction_line_up(prediction):
    p = prediction
    layers = dict(qt_layers.build_result_layers(p, _geometry(p)))
    assert list(layers) == ["tissue", "morphology", "genome", "qc", "regions"]
    lattice = overlays.patch_lattice(p.coords, PATCH0)
    morph = layers["morphology"]
    # one pixel per grid cell, one grid cell per 512 level-0 px
    assert morph.data.shape == lattice.shape and morph.data.size < 2 * p.n_patches
    assert tuple(morph.scale) == pytest.approx((PATCH0 * MPP,) * 2)
    ox, oy = lattice.origin
    assert (ox, oy) == tuple(int(v) for v in p.coords.min(axis=0))
    assert tuple(morph.translate) == pytest.approx(
        (TRANSLATE[0] + (oy + 255.5) * MPP, TRANSLATE[1] + (ox + 255.5) * MPP))
    assert np.count_nonzero(morph.data) == p.n_patches
    # known patches: the top one at rank 1.0, every patch's centre on its own cell
    top = p.top_regions[0].index
    rows, cols = np.round([morph.world_to_data(_world(p, i)) for i in range(p.n_patches)]).T
    np.testing.assert_array_equal(rows, lattice.rows)
    np.testing.assert_array_equal(cols, lattice.cols)
    assert morph.data[lattice.rows[top], lattice.cols[top]] == pytest.approx(1.0)
    expected = overlays.attention_image(p.morphology_attention, lattice)
    np.testing.assert_array_equal(morph.data, expected)
    # genome: one image per category, the first shown, all the same grid
    genome = layers["genome"]
    images = genome.metadata["ghanet_images"]
    assert len(images) == len(p.category_names) and not genome.visible
    for t, image in enumerate(images):
        np.testing.assert_array_equal(image, overlays.attention_image(p.genome_attention[t],
                                                                      lattice))
    assert tuple(genome.translate) == tuple(morph.translate)
    # tissue: one pixel per 64 level-0 px from the slide's corner
    tissue = layers["tissue"]
    assert tissue.data.shape == p.tissue_mask.shape
    assert tuple(tissue.scale) == pytest.approx((MASK_DOWN * MPP,) * 2)
    assert tuple(tissue.translate) == pytest.approx(
        tuple(t + (MASK_DOWN / 2 - 0.5) * MPP for t in TRANSLATE))
    # QC: one square per flagged patch at its centre, coloured by reason as one array
    qc = layers["qc"]
    assert len(qc.data) == len(p.qc_coords) == 60
    x, y = p.qc_coords[7]
    np.testing.assert_allclose(qc.data[7], np.array(TRANSLATE)
                               + (np.array([y, x]) + PATCH0 / 2 - 0.5) * MPP)
    assert qc.size[0] == pytest.approx(PATCH0 * MPP)
    for reason, hex_colour in qt_layers.QC_COLOURS.items():
        rows_of = np.flatnonzero(np.asarray(qc.features["reason"]) == reason)
        assert rows_of.size == 20
        rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        np.testing.assert_allclose(qc.border_color[rows_of, :3],
                                   np.tile(rgb, (rows_of.size, 1)), atol=1e-6)
    # regions: the top 10 boxes and their rank badges, not one shape per patch
    regions = layers["regions"]
    assert regions.nshapes == 20
    r = p.top_regions[0]
    np.testing.assert_allclose(regions.data[0], overlays.region_rectangles(
        np.array([[r.x, r.y, r.width, r.height]]), (MPP, MPP), TRANSLATE)[0])


def test_qc_colours_one_array():
    colours = qt_layers.qc_colours(np.array(["fold", "pen", "pen", "odd"]))
    assert colours.shape == (4, 4)
    np.testing.assert_allclose(colours[1], colours[2])
    np.testing.assert_allclose(colours[0], qt_layers._rgba(qt_layers.QC_COLOURS["fold"]))
    np.testing.assert_allclose(colours[3], [1, 1, 1, 1])
    assert qt_layers.qc_colours([]).shape == (0, 4)


def _slide_layer(viewer, p):
    """A lazy 3-level pyramid of the slide's extent, as the reader adds a slide."""
    import dask.array as da

    w0, h0 = p.slide["dimensions_level0"]
    levels = [da.full((-(-h0 // d), -(-w0 // d), 3), 230, np.uint8, chunks=(1024, 1024, 3))
              for d in (1, 4, 16)]
    return viewer.add_image(levels, rgb=True, multiscale=True, scale=(MPP, MPP),
                            translate=TRANSLATE, units=("micrometer", "micrometer"),
                            name="large.svs", contrast_limits=(0, 255),
                            metadata={"mpp": MPP, "level_dimensions": [(w0, h0)]})


def test_the_dock_adds_a_large_result_a_few_layers_per_turn(
    make_napari_viewer, prediction, tmp_path, qtbot
):
    p = prediction
    viewer = make_napari_viewer(show=True)
    slide = _slide_layer(viewer, p)
    widget = PrognosisWidget(viewer, cache_dir=tmp_path / "cache", model_path=demo_bundle_path())
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    qtbot.wait(50)
    geometry = widget.shown_layers.geometry(slide)
    assert geometry.scale == (MPP, MPP) and geometry.translate == TRANSLATE
    layers = qt_layers.build_result_layers(p, geometry)  # as the worker thread does
    turns: list[tuple[int, bool, bool]] = []  # (layers in, regions shown, its text shown)
    original = widget.shown_layers._insert

    def spy(budget_s=0.04):
        original(budget_s)
        regions = widget.shown_layers.layers.get("regions")
        turns.append((len(widget.shown_layers.layers),
                      bool(regions is not None and regions.visible),
                      bool(regions is not None and regions.text.visible)))

    widget.shown_layers._insert = spy
    widget.show_prediction(p, slide, layers=layers, incremental=True)
    assert widget.shown_layers.busy
    qtbot.waitUntil(lambda: not widget.shown_layers.busy, timeout=TIMEOUT_MS)
    assert len(turns) >= 5  # inserted and revealed over turns of the loop
    # the regions' shapes are shown one turn before their rank labels
    shown = [k for k, (_, vis, _) in enumerate(turns) if vis]
    labelled = [k for k, (_, vis, text) in enumerate(turns) if vis and text]
    assert shown and labelled and labelled[0] == shown[0] + 1
    assert gc.get_freeze_count() == 0  # the batch's GC freeze is given back
    assert viewer.layers.selection.active is slide

    names = [layer.name for layer in viewer.layers if "ghanet_overlay" in layer.metadata]
    assert names == ["G-HANet · tissue", "G-HANet · morphology",
                     "G-HANet · genome attention", "G-HANet · QC", "G-HANet · top regions"]
    result = widget.result_layers
    assert [k for k, layer in result.items() if layer.visible] == ["morphology", "qc", "regions"]
    assert result["regions"].text.visible
    # the morphology layer over the slide: a patch's centre lies on its own cell and on
    # the level-0 pixels of that patch in the slide layer
    i = p.top_regions[3].index
    centre = _world(p, i)
    lattice = overlays.patch_lattice(p.coords, PATCH0)
    morph = result["morphology"]
    assert tuple(np.round(morph.world_to_data(centre)).astype(int)) == (
        lattice.rows[i], lattice.cols[i])
    y0, x0 = slide.world_to_data(centre)
    assert p.coords[i, 0] <= x0 < p.coords[i, 0] + PATCH0
    assert p.coords[i, 1] <= y0 < p.coords[i, 1] + PATCH0
    # the regions table holds the top 10, not a row per patch
    assert widget.results.regions_table.rowCount() == 10
    # switching the genome category swaps the image of the one genome layer
    widget.show_category(4)
    genome = result["genome"]
    assert genome.visible and genome.name == f"G-HANet · {p.category_names[4]}"
    np.testing.assert_array_equal(genome.data, overlays.attention_image(p.genome_attention[4],
                                                                        lattice))
    # exports of the whole bag through the dock
    geo = widget.export("geojson", tmp_path / "p.geojson")
    assert json.loads(geo.read_text()) == json.loads(json.dumps(geojson_dict(p)))
    csv_path = widget.export("csv", tmp_path / "p.csv")
    assert len(csv_path.read_text().splitlines()) == p.n_patches + 1


def test_cancel_while_the_large_result_goes_in_leaves_nothing(
    make_napari_viewer, prediction, tmp_path, qtbot
):
    p = prediction
    viewer = make_napari_viewer(show=True)
    slide = _slide_layer(viewer, p)
    widget = PrognosisWidget(viewer, cache_dir=tmp_path / "cache", model_path=demo_bundle_path())
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    layers = qt_layers.build_result_layers(p, widget.shown_layers.geometry(slide))
    # cancelled before the first quiet turn: nothing goes in, later turns add nothing
    widget.show_prediction(p, slide, layers=layers, incremental=True)
    assert widget.running
    widget.cancel()
    qtbot.wait(1500)  # longer than the wait for a quiet turn
    assert [layer for layer in viewer.layers if "ghanet_overlay" in layer.metadata] == []
    assert not widget.running and widget.prediction is None
    assert gc.get_freeze_count() == 0
    # cancelled half-way (after the turn that inserted the second layer): the layers
    # inserted so far are taken out again
    original = widget.shown_layers._insert
    inserted: list[int] = []

    def insert_then_cancel(budget_s=0.04):
        original(budget_s)
        inserted.append(len(widget.shown_layers.layers))
        if len(widget.shown_layers.layers) >= 2 and widget.shown_layers.busy:
            widget.cancel()

    widget.shown_layers._insert = insert_then_cancel
    widget.show_prediction(p, slide, layers=qt_layers.build_result_layers(
        p, widget.shown_layers.geometry(slide)), incremental=True)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    qtbot.wait(200)
    assert 2 <= max(inserted) < 5 and widget.prediction is None
    assert [layer for layer in viewer.layers if "ghanet_overlay" in layer.metadata] == []
    assert gc.get_freeze_count() == 0 and list(viewer.layers) == [slide]
