"""The dock widget remembers its settings between napari sessions (run under xvfb-run).

A "restart" is a second widget made on a new viewer with a new store over the same
settings file, as napari does after a restart.
"""

from __future__ import annotations

import json

import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from napari_ghanet._settings_store import JsonFileBackend, SettingsStore, default_settings
from napari_ghanet._widget import PrognosisWidget
from napari_ghanet.options import EmbedOptions, QCOptions


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


def widget_on(viewer, path, **kw):
    widget = PrognosisWidget(viewer, settings_store=SettingsStore(JsonFileBackend(path)), **kw)
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    return widget


def test_settings_survive_a_restart(make_napari_viewer, tmp_path, bundle_path):
    path = tmp_path / "settings.json"
    first = widget_on(make_napari_viewer(), path)
    s = first.settings
    assert s.batch_size.value == EmbedOptions().batch_size  # declared defaults at first
    assert s.backend.value == "auto" and s.qc_on.value is True
    s.batch_size.value = 8
    s.backend.value = "torch"
    s.qc_on.value = False
    s.fold_od.value = 0.9
    s.heatmap_overlap.value = 0.5
    first.inputs.device_combo.setCurrentText("cpu")
    assert first.load_model(bundle_path)
    stored = json.loads(path.read_text())["settings"]
    assert stored["batch_size"] == 8 and stored["device"] == "cpu"
    assert stored["last_model"] == str(bundle_path.resolve())

    again = widget_on(make_napari_viewer(), path)  # a new session
    s2 = again.settings
    assert (s2.batch_size.value, s2.backend.value, s2.qc_on.value) == (8, "torch", False)
    assert s2.fold_od.value == pytest.approx(0.9)
    assert s2.heatmap_overlap.value == 0.5
    assert not s2.pen_min_fraction.enabled  # QC off greys its thresholds
    assert again.inputs.device_combo.currentText() == "cpu"
    assert again.bundle is not None and again.bundle.name == first.bundle.name  # last model
    kw = again.prediction_settings()
    assert kw["batch_size"] == 8 and kw["backend"] == "torch" and not kw["qc"].enabled
    assert kw["overlap"] == 0.5 and kw["device"] == "cpu"


def test_reset_to_defaults_forgets_the_stored_settings(make_napari_viewer, tmp_path):
    path = tmp_path / "settings.json"
    widget = widget_on(make_napari_viewer(), path)
    s = widget.settings
    s.batch_size.value = 4
    s.pen_min_fraction.value = 0.5
    widget.inputs.device_combo.setCurrentText("cpu")
    assert path.exists()
    s.reset_button.native.click()
    assert s.batch_size.value == EmbedOptions().batch_size
    assert s.pen_min_fraction.value == pytest.approx(QCOptions().pen_min_fraction)
    assert widget.inputs.device_combo.currentText() == "auto"
    assert SettingsStore(JsonFileBackend(path)).load() == default_settings()
    fresh = widget_on(make_napari_viewer(), path)
    assert fresh.settings.batch_size.value == EmbedOptions().batch_size


def test_a_missing_last_model_falls_back_to_the_demo_model(make_napari_viewer, tmp_path):
    path = tmp_path / "settings.json"
    SettingsStore(JsonFileBackend(path)).save({"last_model": str(tmp_path / "gone.safetensors")})
    widget = widget_on(make_napari_viewer(), path)
    from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

    assert widget.bundle is not None
    assert widget.bundle.name == load_bundle(demo_bundle_path()).name
