"""The "G-HANet prognosis" dock widget.

The widget gathers the inputs (slide layer, model bundle, device, advanced settings),
runs :func:`napari_ghanet.inference.predict.predict_slide` in a worker thread (progress, Cancel;
the viewer stays responsive) and shows the result: risk, percentile and risk group,
the survival curve, the reconstructed pathway profile, the top-attention regions and
attention layers aligned with the slide. Every number comes from the Prediction; this
module only displays it. Errors become napari notifications, never exceptions.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QFont, QPainter
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_ghanet.inference import overlays

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = ["PrognosisWidget"]

_OVERLAY_KEY = "ghanet_overlay"
_STAGE_TEXT = {
    "slide": "Opening the slide",
    "tissue": "Detecting tissue",
    "patches": "Laying out patches",
    "features": "Embedding patches",
    "model": "Running G-HANet",
    "done": "Done",
}
_GROUP_COLOURS = {"low": "#2e7d32", "intermediate": "#ef6c00", "high": "#c62828"}
_BAR_ROLE = Qt.ItemDataRole.UserRole + 1
# rank labels of the top-region boxes
_RANK_TEXT = {"string": "{rank}", "color": "#00e5ff", "size": 12, "anchor": "upper_left"}


def _notify(kind: str, message: str) -> None:
    """A napari notification that never raises (the widget must not throw)."""
    from napari.utils.notifications import show_error, show_info, show_warning

    try:
        {"error": show_error, "warning": show_warning, "info": show_info}[kind](message)
    except Exception:  # noqa: BLE001 - a notification failure must not break the widget
        logger.log(logging.ERROR if kind == "error" else logging.INFO, message)


def _attention_colormap(name: str = "ghanet_attention"):
    """inferno-like ramp with 0 (no patch) fully transparent."""
    from napari.utils import Colormap

    ramp = [
        (0.00, (0.0, 0.0, 0.0, 0.0)),
        (0.01, (0.0, 0.0, 0.0, 0.0)),
        (0.02, (0.09, 0.04, 0.27, 1.0)),
        (0.30, (0.47, 0.11, 0.43, 1.0)),
        (0.60, (0.85, 0.27, 0.23, 1.0)),
        (0.80, (0.98, 0.56, 0.04, 1.0)),
        (1.00, (0.99, 1.0, 0.64, 1.0)),
    ]
    return Colormap(
        colors=[c for _, c in ramp], controls=[v for v, _ in ramp], name=name,
        display_name="G-HANet attention",
    )


def _mask_colormap():
    """0 transparent, 1 (the tissue outline) green."""
    from napari.utils import Colormap

    return Colormap(
        colors=[(0, 0, 0, 0), (0.2, 0.95, 0.45, 1.0)], controls=[0.0, 1.0],
        name="ghanet_tissue", display_name="G-HANet tissue outline",
    )


class _ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(str, int, int)


class _DivergingBarDelegate(QStyledItemDelegate):
    """Draws a z-score (item data ``_BAR_ROLE``) as a bar left (blue) or right (red) of
    the cohort mean, with its value."""

    def __init__(self, parent=None, limit: float = 2.0):
        super().__init__(parent)
        self.limit = limit

    def paint(self, painter: QPainter, option, index) -> None:
        value = index.data(_BAR_ROLE)
        if value is None:
            super().paint(painter, option, index)
            return
        painter.save()
        rect = option.rect.adjusted(2, 3, -40, -3)
        mid = rect.left() + rect.width() / 2
        frac = max(-1.0, min(1.0, float(value) / self.limit))
        width = frac * rect.width() / 2
        colour = QColor("#c62828") if value >= 0 else QColor("#1565c0")
        bar = QRectF(min(mid, mid + width), rect.top(), abs(width), rect.height())
        painter.fillRect(bar, colour)
        painter.setPen(option.palette.text().color())
        painter.drawLine(int(mid), rect.top(), int(mid), rect.bottom())
        text_rect = option.rect.adjusted(option.rect.width() - 38, 0, 0, 0)
        painter.drawText(
            text_rect, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
            f"{value:+.2f}",
        )
        painter.restore()


class PrognosisWidget(QWidget):
    """Dock widget: predict prognosis for a slide layer and show the result.

    Parameters
    ----------
    viewer : napari.Viewer
    cache_dir : path, optional
        Patch-feature cache (default: the user cache folder).
    model_path : path, optional
        Model bundle to start with (default: the bundled demonstration model).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        cache_dir: str | os.PathLike | None = None,
        model_path: str | os.PathLike | None = None,
    ):
        super().__init__()
        self.viewer = viewer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.bundle = None
        self.prediction = None
        self.result_layers: dict[str, Any] = {}
        self._slide_layer = None  # layer the current result belongs to
        self._run_layer = None  # layer the running prediction is for
        self._pending_layers: list | None = None  # result layers still to add
        self._worker = None
        self._cancel: threading.Event | None = None
        self._pbar = None
        self._last_done = 0
        self._slide_mpp: float | None = None
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._on_progress)

        self._build_ui()
        self._connect_viewer()
        self._refresh_layers()
        if model_path is not None:
            self.load_model(model_path)
        else:
            self._load_default_model()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        self.setMinimumWidth(440)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        layout = QVBoxLayout(body)

        # -- inputs
        inputs = QGroupBox("Input")
        form = QFormLayout(inputs)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The slide image layer to predict on")
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        form.addRow("Slide layer", self.layer_combo)
        self.slide_info = QLabel("")
        self.slide_info.setWordWrap(True)
        form.addRow("", self.slide_info)
        self.mpp_label = QLabel("Microns per pixel")
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setRange(0.0, 20.0)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setSpecialValueText("required")
        self.mpp_spin.setToolTip(
            "This slide does not record its resolution: give the level-0 microns per "
            "pixel (0.25 for 40x, 0.5 for 20x scans)"
        )
        form.addRow(self.mpp_label, self.mpp_spin)
        self.mpp_label.setVisible(False)
        self.mpp_spin.setVisible(False)

        model_row = QHBoxLayout()
        self.model_label = QLabel("no model")
        self.model_label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.load_model_button = QPushButton("Load model...")
        self.load_model_button.clicked.connect(self._choose_model)
        model_row.addWidget(self.model_label, 1)
        model_row.addWidget(self.load_model_button)
        form.addRow("Model", model_row)
        self.model_detail = QLabel("")
        self.model_detail.setWordWrap(True)
        form.addRow("", self.model_detail)

        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        try:
            import torch

            if not torch.cuda.is_available():
                item = self.device_combo.model().item(2)
                item.setEnabled(False)
                item.setToolTip("no CUDA GPU available")
        except Exception:  # noqa: BLE001
            pass
        form.addRow("Device", self.device_combo)
        layout.addWidget(inputs)

        # -- advanced
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced settings")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        layout.addWidget(self.advanced_toggle)
        self.advanced = QWidget()
        adv = QFormLayout(self.advanced)
        self.patch_spin = QSpinBox()
        self.patch_spin.setRange(32, 4096)
        self.patch_spin.setSuffix(" px")
        self.patch_spin.setToolTip("Patch side in pixels at the patch resolution")
        adv.addRow("Patch size", self.patch_spin)
        self.target_mpp_spin = QDoubleSpinBox()
        self.target_mpp_spin.setDecimals(3)
        self.target_mpp_spin.setRange(0.05, 4.0)
        self.target_mpp_spin.setSingleStep(0.05)
        self.target_mpp_spin.setSuffix(" um/px")
        self.target_mpp_spin.setToolTip("Resolution the patches are read at (0.5 = 20x)")
        adv.addRow("Patch resolution", self.target_mpp_spin)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.01)
        self.threshold_spin.setSpecialValueText("auto (Otsu)")
        self.threshold_spin.setToolTip(
            "HSV saturation above which a pixel is tissue; auto picks Otsu's threshold"
        )
        adv.addRow("Tissue threshold", self.threshold_spin)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 4096)
        self.batch_spin.setValue(64)
        self.batch_spin.setToolTip("Patches per encoder batch (lower it if memory runs out)")
        adv.addRow("Batch size", self.batch_spin)
        self.reset_button = QPushButton("Reset to the model's settings")
        self.reset_button.clicked.connect(self._apply_model_defaults)
        adv.addRow(self.reset_button)
        self.advanced.setVisible(False)
        layout.addWidget(self.advanced)

        # -- run
        run_row = QHBoxLayout()
        self.predict_button = QPushButton("Predict prognosis")
        self.predict_button.setDefault(True)
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        run_row.addWidget(self.predict_button, 1)
        run_row.addWidget(self.cancel_button)
        layout.addLayout(run_row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        # -- results
        self.results = QWidget()
        res = QVBoxLayout(self.results)
        res.setContentsMargins(0, 0, 0, 0)
        self.risk_label = QLabel("")
        font = QFont(self.risk_label.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.risk_label.setFont(font)
        self.risk_label.setWordWrap(True)
        res.addWidget(self.risk_label)
        self.risk_detail = QLabel("")
        self.risk_detail.setWordWrap(True)
        res.addWidget(self.risk_detail)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.survival_figure = Figure(figsize=(3.6, 2.4), dpi=90, layout="constrained")
        self.survival_canvas = FigureCanvasQTAgg(self.survival_figure)
        self.survival_canvas.setMinimumHeight(190)
        res.addWidget(QLabel("<b>Predicted survival</b>"))
        res.addWidget(self.survival_canvas)

        pathway_title = QLabel(
            "<b>Reconstructed pathway profile</b> (mean z-score vs. the training cohort; "
            "expand for the top genes)"
        )
        pathway_title.setWordWrap(True)
        res.addWidget(pathway_title)
        self.pathway_tree = QTreeWidget()
        self.pathway_tree.setColumnCount(2)
        self.pathway_tree.setHeaderLabels(["Category / gene", "relative to cohort"])
        self.pathway_tree.setItemDelegateForColumn(1, _DivergingBarDelegate(self.pathway_tree))
        self.pathway_tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.pathway_tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        self.pathway_tree.header().resizeSection(1, 150)
        self.pathway_tree.header().setStretchLastSection(False)
        self.pathway_tree.setMinimumHeight(170)
        res.addWidget(self.pathway_tree)

        cat_row = QHBoxLayout()
        cat_row.addWidget(QLabel("Genome attention layer"))
        self.category_combo = QComboBox()
        self.category_combo.setToolTip("Which category's genome-informed attention to show")
        self.category_combo.currentIndexChanged.connect(self._on_category_changed)
        cat_row.addWidget(self.category_combo, 1)
        res.addLayout(cat_row)

        res.addWidget(QLabel("<b>Top attention regions</b> (click to go there)"))
        self.regions_table = QTableWidget(0, 3)
        self.regions_table.setHorizontalHeaderLabels(["Rank", "Attention (pct.)", "Strongest category"])
        self.regions_table.verticalHeader().setVisible(False)
        self.regions_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.regions_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.regions_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.regions_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.regions_table.horizontalHeader().setStretchLastSection(True)
        self.regions_table.setMinimumHeight(160)
        self.regions_table.cellClicked.connect(lambda row, _col: self.go_to_region(row))
        res.addWidget(self.regions_table)

        export = QGroupBox("Export")
        ex = QGridLayout(export)
        self.export_buttons = {}
        for i, (key, text) in enumerate(
            (
                ("json", "JSON report"),
                ("csv", "Patch CSV"),
                ("geojson", "GeoJSON (QuPath)"),
                ("png", "PNG snapshot"),
            )
        ):
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, k=key: self._choose_export(k))
            ex.addWidget(button, i // 2, i % 2)
            self.export_buttons[key] = button
        res.addWidget(export)
        layout.addWidget(self.results)
        self.results.setVisible(False)

        # -- intended use (always visible with the model and its result)
        self.intended_use_label = QLabel("")
        self.intended_use_label.setWordWrap(True)
        self.intended_use_label.setFrameShape(QFrame.Shape.StyledPanel)
        self.intended_use_label.setStyleSheet(
            "QLabel { border: 1px solid #b26a00; border-radius: 3px; padding: 4px; }"
        )
        layout.addWidget(self.intended_use_label)
        layout.addStretch(1)

    def _toggle_advanced(self, on: bool) -> None:
        self.advanced.setVisible(on)
        self.advanced_toggle.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow
        )

    # ------------------------------------------------------------------ layers

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        handlers = [
            (events.inserted, self._refresh_layers),
            (events.removed, self._on_layer_removed),
            (events.reordered, self._refresh_layers),
        ]
        for emitter, callback in handlers:
            emitter.connect(callback)

        def disconnect(*_) -> None:  # the viewer may outlive the widget
            for emitter, callback in handlers:
                try:
                    emitter.disconnect(callback)
                except Exception:  # noqa: BLE001
                    pass

        self.destroyed.connect(disconnect)

    def _slide_layers(self) -> list:
        from napari.layers import Image

        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and _OVERLAY_KEY not in layer.metadata
        ]

    def _refresh_layers(self, event=None) -> None:
        try:
            previous = current = self.selected_layer()
            layers = self._slide_layers()
            inserted = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" \
                else None
            if inserted is not None and inserted in layers and not self.running:
                current = inserted  # a slide just opened is the one to predict on
            self.layer_combo.blockSignals(True)
            self.layer_combo.clear()
            for layer in layers:
                self.layer_combo.addItem(layer.name, layer)
            if current in layers:
                self.layer_combo.setCurrentIndex(layers.index(current))
            elif layers:
                self.layer_combo.setCurrentIndex(len(layers) - 1)
            self.layer_combo.blockSignals(False)
            if self.selected_layer() is not previous or not layers:
                self._on_layer_changed()
        except Exception as e:  # noqa: BLE001
            logger.exception("refreshing the layer list failed: %s", e)

    def _on_layer_removed(self, event=None) -> None:
        removed = getattr(event, "value", None)
        for key, layer in list(self.result_layers.items()):
            if layer is removed:
                del self.result_layers[key]
        if removed is not None and removed is self._slide_layer:
            self._clear_result_layers()
            self._slide_layer = None
        self._refresh_layers()

    def selected_layer(self):
        """The slide layer chosen in the widget (None when there is none)."""
        if self.layer_combo.count() == 0:
            return None
        return self.layer_combo.currentData()

    def _layer_path(self, layer) -> str | None:
        path = layer.metadata.get("path") if layer is not None else None
        if not path and layer is not None:
            path = getattr(getattr(layer, "source", None), "path", None)
        return str(path) if path else None

    def _on_layer_changed(self, index: int | None = None) -> None:
        try:
            self._describe_layer()
        except Exception as e:  # noqa: BLE001 - a Qt slot must not raise
            logger.exception("reading the selected layer failed")
            self.slide_info.setText(f"Cannot read this layer: {e}")

    def _describe_layer(self) -> None:
        """Show the selected slide's size and resolution; ask for mpp when it has none."""
        layer = self.selected_layer()
        self._slide_mpp = None
        if layer is None:
            self.slide_info.setText("Open a slide (File > Open) or the G-HANet demo slide "
                                    "(File > Open Sample).")
            self._show_mpp_field(False)
            return
        path = self._layer_path(layer)
        mpp = layer.metadata.get("mpp")
        info = layer.metadata
        if path and mpp is None and info.get("reader") != "napari-ghanet":
            # A layer from another reader: ask the slide file itself.
            try:
                from napari_ghanet.io.slide import SlideError, open_slide

                with open_slide(path, require_mpp=False) as slide:
                    mpp = slide.mpp
                    info = {
                        "objective_power": slide.objective_power,
                        "vendor": slide.vendor,
                        "level_dimensions": slide.level_dimensions,
                    }
            except (SlideError, OSError) as e:
                self.slide_info.setText(f"Cannot read this layer's file: {e}")
                self._show_mpp_field(False)
                return
        self._slide_mpp = mpp
        if not path:
            self.slide_info.setText("This layer has no slide file behind it.")
            self._show_mpp_field(False)
            return
        dims = (info.get("level_dimensions") or [None])[0]
        parts = []
        if dims:
            parts.append(f"{dims[0]:,} x {dims[1]:,} px")
        parts.append(f"{mpp:.4g} um/px" if mpp else "resolution unknown")
        if info.get("objective_power"):
            parts.append(f"{info['objective_power']:g}x")
        if info.get("vendor") and info.get("vendor") != "unknown":
            parts.append(str(info["vendor"]))
        self.slide_info.setText(", ".join(parts))
        self._show_mpp_field(mpp is None)

    def _show_mpp_field(self, show: bool) -> None:
        self.mpp_label.setVisible(show)
        self.mpp_spin.setVisible(show)

    # ------------------------------------------------------------------ model

    def _load_default_model(self) -> None:
        from napari_ghanet.models.bundle import demo_bundle_path

        path = demo_bundle_path()
        if path.is_file():
            self.load_model(path, quiet=True)
        else:
            self._set_bundle(None)

    def _choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a G-HANet model bundle", "", "Model bundles (*.safetensors)"
        )
        if path:
            self.load_model(path)

    def load_model(self, path: str | os.PathLike, quiet: bool = False) -> bool:
        """Load a ``.safetensors`` model bundle; errors become a notification."""
        from napari_ghanet.models.bundle import BundleError, load_bundle

        try:
            bundle = load_bundle(path)
        except (BundleError, OSError, ValueError, RuntimeError) as e:
            _notify("error", f"Cannot load the model: {e}")
            return False
        self._set_bundle(bundle)
        if not quiet:
            _notify("info", f"Model {bundle.name!r} loaded")
        return True

    def _set_bundle(self, bundle) -> None:
        self.bundle = bundle
        if bundle is None:
            self.model_label.setText("<i>no model</i>")
            self.model_detail.setText("Load a G-HANet model bundle (.safetensors).")
            self.intended_use_label.setText("")
            self.intended_use_label.setVisible(False)
            return
        enc = bundle.encoder
        self.model_label.setText(f"<b>{bundle.name}</b>")
        self.model_detail.setText(
            f"{enc.name} features, {enc.patch_px} px patches at {enc.target_mpp:g} um/px"
        )
        self.model_label.setToolTip(str(bundle.path) if bundle.path else "")
        self.intended_use_label.setText(f"<b>Intended use:</b> {bundle.intended_use}")
        self.intended_use_label.setVisible(True)
        self._apply_model_defaults()

    def _apply_model_defaults(self) -> None:
        if self.bundle is None:
            return
        enc = self.bundle.encoder
        self.patch_spin.setValue(int(enc.patch_px))
        self.target_mpp_spin.setValue(float(enc.target_mpp))
        self.threshold_spin.setValue(0.0)
        self.batch_spin.setValue(64)

    # ------------------------------------------------------------------ run

    @property
    def running(self) -> bool:
        """True from "Predict" until the result is on screen (or the run ended)."""
        return self._worker is not None or self._pending_layers is not None

    def prediction_settings(self) -> dict[str, Any]:
        """Keyword arguments for predict_slide from the widget's fields."""
        enc = self.bundle.encoder if self.bundle is not None else None
        kw: dict[str, Any] = {
            "device": self.device_combo.currentText(),
            "batch_size": int(self.batch_spin.value()),
        }
        if enc is None or int(self.patch_spin.value()) != enc.patch_px:
            kw["patch_px"] = int(self.patch_spin.value())
        if enc is None or not math.isclose(
            self.target_mpp_spin.value(), enc.target_mpp, rel_tol=0.01
        ):
            kw["target_mpp"] = float(self.target_mpp_spin.value())
        threshold = float(self.threshold_spin.value())
        if threshold > 0:
            kw["tissue_params"] = {"saturation_threshold": threshold}
        return kw

    def predict(self) -> None:
        """Start a prediction on the selected slide layer (the Predict button)."""
        try:
            self._start_prediction()
        except Exception as e:  # noqa: BLE001 - never let an exception out of the widget
            logger.exception("starting the prediction failed")
            self._finish_run()
            _notify("error", f"Prediction failed to start: {e}")

    def _start_prediction(self) -> None:
        if self.running:
            _notify("warning", "A prediction is already running")
            return
        if self.bundle is None:
            _notify(
                "error",
                "No model loaded: use 'Load model...' to choose a G-HANet model bundle "
                "(.safetensors)",
            )
            return
        layer = self.selected_layer()
        if layer is None:
            _notify("error", "No slide layer: open a slide first (File > Open, or the demo "
                             "slide from File > Open Sample)")
            return
        path = self._layer_path(layer)
        if not path:
            _notify(
                "error",
                f"Layer {layer.name!r} has no slide file behind it: open the slide from its "
                "file so that G-HANet can read it at full resolution",
            )
            return
        mpp = None
        if self._slide_mpp is None:
            if self.mpp_spin.value() <= 0:
                self._show_mpp_field(True)
                _notify(
                    "error",
                    f"{Path(path).name} does not record its resolution: enter the microns "
                    "per pixel of the scan (e.g. 0.25 for 40x, 0.5 for 20x) and predict again",
                )
                return
            mpp = float(self.mpp_spin.value())

        kwargs = self.prediction_settings()
        kwargs.update(mpp=mpp, cache_dir=self.cache_dir, top_k=10)
        self._cancel = threading.Event()
        kwargs["cancel"] = self._cancel
        relay = self._relay

        def progress(stage: str, done: int, total: int) -> None:
            relay.progressed.emit(stage, done, total)

        kwargs["progress"] = progress
        self._run_layer = layer
        self._set_running(True)
        self._start_napari_progress()

        from superqt.utils import create_worker

        # Errors go to _on_errored (a clear notification), not re-raised in the GUI thread.
        worker = create_worker(
            _predict_in_background,
            path,
            self.bundle,
            _start_thread=False,
            _ignore_errors=True,
            _connect={
                "returned": self._on_returned,
                "errored": self._on_errored,
                "finished": self._finish_run,
            },
            **kwargs,
        )
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Stop the running prediction (the Cancel button)."""
        if self._cancel is not None:
            self._cancel.set()
            self.status_label.setText("Cancelling...")
            self.cancel_button.setEnabled(False)
        elif self._pending_layers is not None:
            # Cancelled while the result layers were being added: take them all away.
            self._pending_layers = None
            self._clear_result_layers()
            self.prediction = None
            self.results.setVisible(False)
            self.status_label.setText("Cancelled")
            _notify("warning", "Prediction cancelled: nothing was shown or cached")
            self._set_idle()

    def _set_running(self, on: bool) -> None:
        self.predict_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)
        self.load_model_button.setEnabled(not on)
        self.layer_combo.setEnabled(not on)
        if on:
            self.progress_bar.setRange(0, 0)
            self.status_label.setText("Starting...")

    def _start_napari_progress(self) -> None:
        try:
            from napari.utils import progress

            self._pbar = progress(total=0, desc="G-HANet prediction")
        except Exception:  # noqa: BLE001
            self._pbar = None
        self._last_done = 0

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        try:
            text = _STAGE_TEXT.get(stage, stage)
            if total > 0:
                self.progress_bar.setRange(0, total)
                self.progress_bar.setValue(min(done, total))
                self.status_label.setText(f"{text}: {done:,} / {total:,}")
            else:
                self.progress_bar.setRange(0, 0)
                self.status_label.setText(f"{text}...")
            pbar = self._pbar
            if pbar is not None:
                if stage == "features" and total > 0:
                    if pbar.total != total:
                        pbar.total = total
                        self._last_done = 0
                        pbar.n = 0
                    pbar.set_description(text)
                    pbar.update(max(0, done - self._last_done))
                    self._last_done = done
                else:
                    pbar.set_description(text)
        except Exception:  # noqa: BLE001
            logger.exception("progress display failed")

    def _on_returned(self, prediction) -> None:
        try:
            self.show_prediction(prediction, self._run_layer, incremental=True)
            for w in prediction.warnings:
                _notify("warning", w)
        except Exception as e:  # noqa: BLE001
            logger.exception("showing the prediction failed")
            self._pending_layers = None
            self._clear_result_layers()
            _notify("error", f"Could not show the prediction: {e}")

    def _on_shown(self) -> None:
        """The result (numbers and layers) is on screen: the run is over."""
        p = self.prediction
        if p is not None:
            extra = "cached features" if p.features_cached else "features computed"
            self.status_label.setText(
                f"Done in {p.timings.get('total', 0.0):.1f} s "
                f"({p.n_patches:,} patches, {extra})"
            )
        if self._worker is None:
            self._set_idle()

    def _on_errored(self, exc: BaseException) -> None:
        from napari_ghanet.inference.predict import (
            NoTissueError,
            PredictionCancelled,
            PredictionError,
        )
        from napari_ghanet.io.slide import SlideError
        from napari_ghanet.models.bundle import BundleError, EncoderMismatchError

        if isinstance(exc, PredictionCancelled):
            self.status_label.setText("Cancelled")
            _notify("warning", "Prediction cancelled: nothing was shown or cached")
            return
        if isinstance(exc, EncoderMismatchError):
            message = f"The model does not fit these features: {exc}"
        elif isinstance(exc, NoTissueError):
            message = f"No tissue found: {exc}"
        elif isinstance(exc, SlideError):
            message = f"Cannot read the slide: {exc}"
        elif isinstance(exc, BundleError | PredictionError | ValueError):
            message = str(exc)
        else:
            logger.error("prediction failed", exc_info=exc)
            message = f"Prediction failed ({type(exc).__name__}): {exc}"
        self.status_label.setText("Failed")
        _notify("error", message)

    def _finish_run(self) -> None:
        """The worker is done (returned, failed or cancelled)."""
        self._worker = None
        self._cancel = None
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:  # noqa: BLE001
                pass
            self._pbar = None
        if self._pending_layers is None:
            self._set_idle()

    def _set_idle(self) -> None:
        self._set_running(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if self.prediction is not None else 0)

    # ------------------------------------------------------------------ results

    def _layer_transform(self, layer, prediction) -> tuple[tuple[float, float], tuple[float, float]]:
        """World transform (scale, translate) of the slide's level-0 pixels in ``layer``."""
        scale = np.asarray(layer.scale[-2:], dtype=float)
        translate = np.asarray(layer.translate[-2:], dtype=float)
        data = layer.data[0] if layer.multiscale else layer.data
        shape = np.asarray(data.shape[:2], dtype=float)  # rgb: (h, w, 3)
        w0, h0 = prediction.slide["dimensions_level0"]
        # A layer holding a resampled copy of the slide still lines up.
        scale = scale * shape / np.array([h0, w0], dtype=float)
        return (float(scale[0]), float(scale[1])), (float(translate[0]), float(translate[1]))

    def show_prediction(self, prediction, layer=None, incremental: bool = False) -> None:
        """Display a Prediction: numbers, plots, tables and layers over ``layer``.

        With ``incremental`` the layers are added one per turn of the event loop, so the
        viewer never freezes for the whole batch (each layer costs napari tens of ms).
        """
        layer = layer if layer is not None else self.selected_layer()
        self._clear_result_layers()
        self.prediction = prediction
        self._slide_layer = layer
        self._show_numbers(prediction)
        steps = []
        if layer is not None and layer in self.viewer.layers:
            steps = self._layer_factories(prediction, layer)
        self._pending_layers = steps
        if incremental:
            QTimer.singleShot(0, self._add_next_layer)
        else:
            while self._pending_layers is not None:
                self._add_next_layer()

    def _add_next_layer(self) -> None:
        steps = self._pending_layers
        if steps is None:
            return  # cancelled meanwhile
        try:
            if steps:
                key, make = steps.pop(0)
                if make is _RANK_TEXT:
                    self.result_layers["regions"].text = dict(_RANK_TEXT)
                else:
                    layer = make()
                    self.viewer.add_layer(layer)
                    self.result_layers[key] = layer
                if steps:
                    QTimer.singleShot(0, self._add_next_layer)
                    return
            self._pending_layers = None
            if self._slide_layer is not None and self._slide_layer in self.viewer.layers:
                # Keep the slide selected in the layer list for the user's next action.
                self.viewer.layers.selection.active = self._slide_layer
            self._on_shown()
        except Exception as e:  # noqa: BLE001 - never half-made layers, never a traceback
            logger.exception("adding the result layers failed")
            self._pending_layers = None
            self._clear_result_layers()
            self._on_shown()
            _notify("error", f"Could not show the prediction layers: {e}")

    def _clear_result_layers(self) -> None:
        for layer in list(self.result_layers.values()):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.result_layers = {}

    def _layer_factories(self, p, slide_layer) -> list[tuple[str, Any]]:
        """(key, callable making the layer) for each result layer, in display order."""
        from napari.layers import Image, Shapes

        base = slide_layer.name
        level0_scale, level0_translate = self._layer_transform(slide_layer, p)
        lattice = overlays.patch_lattice(p.coords, p.patch_size_level0, p.step_level0)
        grid_scale, grid_translate = overlays.lattice_transform(
            lattice, level0_scale, level0_translate
        )
        mask_scale, mask_translate = overlays.mask_transform(
            p.tissue_downsample, level0_scale, level0_translate
        )
        units = getattr(slide_layer, "units", None)
        common: dict[str, Any] = {"units": units} if units is not None else {}
        cmap = _attention_colormap()
        attention = {
            "scale": grid_scale,
            "translate": grid_translate,
            "colormap": cmap,
            "contrast_limits": (0.0, 1.0),
            "opacity": 0.55,
            "blending": "translucent",
            "interpolation2d": "nearest",
            **common,
        }
        steps: list[tuple[str, Any]] = [
            (
                "tissue",
                lambda: Image(
                    overlays.mask_outline(p.tissue_mask, width=2),
                    name=f"{base} tissue",
                    scale=mask_scale,
                    translate=mask_translate,
                    colormap=_mask_colormap(),
                    contrast_limits=(0, 1),
                    opacity=0.9,
                    blending="translucent",
                    interpolation2d="nearest",
                    visible=False,
                    metadata={_OVERLAY_KEY: "tissue"},
                    **common,
                ),
            ),
            (
                "morphology",
                lambda: Image(
                    overlays.attention_image(p.morphology_attention, lattice),
                    name=f"{base} morphology attention",
                    metadata={_OVERLAY_KEY: "morphology"},
                    **attention,
                ),
            ),
        ]
        for i, name in enumerate(p.category_names):
            steps.append(
                (
                    f"genome:{i}",
                    lambda i=i, name=name: Image(
                        overlays.attention_image(p.genome_attention[i], lattice),
                        name=f"{base} genome attention: {name}",
                        visible=False,
                        metadata={
                            _OVERLAY_KEY: "genome", "category": name, "category_index": i
                        },
                        **attention,
                    ),
                )
            )
        if p.top_regions:
            xywh = np.array([[r.x, r.y, r.width, r.height] for r in p.top_regions])
            rects = overlays.region_rectangles(xywh, level0_scale, level0_translate)
            edge_width = 0.04 * p.patch_size_level0 * level0_scale[0]
            steps.append(
                (
                    "regions",
                    lambda: Shapes(
                        rects,
                        shape_type="rectangle",
                        name=f"{base} top regions",
                        edge_color="#00e5ff",
                        face_color="transparent",
                        edge_width=edge_width,
                        properties={
                            "rank": np.array([r.rank for r in p.top_regions]),
                            "category": np.array([r.category for r in p.top_regions]),
                        },
                        metadata={_OVERLAY_KEY: "regions"},
                        **common,
                    ),
                )
            )
            # The rank labels come one turn later: their first draw renders glyphs, which
            # is slow enough on software OpenGL to be worth its own turn.
            steps.append(("regions:text", _RANK_TEXT))
        return steps

    def _show_numbers(self, p) -> None:
        colour = _GROUP_COLOURS.get(p.risk_group, "#444444")
        self.risk_label.setText(
            f"<span style='color:{colour}'>{p.risk_group.capitalize()} risk</span>"
            f" &middot; {_ordinal(p.percentile)} percentile"
        )
        self.risk_detail.setText(
            f"Risk score {p.risk:.3f} (higher = worse), {_ordinal(p.percentile)} percentile "
            f"of the model's training cohort. {p.n_patches:,} patches of "
            f"{p.settings.get('patch_px')} px at {p.settings.get('target_mpp'):g} um/px."
        )
        self._plot_survival(p)
        self._fill_pathways(p)
        self.category_combo.blockSignals(True)
        self.category_combo.clear()
        self.category_combo.addItems(["none"] + p.category_names)
        self.category_combo.setCurrentIndex(0)
        self.category_combo.blockSignals(False)
        self._fill_regions(p)
        self.intended_use_label.setText(f"<b>Intended use:</b> {p.intended_use}")
        self.intended_use_label.setVisible(True)
        self.results.setVisible(True)

    def _plot_survival(self, p) -> None:
        fig = self.survival_figure
        fig.clear()
        # Follow the viewer's theme (napari's dark theme by default).
        background = self.palette().color(self.backgroundRole()).name()
        foreground = self.palette().color(self.foregroundRole()).name()
        fig.set_facecolor(background)
        ax = fig.add_subplot(111)
        ax.set_facecolor(background)
        for spine in ax.spines.values():
            spine.set_color(foreground)
        ax.tick_params(colors=foreground)
        ax.xaxis.label.set_color(foreground)
        ax.yaxis.label.set_color(foreground)
        months, surv = p.survival_curve()
        # surv[k + 1] is the probability of surviving past the end of bin k.
        ax.step(months, surv, where="post", color="#ef5350", lw=1.8)
        ax.plot(months[1:], surv[1:], "o", color="#ef5350", ms=3)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, months[-1])
        ax.set_xlabel("months", fontsize=8)
        ax.set_ylabel("survival probability", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if not np.isfinite(p.bin_edges_months[-1]):
            ax.annotate("last bin open-ended", xy=(0.98, 0.95), xycoords="axes fraction",
                        ha="right", va="top", fontsize=6, color="#666666")
        self.survival_canvas.draw_idle()

    def _fill_pathways(self, p) -> None:
        tree = self.pathway_tree
        tree.clear()
        limit = max(1.0, max((abs(c.score) for c in p.categories), default=1.0))
        for delegate in (tree.itemDelegateForColumn(1),):
            if isinstance(delegate, _DivergingBarDelegate):
                gene_max = max(
                    (abs(z) for c in p.categories for _, z in c.top_genes), default=1.0
                )
                delegate.limit = max(limit, gene_max, 1.0)
        for c in p.categories:
            item = QTreeWidgetItem([f"{c.name} ({len(c.genes)} genes)", ""])
            item.setData(1, _BAR_ROLE, float(c.score))
            item.setToolTip(0, f"mean reconstructed z-score {c.score:+.3f}")
            for gene, z in c.top_genes:
                child = QTreeWidgetItem([gene, ""])
                child.setData(1, _BAR_ROLE, float(z))
                item.addChild(child)
            tree.addTopLevelItem(item)

    def _fill_regions(self, p) -> None:
        table = self.regions_table
        table.setRowCount(len(p.top_regions))
        for row, r in enumerate(p.top_regions):
            cells = [
                str(r.rank),
                f"{r.attention:.4f} ({r.percentile:.0f})",
                r.category,
            ]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"x={r.x}, y={r.y}, {r.width} x {r.height} px (level 0)")
                table.setItem(row, col, item)

    def _on_category_changed(self, index: int) -> None:
        try:
            self.show_category(index - 1 if index > 0 else None)
        except Exception:  # noqa: BLE001
            logger.exception("switching the genome attention layer failed")

    def show_category(self, index: int | None) -> None:
        """Show the genome-informed attention layer of category ``index`` (None: none)."""
        for key, layer in self.result_layers.items():
            if key.startswith("genome:"):
                layer.visible = index is not None and key == f"genome:{index}"
        if index is not None and self.category_combo.currentIndex() != index + 1:
            self.category_combo.blockSignals(True)
            self.category_combo.setCurrentIndex(index + 1)
            self.category_combo.blockSignals(False)

    def go_to_region(self, row: int) -> None:
        """Centre and zoom the view on top region ``row`` (0-based)."""
        try:
            p, layer = self.prediction, self._slide_layer
            if p is None or not 0 <= row < len(p.top_regions):
                return
            r = p.top_regions[row]
            if layer is not None and layer in self.viewer.layers:
                scale, translate = self._layer_transform(layer, p)
            else:
                scale, translate = (1.0, 1.0), (0.0, 0.0)
            cy, cx = overlays.region_centre(r.x, r.y, r.width, r.height, scale, translate)
            canvas = getattr(self.viewer, "canvas", None)
            size = getattr(canvas, "size", None) or getattr(self.viewer, "_canvas_size", (600, 800))
            extent = 3.0 * max(r.width * scale[1], r.height * scale[0])  # patch + context
            scene = getattr(self.viewer, "scene", None)
            camera = scene.camera if scene is not None else self.viewer.camera
            camera.center = (cy, cx)
            camera.zoom = float(min(size)) / extent
            shapes = self.result_layers.get("regions")
            if shapes is not None:
                shapes.selected_data = {row}
        except Exception:  # noqa: BLE001
            logger.exception("going to region %s failed", row)

    # ------------------------------------------------------------------ export

    def _choose_export(self, kind: str) -> None:
        if self.prediction is None:
            _notify("warning", "Nothing to export yet: predict first")
            return
        from napari_ghanet.inference.predict import export_paths

        stem = Path(self.prediction.slide.get("name") or "slide").stem
        defaults = export_paths(self.prediction, Path.home())
        default = {
            "json": defaults["report"],
            "csv": defaults["csv"],
            "geojson": defaults["geojson"],
            "png": Path.home() / f"{stem}.ghanet.png",
        }[kind]
        filters = {
            "json": "JSON report (*.json)",
            "csv": "CSV (*.csv)",
            "geojson": "GeoJSON (*.geojson *.json)",
            "png": "PNG image (*.png)",
        }
        path, _ = QFileDialog.getSaveFileName(self, "Export", str(default), filters[kind])
        if path:
            self.export(kind, path)

    def export(self, kind: str, path: str | os.PathLike) -> Path | None:
        """Write the current result: kind "json", "csv", "geojson" or "png" (a snapshot
        of the canvas). Returns the path, or None (with a notification) on failure."""
        from napari_ghanet.inference.predict import (
            write_geojson,
            write_patch_csv,
            write_report_json,
        )

        if self.prediction is None:
            _notify("warning", "Nothing to export yet: predict first")
            return None
        try:
            if kind == "json":
                out = write_report_json(self.prediction, path)
            elif kind == "csv":
                out = write_patch_csv(self.prediction, path)
            elif kind == "geojson":
                out = write_geojson(self.prediction, path)
            elif kind == "png":
                out = self._write_snapshot(path)
            else:
                raise ValueError(f"unknown export kind {kind!r}")
        except Exception as e:  # noqa: BLE001
            _notify("error", f"Export failed: {e}")
            return None
        _notify("info", f"Saved {out}")
        return out

    def _write_snapshot(self, path: str | os.PathLike) -> Path:
        from napari.utils.io import imsave

        path = Path(path)
        if path.suffix.lower() != ".png":
            path = path.with_suffix(".png")
        image = self.viewer.screenshot(canvas_only=True, flash=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
        os.close(fd)
        try:
            imsave(tmp, np.asarray(image))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    # ------------------------------------------------------------------ teardown

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self._cancel is not None:
            self._cancel.set()
        super().closeEvent(event)


def _predict_in_background(*args, **kwargs):
    """predict_slide, then a warm-up of what napari's layers set up on first use (pandas,
    the units registry, text properties), so that one-off cost (~0.5-1 s) falls in this
    worker thread rather than in the GUI thread when the result layers are added.
    Layer models hold no Qt objects until they are added to a viewer."""
    from napari_ghanet.inference.predict import predict_slide

    prediction = predict_slide(*args, **kwargs)
    try:
        from napari.layers import Image, Shapes

        units = ("micrometer", "micrometer")
        Image(np.zeros((2, 2), np.float32), units=units)
        Shapes(
            [np.array([[0, 0], [0, 1], [1, 1], [1, 0]], float)],
            shape_type="rectangle",
            properties={"rank": np.array([1])},
            text={"string": "{rank}"},
            units=units,
        )
    except Exception:  # noqa: BLE001 - only a warm-up
        logger.debug("layer warm-up failed", exc_info=True)
    return prediction


def _ordinal(value: float) -> str:
    n = int(round(value))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
