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
    opts = again.prediction_options()
    assert opts.embed.batch_size == 8 and opts.embed.backend == "torch"
    assert not opts.qc.enabled
    assert opts.heatmap.overlap == 0.5 and opts.embed.device == "cpu"
    assert again.session.options == opts


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


def test_the_form_is_the_declarations(make_napari_viewer, tmp_path, bundle_path):
    """Every declared form option is a field with its label, tooltip, bounds and choices;
    every declared persisted one is saved; auto entries mean None; the form's values are
    the typed options a prediction takes."""
    from napari_ghanet.options import PredictOptions, form_fields

    widget = widget_on(make_napari_viewer(), tmp_path / "settings.json")
    s = widget.settings
    declared = form_fields()
    assert {"top_k", "read_ahead", "tissue_threshold", "heatmap_overlap"} <= set(declared)
    for key, f in declared.items():
        w = getattr(s, key)
        assert f.info.help[1:] in w.tooltip, key
        if f.info.choices:
            assert tuple(w.choices) == f.info.choices, key
        elif f.kind in ("int", "float"):
            assert w.max == f.info.high, key
            assert (w.min < f.info.low) if f.optional and not f.info.low_open else (
                w.min >= f.info.low), key
    stored = s.stored_values()
    assert set(stored) == {k for k, f in declared.items() if f.info.persist}
    # a fresh form (no model) is the declared defaults as typed options
    assert s.predict_options() == PredictOptions()
    assert s.tissue_threshold.native.text() == "auto (Otsu)"
    s.tissue_threshold.value = 0.2
    s.top_k.value = 3
    s.read_ahead.value = 6
    opts = s.predict_options(PredictOptions.create(device="cpu"))
    assert (opts.grid.tissue_threshold, opts.report.top_k, opts.embed.read_ahead) == (0.2, 3, 6)
    assert opts.embed.device == "cpu"  # what the form does not show comes from the base
    stored = json.loads((tmp_path / "settings.json").read_text())["settings"]
    assert (stored["top_k"], stored["read_ahead"]) == (3, 6)
    # with a model, its patch geometry shows and reads back as "the encoder's" (None)
    assert widget.load_model(bundle_path)
    enc = widget.bundle.encoder
    assert (s.patch_px.value, s.target_mpp.value) == (enc.patch_px, pytest.approx(enc.target_mpp))
    assert s.tissue_threshold.value == s.tissue_threshold.min  # back to auto
    opts = s.predict_options()
    assert (opts.grid.patch_px, opts.grid.target_mpp, opts.grid.tissue_threshold) == (
        None, None, None)
    s.patch_px.value = enc.patch_px * 2
    assert s.predict_options().grid.patch_px == enc.patch_px * 2
    assert s.predict_kwargs()["top_k"] == 3 and s.predict_kwargs()["read_ahead"] == 6
