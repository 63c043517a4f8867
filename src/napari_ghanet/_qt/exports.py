"""Export buttons: JSON report, patch CSV, GeoJSON (QuPath), PNG canvas snapshot and a
SpatialData store (``.zarr``, for napari-spatialdata / LazySlide; needs ``spatialdata``).

Every file goes through :mod:`napari_ghanet.io.atomic` (the report writers do it
themselves; the snapshot here): a file is complete or absent. Failures become a
notification, never an exception. The buttons write in a worker thread (all but the
snapshot, which reads the canvas): a GeoJSON of 20,000 patches or a first SpatialData
export (seconds, spatialdata's import included) never freezes the viewer; the button is
disabled until its file is written.
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
from napari_ghanet.io.atomic import atomic_path

__all__ = ["KINDS", "ExportPanel", "write_snapshot"]

logger = logging.getLogger(__name__)

#: export kind -> (button text, file dialog filter)
KINDS = {
    "json": ("JSON report", "JSON report (*.json)"),
    "csv": ("Patch CSV", "CSV (*.csv)"),
    "geojson": ("GeoJSON (QuPath)", "GeoJSON (*.geojson *.json)"),
    "png": ("PNG snapshot", "PNG image (*.png)"),
    "spatialdata": ("Export SpatialData...", "SpatialData store (*.zarr)"),
}


def write_snapshot(viewer, path: str | os.PathLike) -> Path:
    """Save the viewer's canvas as a PNG (``.png`` added when missing), atomically."""
    from napari.utils.io import imsave

    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    image = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    with atomic_path(path, suffix=".png") as tmp:
        imsave(str(tmp), image)
    return path


def _write(kind: str, prediction, path: str | os.PathLike) -> Path:
    """Write one export of ``prediction`` (not the snapshot) and return its path."""
    from napari_ghanet.inference.predict import (
        write_geojson,
        write_patch_csv,
        write_report_json,
    )

    writers = {
        "json": write_report_json,
        "csv": write_patch_csv,
        "geojson": write_geojson,
        "spatialdata": _write_store,
    }
    if kind not in writers:
        raise ValueError(f"unknown export kind {kind!r}")
    return writers[kind](prediction, path)


def _write_caught(kind: str, prediction, path) -> tuple[Path | None, str | None]:
    """:func:`_write` for a worker thread: (path, None) or (None, the error)."""
    try:
        return _write(kind, prediction, path), None
    except Exception as e:  # noqa: BLE001 - a failed export is a notification
        logger.debug("export failed", exc_info=True)
        return None, str(e)


def _write_store(prediction, path: str | os.PathLike) -> Path:
    from napari_ghanet.inference.spatialdata_export import write_spatialdata

    path = Path(path)
    if path.suffix.lower() != ".zarr":
        path = path.with_name(path.name + ".zarr")
    return write_spatialdata(prediction, path, overwrite=True)


class ExportPanel(QGroupBox):
    """The export buttons (two per row) for the prediction ``get_prediction()`` returns.

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
        for i, (key, (text, _)) in enumerate(KINDS.items()):
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, k=key: self.choose(k))
            grid.addWidget(button, i // 2, i % 2)
            self.buttons[key] = button

    def choose(self, kind: str) -> None:
        """Ask for a file name, then :meth:`export` (the buttons)."""
        prediction = self._get_prediction()
        if prediction is None:
            notify("warning", "Nothing to export yet: predict first")
            return
        from napari_ghanet.inference.predict import export_paths

        stem = Path(prediction.slide.get("name") or "slide").stem
        defaults = export_paths(prediction, Path.home())
        default = {"json": defaults["report"], "csv": defaults["csv"],
                   "geojson": defaults["geojson"], "png": Path.home() / f"{stem}.ghanet.png",
                   "spatialdata": Path.home() / f"{stem}.ghanet.zarr"}
        path, _ = QFileDialog.getSaveFileName(self, "Export", str(default[kind]),
                                              KINDS[kind][1])
        if path:
            self.export_in_background(kind, path)

    def export_in_background(self, kind: str, path: str | os.PathLike) -> None:
        """:meth:`export` in a worker thread (the snapshot in this thread: it reads the
        canvas); the kind's button is disabled until ``exported`` says it is done."""
        if kind == "png" or kind not in KINDS:
            self.exported.emit(kind, self.export(kind, path))
            return
        prediction = self._get_prediction()
        if prediction is None:
            notify("warning", "Nothing to export yet: predict first")
            return
        from superqt.utils import create_worker

        button = self.buttons[kind]
        button.setEnabled(False)

        def done(result) -> None:
            out, error = result
            self._workers.pop(kind, None)
            button.setEnabled(True)
            if error is not None:
                notify("error", f"Export failed: {error}")
            else:
                notify("info", f"Saved {out}")
            self.exported.emit(kind, out)

        worker = create_worker(_write_caught, kind, prediction, path, _start_thread=False,
                               _connect={"returned": done})
        self._workers[kind] = worker  # kept alive until it reports
        worker.start()

    def export(self, kind: str, path: str | os.PathLike) -> Path | None:
        """Write the current result: kind "json", "csv", "geojson", "png" (a snapshot
        of the canvas) or "spatialdata" (a ``.zarr`` store, ``.zarr`` added when missing,
        replacing a store of that name). Returns the path, or None (with a notification)
        on failure."""
        prediction = self._get_prediction()
        if prediction is None:
            notify("warning", "Nothing to export yet: predict first")
            return None
        try:
            out = (write_snapshot(self.viewer, path) if kind == "png"
                   else _write(kind, prediction, path))
        except Exception as e:  # noqa: BLE001 - a failed export is a notification
            logger.debug("export failed", exc_info=True)
            notify("error", f"Export failed: {e}")
            return None
        notify("info", f"Saved {out}")
        return out
