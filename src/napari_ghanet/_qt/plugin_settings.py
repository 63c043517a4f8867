"""The widget's settings in napari's own plugin settings (imports napari; no Qt).

The manifest (``napari.yaml``, ``contributions.configurations.widget``) declares the
settings :func:`napari_ghanet._settings_store.default_settings` lists, so napari persists
them in ``<napari config dir>/napari-ghanet.yaml`` (honouring ``NAPARI_CONFIG``) and shows
them in its Preferences. :class:`NapariPluginBackend` is a
:class:`~napari_ghanet._settings_store.SettingsBackend` over them;
:func:`widget_settings_store` gives the store the dock uses: napari's when the installed
napari offers plugin settings, else the JSON file of the user config folder.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from napari_ghanet._settings_store import (
    CONFIG_DIR_ENV,
    SETTINGS_VERSION,
    JsonFileBackend,
    SettingsStore,
)

__all__ = ["PLUGIN", "SECTION", "NapariPluginBackend", "widget_settings_store"]

logger = logging.getLogger(__name__)

PLUGIN = "napari-ghanet"
SECTION = "widget"


class NapariPluginBackend:
    """Settings kept in ``get_plugin_settings("napari-ghanet").widget`` (napari saves
    them to its config folder whenever a value changes)."""

    def __init__(self, plugin: str = PLUGIN, section: str = SECTION):
        self.plugin = plugin
        self.section = section

    def _settings(self):
        from napari.settings import get_plugin_settings

        return get_plugin_settings(self.plugin)

    def _section(self):
        return getattr(self._settings(), self.section)

    def read(self) -> dict[str, Any] | None:
        data = self._section().model_dump()
        if data.pop("settings_version", None) != SETTINGS_VERSION:
            return None
        return data

    def write(self, values: dict[str, Any]) -> None:
        section = self._section()
        fields = type(section).model_fields
        for key, value in values.items():
            if key in fields and getattr(section, key) != value:
                setattr(section, key, value)
        if section.settings_version != SETTINGS_VERSION:
            section.settings_version = SETTINGS_VERSION
        self._save()

    def clear(self) -> None:
        section = self._section()
        for key, field in type(section).model_fields.items():
            if getattr(section, key) != field.default:
                setattr(section, key, field.default)
        self._save()

    def _save(self) -> None:
        settings = self._settings()
        if getattr(settings, "config_path", None):
            settings.save()


def widget_settings_store() -> SettingsStore:
    """napari's plugin settings when available, else the JSON settings file; the file
    too when ``$NAPARI_GHANET_CONFIG_DIR`` names a folder for it (portable installs,
    tests)."""
    if os.environ.get(CONFIG_DIR_ENV):
        return SettingsStore(JsonFileBackend())
    try:
        backend = NapariPluginBackend()
        backend._section()
        return SettingsStore(backend)
    except Exception as exc:  # noqa: BLE001 - an older napari, a disabled manifest entry
        logger.info("napari plugin settings unavailable (%s); using a settings file", exc)
        return SettingsStore(JsonFileBackend())
