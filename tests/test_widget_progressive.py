"""The dock shows a preliminary risk while a slide is embedded (run under xvfb-run)."""

from __future__ import annotations

import pytest

from _plugin_helpers import make_bundle, tissue_rgb, write_tiff_slide
from napari_ghanet._widget import PrognosisWidget
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.models.bundle import load_bundle

# 32 px patches at 1 um/px on a 0.5 um/px slide: a few hundred patches, several batches
ENCODER = {"name": "morphometric", "dim": 64, "patch_px": 32, "target_mpp": 1.0}


def test_preliminary_risk_shown_then_replaced_by_the_result(make_napari_viewer, qtbot,
                                                            tmp_path):
    bundle_path = make_bundle(tmp_path / "b.safetensors", encoder=ENCODER)
    slide = write_tiff_slide(tmp_path / "s.tif", tissue_rgb(1536, 2048, seed=3), mpp=0.5)
    viewer = make_napari_viewer()
    viewer.open(str(slide), plugin="napari-ghanet")
    widget = PrognosisWidget(viewer, cache_dir=tmp_path / "cache", model_path=bundle_path)
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    widget.inputs.device_combo.setCurrentText("cpu")
    widget.settings.batch_size.value = 16
    shown, visible = [], []

    def seen(est):
        shown.append(est)
        visible.append((widget.inputs.preliminary_label.isVisibleTo(widget),
                        widget.inputs.preliminary_label.text()))

    widget.preliminary_shown.connect(seen)
    widget.inputs.predict_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    p = widget.prediction
    assert p is not None
    assert len(shown) >= 2 and not shown[0].final and shown[-1].final
    first_visible, first_text = visible[0]
    assert first_visible and "Preliminary" in first_text
    assert f"{100 * shown[0].fraction:.0f} % of patches" in first_text
    assert shown[0].group.capitalize() + " risk" in first_text
    assert shown[-1].risk == p.risk and shown[-1].group == p.risk_group
    assert not widget.inputs.preliminary_label.isVisibleTo(widget)  # the result replaced it
    # the widget's numbers are those of a run without preliminary answers
    direct = predict_slide(slide, load_bundle(bundle_path), device="cpu", batch_size=16,
                           use_cache=False)
    assert p.risk == pytest.approx(direct.risk, abs=1e-7)
