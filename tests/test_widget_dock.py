"""The dock's legibility and lifecycle: the GC freeze's single owner, dropdowns that follow
layer renames, result views that show every row, rank badges inside their boxes and the
focused region after a jump (run under xvfb-run)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from qtpy.QtCore import Qt

from _plugin_helpers import CATEGORIES, FAST_ENCODER, SIZES, make_bundle
from napari_ghanet._qt import layers as qt_layers
from napari_ghanet._qt.gc_hold import GCHold, holders
from napari_ghanet._widget import PrognosisWidget
from napari_ghanet.inference import overlays
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.slide import cmu_slide_path
from napari_ghanet.models.bundle import load_bundle

#: category names as long as real ones ("Cell Differentiation Markers"), and longer
LONG_NAMES = [f"{name} and Related Signalling Pathways" for name in CATEGORIES]


@pytest.fixture(scope="module")
def fast_bundle_path(tmp_path_factory):
    categories = [{"name": name, "genes": [f"GENE{i}{j}" for j in range(s)]}
                  for i, (name, s) in enumerate(zip(LONG_NAMES, SIZES))]
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER,
                       categories=categories)


@pytest.fixture(scope="module")
def cmu_prediction(fast_bundle_path, tmp_path_factory):
    return predict_slide(cmu_slide_path(), load_bundle(fast_bundle_path), device="cpu",
                         cache_dir=tmp_path_factory.mktemp("cache"), top_k=10)


@pytest.fixture
def dock(make_napari_viewer, fast_bundle_path, tmp_path, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    [slide] = viewer.open(str(cmu_slide_path()), plugin="napari-ghanet")
    widget = PrognosisWidget(viewer, cache_dir=tmp_path / "cache", model_path=fast_bundle_path)
    dock = viewer.window.add_dock_widget(widget, name="G-HANet prognosis", area="right")
    viewer.window._qt_window.resizeDocks([dock], [360], Qt.Orientation.Horizontal)
    qtbot.wait(50)
    return viewer, slide, widget


def _items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


# ---------------------------------------------------------------------- GC freeze


def test_an_inner_layer_batch_does_not_end_the_runs_gc_freeze():
    from napari.components import ViewerModel
    from napari.layers import Image

    assert holders() == 0 and gc.get_freeze_count() == 0
    viewer = ViewerModel()
    run = GCHold()
    run.acquire()  # the prediction run's freeze
    frozen = gc.get_freeze_count()
    assert frozen > 0
    batch = qt_layers.LayerBatch(viewer, [(f"k{i}", Image(np.zeros((4, 4)))) for i in range(3)])
    batch.insert_some(budget_s=float("inf"))
    assert holders() == 2
    batch.reveal()  # the batch gives its share back ...
    assert holders() == 1
    assert gc.get_freeze_count() >= frozen  # ... and the run's freeze holds
    run.release()
    assert holders() == 0 and gc.get_freeze_count() == 0
    run.release()  # twice is harmless
    assert holders() == 0

    alone = qt_layers.LayerBatch(viewer, [("x", Image(np.zeros((4, 4))))])
    alone.insert_some()
    assert gc.get_freeze_count() > 0
    alone.reveal()
    assert gc.get_freeze_count() == 0  # a batch on its own thaws at the end


# ---------------------------------------------------------------------- renames


def test_slide_and_region_dropdowns_follow_layer_renames(dock):
    viewer, slide, widget = dock
    shapes = viewer.add_shapes([np.array([[0, 0], [0, 50], [50, 50], [50, 0]])],
                               shape_type="polygon", name="tumour")
    inputs = widget.inputs
    assert "tumour" in _items(inputs.include_combo)
    inputs.set_region_layer("include", shapes)

    shapes.name = "tumour core"
    assert _items(inputs.include_combo) == ["none", "tumour core"]
    assert _items(inputs.exclude_combo) == ["none", "tumour core"]
    assert inputs.include_layer() is shapes  # the choice survives the rename

    old = slide.name
    slide.name = "patient 7, block A"
    assert _items(inputs.layer_combo) == ["patient 7, block A"]
    assert widget.selected_layer() is slide
    assert old not in _items(inputs.layer_combo)

    viewer.layers.remove(shapes)
    assert _items(inputs.include_combo) == ["none"]
    shapes.name = "gone"  # no longer followed: nothing re-listed, nothing raised
    assert _items(inputs.include_combo) == ["none"]


# ---------------------------------------------------------------------- result views


def test_results_show_every_row_without_inner_scrolling(dock, cmu_prediction, qtbot):
    viewer, slide, widget = dock
    p = cmu_prediction
    widget.show_prediction(p, slide)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    qtbot.wait(50)
    table = widget.results.regions_table
    assert table.rowCount() == len(p.top_regions) == 10
    viewport = table.viewport().rect()
    for row in range(table.rowCount()):
        rect = table.visualRect(table.model().index(row, 2))
        assert rect.height() > 0 and viewport.contains(rect), row  # all rows in view
        text = table.item(row, 2).text()
        assert text == p.top_regions[row].category  # full name, wrapped if need be
        wrapped = table.fontMetrics().boundingRect(
            0, 0, rect.width(), 10_000, int(Qt.TextFlag.TextWordWrap.value), text)
        assert wrapped.height() <= rect.height()
    assert table.verticalScrollBar().maximum() == 0

    tree = widget.results.pathway_tree
    assert tree.verticalScrollBar().maximum() == 0
    assert tree.height() == tree.rows_height()
    before = tree.height()
    tree.topLevelItem(0).setExpanded(True)  # as a click on its arrow
    qtbot.wait(200)
    # the panel grew with the tree: what follows it is still below it, not under it
    assert widget.results.category_combo.y() > tree.geometry().bottom()
    assert widget.results.height() >= widget.results.sizeHint().height()
    tree.expandAll()
    qtbot.wait(50)
    assert tree.height() > before + sum(len(c.top_genes) for c in p.categories) * 5
    assert tree.verticalScrollBar().maximum() == 0
    metrics, indent = tree.fontMetrics(), tree.indentation()
    wrapped_rows = 0
    for i, c in enumerate(p.categories):
        item = tree.topLevelItem(i)
        assert item.text(0) == f"{c.name} ({len(c.genes)})"  # the full name
        width = tree.header().sectionSize(0) - indent - 8
        needed = metrics.boundingRect(0, 0, width, 10_000,
                                      int(Qt.TextFlag.TextWordWrap.value), item.text(0))
        assert tree.visualItemRect(item).height() >= needed.height(), item.text(0)
        wrapped_rows += needed.height() > metrics.height() * 1.5
    assert widget.width() <= 360 and wrapped_rows >= 3  # long names did wrap here

    # the survival plot's last step lies inside the axes, not on their right border
    ax = widget.results.survival_figure.axes[0]
    months, _ = p.survival_curve()
    horizon = p.horizon_months
    assert ax.get_xlim()[1] > max(horizon, 0) * 1.03


def test_rank_badges_lie_inside_their_boxes(cmu_prediction):
    from napari.layers import Shapes

    regions = cmu_prediction.top_regions
    kw = qt_layers.region_shapes(regions, (0.5, 0.5), (10.0, 20.0))
    layer = Shapes(**kw)
    k = len(regions)
    assert layer.nshapes == 2 * k
    boxes, badges = layer.data[:k], layer.data[k:]
    for r, box, badge in zip(regions, boxes, badges):
        np.testing.assert_allclose(box, overlays.region_rectangles(
            np.array([[r.x, r.y, r.width, r.height]]), (0.5, 0.5), (10.0, 20.0))[0])
        lo, hi = box.min(axis=0), box.max(axis=0)
        assert (badge.min(axis=0) > lo).all() and (badge.max(axis=0) < hi).all()
        # in the box's upper-left quarter: never above the top edge
        assert (badge.max(axis=0) < lo + 0.5 * (hi - lo)).all()
    labels = list(layer.properties["label"])
    assert labels == [""] * k + [str(r.rank) for r in regions]
    assert layer.text.anchor == "center"  # the rank is centred on its badge
    strings = list(layer.text.string._values if hasattr(layer.text.string, "_values")
                   else layer.text.string(layer.properties))
    assert strings == labels
    # white digits on a dark badge with a white edge: contrast on light and dark tissue
    assert np.allclose(layer.face_color[k:, :3], 0.0) and (layer.face_color[k:, 3] > 0.5).all()
    assert np.allclose(layer.edge_color[k:], 1.0)
    assert np.allclose(layer.face_color[:k, 3], 0.0)  # boxes stay transparent


def test_go_there_highlights_the_focused_box(dock, cmu_prediction, qtbot):
    viewer, slide, widget = dock
    p = cmu_prediction
    widget.show_prediction(p, slide)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    shapes = widget.result_layers["regions"]
    k = len(p.top_regions)
    normal = np.array(shapes.edge_color[:k])
    width = shapes.edge_width[0]
    widget.go_to_region(2)
    colours, widths = np.array(shapes.edge_color), list(shapes.edge_width)
    focus = qt_layers._rgba(qt_layers.FOCUS_EDGE)
    assert not np.allclose(focus, normal[2])
    assert np.allclose(colours[2], focus) and widths[2] == pytest.approx(2 * width)
    others = [i for i in range(k) if i != 2]
    np.testing.assert_allclose(colours[others], normal[others])
    assert [widths[i] for i in others] == pytest.approx([width] * (k - 1))
    assert shapes.selected_data == {2} and shapes.visible
    widget.go_to_region(0)  # the focus moves: box 3 as before, box 1 highlighted
    colours, widths = np.array(shapes.edge_color), list(shapes.edge_width)
    np.testing.assert_allclose(colours[2], normal[2])
    assert np.allclose(colours[0], focus) and widths[0] == pytest.approx(2 * width)
    assert widths[2] == pytest.approx(width)
