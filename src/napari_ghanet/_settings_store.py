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

A stored file of another version, an unreadable file (a FIFO, a device, a folder, a huge
or non-UTF-8 file: never opened or read whole) or a value its option does not allow (a
wrong type, out of range, a 400-digit number) falls back to the defaults for what it
cannot use, with a logged warning, never to an error: settings are a convenience. A file
of another version is copied to ``widget-settings.json.bak-v<N>`` (atomically) before it
is first overwritten.

Every setting but the last model is a run option declared once in
:mod:`napari_ghanet.options` with ``persist=True`` (:func:`~napari_ghanet.options.
persisted_fields`; :func:`option_of`: setting -> group and field): its name, default,
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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from napari_ghanet.errors import ArgumentError, GHANetError
from napari_ghanet.io.atomic import atomic_write
from napari_ghanet.io.safe_read import check_regular_file, read_regular_file, read_text_file

__all__ = [
    "CONFIG_DIR_ENV",
    "MAX_SETTINGS_BYTES",
    "SETTINGS_VERSION",
    "JsonFileBackend",
    "SettingsBackend",
    "SettingsStore",
    "default_config_dir",
    "default_settings",
    "option_of",
]

logger = logging.getLogger(__name__)

#: bump when a key changes meaning; stored settings of another version are not reused
SETTINGS_VERSION = 1
#: environment variable naming the folder of the settings file (tests, portable installs)
CONFIG_DIR_ENV = "NAPARI_GHANET_CONFIG_DIR"
#: the largest settings file read (a real one is about 1 KB)
MAX_SETTINGS_BYTES = 1024 * 1024


@functools.lru_cache(maxsize=1)
def _declared() -> dict[str, Any]:
    """setting -> its option's :class:`~napari_ghanet.options.declare.Field` (the options
    declared ``persist=True``)."""
    import napari_ghanet.options as options

    return options.persisted_fields()


def option_of() -> dict[str, tuple[str, str]]:
    """setting -> (option group class name in :mod:`napari_ghanet.options`, field name).

    >>> option_of()["qc_on"]
    ('QCOptions', 'enabled')
    """
    import napari_ghanet.options as options

    by_group = {cls.group: cls.__name__ for cls in options.ALL_GROUPS}
    return {key: (by_group[f.group], f.name) for key, f in _declared().items()}


def default_settings() -> dict[str, Any]:
    """The dock's defaults: every persisted option's declared default (a path not given
    is '') and the last model file ('' = none).

    >>> d = default_settings()
    >>> d["batch_size"], d["backend"], d["heatmap_overlap"], d["encoder_weights"]
    (64, 'auto', 0.0, '')
    """
    import napari_ghanet.options as options

    out = {key: options.surfaces.setting_default(f) for key, f in _declared().items()}
    out.update({key: "" for key in options.surfaces.NOT_OPTIONS})
    return out


def _checked(key: str, value: Any, default: Any) -> Any:
    """``value`` of setting ``key`` as its option allows it, else ``default`` (with a
    logged warning naming the key and why)."""
    f = _declared().get(key)
    try:
        if f is None:
            if not isinstance(value, str):
                raise ArgumentError(f"must be text, got {type(value).__name__}")
            return value
        import napari_ghanet.options as options

        return options.surfaces.setting_value(f, value)
    except (GHANetError, TypeError, ValueError, OverflowError) as exc:
        text = str(exc)
        logger.warning("settings: %s %s; using the default %r", key,
                       text[:200] + ("..." if len(text) > 200 else ""), default)
        return default


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
        """The stored settings; None when there is no file, or it cannot be used (logged)."""
        if not os.path.lexists(self.path):
            return None
        data = self._load()
        if data is None:
            return None
        if not isinstance(data, dict) or data.get("version") != SETTINGS_VERSION:
            logger.info("settings file %s is of another version; using defaults", self.path)
            return None
        values = data.get("settings")
        return dict(values) if isinstance(values, dict) else None

    def _load(self) -> Any:
        """The file's JSON, or None (logged) when it is no regular file, too large, not
        UTF-8, not JSON or nested beyond what the parser takes."""
        try:
            text = read_text_file(self.path, "settings file", MAX_SETTINGS_BYTES)
            return json.loads(text)
        except (GHANetError, OSError, ValueError, RecursionError) as exc:
            logger.warning("ignoring unreadable settings file %s: %s", self.path,
                           str(exc)[:300])
            return None

    def backup_path(self, version: Any) -> Path:
        """Where a settings file of ``version`` is kept before it is overwritten."""
        tag = version if isinstance(version, int) and not isinstance(version, bool) and (
            0 <= version < 10**6) else "unknown"
        return self.path.with_name(f"{self.path.name}.bak-v{tag}")

    def _keep_other_version(self) -> None:
        """Copy a settings file of another version (or unreadable as settings) aside,
        atomically, once, before it is overwritten."""
        raw = read_regular_file(self.path, "settings file", MAX_SETTINGS_BYTES)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            data = None
        version = data.get("version") if isinstance(data, dict) else None
        if version == SETTINGS_VERSION:
            return
        backup = self.backup_path(version)
        if not backup.exists():
            atomic_write(backup, raw)
            logger.warning("settings file %s was of another version (%r): kept as %s",
                           self.path, version, backup)

    def write(self, values: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(self.path):
            check_regular_file(self.path, "settings file", MAX_SETTINGS_BYTES)
            self._keep_other_version()
        text = json.dumps({"version": SETTINGS_VERSION, "settings": values}, indent=2)
        atomic_write(self.path, text + "\n")

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


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
        """The defaults updated with the usable entries of ``values`` (unknown keys are
        dropped; a value its option does not allow falls back to the default, logged)."""
        out = dict(self.defaults)
        for key, value in values.items():
            if key in out:
                out[key] = _checked(key, value, self.defaults[key])
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
