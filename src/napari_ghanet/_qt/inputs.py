"""The inputs and run controls: slide layer, model, device, advanced settings, Predict /
Cancel, progress and status.

The panel follows the viewer's layer list (a slide just opened becomes the selected one)
and reads the slide's resolution; it asks for microns per pixel when the slide does not
record them. Its buttons emit ``predict_requested``, ``cancel_requested`` and
``model_requested``; the dock decides what they do.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_ghanet._qt.layers import OVERLAY_KEY
from napari_ghanet._qt.patient_list import PatientList
from napari_ghanet._qt.roi_box import RegionsBox, narrow_combo
from napari_ghanet._qt.run_panel import STAGE_TEXT, RunPanel
from napari_ghanet.errors import SlideError
from napari_ghanet.io.slide import MAX_MPP

__all__ = ["STAGE_TEXT", "InputsPanel", "layer_path"]

logger = logging.getLogger(__name__)



def layer_path(layer) -> str | None:
    """The slide file behind ``layer`` (its metadata, else its napari source), or None."""
    path = layer.metadata.get("path") if layer is not None else None
    if not path and layer is not None:
        path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


def slide_description(layer) -> tuple[str, float | None, bool]:
    """(text, mpp, ask for mpp) of slide layer ``layer`` (None: no slide): its size and
    resolution, read from the layer or, for another reader's layer, from its file."""
    if layer is None:
        return ("Open a slide (File > Open) or the G-HANet demo slide (File > Open Sample).",
                None, False)
    path = layer_path(layer)
    mpp = layer.metadata.get("mpp")
    info = layer.metadata
    if path and mpp is None and info.get("reader") != "napari-ghanet":
        # A layer from another reader: ask the slide file itself.
        try:
            from napari_ghanet.io.slide import open_slide

            with open_slide(path, require_mpp=False) as slide:
                mpp = slide.mpp
                info = {"objective_power": slide.objective_power, "vendor": slide.vendor,
                        "level_dimensions": slide.level_dimensions}
        except (SlideError, OSError) as e:
            return f"Cannot read this layer's file: {e}", None, False
    if not path:
        return "This layer has no slide file behind it.", mpp, False
    dims = (info.get("level_dimensions") or [None])[0]
    parts = [f"{dims[0]:,} x {dims[1]:,} px"] if dims else []
    parts.append(f"{mpp:.4g} um/px" if mpp else "resolution unknown")
    if info.get("objective_power"):
        parts.append(f"{info['objective_power']:g}x")
    if info.get("vendor") and info.get("vendor") != "unknown":
        parts.append(str(info["vendor"]))
    return ", ".join(parts), mpp, mpp is None


def _wrapped(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


class InputsPanel(QWidget):
    """Slide layer, model and device pickers, the settings form and the run controls.

    Parameters
    ----------
    viewer : napari.Viewer
    settings : QWidget, optional
        The advanced settings, shown in a collapsible section above the run buttons.
    """

    predict_requested = Signal()
    cancel_requested = Signal()
    model_requested = Signal()
    geojson_requested = Signal()

    def __init__(self, viewer, settings: QWidget | None = None, parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.slide_mpp: float | None = None  # resolution the selected slide records
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        box = QGroupBox("Input")
        form = QFormLayout(box)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.layer_combo = narrow_combo()
        self.layer_combo.setToolTip("The slide image layer to predict on")
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        form.addRow("Slide layer", self.layer_combo)
        self.slide_info = _wrapped()
        form.addRow(self.slide_info)
        self.patients = PatientList()
        self.patient_label, self.patient_list = self.patients.label, self.patients.list
        form.addRow(self.patient_label)
        form.addRow(self.patient_list)
        self.mpp_label = QLabel("Microns per pixel")
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setRange(0.0, MAX_MPP)  # 0: the special value 'required'
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setSpecialValueText("required")
        self.mpp_spin.setToolTip(
            "This slide does not record its resolution: give the level-0 microns per "
            "pixel (0.25 for 40x, 0.5 for 20x scans)"
        )
        form.addRow(self.mpp_label, self.mpp_spin)
        self.show_mpp_field(False)

        self.model_label = _wrapped("no model")
        self.load_model_button = QPushButton("Load model...")
        self.load_model_button.clicked.connect(self.model_requested)
        form.addRow("Model", self.model_label)
        self.model_detail = _wrapped()
        form.addRow(self.model_detail)
        form.addRow(self.load_model_button)
        self.device_combo = narrow_combo()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self._disable_missing_cuda()
        form.addRow("Device", self.device_combo)
        layout.addWidget(box)

        self.roi = RegionsBox(viewer)
        self.roi.geojson_requested.connect(self.geojson_requested)
        layout.addWidget(self.roi)
        # the regions' pickers under their usual names
        self.include_combo = self.roi.include_combo
        self.exclude_combo = self.roi.exclude_combo
        self.geojson_button = self.roi.geojson_button

        if settings is not None:
            from superqt import QCollapsible

            self.advanced = QCollapsible("Advanced settings")
            self.advanced.setDuration(0)
            self.advanced.layout().setContentsMargins(0, 0, 0, 0)
            self.advanced.addWidget(settings)
            layout.addWidget(self.advanced)

        self.run_panel = RunPanel()
        self.run_panel.predict_button.clicked.connect(self.predict_requested)
        self.run_panel.cancel_button.clicked.connect(self.cancel_requested)
        layout.addWidget(self.run_panel)
        # the run controls under their usual names
        self.predict_button = self.run_panel.predict_button
        self.cancel_button = self.run_panel.cancel_button
        self.progress_bar = self.run_panel.progress_bar
        self.status_label = self.run_panel.status_label
        self.preliminary_label = self.run_panel.preliminary_label

    def _disable_missing_cuda(self) -> None:
        try:
            import torch

            if not torch.cuda.is_available():
                item = self.device_combo.model().item(2)
                item.setEnabled(False)
                item.setToolTip("no CUDA GPU available")
        except Exception:  # noqa: BLE001 - only a hint
            pass

    # ------------------------------------------------------------------ slide layers

    def slide_layers(self) -> list:
        """The viewer's image layers that are slides (not the plugin's result layers)."""
        from napari.layers import Image

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and OVERLAY_KEY not in layer.metadata]

    def shapes_layers(self) -> list:
        """The viewer's Shapes layers that can be regions (not the plugin's result layers)."""
        return self.roi.shapes_layers()

    def include_layer(self):
        """The Shapes layer chosen as include regions (None: all tissue)."""
        return self.roi.include_layer()

    def exclude_layer(self):
        """The Shapes layer chosen as exclude regions (None: none)."""
        return self.roi.exclude_layer()

    def set_region_layer(self, kind: str, layer) -> None:
        """Choose ``layer`` as the "include" or "exclude" regions (None: none)."""
        self.roi.set_region_layer(kind, layer)

    def patient_layers(self) -> list:
        """The slide layer chosen above, then the other slides ticked as the same patient."""
        first = self.selected_layer()
        return [] if first is None else [first, *self.patients.ticked(first)]

    def set_patient_layers(self, layers) -> None:
        """Tick ``layers`` (other slide layers) as slides of the same patient."""
        self.patients.set_ticked(layers)

    def _refresh_patient_list(self, layers: list) -> None:
        ticked = self.patient_layers()[1:]
        self.patients.refresh(layers, self.selected_layer(), ticked)

    def selected_layer(self):
        """The slide layer chosen in the panel (None when there is none)."""
        if self.layer_combo.count() == 0:
            return None
        return self.layer_combo.currentData()

    def refresh_layers(self, event=None, running: bool = False) -> None:
        """Re-list the slide layers; a slide just inserted becomes the selected one
        (unless a prediction is running)."""
        try:
            previous = current = self.selected_layer()
            layers = self.slide_layers()
            inserted = getattr(event, "value", None) \
                if getattr(event, "type", "") == "inserted" else None
            if inserted is not None and inserted in layers and not running:
                current = inserted
            self.layer_combo.blockSignals(True)
            self.layer_combo.clear()
            for layer in layers:
                self.layer_combo.addItem(layer.name, layer)
            if current in layers:
                self.layer_combo.setCurrentIndex(layers.index(current))
            elif layers:
                self.layer_combo.setCurrentIndex(len(layers) - 1)
            self.layer_combo.blockSignals(False)
            self._refresh_patient_list(layers)
            self.roi.refresh()
            if self.selected_layer() != previous or not layers:
                self._on_layer_changed()
        except Exception as e:  # noqa: BLE001 - a Qt slot must not raise
            logger.exception("refreshing the layer list failed: %s", e)

    def _on_layer_changed(self, index: int | None = None) -> None:
        try:
            self._refresh_patient_list(self.slide_layers())
            self.describe_layer()
        except Exception as e:  # noqa: BLE001 - a Qt slot must not raise
            logger.exception("reading the selected layer failed")
            self.slide_info.setText(f"Cannot read this layer: {e}")

    def describe_layer(self) -> None:
        """Show the selected slide's size and resolution; ask for mpp when it has none."""
        text, self.slide_mpp, ask = slide_description(self.selected_layer())
        self.slide_info.setText(text)
        self.show_mpp_field(ask)

    def show_mpp_field(self, show: bool) -> None:
        self.mpp_label.setVisible(show)
        self.mpp_spin.setVisible(show)

    # ------------------------------------------------------------------ model, run state

    def show_bundle(self, bundle) -> None:
        """Name and encoder of the loaded model bundle (None: no model)."""
        if bundle is None:
            self.model_label.setText("<i>no model</i>")
            self.model_label.setToolTip("")
            self.model_detail.setText("Load a G-HANet model bundle (.safetensors).")
            return
        enc = bundle.encoder
        self.model_label.setText(f"<b>{bundle.name}</b>")
        self.model_label.setToolTip(str(bundle.path) if bundle.path else "")
        self.model_detail.setText(
            f"{enc.name} features, {enc.patch_px} px patches at {enc.target_mpp:g} um/px")

    def set_running(self, on: bool) -> None:
        """Enable Cancel (and disable the inputs) while a prediction runs."""
        self.run_panel.set_running(on)
        for widget in (self.load_model_button, self.layer_combo, self.patient_list,
                       self.geojson_button):
            widget.setEnabled(not on)

    def set_idle(self, done: bool) -> None:
        """Back to the ready state; a full progress bar when a result is shown."""
        self.set_running(False)
        self.run_panel.set_idle(done)

    def show_preliminary(self, est) -> None:
        """A preliminary risk while the slide is embedded (None: hide it)."""
        self.run_panel.show_preliminary(est)

    def show_progress(self, stage: str, done: int, total: int) -> str:
        """Progress bar and status for a progress report; returns the stage's text."""
        return self.run_panel.show_progress(stage, done, total)
