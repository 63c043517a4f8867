"""Export buttons: JSON report, patch CSV, GeoJSON (QuPath), PNG canvas snapshot and a
SpatialData store (``.zarr``, for napari-spatialdata / LazySlide; needs ``spatialdata``).

Every file goes through :mod:`napari_ghanet.io.atomic` (the report writers do it
themselves; the snapshot here): a file is complete or absent. Failures become a
notification, never an exception.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
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


def _write_store(prediction, path: str | os.PathLike) -> Path:
    from napari_ghanet.inference.spatialdata_export import write_spatialdata

    path = Path(path)
    if path.suffix.lower() != ".zarr":
        path = path.with_name(path.name + ".zarr")
    return write_spatialdata(prediction, path, overwrite=True)


class ExportPanel(QGroupBox):
    """The export buttons (two per row) for the prediction ``get_prediction()`` returns."""

    def __init__(self, viewer, get_prediction: Callable, parent: QWidget | None = None):
        super().__init__("Export", parent)
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
            self.export(kind, path)

    def export(self, kind: str, path: str | os.PathLike) -> Path | None:
        """Write the current result: kind "json", "csv", "geojson", "png" (a snapshot
        of the canvas) or "spatialdata" (a ``.zarr`` store, ``.zarr`` added when missing,
        replacing a store of that name). Returns the path, or None (with a notification)
        on failure."""
        from napari_ghanet.inference.predict import (
            write_geojson,
            write_patch_csv,
            write_report_json,
        )

        prediction = self._get_prediction()
        if prediction is None:
            notify("warning", "Nothing to export yet: predict first")
            return None
        writers = {
            "json": lambda: write_report_json(prediction, path),
            "csv": lambda: write_patch_csv(prediction, path),
            "geojson": lambda: write_geojson(prediction, path),
            "png": lambda: write_snapshot(self.viewer, path),
            "spatialdata": lambda: _write_store(prediction, path),
        }
        try:
            if kind not in writers:
                raise ValueError(f"unknown export kind {kind!r}")
            out = writers[kind]()
        except Exception as e:  # noqa: BLE001 - a failed export is a notification
            logger.debug("export failed", exc_info=True)
            notify("error", f"Export failed: {e}")
            return None
        notify("info", f"Saved {out}")
        return out
