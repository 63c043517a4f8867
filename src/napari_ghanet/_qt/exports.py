"""Export buttons: one per kind of the export registry
(:mod:`napari_ghanet.inference.export_registry`: JSON report, patch CSV, GeoJSON (QuPath),
SpatialData store, PNG canvas snapshot, and any kind registered later).

The panel only lists the registry's kinds and calls their writers (the writers go through
:mod:`napari_ghanet.io.atomic`: a file is complete or absent). Failures become a
notification, never an exception. The buttons write in a worker thread (all but a canvas
kind, whose image is taken from the canvas in the GUI thread first): a GeoJSON of 20,000
patches or a first SpatialData export (seconds, spatialdata's import included) never
freezes the viewer; the button is disabled until its file is written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QGridLayout, QGroupBox, QPushButton, QWidget

from napari_ghanet._qt.notify import notify

__all__ = ["ExportPanel", "button_text", "write_snapshot"]

logger = logging.getLogger(__name__)


def _registry():
    from napari_ghanet.inference import export_registry

    return export_registry


def button_text(fmt) -> str:
    """A kind's button text: its label ("Export <label>..." for a folder store)."""
    return f"Export {fmt.label}..." if fmt.folder else fmt.label


def write_snapshot(viewer, path: str | os.PathLike) -> Path:
    """Save the viewer's canvas as a PNG (``.png`` added when missing), atomically."""
    return _registry().write_export("png", _canvas(viewer), path)


def _canvas(viewer) -> np.ndarray:
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))


def _write_caught(kind: str, source, path) -> tuple[Path | None, str | None]:
    """The registry's writer for a worker thread: (path, None) or (None, the error)."""
    try:
        return _registry().write_export(kind, source, path), None
    except Exception as e:  # noqa: BLE001 - a failed export is a notification
        logger.debug("export failed", exc_info=True)
        return None, str(e)


class ExportPanel(QGroupBox):
    """One export button per registered kind (two per row) for the prediction
    ``get_prediction()`` returns.

    Signals
    -------
    exported(str, object)
        Kind and written path (None on failure) of an export the buttons started.
    """

    exported = Signal(str, object)

    def __init__(self, viewer, get_prediction: Callable, parent: QWidget | None = None):
        super().__init__("Export", parent)
        self._workers: dict[str, object] = {}
        self.viewer = viewer
        self._get_prediction = get_prediction
        grid = QGridLayout(self)
        self.buttons: dict[str, QPushButton] = {}
        for i, fmt in enumerate(_registry().export_formats()):
            button = QPushButton(button_text(fmt))
            button.setToolTip(fmt.missing_message() if not fmt.available
                              else f"Write the result as {fmt.file_filter}")
            button.setEnabled(fmt.available)
            button.clicked.connect(lambda _=False, k=fmt.key: self.choose(k))
            grid.addWidget(button, i // 2, i % 2)
            self.buttons[fmt.key] = button

    def _source(self, fmt, prediction):
        return _canvas(self.viewer) if fmt.source == "canvas" else prediction

    def choose(self, kind: str) -> None:
        """Ask for a file name (the registry's default name in the home folder), then
        :meth:`export_in_background` (the buttons)."""
        prediction = self._get_prediction()
        if prediction is None:
            notify("warning", "Nothing to export yet: predict first")
            return
        fmt = _registry().get_export(kind)
        default = _registry().export_paths(prediction, Path.home(), [fmt.key])[fmt.key]
        path, _ = QFileDialog.getSaveFileName(self, "Export", str(default), fmt.file_filter)
        if path:
            self.export_in_background(kind, path)

    def export_in_background(self, kind: str, path: str | os.PathLike) -> None:
        """:meth:`export` in a worker thread (a canvas kind's image is read here first);
        the kind's button is disabled until ``exported`` says it is done."""
        prediction = self._get_prediction()
        if prediction is None:
            notify("warning", "Nothing to export yet: predict first")
            return
        try:
            fmt = _registry().get_export(kind)
            source = self._source(fmt, prediction)
        except Exception as e:  # noqa: BLE001 - a failed export is a notification
            notify("error", f"Export failed: {e}")
            self.exported.emit(kind, None)
            return
        from superqt.utils import create_worker

        button = self.buttons.get(fmt.key)
        if button is not None:
            button.setEnabled(False)

        def done(result) -> None:
            out, error = result
            self._workers.pop(fmt.key, None)
            if button is not None:
                button.setEnabled(True)
            if error is not None:
                notify("error", f"Export failed: {error}")
            else:
                notify("info", f"Saved {out}")
            self.exported.emit(kind, out)

        worker = create_worker(_write_caught, fmt.key, source, path, _start_thread=False,
                               _connect={"returned": done})
        self._workers[fmt.key] = worker  # kept alive until it reports
        worker.start()

    def export(self, kind: str, path: str | os.PathLike) -> Path | None:
        """Write the current result as ``kind`` (a registered kind or alias: "json",
        "csv", "geojson", "png" (a snapshot of the canvas), "spatialdata" (a ``.zarr``
        store, ``.zarr`` added when missing, replacing a store of that name), ...).
        Returns the path, or None (with a notification) on failure."""
        prediction = self._get_prediction()
        if prediction is None:
            notify("warning", "Nothing to export yet: predict first")
            return None
        try:
            fmt = _registry().get_export(kind)
            out = _registry().write_export(fmt.key, self._source(fmt, prediction), path)
        except Exception as e:  # noqa: BLE001 - a failed export is a notification
            logger.debug("export failed", exc_info=True)
            notify("error", f"Export failed: {e}")
            return None
        notify("info", f"Saved {out}")
        return out
