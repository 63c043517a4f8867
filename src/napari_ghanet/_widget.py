"""The "G-HANet prognosis" dock widget: a view over a
:class:`~napari_ghanet.inference.session.PredictionSession`.

The session (no Qt) holds the chosen slides, the model bundle, the typed options, the run
and its result; the dock gathers the inputs (slide layers, model, device, advanced
settings, regions of interest), hands them to the session, runs
:meth:`~napari_ghanet.inference.session.PredictionSession.run` in a worker thread
(:class:`~._qt.run.PredictionRun`: progress, preliminary answers, Cancel; the viewer stays
responsive) and shows the result: risk, percentile and risk group, the survival curve,
the reconstructed pathway profile, the top-attention regions and attention layers
aligned with the slide. Every number comes from the Prediction; errors become napari
notifications, never exceptions. After a run the dock scrolls to the results (at
napari's default window size they start below the visible part of the dock).

It composes the parts in :mod:`napari_ghanet._qt`: :class:`~._qt.inputs.InputsPanel`
(inputs and run controls), :class:`~._qt.settings.AdvancedSettings` (magicgui form),
:class:`~._qt.model_control.ModelControl` (model and device over the session),
:class:`~._qt.viewer_watch.LayerWatch` (the layer list), :class:`~._qt.results.ResultsPanel`,
:class:`~._qt.exports.ExportPanel` (the export registry's kinds),
:class:`~._qt.result_layers.ResultLayers` (the result layers on the viewer) and the layer
factories of :mod:`~._qt.layers` (napari only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_ghanet._qt import plugin_settings
from napari_ghanet._qt.dock_run import DockRun
from napari_ghanet._qt.dock_scroll import DockScroll
from napari_ghanet._qt.exports import ExportPanel
from napari_ghanet._qt.inputs import InputsPanel
from napari_ghanet._qt.model_control import ModelControl, intended_use_label
from napari_ghanet._qt.result_layers import ResultLayers
from napari_ghanet._qt.results import ResultsPanel
from napari_ghanet._qt.settings import AdvancedSettings
from napari_ghanet._qt.viewer_watch import LayerWatch
from napari_ghanet.inference.session import PredictionSession

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = ["PrognosisWidget"]


class PrognosisWidget(QWidget):
    """Dock widget: predict prognosis for a slide layer and show the result.

    Parameters
    ----------
    viewer : napari.Viewer
    cache_dir : path, optional
        Patch-feature cache (default: the user cache folder).
    model_path : path, optional
        Model bundle to start with (default: the last model loaded from a file in an
        earlier session when it still loads, else the bundled demonstration model).
    settings_store : SettingsStore, optional
        Where the device, the advanced settings and the last model are remembered
        between sessions (default: napari's plugin settings, else a settings file in the
        user config folder; see :mod:`napari_ghanet._settings_store`).

    Attributes
    ----------
    inputs : InputsPanel
    settings : AdvancedSettings
    results : ResultsPanel
    exports : ExportPanel
    shown_layers : ResultLayers
        The result layers on the viewer (:attr:`result_layers` by key).
    prediction_shown : Signal(Prediction)
        Emitted once a prediction's numbers and layers are on screen.
    progressed : Signal(str, int, int)
        The running prediction's progress (stage, done, total), in the GUI thread.
    preliminary_shown : Signal(PreliminaryRisk)
        A preliminary risk from the patches embedded so far was shown (and, last, the
        final answer, which hides it), in the GUI thread.
    """

    prediction_shown = Signal(object)
    progressed = Signal(str, int, int)
    preliminary_shown = Signal(object)

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        cache_dir: str | os.PathLike | None = None,
        model_path: str | os.PathLike | None = None,
        settings_store=None,
    ):
        super().__init__()
        self.settings_store = (settings_store if settings_store is not None
                               else plugin_settings.widget_settings_store())
        self.viewer = viewer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.session = PredictionSession()  # slides, bundle, options, run, result
        self.session.progressive = True  # a first answer while the slide is embedded
        self.prediction = None  # the prediction on screen
        # the result layers on the viewer; the run told when they are all on screen
        self.shown_layers = ResultLayers(viewer, lambda: self.inputs.slide_layers(),
                                         lambda: self.runner.on_shown())
        self.runner = DockRun(self)  # Predict / Cancel over the session

        self._build_ui()
        self.models = ModelControl(self.session, self.inputs, self.settings,
                                   self.intended_use_label, self.settings_store)
        self.settings.reset_button.changed.connect(lambda *_: self.models.reset())
        self.watch = LayerWatch(viewer, self, self._on_layers_changed,
                                self.shown_layers.layer_removed)
        self.inputs.refresh_layers()
        self.models.restore_device()
        if model_path is not None:
            self.load_model(model_path)
        else:
            self.models.load_default()

    def _build_ui(self) -> None:
        self.settings = AdvancedSettings(self.settings_store)
        self.inputs = InputsPanel(self.viewer, self.settings.native)
        self.results = ResultsPanel()
        self.exports = ExportPanel(self.viewer, lambda: self.prediction)
        self.results.add_section(self.exports)
        self.results.setVisible(False)
        self.results.category_selected.connect(self._on_category_selected)
        self.results.region_activated.connect(self.go_to_region)
        self.inputs.predict_requested.connect(self.predict)
        self.inputs.cancel_requested.connect(self.cancel)
        self.inputs.model_requested.connect(lambda: self.models.choose(self))
        self.inputs.geojson_requested.connect(
            lambda: self.inputs.roi.choose_geojson(self.selected_layer()))
        # intended use: always visible with the model and its result
        self.intended_use_label = intended_use_label()

        # Everything scrolls vertically; nothing is wider than the dock (360 px fits).
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = DockScroll([self.inputs, self.results, self.intended_use_label])
        outer.addWidget(self.scroll)

    def _on_layers_changed(self, event=None) -> None:
        self.inputs.refresh_layers(event, running=self.running)
        self.shown_layers.rename()

    @property
    def result_layers(self) -> dict[str, Any]:
        """The result layers in the viewer, by key ("genome", "morphology@1", ...)."""
        return self.shown_layers.layers

    def selected_layer(self):
        """The slide layer chosen in the widget (None when there is none)."""
        return self.inputs.selected_layer()

    # ------------------------------------------------------------------ model

    @property
    def bundle(self):
        """The session's model bundle (None: none)."""
        return self.session.bundle

    def load_model(self, path: str | os.PathLike, quiet: bool = False) -> bool:
        """Choose a ``.safetensors`` model bundle (loaded once per file); errors become a
        notification."""
        return self.models.load(path, quiet=quiet)

    def _set_bundle(self, bundle) -> None:
        self.session.choose_bundle(bundle)

    # ------------------------------------------------------------------ run

    @property
    def running(self) -> bool:
        """True from "Predict" until the result is on screen (or the run ended)."""
        return self.runner.running

    def predict(self) -> None:
        """Start a prediction on the selected slide layer (the Predict button)."""
        self.runner.predict()

    def cancel(self) -> None:
        """Stop the running prediction (the Cancel button)."""
        self.runner.cancel()

    def prediction_options(self):
        """The typed options of the next run from the widget's fields (the settings
        form, the device, the cache folder)."""
        options = self.settings.predict_options()
        fields: dict[str, Any] = {"device": self.inputs.device_combo.currentText()}
        if self.cache_dir is not None:
            fields["cache_dir"] = self.cache_dir
        return self.session.set_options(options, **fields)

    # ------------------------------------------------------------------ regions of interest

    def regions(self, layer=None):
        """The include/exclude Shapes layers chosen as a
        :class:`~napari_ghanet.preprocessing.roi.Regions` in level-0 pixels of slide layer
        ``layer`` (default: the selected slide), or None when none is chosen; a chosen
        layer without a shape with an area raises ``RegionError``."""
        return self.inputs.roi.regions(layer if layer is not None else self.selected_layer())

    def import_geojson(self, path: str | os.PathLike, kind: str = "include"):
        """Read QuPath GeoJSON annotations (level-0 pixels) into a Shapes layer over the
        selected slide, chosen as the ``kind`` ("include" or "exclude") regions; each
        polygon's outer ring (each part of a MultiPolygon) is one shape. Returns the
        layer (None, with a notification, on failure)."""
        return self.inputs.roi.import_geojson(self.selected_layer(), path, kind)

    # ------------------------------------------------------------------ results

    def show_prediction(self, prediction, layer=None, layers: list | None = None,
                        incremental: bool = False) -> None:
        """Display a Prediction: numbers, plots, tables and layers over ``layer`` (the
        slide layer, or one per slide of a several-slide prediction).

        ``layers`` are the result layers already built (in the worker thread) as
        :func:`napari_ghanet._qt.layers.build_result_layers` makes them; they are built
        here when not given. They go into the viewer hidden and appear together (one
        redraw); with ``incremental`` a few per turn of the event loop, so the viewer
        never freezes for the whole batch.
        """
        if layer is None:
            slide_layers = self.inputs.patient_layers()[: prediction.n_slides]
        else:
            slide_layers = list(layer) if isinstance(layer, list | tuple) else [layer]
        slide_layers = [lay if lay in self.viewer.layers else None for lay in slide_layers]
        self.shown_layers.clear()
        self.prediction = prediction
        self.shown_layers.slide_layers = slide_layers
        self.results.show_prediction(prediction)
        self.models.show_intended_use(prediction.intended_use)
        self.shown_layers.add(prediction, layers, incremental=incremental)
        QTimer.singleShot(0, self.scroll_to_results)  # once the panel is laid out

    def scroll_to_results(self) -> None:
        """Scroll the dock so that the results start at its top (at napari's default
        window size they lie below the inputs and settings)."""
        if self.results.isVisible():
            self.scroll.scroll_to(self.results)

    def _on_category_selected(self, index: int | None) -> None:
        try:
            self.show_category(index)
        except Exception:  # noqa: BLE001
            logger.exception("switching the genome attention layer failed")

    def show_category(self, index: int | None) -> None:
        """Show category ``index``'s genome-informed attention on the "genome" layer of
        each slide (None: hide it); the layer is named after the category."""
        names = self.prediction.category_names if self.prediction is not None else []
        self.shown_layers.show_category(index, names)
        self.results.select_category(index)

    def go_to_region(self, row: int) -> None:
        """Centre and zoom the view on top region ``row`` (0-based)."""
        self.shown_layers.go_to_region(self.prediction, row)

    def export(self, kind: str, path: str | os.PathLike) -> Path | None:
        """Write the current result: kind "json", "csv", "geojson" or "png" (a snapshot
        of the canvas). Returns the path, or None (with a notification) on failure."""
        return self.exports.export(kind, path)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.runner.close()
        super().closeEvent(event)

