"""The "Regions of interest" box of the dock: include / exclude Shapes layers and the
QuPath GeoJSON import.

The box lists the viewer's Shapes layers (not the plugin's result layers) in two combo
boxes, turns the chosen ones into level-0 regions of a slide layer
(:func:`~napari_ghanet._qt.regions.shapes_regions`) and imports QuPath annotations as a
Shapes layer laid over the slide.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QPushButton,
    QSizePolicy,
)

from napari_ghanet._qt import regions as qt_regions
from napari_ghanet._qt.layers import OVERLAY_KEY
from napari_ghanet._qt.notify import notify

__all__ = ["RegionsBox", "narrow_combo"]


def narrow_combo() -> QComboBox:
    """A combo box whose width does not grow with its longest entry."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return combo


class RegionsBox(QGroupBox):
    """Include / exclude Shapes layer pickers and the "Import GeoJSON..." button.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    geojson_requested = Signal()

    def __init__(self, viewer, parent=None) -> None:
        super().__init__("Regions of interest", parent)
        self.viewer = viewer
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.include_combo = narrow_combo()
        self.include_combo.setToolTip(
            "A Shapes layer drawn on the slide: only patches whose centre lies inside one "
            "of its shapes are used (none: all tissue)")
        self.exclude_combo = narrow_combo()
        self.exclude_combo.setToolTip(
            "A Shapes layer drawn on the slide: patches whose centre lies inside one of its "
            "shapes are left out (pen marks, necrosis, folds)")
        form.addRow("Include", self.include_combo)
        form.addRow("Exclude", self.exclude_combo)
        self.geojson_button = QPushButton("Import GeoJSON...")
        self.geojson_button.setToolTip(
            "QuPath annotations (File > Export objects as GeoJSON, level-0 pixels): "
            "become a Shapes layer on the slide, used as include regions")
        self.geojson_button.clicked.connect(self.geojson_requested)
        form.addRow(self.geojson_button)

    def shapes_layers(self) -> list:
        """The viewer's Shapes layers that can be regions (not the plugin's result layers)."""
        from napari.layers import Shapes

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Shapes) and OVERLAY_KEY not in layer.metadata]

    def include_layer(self):
        """The Shapes layer chosen as include regions (None: all tissue)."""
        return self.include_combo.currentData()

    def exclude_layer(self):
        """The Shapes layer chosen as exclude regions (None: none)."""
        return self.exclude_combo.currentData()

    def set_region_layer(self, kind: str, layer) -> None:
        """Choose ``layer`` as the "include" or "exclude" regions (None: none)."""
        combo = self.include_combo if kind == "include" else self.exclude_combo
        for i in range(combo.count()):
            if combo.itemData(i) == layer:  # == : napari may hand out proxies
                combo.setCurrentIndex(i)
                return

    def refresh(self) -> None:
        """Re-list the Shapes layers, keeping the chosen ones that are still there."""
        shapes = self.shapes_layers()
        for combo in (self.include_combo, self.exclude_combo):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("none", None)
            for layer in shapes:
                combo.addItem(layer.name, layer)
            if current in shapes:
                combo.setCurrentIndex(shapes.index(current) + 1)
            combo.blockSignals(False)

    def regions(self, slide_layer):
        """The chosen layers as level-0 regions of ``slide_layer`` (None: none chosen)."""
        return qt_regions.shapes_regions(self.include_layer(), self.exclude_layer(),
                                         slide_layer)

    def choose_geojson(self, slide_layer) -> None:
        """Ask for a QuPath GeoJSON file and import it as include regions."""
        path, _ = QFileDialog.getOpenFileName(
            self, "Import QuPath annotations (GeoJSON)", "",
            "GeoJSON (*.geojson *.json);;All files (*)")
        if path:
            self.import_geojson(slide_layer, path)

    def import_geojson(self, slide_layer, path: str | os.PathLike, kind: str = "include"):
        """QuPath GeoJSON ``path`` as a Shapes layer over ``slide_layer``, chosen as the
        ``kind`` regions and made the active layer (None, notified, on failure)."""
        shapes = qt_regions.import_geojson(self.viewer, slide_layer, path, kind)
        if shapes is None:
            return None
        self.set_region_layer(kind, shapes)
        self.viewer.layers.selection.active = shapes
        notify("info", f"{len(shapes.data)} region(s) imported from {Path(path).name} as "
                       f"{kind} regions")
        return shapes
