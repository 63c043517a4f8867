"""The "G-HANet prognosis" dock widget in a real viewer (run under xvfb-run)."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt

from _plugin_helpers import FAST_ENCODER, make_bundle, tissue_rgb, write_tiff_slide
from napari_ghanet._widget import PrognosisWidget
from napari_ghanet.inference import overlays
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.slide import cmu_slide_path
from napari_ghanet.models.bundle import load_bundle

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def fast_bundle_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


@pytest.fixture
def notes():
    """Notifications shown during the test, as (severity, message)."""
    start = len(notification_manager.records)

    def new():
        return [(str(n.severity), n.message) for n in notification_manager.records[start:]]

    return new


def errors(notes) -> list[str]:
    return [m for s, m in notes() if s.lower() == "error"]


def make_widget(viewer, bundle_path, cache_dir):
    widget = PrognosisWidget(viewer, cache_dir=cache_dir, model_path=bundle_path)
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    widget.inputs.device_combo.setCurrentText("cpu")
    return widget


def run(widget, qtbot):
    widget.inputs.predict_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def overlay_layers(viewer):
    return [layer for layer in viewer.layers if "ghanet_overlay" in layer.metadata]


def test_prediction_through_the_widget_matches_predict_slide(
    make_napari_viewer, qtbot, tmp_path, fast_bundle_path, notes
):
    viewer = make_napari_viewer()
    [slide_layer] = viewer.open(str(cmu_slide_path()), plugin="napari-ghanet")
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "cache")
    assert widget.selected_layer() is slide_layer
    assert "0.499 um/px" in widget.inputs.slide_info.text()
    assert not widget.inputs.mpp_spin.isVisibleTo(widget)
    # advanced settings default to the bundle's
    assert widget.settings.patch_px.value == 64 and widget.settings.target_mpp.value == 2.0
    bundle = load_bundle(fast_bundle_path)
    assert bundle.intended_use in widget.intended_use_label.text()

    run(widget, qtbot)
    assert errors(notes) == []
    p = widget.prediction
    assert p is not None and not p.features_cached
    # the GC is frozen only while the result layers go in: nothing stays uncollectable
    qtbot.waitUntil(lambda: len(overlay_layers(viewer)) > 0 and gc.get_freeze_count() == 0,
                    timeout=TIMEOUT_MS)

    direct = predict_slide(cmu_slide_path(), bundle, device="cpu", batch_size=64,
                           cache_dir=tmp_path / "direct-cache")
    assert p.risk == pytest.approx(direct.risk, abs=1e-6)
    assert p.percentile == pytest.approx(direct.percentile, abs=1e-4)
    assert p.risk_group == direct.risk_group
    np.testing.assert_array_equal(p.coords, direct.coords)
    np.testing.assert_allclose(p.morphology_attention, direct.morphology_attention, atol=1e-7)
    np.testing.assert_allclose(p.genome_attention, direct.genome_attention, atol=1e-7)

    # -- numbers in the widget
    assert p.risk_group.capitalize() in widget.results.risk_label.text()
    assert f"{p.risk:.3f}" in widget.results.risk_detail.text()
    tree = widget.results.pathway_tree
    assert tree.topLevelItemCount() == 6
    for i, cat in enumerate(p.categories):
        item = tree.topLevelItem(i)
        assert item.text(0).startswith(cat.name)
        assert item.childCount() == len(cat.top_genes)
        assert item.child(0).text(0) == cat.top_genes[0][0]
    table = widget.results.regions_table
    assert table.rowCount() == 10
    assert [table.item(r, 2).text() for r in range(10)] == [r.category for r in p.top_regions]
    assert bundle.intended_use in widget.intended_use_label.text()
    assert widget.intended_use_label.isVisibleTo(widget)

    # -- layers: the patch-grid arrays of predict_slide's numbers, aligned with the slide
    names = [layer.name for layer in overlay_layers(viewer)]
    assert names == ["G-HANet · tissue", "G-HANet · morphology", "G-HANet · genome attention",
                     "G-HANet · top regions"]  # the CMU slide loses no patch to QC
    lattice = overlays.patch_lattice(direct.coords, direct.patch_size_level0)
    morph = widget.result_layers["morphology"]
    np.testing.assert_allclose(
        morph.data, overlays.attention_image(direct.morphology_attention, lattice), atol=1e-6)
    assert morph.data.shape == lattice.shape  # one pixel per patch, no full-size canvas
    assert morph.data[0].size < 100
    top = p.top_regions[0]
    centre_world = overlays.region_centre(top.x, top.y, top.width, top.height, (0.499, 0.499))
    row, col = np.round(morph.world_to_data(centre_world)).astype(int)
    assert (row, col) == (lattice.rows[top.index], lattice.cols[top.index])
    assert morph.data[row, col] == pytest.approx(1.0)  # the top patch has the top rank
    # level-0 pixel under the same world point is inside that patch
    y0, x0 = slide_layer.world_to_data(centre_world)
    assert top.x <= x0 < top.x + top.width and top.y <= y0 < top.y + top.height
    # non-tissue cells are 0 (transparent in the colormap)
    assert morph.colormap.map(np.array([0.0]))[0, 3] == 0
    assert np.count_nonzero(morph.data) == p.n_patches
    assert not widget.result_layers["genome"].visible
    tissue = widget.result_layers["tissue"]
    np.testing.assert_array_equal(tissue.data, overlays.mask_outline(p.tissue_mask))
    assert tissue.data.sum() < p.tissue_mask.sum()  # an outline, not the filled mask
    assert not tissue.data[~p.tissue_mask].any()
    shapes = widget.result_layers["regions"]
    assert shapes.nshapes == 20  # 10 boxes, then their 10 rank badges
    np.testing.assert_allclose(
        shapes.data[0], overlays.region_rectangles(
            np.array([[top.x, top.y, top.width, top.height]]), (0.499, 0.499))[0])
    assert list(shapes.properties["rank"]) == list(range(1, 11)) * 2

    # -- one genome-attention layer shows the category picked in the dock, named after it
    genome = widget.result_layers["genome"]
    widget.results.category_combo.setCurrentIndex(3)  # "none" is entry 0
    assert genome.visible and genome.name == f"G-HANet · {p.category_names[2]}"
    np.testing.assert_allclose(
        genome.data, overlays.attention_image(direct.genome_attention[2], lattice), atol=1e-6)
    widget.results.category_combo.setCurrentIndex(5)
    assert genome.name == f"G-HANet · {p.category_names[4]}"
    np.testing.assert_allclose(
        genome.data, overlays.attention_image(direct.genome_attention[4], lattice), atol=1e-6)
    widget.results.category_combo.setCurrentIndex(0)
    assert not genome.visible

    # -- clicking a region row centres and zooms on it
    rect = table.visualItemRect(table.item(2, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    r3 = p.top_regions[2]
    expected = overlays.region_centre(r3.x, r3.y, r3.width, r3.height, (0.499, 0.499))
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], expected, atol=1e-6)
    assert viewer.scene.camera.zoom == pytest.approx(
        min(viewer.canvas.size) / (3 * r3.width * 0.499), rel=1e-6)

    # -- exports
    out = tmp_path / "exports"
    report = widget.export("json", out / "r.json")
    assert json.loads(report.read_text())["prediction"]["risk"] == pytest.approx(p.risk)
    csv_path = widget.export("csv", out / "p.csv")
    assert len(csv_path.read_text().splitlines()) == p.n_patches + 1
    geo = widget.export("geojson", out / "p.geojson")
    assert len(json.loads(geo.read_text())["features"]) == p.n_patches
    png = widget.export("png", out / "snap.png")
    from imageio.v3 import imread

    assert imread(png).ndim == 3
    assert sorted(f.name for f in out.iterdir()) == ["p.csv", "p.geojson", "r.json", "snap.png"]

    # -- a second prediction reuses the cached features and replaces the layers
    run(widget, qtbot)
    assert widget.prediction.features_cached
    assert widget.prediction.risk == p.risk
    assert "cached features" in widget.inputs.status_label.text()
    assert len(overlay_layers(viewer)) == len(names)
    assert errors(notes) == []


def test_cancel_mid_run_leaves_no_layers_and_no_cache(
    make_napari_viewer, qtbot, tmp_path, notes
):
    # 256 px patches (~0.4 s per batch of 16 on a CPU), ~90 patches in batches of 16: the
    # run checks Cancel between batches, so it stops part-way through the embedding
    bundle = make_bundle(tmp_path / "m256.safetensors")
    path = write_tiff_slide(tmp_path / "slide.tif", tissue_rgb(3072, 4096), mpp=0.5, levels=3,
                            tile=256)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ghanet")
    cache = tmp_path / "cache"
    widget = make_widget(viewer, bundle, cache)
    widget.settings.batch_size.value = 16
    progress = []
    widget.progressed.connect(lambda stage, done, total: progress.append((stage, done, total)))
    widget.inputs.predict_button.click()
    assert widget.running and widget.inputs.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: "Embedding" in widget.inputs.status_label.text(), timeout=TIMEOUT_MS)
    assert not widget.inputs.predict_button.isEnabled()
    widget.inputs.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    embedded = [(done, total) for stage, done, total in progress if stage == "features"]
    assert embedded and embedded[-1][0] < embedded[-1][1]  # stopped part-way
    assert "model" not in [stage for stage, _, _ in progress]
    assert widget.prediction is None
    assert overlay_layers(viewer) == []
    assert not widget.results.isVisible()
    assert not cache.exists() or not [f for f in cache.rglob("*") if f.is_file()]
    assert any(s.lower() == "warning" and "cancelled" in m for s, m in notes())
    assert errors(notes) == []
    assert widget.inputs.predict_button.isEnabled() and not widget.inputs.cancel_button.isEnabled()
    # and the next run goes through
    run(widget, qtbot)
    assert widget.prediction is not None
    assert len(overlay_layers(viewer)) == len(widget.result_layers) >= 4
    assert len([f for f in cache.rglob("*.h5")]) == 1


def test_no_model_is_an_error_notification(make_napari_viewer, qtbot, tmp_path,
                                           fast_bundle_path, notes):
    viewer = make_napari_viewer()
    viewer.open(str(cmu_slide_path()), plugin="napari-ghanet")
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "c")
    widget._set_bundle(None)  # as when the bundled demo model is absent
    widget.inputs.predict_button.click()
    assert not widget.running
    assert any("No model loaded" in m for m in errors(notes))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 32)
    assert not widget.load_model(bad)
    assert any("Cannot load the model" in m and "bad.safetensors" in m for m in errors(notes))
    assert widget.bundle is None


def test_encoder_mismatch_is_an_error_notification(make_napari_viewer, qtbot, tmp_path, notes):
    bundle = make_bundle(tmp_path / "m32.safetensors", input_dim=32,
                         encoder={"name": "morphometric", "dim": 32, "patch_px": 64,
                                  "target_mpp": 2.0})
    viewer = make_napari_viewer()
    viewer.open(str(cmu_slide_path()), plugin="napari-ghanet")
    widget = make_widget(viewer, bundle, tmp_path / "c")
    run(widget, qtbot)
    [message] = errors(notes)
    assert "does not fit" in message and "feature dimension 64 instead of 32" in message
    assert overlay_layers(viewer) == [] and widget.prediction is None


def test_slide_without_mpp_asks_for_it(make_napari_viewer, qtbot, tmp_path,
                                       fast_bundle_path, notes):
    path = write_tiff_slide(tmp_path / "nompp.tif", tissue_rgb(512, 768), mpp=None, levels=2)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ghanet")
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "c")
    assert widget.inputs.mpp_spin.isVisibleTo(widget)
    assert "resolution unknown" in widget.inputs.slide_info.text()
    widget.inputs.predict_button.click()
    assert not widget.running
    assert any("does not record its resolution" in m for m in errors(notes))
    widget.inputs.mpp_spin.setValue(1.0)
    run(widget, qtbot)
    assert widget.prediction is not None and widget.prediction.slide["mpp"] == 1.0
    assert widget.prediction.patch_size_level0 == 128
    # the overlays align with a layer in pixels (scale 1): one cell = 128 pixels
    assert tuple(widget.result_layers["morphology"].scale) == (128.0, 128.0)


def test_no_tissue_is_an_error_notification(make_napari_viewer, qtbot, tmp_path,
                                            fast_bundle_path, notes):
    path = write_tiff_slide(tmp_path / "blank.tif", np.full((768, 1024, 3), 243, np.uint8))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ghanet")
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "c")
    run(widget, qtbot)
    [message] = errors(notes)
    assert "No tissue found" in message
    assert overlay_layers(viewer) == []


def test_unreadable_slide_is_an_error_notification(make_napari_viewer, qtbot, tmp_path,
                                                   fast_bundle_path, notes):
    path = write_tiff_slide(tmp_path / "gone.tif", tissue_rgb(512, 768), mpp=1.0, levels=2)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ghanet")
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "c")
    path.write_bytes(b"II*\x00" + b"\x00" * 100)  # the file is damaged after opening
    run(widget, qtbot)
    [message] = errors(notes)
    assert "Cannot read the slide" in message and "gone.tif" in message
    # a layer without a file behind it
    viewer.add_image(tissue_rgb(64, 64), name="array", rgb=True)
    assert widget.selected_layer().name == "array"
    widget.inputs.predict_button.click()
    assert any("has no slide file" in m for m in errors(notes))
    assert overlay_layers(viewer) == []


def test_widget_and_sample_come_from_the_plugin_manifest(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    [layer] = viewer.open_sample("napari-ghanet", "ghanet_demo")
    assert layer.metadata["path"] == str(cmu_slide_path())
    _, widget = viewer.window.add_plugin_dock_widget("napari-ghanet", "G-HANet prognosis")
    assert isinstance(widget, PrognosisWidget)
    assert widget.selected_layer().name == layer.name
    assert "0.499 um/px" in widget.inputs.slide_info.text()
    from napari_ghanet.models.bundle import demo_bundle_path

    # the bundled demonstration model is the default when it is installed
    assert (widget.bundle is not None) == demo_bundle_path().is_file()
    # napari hands plugin widgets a proxy of the viewer: layers are matched by equality
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [
        [[0, 0], [500, 0], [500, 500], [0, 0]]]}))
    shapes = widget.import_geojson(path, kind="exclude")
    assert widget.inputs.exclude_layer() == shapes == viewer.layers["roi (exclude)"]
    viewer.add_image(tissue_rgb(64, 64), name="second", rgb=True)
    assert widget.inputs.exclude_layer() == shapes  # kept when the layer list changes
    assert widget.regions(layer).exclude[0].geometry.area == pytest.approx(500 * 500 / 2)


def _cut_widgets(widget) -> list[str]:
    """Visible buttons and labels of the dock that do not fit its scroll viewport
    horizontally, or that are narrower than their text needs."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QAbstractButton, QLabel

    viewport = widget.scroll.viewport()
    bad = []
    for child in widget.findChildren((QAbstractButton, QLabel)):
        if not child.isVisibleTo(widget) or child.height() == 0:
            continue
        x = child.mapTo(viewport, QPoint(0, 0)).x()
        text = child.text()[:40]
        if x < 0 or x + child.width() > viewport.width():
            bad.append(f"{type(child).__name__} {text!r}: x {x}..{x + child.width()} "
                       f"outside 0..{viewport.width()}")
        elif isinstance(child, QAbstractButton) and \
                child.width() < child.minimumSizeHint().width():
            bad.append(f"button {text!r} squeezed to {child.width()} px")
    return bad


def test_dock_fits_360_px_at_every_stage_and_names_layers_short(
    make_napari_viewer, qtbot, tmp_path, cmu_svs, notes
):
    from napari_ghanet.models.bundle import demo_bundle_path

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    [slide_layer] = viewer.open(str(cmu_svs), plugin="napari-ghanet")
    widget = PrognosisWidget(viewer, cache_dir=tmp_path / "cache",
                             model_path=demo_bundle_path())
    dock = viewer.window.add_dock_widget(widget, name="G-HANet prognosis", area="right")
    widget.inputs.device_combo.setCurrentText("cpu")

    def check(stage: str) -> None:
        viewer.window._qt_window.resizeDocks([dock], [360], Qt.Orientation.Horizontal)
        qtbot.wait(50)
        assert widget.minimumSizeHint().width() <= 360, stage
        assert 200 < widget.width() <= 360, (stage, widget.width())
        assert _cut_widgets(widget) == [], stage

    widget.inputs.advanced.expand(animate=False)
    check("before")
    widget.inputs.predict_button.click()
    assert widget.running
    check("during")
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.prediction is not None and errors(notes) == []
    widget.results.pathway_tree.expandAll()
    check("after")

    # short, grouped layer names; the slide's name only when several slides are open
    # (the "unlike training" layer of the distribution check sits under the attention maps)
    expected = ["tissue", "morphology", "unlike training", "genome attention", "top regions"]
    assert [layer.name for layer in overlay_layers(viewer)] == [
        f"G-HANet · {label}" for label in expected]
    other = viewer.add_image(tissue_rgb(64, 64), name="second slide", rgb=True)
    assert [layer.name for layer in overlay_layers(viewer)] == [
        f"{slide_layer.name} · G-HANet · {label}" for label in expected]
    viewer.layers.remove(other)
    assert overlay_layers(viewer)[1].name == "G-HANet · morphology"
