"""The dock widget's settings, remembered between napari sessions (no Qt, no napari).

:class:`SettingsStore` validates a flat dict of settings against :func:`default_settings`
(known keys only, each of its default's type, within the range or among the choices its
option declares) and keeps it in a backend:

* :class:`JsonFileBackend` (the default here): ``widget-settings.json`` in the user
  config folder (``$NAPARI_GHANET_CONFIG_DIR``, else ``platformdirs.user_config_dir
  ("napari-ghanet")``, else ``$XDG_CONFIG_HOME/napari-ghanet``), written atomically,
  with a ``version`` key;
* napari's own plugin settings (``contributions.configurations`` of the manifest,
  persisted by napari as ``<napari config dir>/napari-ghanet.yaml`` and shown in
  napari's Preferences): :class:`napari_ghanet._qt.plugin_settings.NapariPluginBackend`,
  which lives in ``_qt/`` because it imports napari.

A stored file of another version, an unreadable file or a value of the wrong type falls
back to the defaults for what it cannot use, never to an error: settings are a
convenience.

Every setting but the last model is a run option declared once in
:mod:`napari_ghanet.options` (:data:`OPTION_OF`: setting -> group and field): its default,
range and choices are read from there, imported when first needed so that this module
stays light (no numpy).

Examples
--------
>>> import tempfile, pathlib
>>> store = SettingsStore(JsonFileBackend(pathlib.Path(tempfile.mkdtemp()) / "s.json"))
>>> store.save({"device": "cpu", "fold_od": 0.9, "no_such_key": 1})["device"]
'cpu'
>>> SettingsStore(store.backend).load()["fold_od"]
0.9
>>> store.reset()["device"]
'auto'
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from napari_ghanet.io.atomic import atomic_write

__all__ = [
    "CONFIG_DIR_ENV",
    "OPTION_OF",
    "SETTINGS_VERSION",
    "JsonFileBackend",
    "SettingsBackend",
    "SettingsStore",
    "default_config_dir",
    "default_settings",
]

logger = logging.getLogger(__name__)

#: bump when a key changes meaning; stored settings of another version are not reused
SETTINGS_VERSION = 1
#: environment variable naming the folder of the settings file (tests, portable installs)
CONFIG_DIR_ENV = "NAPARI_GHANET_CONFIG_DIR"
#: setting -> (option group class name in :mod:`napari_ghanet.options`, field name)
OPTION_OF = {
    "encoder_weights": ("EmbedOptions", "weights"),
    "device": ("EmbedOptions", "device"),
    "backend": ("EmbedOptions", "backend"),
    "batch_size": ("EmbedOptions", "batch_size"),
    "qc_on": ("QCOptions", "enabled"),
    "pen_min_fraction": ("QCOptions", "pen_min_fraction"),
    "fold_od": ("QCOptions", "fold_od"),
    "fold_min_fraction": ("QCOptions", "fold_min_fraction"),
    "blur_fraction": ("QCOptions", "blur_fraction"),
    "heatmap_overlap": ("HeatmapOptions", "overlap"),
}


@functools.lru_cache(maxsize=1)
def _declared() -> dict[str, Any]:
    """setting -> its option's :class:`~napari_ghanet.options.declare.Field`."""
    import napari_ghanet.options as options

    out = {}
    for key, (group, name) in OPTION_OF.items():
        (f,) = [f for f in options.fields_of(getattr(options, group)) if f.name == name]
        out[key] = f
    return out


def _setting_value(default: Any) -> Any:
    """An option default as a setting value: None (a path not given) -> ''."""
    if default is None or isinstance(default, Path):
        return "" if default is None else str(default)
    return default


def default_settings() -> dict[str, Any]:
    """The widget's defaults: encoder weights file ('' = look in the caches), device,
    inference backend, batch size, artifact QC switch and thresholds (fractions; fold OD
    in log10 units), heatmap overlap (fraction), all as :mod:`napari_ghanet.options`
    declares them, and the last model file ('' = none).

    >>> d = default_settings()
    >>> d["batch_size"], d["backend"], d["heatmap_overlap"], d["encoder_weights"]
    (64, 'auto', 0.0, '')
    """
    out = {key: _setting_value(f.default) for key, f in _declared().items()}
    for key in ("pen_min_fraction", "fold_od", "fold_min_fraction", "blur_fraction",
                "heatmap_overlap"):
        out[key] = float(out[key])
    out["last_model"] = ""
    return out


def _allowed(key: str, value: Any) -> bool:
    """Whether ``value`` is within the range or among the choices of the option behind
    setting ``key`` (True for a setting without one)."""
    f = _declared().get(key)
    if f is None or isinstance(value, str) and not f.info.choices:
        return True
    i = f.info
    if i.choices:
        return any(math.isclose(value, c) if isinstance(c, float) else value == c
                   for c in i.choices)
    if i.low is not None and (value <= i.low if i.low_open else value < i.low):
        return False
    return i.high is None or value <= i.high


def default_config_dir() -> Path:
    """``$NAPARI_GHANET_CONFIG_DIR``, else the user config folder of napari-ghanet."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs  # napari's own dependency; not needed headless
    except ImportError:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "napari-ghanet"
    return Path(platformdirs.user_config_dir("napari-ghanet", appauthor=False))


class SettingsBackend(Protocol):
    """Where settings are kept: ``read()`` (None when nothing is stored), ``write``,
    ``clear``."""

    def read(self) -> dict[str, Any] | None: ...

    def write(self, values: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


class JsonFileBackend:
    """A JSON file ``{"version": N, "settings": {...}}``, written atomically.

    Parameters
    ----------
    path : str or Path, optional
        Default: ``default_config_dir() / "widget-settings.json"``.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_config_dir() / "widget-settings.json"

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable settings file %s: %s", self.path, exc)
            return None
        if not isinstance(data, dict) or data.get("version") != SETTINGS_VERSION:
            logger.info("settings file %s is of another version; using defaults", self.path)
            return None
        values = data.get("settings")
        return dict(values) if isinstance(values, dict) else None

    def write(self, values: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": SETTINGS_VERSION, "settings": values}, indent=2)
        atomic_write(self.path, text + "\n")

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _coerce(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``, or ``default`` when it is not one."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else default
    if isinstance(default, int):
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else default
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and float(value) == float(value) else default
    if isinstance(default, str):
        return value if isinstance(value, str) else default
    return default


class SettingsStore:
    """Load, save and reset the widget's settings through a backend.

    Parameters
    ----------
    backend : SettingsBackend, optional
        Default: :class:`JsonFileBackend` in the user config folder.
    defaults : mapping, optional
        Default: :func:`default_settings`.
    """

    def __init__(self, backend: SettingsBackend | None = None,
                 defaults: Mapping[str, Any] | None = None):
        self.backend = backend if backend is not None else JsonFileBackend()
        self.defaults = dict(defaults) if defaults is not None else default_settings()

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated with the usable entries of ``values`` (unknown keys and
        values of the wrong type are dropped)."""
        out = dict(self.defaults)
        for key, value in values.items():
            if key in out:
                value = _coerce(value, out[key])
                out[key] = value if _allowed(key, value) else self.defaults[key]
        return out

    def load(self) -> dict[str, Any]:
        """The stored settings over the defaults (the defaults when nothing is stored or
        the backend fails)."""
        try:
            stored = self.backend.read()
        except Exception as exc:  # noqa: BLE001 - settings are a convenience
            logger.warning("cannot read the widget settings: %s", exc)
            stored = None
        return self.validate(stored or {})

    def save(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store ``values`` (over the currently stored ones); returns what
        was stored. A failing backend is logged, not raised."""
        merged = self.validate({**self.load(), **dict(values)})
        try:
            self.backend.write(merged)
        except Exception as exc:  # noqa: BLE001
            logger.warning("cannot save the widget settings: %s", exc)
        return merged

    def reset(self) -> dict[str, Any]:
        """Forget the stored settings; returns the defaults."""
        try:
            self.backend.clear()
        except Exception as exc:  # noqa: BLE001
            logger.warning("cannot reset the widget settings: %s", exc)
        return dict(self.defaults)
