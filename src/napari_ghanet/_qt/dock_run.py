"""The dock's run lifecycle over its :class:`~napari_ghanet.inference.session.PredictionSession`.

:class:`DockRun` checks the dock's inputs, hands the session its slides (level-0 mpp,
regions of interest, the patient of several slides) and typed options, runs
:meth:`~napari_ghanet.inference.session.PredictionSession.run` in a
:class:`~._qt.run.PredictionRun` worker (the result layers built there too), and shows
progress, preliminary answers, the result or the failure in the dock. The run's share of
the GC freeze is given back once the result is on screen (or the run failed or was
cancelled).
"""

from __future__ import annotations

import logging
from pathlib import Path

from napari_ghanet._qt import layers as qt_layers
from napari_ghanet._qt.inputs import layer_path
from napari_ghanet._qt.notify import error_message, notify
from napari_ghanet._qt.run import PredictionRun, ProgressBar
from napari_ghanet.errors import GHANetError
from napari_ghanet.inference.session import SlideInput
from napari_ghanet.io.names import make_safe_name

__all__ = ["DockRun"]

logger = logging.getLogger(__name__)


class DockRun:
    """Predict / Cancel of the dock ``dock`` (a :class:`~napari_ghanet._widget.PrognosisWidget`)."""

    def __init__(self, dock) -> None:
        self.dock = dock
        self._run_layers: list = []  # layers the running prediction is for
        self._run: PredictionRun | None = None  # from Predict until its worker is done
        self._shown_run: PredictionRun | None = None  # whose result layers are going in
        self._pbar: ProgressBar | None = None

    @property
    def running(self) -> bool:
        """True from "Predict" until the result is on screen (or the run ended)."""
        return self._run is not None or self.dock.shown_layers.busy

    def close(self) -> None:
        """The dock closes: stop the run, give back the GC freeze."""
        if self._run is not None:
            self._run.cancel()
        self._thaw_gc()

    def predict(self) -> None:
        """Start a prediction on the dock's slide layer(s) (the Predict button)."""
        try:
            self._start_prediction()
        except Exception as e:  # noqa: BLE001 - never let an exception out of the widget
            logger.exception("starting the prediction failed")
            self._finish_run()
            notify("error", f"Prediction failed to start: {e}")

    def _check_inputs(self) -> tuple[list, list[str], list[float | None]] | None:
        """(layers, slide paths, mpp overrides) of the patient's slides when a run can
        start, else a notification."""
        if self.dock.bundle is None:
            notify("error", "No model loaded: use 'Load model...' to choose a G-HANet model "
                            "bundle (.safetensors)")
            return None
        layer = self.dock.selected_layer()
        if layer is None:
            notify("error", "No slide layer: open a slide first (File > Open, or the demo "
                            "slide from File > Open Sample)")
            return None
        layers = self.dock.inputs.patient_layers()
        paths = [layer_path(lay) for lay in layers]
        for lay, path in zip(layers, paths):
            if not path:
                notify("error", f"Layer {lay.name!r} has no slide file behind it: open the "
                                "slide from its file so that G-HANet can read it at full "
                                "resolution")
                return None
        mpp = None
        if self.dock.inputs.slide_mpp is None:
            if self.dock.inputs.mpp_spin.value() <= 0:
                self.dock.inputs.show_mpp_field(True)
                notify("error", f"{Path(path).name} does not record its resolution: enter the "
                                "microns per pixel of the scan (e.g. 0.25 for 40x, 0.5 for 20x) "
                                "and predict again")
                return None
            mpp = float(self.dock.inputs.mpp_spin.value())
        return layers, paths, [mpp] + [None] * (len(layers) - 1)

    def _start_prediction(self) -> None:
        if self.running:
            notify("warning", "A prediction is already running")
            return
        checked = self._check_inputs()
        if checked is None:
            return
        layers, paths, mpps = checked
        try:
            regions = self.dock.regions(layers[0])
        except GHANetError as e:
            notify("error", f"Cannot use the regions of interest: {e}")
            return
        geometry = [self.dock.shown_layers.geometry(lay) for lay in layers]
        self.dock.prediction_options()
        patient = make_safe_name(layers[0].name, "patient") if len(layers) > 1 else None
        self.dock.session.choose_slides(
            [SlideInput(path, mpp, regions if k == 0 else None)
             for k, (path, mpp) in enumerate(zip(paths, mpps))], patient=patient)
        run = PredictionRun(_predict_in_background, self.dock.session, geometry, preliminary=True)
        run.progressed.connect(self._on_progress)
        run.preliminary_ready.connect(self._on_preliminary)
        run.returned.connect(self._on_returned)
        run.failed.connect(self._on_errored)
        run.finished.connect(self._finish_run)
        self._run, self._shown_run = run, run
        self._run_layers = list(layers)
        self.dock.inputs.set_running(True)
        self._pbar = ProgressBar("G-HANet prediction")
        run.start()

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
            self.dock.inputs.status_label.setText("Cancelling...")
            self.dock.inputs.cancel_button.setEnabled(False)
        elif self.dock.shown_layers.busy:
            # Cancelled while the result layers were being added: take them all away.
            self.dock.shown_layers.cancel()
            self.dock.prediction = None
            self.dock.results.clear()
            self.dock.inputs.status_label.setText("Cancelled")
            notify("warning", "Prediction cancelled: nothing was shown or cached")
            self.dock.inputs.set_idle(done=False)
            self._thaw_gc()

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        try:
            text = self.dock.inputs.show_progress(stage, done, total)
            if self._pbar is not None:
                self._pbar.show(stage, done, total, text)
            self.dock.progressed.emit(stage, done, total)
        except Exception:  # noqa: BLE001
            logger.exception("progress display failed")

    def _on_preliminary(self, est) -> None:
        """A preliminary risk from the patches embedded so far (or the final answer)."""
        try:
            self.dock.inputs.show_preliminary(est if self._run is not None else None)
            self.dock.preliminary_shown.emit(est)
        except Exception:  # noqa: BLE001
            logger.exception("showing the preliminary risk failed")

    def _on_returned(self, result) -> None:
        prediction, layers = result
        try:
            self.dock.show_prediction(prediction, self._run_layers, layers=layers, incremental=True)
            for w in prediction.warnings:
                notify("warning", w)
        except Exception as e:  # noqa: BLE001
            logger.exception("showing the prediction failed")
            self.dock.shown_layers.clear()
            notify("error", f"Could not show the prediction: {e}")

    def _on_errored(self, exc: BaseException) -> None:
        message = error_message(exc)
        if message is None:  # Cancelled: not an error
            self.dock.inputs.status_label.setText("Cancelled")
            notify("warning", "Prediction cancelled: nothing was shown or cached")
            return
        if not isinstance(exc, GHANetError | ValueError):
            logger.error("prediction failed", exc_info=exc)
        self.dock.inputs.status_label.setText("Failed")
        notify("error", message)

    def _finish_run(self) -> None:
        """The worker is done (returned, failed or cancelled)."""
        self._run = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not self.dock.shown_layers.busy:  # nothing to show (failed or cancelled)
            self.dock.inputs.set_idle(done=self.dock.prediction is not None)
            self._thaw_gc()

    def on_shown(self) -> None:
        """The result (numbers and layers) is on screen."""
        p = self.dock.prediction
        if p is not None:
            extra = "cached features" if p.features_cached else "features computed"
            self.dock.inputs.status_label.setText(
                f"Done in {p.timings.get('total', 0.0):.1f} s ({p.n_patches:,} patches, {extra})")
            self.dock.prediction_shown.emit(p)
        if self._run is None:
            self.dock.inputs.set_idle(done=p is not None)
        self._thaw_gc()


def _predict_in_background(session, geometry, *, cancel, progress, preliminary):
    """The session's run (``predict_slide`` or ``predict_patient``, as the command line
    runs them), then the result layers (napari models, no Qt objects until they are added
    to a viewer), so that only their insertion is left to the GUI thread.
    Returns (prediction, [(key, layer), ...] or None when building them failed)."""
    prediction = session.run(cancel=cancel, progress=progress, preliminary=preliminary)
    try:
        layers = qt_layers.build_result_layers(prediction, geometry)
    except Exception:  # noqa: BLE001 - built again (with a notification) in the GUI thread
        logger.debug("building the result layers in the worker failed", exc_info=True)
        layers = None
    return prediction, layers

