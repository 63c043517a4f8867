"""The dock shows the training-distribution verdict as a badge next to the risk, and the
"unlike training" patch layer (run under xvfb-run)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt

from napari_ghanet._qt.distribution import BADGE_COLOURS, DistributionBadge
from napari_ghanet._widget import PrognosisWidget
from napari_ghanet.inference.distribution import OUT, not_available
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.slide import cmu_slide_path
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle


@pytest.fixture(scope="module")
def cmu_prediction(tmp_path_factory):
    return predict_slide(cmu_slide_path(), load_bundle(demo_bundle_path()), device="cpu",
                         cache_dir=tmp_path_factory.mktemp("cache"))


def test_the_badge_sits_by_the_risk_and_the_layer_is_added(make_napari_viewer, cmu_prediction,
                                                           tmp_path, qtbot):
    viewer = make_napari_viewer(show=True)
    [slide] = viewer.open(str(cmu_slide_path()), plugin="napari-ghanet")
    widget = PrognosisWidget(viewer, cache_dir=tmp_path / "cache", model_path=demo_bundle_path())
    dock = viewer.window.add_dock_widget(widget, name="G-HANet prognosis", area="right")
    viewer.window._qt_window.resizeDocks([dock], [360], Qt.Orientation.Horizontal)
    p = cmu_prediction
    assert p.distribution.verdict == OUT
    widget.show_prediction(p, slide)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    qtbot.wait(100)
    badge = widget.results.distribution_badge
    assert badge.isVisible() and badge.verdict == OUT
    assert "Out of distribution" in badge.text() and p.distribution.reasons[0][:30] in badge.text()
    assert BADGE_COLOURS[OUT][0] in badge.styleSheet()
    risk = widget.results.risk_label
    # right under the risk line, above the risk details: not a footnote
    assert risk.geometry().bottom() <= badge.geometry().top()
    assert badge.geometry().bottom() <= widget.results.risk_detail.geometry().top()
    qtbot.waitUntil(lambda: any("unlike training" in layer.name for layer in viewer.layers),
                    timeout=30_000)
    [unlike] = [layer for layer in viewer.layers if "unlike training" in layer.name]
    assert not unlike.visible and unlike.data.max() > 0.5  # the CMU patches are unlike
    widget.results.clear()
    assert not badge.isVisible()


def test_a_model_without_summary_says_not_available(qtbot):
    badge = DistributionBadge()
    qtbot.addWidget(badge)
    badge.show_report(not_available("this model bundle carries no summary of its training "
                                    "slides"))
    assert badge.isVisible() and "not available" in badge.text()
    badge.show_report(None)
    assert not badge.isVisible()
