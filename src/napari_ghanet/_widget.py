"""The "G-HANet prognosis" dock widget.

The widget gathers the inputs (slide layer, model bundle, device, advanced settings),
runs :func:`napari_ghanet.inference.predict.predict_slide` (or ``predict_patient`` for
several slides of one patient) with the chosen regions of interest, artifact QC and heatmap
overlap in a worker thread (progress, Cancel;
the viewer stays responsive) and shows the result: risk, percentile and risk group,
the survival curve, the reconstructed pathway profile, the top-attention regions and
attention layers aligned with the slide. Every number comes from the Prediction; this
module only displays it. Errors become napari notifications, never exceptions.

It composes the parts in :mod:`napari_ghanet._qt`: :class:`~._qt.inputs.InputsPanel`
(inputs and run controls), :class:`~._qt.settings.AdvancedSettings` (magicgui form),
:class:`~._qt.results.ResultsPanel`, :class:`~._qt.exports.ExportPanel`,
:class:`~._qt.result_layers.ResultLayers` (the result layers on the viewer) and the layer
factories of :mod:`~._qt.layers` (napari only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFileDialog, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from napari_ghanet._qt import layers as qt_layers
from napari_ghanet._qt import plugin_settings
from napari_ghanet._qt import regions as qt_regions
from napari_ghanet._qt.dicomweb import DicomWebPanel
from napari_ghanet._qt.exports import ExportPanel
from napari_ghanet._qt.inputs import InputsPanel, layer_path
from napari_ghanet._qt.notify import error_message, notify
from napari_ghanet._qt.result_layers import ResultLayers
from napari_ghanet._qt.results import ResultsPanel
from napari_ghanet._qt.run import PredictionRun, ProgressBar
from napari_ghanet._qt.settings import AdvancedSettings
from napari_ghanet.errors import GHANetError
from napari_ghanet.io.names import make_safe_name

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
        self.bundle = None
        self.prediction = None
        # the result layers on the viewer; _on_shown looked up at call time
        self.shown_layers = ResultLayers(viewer, lambda: self.inputs.slide_layers(),
                                         lambda: self._on_shown())
        self._run_layers: list = []  # layers the running prediction is for
        self._run: PredictionRun | None = None  # from Predict until its worker is done
        self._shown_run: PredictionRun | None = None  # whose result layers are going in
        self._pbar: ProgressBar | None = None

        self._build_ui()
        self._connect_viewer()
        self.inputs.refresh_layers()
        self._restore_device()
        if model_path is not None:
            self.load_model(model_path)
        else:
            self._load_default_model()

    def _build_ui(self) -> None:
        self.settings = AdvancedSettings(self.settings_store)
        self.settings.reset_button.changed.connect(self._on_settings_reset)
        self.inputs = InputsPanel(self.viewer, self.settings.native)
        self.results = ResultsPanel()
        self.exports = ExportPanel(self.viewer, lambda: self.prediction)
        self.dicomweb = DicomWebPanel(self.viewer, lambda: self.prediction)
        self.results.add_section(self.exports)
        self.results.setVisible(False)
        self.results.category_selected.connect(self._on_category_selected)
        self.results.region_activated.connect(self.go_to_region)
        self.inputs.predict_requested.connect(self.predict)
        self.inputs.cancel_requested.connect(self.cancel)
        self.inputs.model_requested.connect(self._choose_model)
        self.inputs.geojson_requested.connect(self._choose_geojson)

        # intended use: always visible with the model and its result
        self.intended_use_label = QLabel("")
        self.intended_use_label.setWordWrap(True)
        self.intended_use_label.setFrameShape(QFrame.Shape.StyledPanel)
        self.intended_use_label.setStyleSheet(
            "QLabel { border: 1px solid #b26a00; border-radius: 3px; padding: 4px; }")

        # Everything scrolls vertically; nothing is wider than the dock (360 px fits).
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(self.scroll)
        body = QWidget()
        layout = QVBoxLayout(body)
        for part in (self.inputs, self.dicomweb, self.results, self.intended_use_label):
            layout.addWidget(part)
        layout.addStretch(1)
        self.scroll.setWidget(body)

    # ------------------------------------------------------------------ viewer layers

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        handlers = [
            (events.inserted, self._on_layers_changed),
            (events.removed, self._on_layer_removed),
            (events.reordered, self._on_layers_changed),
        ]
        for emitter, callback in handlers:
            emitter.connect(callback)
        self._named: list = []  # layers whose renames re-list the dropdowns
        for layer in self.viewer.layers:
            self._follow_name(layer)

        def disconnect(*_) -> None:  # the viewer may outlive the widget
            for emitter, callback in handlers:
                try:
                    emitter.disconnect(callback)
                except Exception:  # noqa: BLE001
                    pass
            for layer in self._named:
                self._unfollow_name(layer)

        self.destroyed.connect(disconnect)

    def _follow_name(self, layer) -> None:
        """Re-list the slide and region dropdowns when ``layer`` (a slide or Shapes layer
        of the user's, not a result layer) is renamed."""
        if layer is None or qt_layers.OVERLAY_KEY in getattr(layer, "metadata", {}):
            return
        if not any(layer is other for other in self._named):
            layer.events.name.connect(self._on_layer_renamed)
            self._named.append(layer)

    def _unfollow_name(self, layer) -> None:
        try:
            layer.events.name.disconnect(self._on_layer_renamed)
        except Exception:  # noqa: BLE001
            pass

    def _on_layer_renamed(self, event=None) -> None:
        self._on_layers_changed()

    def _on_layers_changed(self, event=None) -> None:
        if getattr(event, "type", "") == "inserted":
            self._follow_name(getattr(event, "value", None))
        self.inputs.refresh_layers(event, running=self.running)
        self.shown_layers.rename()

    def _on_layer_removed(self, event=None) -> None:
        removed = getattr(event, "value", None)
        if any(removed is layer for layer in self._named):
            self._unfollow_name(removed)
            self._named = [layer for layer in self._named if layer is not removed]
        self.shown_layers.layer_removed(removed)
        self._on_layers_changed()

    @property
    def result_layers(self) -> dict[str, Any]:
        """The result layers in the viewer, by key ("genome", "morphology@1", ...)."""
        return self.shown_layers.layers

    def selected_layer(self):
        """The slide layer chosen in the widget (None when there is none)."""
        return self.inputs.selected_layer()

    # ------------------------------------------------------------------ model

    def _restore_device(self) -> None:
        """The device chosen in an earlier session (when this machine offers it); every
        later choice is remembered."""
        combo = self.inputs.device_combo
        device = self.settings_store.load().get("device", "auto")
        i = combo.findText(device)
        item = combo.model().item(i) if i >= 0 else None
        if item is not None and item.isEnabled():
            combo.setCurrentIndex(i)
        combo.currentTextChanged.connect(
            lambda text: self.settings_store.save({"device": text}))

    def _on_settings_reset(self, *_: Any) -> None:
        """"Reset to defaults" also brings the device back to auto."""
        self.inputs.device_combo.setCurrentText("auto")
        self.settings_store.reset()

    def _load_default_model(self) -> None:
        """The last model loaded from a file in an earlier session, else the bundled
        demonstration model."""
        from napari_ghanet.models.bundle import demo_bundle_path

        last = self.settings_store.load().get("last_model", "")
        if last and Path(last).is_file() and self.load_model(last, quiet=True):
            return
        path = demo_bundle_path()
        if path.is_file():
            self.load_model(path, quiet=True)
        else:
            self._set_bundle(None)

    def _choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a G-HANet model bundle", "", "Model bundles (*.safetensors)")
        if path:
            self.load_model(path)

    def load_model(self, path: str | os.PathLike, quiet: bool = False) -> bool:
        """Load a ``.safetensors`` model bundle; errors become a notification."""
        from napari_ghanet.models.bundle import load_bundle

        try:
            bundle = load_bundle(path)
        except (GHANetError, OSError, ValueError, RuntimeError) as e:
            notify("error", f"Cannot load the model: {e}")
            return False
        self._set_bundle(bundle)
        if not quiet:
            notify("info", f"Model {bundle.name!r} loaded")
        from napari_ghanet.models.bundle import demo_bundle_path

        is_demo = Path(path).resolve() == demo_bundle_path().resolve()
        self.settings_store.save({"last_model": "" if is_demo else str(Path(path).resolve())})
        return True

    def _set_bundle(self, bundle) -> None:
        self.bundle = bundle
        self.inputs.show_bundle(bundle)
        self._show_intended_use(bundle.intended_use if bundle is not None else None)
        if bundle is not None:
            self.settings.use_model(bundle.encoder)

    def _show_intended_use(self, text: str | None) -> None:
        self.intended_use_label.setText(f"<b>Intended use:</b> {text}" if text else "")
        self.intended_use_label.setVisible(bool(text))

    # ------------------------------------------------------------------ run

    @property
    def running(self) -> bool:
        """True from "Predict" until the result is on screen (or the run ended)."""
        return self._run is not None or self.shown_layers.busy

    def prediction_settings(self) -> dict[str, Any]:
        """Keyword arguments for predict_slide from the widget's fields."""
        return {"device": self.inputs.device_combo.currentText(),
                **self.settings.predict_kwargs()}

    def predict(self) -> None:
        """Start a prediction on the selected slide layer (the Predict button)."""
        try:
            self._start_prediction()
        except Exception as e:  # noqa: BLE001 - never let an exception out of the widget
            logger.exception("starting the prediction failed")
            self._finish_run()
            notify("error", f"Prediction failed to start: {e}")

    def _check_inputs(self) -> tuple[list, list[str], list[float | None]] | None:
        """(layers, slide paths, mpp overrides) of the patient's slides when a run can
        start, else a notification."""
        if self.bundle is None:
            notify("error", "No model loaded: use 'Load model...' to choose a G-HANet model "
                            "bundle (.safetensors)")
            return None
        layer = self.selected_layer()
        if layer is None:
            notify("error", "No slide layer: open a slide first (File > Open, or the demo "
                            "slide from File > Open Sample)")
            return None
        layers = self.inputs.patient_layers()
        paths = [layer_path(lay) for lay in layers]
        for lay, path in zip(layers, paths):
            if not path:
                notify("error", f"Layer {lay.name!r} has no slide file behind it: open the "
                                "slide from its file so that G-HANet can read it at full "
                                "resolution")
                return None
        mpp = None
        if self.inputs.slide_mpp is None:
            if self.inputs.mpp_spin.value() <= 0:
                self.inputs.show_mpp_field(True)
                notify("error", f"{Path(path).name} does not record its resolution: enter the "
                                "microns per pixel of the scan (e.g. 0.25 for 40x, 0.5 for 20x) "
                                "and predict again")
                return None
            mpp = float(self.inputs.mpp_spin.value())
        return layers, paths, [mpp] + [None] * (len(layers) - 1)

    # ------------------------------------------------------------------ regions of interest

    def regions(self, layer=None):
        """The include/exclude Shapes layers chosen in the widget as a
        :class:`~napari_ghanet.preprocessing.roi.Regions` in level-0 pixels of slide layer
        ``layer`` (default: the selected slide), or None when none is chosen.

        Raises
        ------
        RegionError
            A chosen layer has no shape with an area.
        """
        layer = layer if layer is not None else self.selected_layer()
        return qt_regions.shapes_regions(
            self.inputs.include_layer(), self.inputs.exclude_layer(), layer)

    def _choose_geojson(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import QuPath annotations (GeoJSON)", "",
            "GeoJSON (*.geojson *.json);;All files (*)")
        if path:
            self.import_geojson(path)

    def import_geojson(self, path: str | os.PathLike, kind: str = "include"):
        """Read QuPath GeoJSON annotations (level-0 pixels) into a Shapes layer laid over
        the selected slide, and choose it as the ``kind`` ("include" or "exclude")
        regions. Returns the layer (None, with a notification, on failure).

        Polygons keep their outer ring (napari shapes have no holes); each part of a
        MultiPolygon becomes one shape.
        """
        shapes = qt_regions.import_geojson(self.viewer, self.selected_layer(), path, kind)
        if shapes is None:
            return None
        self.inputs.set_region_layer(kind, shapes)
        self.viewer.layers.selection.active = shapes
        notify("info", f"{len(shapes.data)} region(s) imported from {Path(path).name} as "
                       f"{kind} regions")
        return shapes

    def _start_prediction(self) -> None:
        if self.running:
            notify("warning", "A prediction is already running")
            return
        checked = self._check_inputs()
        if checked is None:
            return
        layers, paths, mpps = checked
        try:
            regions = self.regions(layers[0])
        except GHANetError as e:
            notify("error", f"Cannot use the regions of interest: {e}")
            return
        geometry = [self.shown_layers.geometry(lay) for lay in layers]
        run = PredictionRun(_predict_in_background, paths, self.bundle, geometry,
                            preliminary=True,
                            **self._predict_arguments(layers, mpps, regions))
        run.progressed.connect(self._on_progress)
        run.preliminary_ready.connect(self._on_preliminary)
        run.returned.connect(self._on_returned)
        run.failed.connect(self._on_errored)
        run.finished.connect(self._finish_run)
        self._run, self._shown_run = run, run
        self._run_layers = list(layers)
        self.inputs.set_running(True)
        self._pbar = ProgressBar("G-HANet prediction")
        run.start()

    def _predict_arguments(self, layers: list, mpps: list, regions) -> dict[str, Any]:
        """Keyword arguments of predict_slide (one slide layer) or predict_patient
        (several), less ``cancel`` and ``progress`` (the run adds them)."""
        kwargs = self.prediction_settings()
        kwargs.update(cache_dir=self.cache_dir)
        if len(layers) > 1:
            kwargs.update(mpp=mpps, regions=[regions] + [None] * (len(layers) - 1),
                          patient=make_safe_name(layers[0].name, "patient"))
        else:
            kwargs.update(mpp=mpps[0], regions=regions)
        return kwargs

    def _thaw_gc(self) -> None:
        """Give back the shown run's share of the GC freeze (its result is on screen, or
        it failed or was cancelled), so nothing stays uncollectable for the session."""
        if self._shown_run is not None:
            self._shown_run.release()
            self._shown_run = None

    def cancel(self) -> None:
        """Stop the running prediction (the Cancel button)."""
        if self._run is not None:
            self._run.cancel()
            self.inputs.status_label.setText("Cancelling...")
            self.inputs.cancel_button.setEnabled(False)
        elif self.shown_layers.busy:
            # Cancelled while the result layers were being added: take them all away.
            self.shown_layers.cancel()
            self.prediction = None
            self.results.clear()
            self.inputs.status_label.setText("Cancelled")
            notify("warning", "Prediction cancelled: nothing was shown or cached")
            self.inputs.set_idle(done=False)
            self._thaw_gc()

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        try:
            text = self.inputs.show_progress(stage, done, total)
            if self._pbar is not None:
                self._pbar.show(stage, done, total, text)
            self.progressed.emit(stage, done, total)
        except Exception:  # noqa: BLE001
            logger.exception("progress display failed")

    def _on_preliminary(self, est) -> None:
        """A preliminary risk from the patches embedded so far (or the final answer)."""
        try:
            self.inputs.show_preliminary(est if self._run is not None else None)
            self.preliminary_shown.emit(est)
        except Exception:  # noqa: BLE001
            logger.exception("showing the preliminary risk failed")

    def _on_returned(self, result) -> None:
        prediction, layers = result
        try:
            self.show_prediction(prediction, self._run_layers, layers=layers, incremental=True)
            for w in prediction.warnings:
                notify("warning", w)
        except Exception as e:  # noqa: BLE001
            logger.exception("showing the prediction failed")
            self.shown_layers.clear()
            notify("error", f"Could not show the prediction: {e}")

    def _on_errored(self, exc: BaseException) -> None:
        message = error_message(exc)
        if message is None:  # Cancelled: not an error
            self.inputs.status_label.setText("Cancelled")
            notify("warning", "Prediction cancelled: nothing was shown or cached")
            return
        if not isinstance(exc, GHANetError | ValueError):
            logger.error("prediction failed", exc_info=exc)
        self.inputs.status_label.setText("Failed")
        notify("error", message)

    def _finish_run(self) -> None:
        """The worker is done (returned, failed or cancelled)."""
        self._run = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not self.shown_layers.busy:  # nothing to show (failed or cancelled)
            self.inputs.set_idle(done=self.prediction is not None)
            self._thaw_gc()

    def _on_shown(self) -> None:
        """The result (numbers and layers) is on screen."""
        p = self.prediction
        if p is not None:
            extra = "cached features" if p.features_cached else "features computed"
            self.inputs.status_label.setText(
                f"Done in {p.timings.get('total', 0.0):.1f} s ({p.n_patches:,} patches, {extra})")
            self.prediction_shown.emit(p)
        if self._run is None:
            self.inputs.set_idle(done=p is not None)
        self._thaw_gc()

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
        self._show_intended_use(prediction.intended_use)
        self.shown_layers.add(prediction, layers, incremental=incremental)

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
        if self._run is not None:
            self._run.cancel()
        self._thaw_gc()
        super().closeEvent(event)


def _predict_in_background(paths, bundle, geometry, **kwargs):
    """predict_slide (one slide) or predict_patient (several), then the result layers
    (napari models, no Qt objects until they are added to a viewer), so that only their
    insertion is left to the GUI thread.
    Returns (prediction, [(key, layer), ...] or None when building them failed)."""
    from napari_ghanet.inference.predict import predict_patient, predict_slide

    if len(paths) > 1:
        prediction = predict_patient(paths, bundle, **kwargs)
    else:
        prediction = predict_slide(paths[0], bundle, **kwargs)
    try:
        layers = qt_layers.build_result_layers(prediction, geometry)
    except Exception:  # noqa: BLE001 - built again (with a notification) in the GUI thread
        logger.debug("building the result layers in the worker failed", exc_info=True)
        layers = None
    return prediction, layers

