"""Widget settings that survive a napari restart: the JSON file store (temporary config
folder through $NAPARI_GHANET_CONFIG_DIR) and napari's own plugin settings."""

from __future__ import annotations

import json

from _plugin_helpers import need
from napari_ghanet._settings_store import (
    CONFIG_DIR_ENV,
    SETTINGS_VERSION,
    JsonFileBackend,
    SettingsStore,
    default_config_dir,
    default_settings,
)

CHANGED = {"encoder_weights": "/data/uni/pytorch_model.bin", "device": "cpu",
           "backend": "onnx", "qc_on": False, "fold_od": 0.8, "blur_fraction": 0.3,
           "heatmap_overlap": 0.5, "last_model": "/models/blca.safetensors"}


def test_json_store_survives_a_new_session_and_resets(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "cfg"))
    assert default_config_dir() == tmp_path / "cfg"
    first = SettingsStore()
    assert first.load() == default_settings()  # nothing stored yet
    first.save(CHANGED)
    path = tmp_path / "cfg" / "widget-settings.json"
    data = json.loads(path.read_text())
    assert data["version"] == SETTINGS_VERSION and data["settings"]["device"] == "cpu"
    again = SettingsStore().load()  # a new session: a new store reading the same file
    assert {k: again[k] for k in CHANGED} == CHANGED
    assert again["pen_min_fraction"] == default_settings()["pen_min_fraction"]
    # saving part of the settings keeps the rest
    SettingsStore().save({"device": "cuda:0"})
    assert SettingsStore().load()["last_model"] == CHANGED["last_model"]
    assert SettingsStore().reset() == default_settings()
    assert not path.exists() and SettingsStore().load() == default_settings()


def test_bad_values_other_versions_and_broken_files_fall_back_to_defaults(tmp_path):
    path = tmp_path / "s.json"
    store = SettingsStore(JsonFileBackend(path))
    saved = store.save({"fold_od": "high", "heatmap_overlap": 0.3, "batch_size": 0,
                        "qc_on": 1, "pen_min_fraction": 2.0, "unknown": 5})
    defaults = default_settings()
    for key in ("fold_od", "heatmap_overlap", "batch_size", "qc_on", "pen_min_fraction"):
        assert saved[key] == defaults[key], key
    assert "unknown" not in json.loads(path.read_text())["settings"]
    path.write_text(json.dumps({"version": SETTINGS_VERSION + 1, "settings": CHANGED}))
    assert store.load() == defaults
    path.write_text("{ not json")
    assert store.load() == defaults
    store.save({"device": "cpu"})  # a broken file is replaced, not an error
    assert store.load()["device"] == "cpu"


def test_unwritable_folder_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SettingsStore(JsonFileBackend(blocker / "sub" / "s.json"))
    assert store.save({"device": "cpu"})["device"] == "cpu"
    assert "cannot save the widget settings" in caplog.text


def test_napari_plugin_settings_persist_across_a_restart(tmp_path, monkeypatch):
    need("napari")
    monkeypatch.delenv("NAPARI_GHANET_CONFIG_DIR")  # no folder named: napari's settings
    from napari import settings as nsettings

    from napari_ghanet._qt.plugin_settings import NapariPluginBackend, widget_settings_store

    try:
        nsettings._clear_plugin_settings_cache()
        nsettings.get_plugin_settings(path_dir=tmp_path)
        store = widget_settings_store()
        assert isinstance(store.backend, NapariPluginBackend)
        monkeypatch.setenv("NAPARI_GHANET_CONFIG_DIR", str(tmp_path / "portable"))
        assert not isinstance(widget_settings_store().backend, NapariPluginBackend)
        monkeypatch.delenv("NAPARI_GHANET_CONFIG_DIR")
        # the manifest declares exactly the store's settings, with the same defaults
        section = store.backend._section().model_dump()
        assert section.pop("settings_version") == SETTINGS_VERSION
        assert section == default_settings()
        store.save(CHANGED)
        saved = (tmp_path / "napari-ghanet.yaml").read_text()
        assert "/models/blca.safetensors" in saved

        nsettings._clear_plugin_settings_cache()  # a restart: settings read from disk
        nsettings.get_plugin_settings(path_dir=tmp_path)
        again = widget_settings_store().load()
        assert {k: again[k] for k in CHANGED} == CHANGED

        assert widget_settings_store().reset() == default_settings()
        nsettings._clear_plugin_settings_cache()
        nsettings.get_plugin_settings(path_dir=tmp_path)
        assert widget_settings_store().load() == default_settings()
    finally:
        nsettings._clear_plugin_settings_cache()


def test_the_defaults_ranges_and_manifest_are_the_declared_options():
    import yaml

    from napari_ghanet import options
    from napari_ghanet._settings_store import option_of

    defaults = default_settings()
    for key, (group, name) in option_of().items():
        declared = getattr(getattr(options, group)(), name)
        assert defaults[key] == ("" if declared is None else declared), key
    # values outside a declared range or choice fall back to the default
    store = SettingsStore(JsonFileBackend("/nonexistent/s.json"))
    kept = store.validate({"backend": "onnx-int8", "fold_od": 2.5, "heatmap_overlap": 0.75})
    assert (kept["backend"], kept["fold_od"], kept["heatmap_overlap"]) == ("onnx-int8", 2.5, 0.75)
    bad = store.validate({"backend": "tensorrt", "fold_od": 0.0, "blur_fraction": 1.5})
    assert (bad["backend"], bad["fold_od"], bad["blur_fraction"]) == (
        defaults["backend"], defaults["fold_od"], defaults["blur_fraction"])
    # napari's manifest declares the same settings, defaults and choices (without napari)
    from pathlib import Path

    manifest = yaml.safe_load((Path(__file__).parents[1] / "napari.yaml").read_text())
    props = manifest["contributions"]["configurations"]["widget"]["properties"]
    assert props.pop("settings_version")["default"] == SETTINGS_VERSION
    assert {k: v["default"] for k, v in props.items()} == defaults
    backends = options.fields_of(options.EmbedOptions)
    (backend,) = [f for f in backends if f.name == "backend"]
    assert props["backend"]["enum"] == list(backend.info.choices) == [
        "auto", "onnx", "onnx-int8", "torch"]
    assert all(c in props["backend"]["description"] for c in backend.info.choices)
    (overlap,) = [f for f in options.fields_of(options.HeatmapOptions) if f.name == "overlap"]
    assert props["heatmap_overlap"]["enum"] == list(overlap.info.choices)


# --------------------------------------------------------------------------- hostile files


def _in_thread(fn, seconds: float = 20.0):
    """``fn()`` in a daemon thread; fails (instead of hanging the suite) past ``seconds``."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_fifo_settings_file_never_blocks_load_or_save(tmp_path, caplog):
    import os

    fifo = tmp_path / "widget-settings.json"
    os.mkfifo(fifo)
    store = SettingsStore(JsonFileBackend(fifo))
    assert _in_thread(store.load) == default_settings()
    assert "not a regular file" in caplog.text
    saved = _in_thread(lambda: store.save({"device": "cpu"}))
    assert saved["device"] == "cpu"  # kept for this session; the FIFO is left alone
    assert fifo.is_fifo()
    # a folder, /dev/zero-like devices and huge files read as "nothing stored"
    assert SettingsStore(JsonFileBackend(tmp_path)).load() == default_settings()
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (2 * 1024 * 1024))
    assert SettingsStore(JsonFileBackend(big)).load() == default_settings()


def test_crafted_values_fall_back_to_each_default_with_a_warning(tmp_path, caplog):
    path = tmp_path / "s.json"
    crafted = {"batch_size": 10**400, "fold_od": 10**400, "top_k": -1, "qc_on": "yes",
               "heatmap_overlap": float("nan"), "backend": ["onnx"], "device": "cpu",
               "encoder_weights": {"x": 1}, "last_model": 7, "blur_fraction": 0.25}
    path.write_text(json.dumps({"version": SETTINGS_VERSION, "settings": crafted}))
    loaded = SettingsStore(JsonFileBackend(path)).load()
    defaults = default_settings()
    kept = {"device": "cpu", "blur_fraction": 0.25}
    assert loaded == {**defaults, **kept}
    for key in set(crafted) - set(kept):
        assert f"settings: {key} " in caplog.text, key
    # a 100,000-deep nesting or a 5000-digit number is no settings file, not a crash
    path.write_text('{"version": 1, "settings": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert SettingsStore(JsonFileBackend(path)).load() == defaults
    path.write_text('{"version": 1, "settings": {"batch_size": ' + "9" * 5000 + "}}")
    assert SettingsStore(JsonFileBackend(path)).load() == defaults


def test_generated_values_never_crash_the_store():
    hypothesis = need("hypothesis")
    st = hypothesis.strategies
    keys = st.sampled_from(sorted(default_settings()) + ["no_such_key"])
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                     inner, max_size=3),
        max_leaves=6)
    store = SettingsStore(JsonFileBackend("/nonexistent/s.json"))
    defaults = default_settings()

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(st.dictionaries(keys, values, max_size=6))
    def check(values):
        out = store.validate(values)
        assert set(out) == set(defaults)
        for key, v in out.items():
            assert type(v) is type(defaults[key]), (key, v)
        assert store.validate(out) == out  # what it keeps it keeps again

    check()


def test_a_settings_file_of_another_version_is_kept_before_it_is_overwritten(tmp_path):
    path = tmp_path / "widget-settings.json"
    old = json.dumps({"version": 0, "settings": {"device": "cuda:1"}})
    path.write_text(old)
    store = SettingsStore(JsonFileBackend(path))
    assert store.load() == default_settings()  # another version: not reused
    store.save({"device": "cpu"})
    backup = tmp_path / "widget-settings.json.bak-v0"
    assert backup.read_text() == old
    assert json.loads(path.read_text())["settings"]["device"] == "cpu"
    store.save({"device": "cuda"})  # the current version is not backed up again
    assert backup.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "widget-settings.json", "widget-settings.json.bak-v0"]
    garbage = tmp_path / "g.json"
    garbage.write_text("not json")
    SettingsStore(JsonFileBackend(garbage)).save({"device": "cpu"})
    assert (tmp_path / "g.json.bak-vunknown").read_text() == "not json"
