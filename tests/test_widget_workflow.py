"""The pathologist's workflow in the dock (issue 13): regions of interest, artifact QC,
several slides of one patient, smooth heatmaps, risk groups and the survival horizon.
Run under xvfb-run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from napari.utils.notifications import notification_manager

from _plugin_helpers import FAST_ENCODER, make_bundle, tissue_rgb, write_tiff_slide
from napari_ghanet._qt.layers import QC_COLOURS, heatmap_display
from napari_ghanet.models.risk import risk_colour, risk_text
from napari_ghanet.options import PredictOptions, QCOptions

TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def fast_bundle_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER,
                       followup_p90_months=40.0)


@pytest.fixture
def notes():
    start = len(notification_manager.records)
    return lambda: [(str(n.severity).lower(), n.message)
                    for n in notification_manager.records[start:]]


def make_widget(viewer, bundle_path, cache_dir):
    from napari_ghanet._widget import PrognosisWidget

    widget = PrognosisWidget(viewer, cache_dir=cache_dir, model_path=bundle_path)
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    widget.inputs.device_combo.setCurrentText("cpu")
    return widget


def run(widget, qtbot):
    widget.inputs.predict_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def centres(p, k=0):
    idx = p.slide_patches(k)
    size = p.slides[k]["patch_size_level0"]
    return p.coords[idx] + size / 2.0


def test_regions_from_shapes_and_geojson_and_the_settings_form(
    make_napari_viewer, tmp_path, cmu_svs, fast_bundle_path, notes
):
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(cmu_svs), plugin="napari-ghanet")
    mpp = float(slide.scale[-1])
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "c")
    assert widget.regions() is None  # "none" in both combo boxes: all tissue

    # a rectangle drawn in world units (um) on a Shapes layer with its own transform
    shapes = viewer.add_shapes(
        [np.array([[10.0, 20.0], [10.0, 220.0], [110.0, 220.0], [110.0, 20.0]])],
        shape_type="rectangle", scale=(2.0, 2.0), translate=(50.0, 0.0), name="tumour")
    pen = viewer.add_shapes([np.array([[0.0, 0.0], [0.0, 40.0], [40.0, 40.0]])],
                            shape_type="polygon", name="pen")
    assert [widget.inputs.include_combo.itemText(i)
            for i in range(widget.inputs.include_combo.count())] == ["none", "tumour", "pen"]
    widget.inputs.set_region_layer("include", shapes)
    widget.inputs.set_region_layer("exclude", pen)
    regions = widget.regions()
    # world = data * 2 + (50, 0); level 0 = world / mpp, as (x, y)
    x0, y0, x1, y1 = regions.include[0].geometry.bounds
    assert (x0, y0) == pytest.approx((40.0 / mpp, 70.0 / mpp))
    assert (x1, y1) == pytest.approx((440.0 / mpp, 270.0 / mpp))
    assert regions.exclude[0].geometry.area == pytest.approx(0.5 * (40 / mpp) ** 2)

    # QuPath GeoJSON in level-0 pixels: a Shapes layer that overlays the slide
    square = [[1000, 500], [1600, 500], [1600, 1100], [1000, 1100], [1000, 500]]
    hole = [[1200, 700], [1400, 700], [1400, 900], [1200, 900], [1200, 700]]
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "tumour A"},
         "geometry": {"type": "Polygon", "coordinates": [square, hole]}},
        {"type": "Feature", "properties": {},
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[0, 0], [100, 0], [100, 100], [0, 0]]], [[[200, 0], [300, 0], [300, 80],
                                                         [200, 0]]]]}}]}
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(doc))
    imported = widget.import_geojson(path)
    assert imported.nshapes == 3 and list(imported.features["name"])[0] == "tumour A"
    assert widget.inputs.include_layer() is imported
    assert viewer.layers.selection.active is imported
    # level-0 (x, y) = (1600, 1100) lands on the same world point as the slide's pixel
    world = imported.data_to_world(imported.data[0][np.argmax(imported.data[0].sum(1))])
    np.testing.assert_allclose(world[-2:], slide.data_to_world([1100, 1600])[-2:], rtol=1e-9)
    # unedited, the annotations are used as read: the hole stays a hole
    inc = widget.regions().include
    assert len(inc) == 2 and shapely.equals(inc[0].geometry, shapely.Polygon(square, [hole]))
    assert inc[1].geometry.geom_type == "MultiPolygon"
    # edited (a shape removed), the shapes themselves are the regions (outer rings only)
    imported.selected_data = {2}
    imported.remove_selected()
    inc = widget.regions().include
    assert len(inc) == 2 and shapely.equals(inc[0].geometry, shapely.Polygon(square))
    bad = tmp_path / "points.geojson"
    bad.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    assert widget.import_geojson(bad) is None
    assert any(s == "error" and "no polygon" in m for s, m in notes())

    # the advanced settings: QC thresholds and overlap, with units and cost stated
    s = widget.settings
    kw = s.predict_kwargs()
    assert kw["qc"] == QCOptions() and kw["overlap"] == 0.0 and kw["backend"] == "auto"
    assert "weights" not in kw  # no weights file named: the usual caches
    s.encoder_weights.value = str(tmp_path / "uni.bin")
    assert s.predict_kwargs()["weights"] == tmp_path / "uni.bin"
    s.encoder_weights.value = ""
    assert "log10" in s.fold_od.tooltip and "fraction" in s.pen_min_fraction.label
    s.fold_od.value = 1.5
    s.heatmap_overlap.value = 0.75
    assert "16x" in s.overlap_cost.value
    kw = s.predict_kwargs()
    assert kw["qc"].fold_od == 1.5 and kw["overlap"] == 0.75
    s.qc_on.value = False
    assert not s.predict_kwargs()["qc"].enabled and not s.blur_fraction.enabled
    s.backend.value = "torch"
    # the form's values are accepted as prediction options as they are
    opts = PredictOptions.create(**s.predict_kwargs())
    assert opts.embed.backend == "torch" and not opts.qc.enabled and opts.heatmap.overlap == 0.75
    s.reset()
    assert s.predict_kwargs()["qc"] == QCOptions() and s.heatmap_overlap.value == 0.0
    assert s.backend.value == "auto"


def test_roi_heatmap_risk_and_horizon_through_the_widget(
    make_napari_viewer, qtbot, tmp_path, cmu_svs, fast_bundle_path, notes
):
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(cmu_svs), plugin="napari-ghanet")
    mpp = float(slide.scale[-1])
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "c")
    w0, h0 = slide.metadata["level_dimensions"][0]
    # include the left 60 % of the slide, exclude a band in its middle (world um)
    include = viewer.add_shapes([np.array([[0, 0], [0, 0.6 * w0], [h0, 0.6 * w0], [h0, 0]])
                                 * mpp], shape_type="rectangle", name="left")
    exclude = viewer.add_shapes([np.array([[0, 0.2 * w0], [0, 0.3 * w0], [h0, 0.3 * w0],
                                           [h0, 0.2 * w0]]) * mpp],
                                shape_type="rectangle", name="band")
    widget.inputs.set_region_layer("include", include)
    widget.inputs.set_region_layer("exclude", exclude)
    widget.settings.heatmap_overlap.value = 0.5
    run(widget, qtbot)
    assert [m for s, m in notes() if s == "error"] == []
    p = widget.prediction
    cx = centres(p)[:, 0]
    assert p.n_patches > 5
    assert np.all(cx < 0.6 * w0 + 1) and not np.any((cx > 0.2 * w0 + 1) & (cx < 0.3 * w0 - 1))
    rep = p.regions_report
    assert rep["n_include_regions"] == 1 and rep["n_exclude_regions"] == 1
    assert rep["n_kept"] == p.n_patches
    text = widget.results.regions_label.text()
    assert f"{rep['include_area_mm2']:.3g} mm" in text
    assert f"{rep['n_excluded']:,} patches removed" in text
    assert widget.results.regions_label.isVisibleTo(widget)
    assert "0 patches left out" in widget.results.qc_label.text()
    assert "G-HANet · QC" not in [layer.name for layer in viewer.layers]

    # 50 % overlap: the attention layers show the smooth heatmaps, aligned with the slide
    hm = p.heatmaps["morphology"]
    morph = widget.result_layers["morphology"]
    image, scale, translate = heatmap_display(hm, (mpp, mpp))
    np.testing.assert_allclose(morph.data, image)
    assert tuple(morph.scale) == pytest.approx((hm.cell_level0 * mpp,) * 2)
    assert np.all(morph.data[~np.isfinite(hm.image)] == 0)  # transparent where no patch
    assert morph.data.shape[0] > 1.5 * (np.ptp(p.coords[:, 1]) / p.patch_size_level0)
    top = p.top_regions[0]  # the top patch's cells are bright
    r, c = np.round(morph.world_to_data(
        ((top.y + top.height / 2) * mpp, (top.x + top.width / 2) * mpp))).astype(int)
    assert morph.data[r, c] > 0.5
    widget.show_category(2)
    genome = widget.result_layers["genome"]
    name = p.category_names[2]
    np.testing.assert_allclose(genome.data, heatmap_display(p.heatmaps[name], (mpp, mpp))[0])

    # risk group wording and colour from models.risk; the plot ends at the horizon
    label = widget.results.risk_label.text()
    assert risk_text(p.risk_group) in label and risk_colour(p.risk_group) in label
    assert p.horizon_months == 24.0  # last bin edge within the 40-month p90 follow-up
    ax = widget.results.survival_figure.axes[0]
    assert ax.get_xlim()[1] == pytest.approx(p.horizon_months * 1.06)  # last step inside
    assert widget.results.horizon_label.text() == p.horizon_note
    assert "24 months" in p.horizon_note


def test_patient_with_two_slides_and_the_qc_layer(
    make_napari_viewer, qtbot, tmp_path, cmu_svs, fast_bundle_path, notes
):
    rgb = tissue_rgb(1024, 1536)
    rgb[350:700, 450:900] = (20, 160, 60)  # a green pen mark on the tissue
    pen_slide = write_tiff_slide(tmp_path / "pen.tif", rgb, mpp=0.5, levels=2)
    viewer = make_napari_viewer()
    [cmu] = viewer.open(str(cmu_svs), plugin="napari-ghanet")
    [pen] = viewer.open(str(pen_slide), plugin="napari-ghanet")
    pen.translate = (0.0, 1500.0)  # side by side in the viewer
    widget = make_widget(viewer, fast_bundle_path, tmp_path / "c")
    widget.inputs.layer_combo.setCurrentIndex(0)
    assert widget.selected_layer() is cmu
    assert widget.inputs.patient_list.isVisibleTo(widget)
    widget.inputs.set_patient_layers([pen])
    assert widget.inputs.patient_layers() == [cmu, pen]
    widget.settings.target_mpp.value = 1.0  # not the model's: a warning, listed and shown
    run(widget, qtbot)
    assert [m for s, m in notes() if s == "error"] == []
    p = widget.prediction
    assert p.n_slides == 2 and [s["name"] for s in p.slides] == [cmu.name, "pen.tif"]
    assert any("differ from" in w for w in p.warnings)
    assert any(s == "warning" and "differ from" in m for s, m in notes())
    assert "differ from" in widget.results.warnings_label.text()
    assert "2 slides" in widget.results.slides_label.text()

    # attention layers on each slide, prefixed with the slide's name
    names = [layer.name for layer in viewer.layers if "ghanet_overlay" in layer.metadata]
    assert f"{cmu.name} · G-HANet · morphology" in names
    assert "pen.tif · G-HANet · morphology" in names
    morph1 = widget.result_layers["morphology@1"]
    assert morph1.metadata["ghanet_slide"] == 1
    assert np.count_nonzero(morph1.data) == len(p.slide_patches(1))
    tissue1 = widget.result_layers["tissue@1"]
    assert tissue1.data.shape == p.tissue_masks[1].shape
    # the mask covers the pen slide: its last pixel ends at the slide's far corner
    corner = tissue1.data_to_world(np.array(tissue1.data.shape) - 0.5)
    np.testing.assert_allclose(corner, (1024 * 0.5, 1536 * 0.5 + 1500.0), rtol=0.02)
    # every patch of the pen slide lands on a lit cell of its layer (moved with the slide)
    c1 = centres(p, 1)
    world = np.stack([c1[:, 1] * 0.5, c1[:, 0] * 0.5 + 1500.0], axis=1)
    cells = np.round([morph1.world_to_data(w) for w in world]).astype(int)
    assert len({tuple(c) for c in cells}) == len(c1)
    assert np.all(morph1.data[cells[:, 0], cells[:, 1]] > 0)

    # QC: the pen mark's patches are left out and shown on the pen slide, by reason
    on_pen = p.qc_slide_index == 1
    assert (p.qc_reasons[on_pen] == "pen").sum() >= 2
    qc = widget.result_layers["qc@1"]
    assert qc.name == "pen.tif · G-HANet · QC"
    assert len(qc.data) == on_pen.sum()
    assert len(p.qc_coords) == p.qc_report["flagged"]["total"]
    assert set(qc.features["reason"]) <= {"pen", "blur", "fold"}
    pen_rows = np.flatnonzero(np.asarray(qc.features["reason"]) == "pen")
    np.testing.assert_allclose(qc.border_color[pen_rows[0]][:3],
                               np.array([int(QC_COLOURS["pen"][i:i + 2], 16)
                                         for i in (1, 3, 5)]) / 255, atol=1e-3)
    # flagged patches are at the pen mark (level-0 rows 350-700, cols 450-900)
    y, x = (qc.data[pen_rows] - (0.0, 1500.0)).T / 0.5
    assert np.all((y > 350 - 256) & (y < 700 + 256) & (x > 450 - 256) & (x < 900 + 256))
    assert f"{p.qc_report['flagged']['total']} patches left out" in \
        widget.results.qc_label.text()
    assert f"pen {p.qc_report['flagged']['pen']}" in widget.results.qc_label.text()
    # one QC layer per slide that has flagged patches
    assert ("qc" in widget.result_layers) == bool((p.qc_slide_index == 0).any())
    # no kept patch of the pen slide sits on the pen mark's middle
    assert not np.any((np.abs(c1[:, 1] - 525) < 60) & (np.abs(c1[:, 0] - 675) < 60))
