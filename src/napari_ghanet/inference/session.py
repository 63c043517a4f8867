"""A prediction session: what one interactive run needs, without Qt.

:class:`PredictionSession` owns the chosen slide(s) (paths or open
:class:`~napari_ghanet.io.slide.Slide` objects, each with its own microns per pixel and
regions of interest), the model bundle (loaded once per file: choosing the same,
unchanged file again does not reload it), the typed options
(:class:`~napari_ghanet.options.PredictOptions`), the run (progress, preliminary
answers, cancel), its result and the result's exports (the
:mod:`~napari_ghanet.inference.export_registry`). A run is
:func:`~napari_ghanet.inference.predict.predict_slide` (one slide) or
:func:`~napari_ghanet.inference.predict.predict_patient` (several slides of one patient),
exactly as ``ghanet predict`` runs them.

It tells whoever listens through plain callbacks (:class:`Listeners`), called in the
thread that runs the work: ``events.progress(stage, done, total)``,
``events.preliminary(PreliminaryRisk)``, ``events.result(Prediction)``,
``events.error(exception)``, ``events.state(name)`` (one of :data:`STATES`) and
``events.bundle(ModelBundle or None)``. :meth:`PredictionSession.run` works in the
calling thread (a view's worker, the command line); :meth:`PredictionSession.start`
runs it in a thread the session owns, or on an executor the caller gives. The dock
(:mod:`napari_ghanet._widget`) is a view over a session: it runs
:meth:`~PredictionSession.run` in its Qt worker and only marshals the callbacks to the
GUI thread.

Examples
--------
>>> session = PredictionSession()
>>> session.state, session.result is None
('idle', True)
>>> session.set_options(top_k=5).report.top_k
5
>>> seen = []
>>> _ = session.events.state.connect(seen.append)
>>> session.prepare()
Traceback (most recent call last):
...
napari_ghanet.inference.session.SessionError: no model chosen: choose a G-HANet model bundle (.safetensors) first
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_ghanet.errors import Cancelled, GHANetError
from napari_ghanet.inference.export_registry import export_all, write_export
from napari_ghanet.inference.predict import predict_patient, predict_slide
from napari_ghanet.inference.result import Prediction
from napari_ghanet.io.slide import Slide
from napari_ghanet.models.bundle import ModelBundle, load_bundle
from napari_ghanet.options import PredictOptions
from napari_ghanet.preprocessing.roi import Regions

__all__ = ["STATES", "Listeners", "PredictionSession", "SessionError", "SlideInput"]

logger = logging.getLogger(__name__)

#: the states a session goes through (``events.state``)
STATES = ("idle", "running", "cancelling", "done", "failed", "cancelled")


class SessionError(GHANetError):
    """A run asked of a session that lacks what it needs (no model, no slide)."""


class Listeners:
    """A list of callbacks called with the same arguments (a minimal signal).

    A callback that raises is logged and the others are still called: a view's failure
    never stops a run.

    >>> got = []
    >>> ping = Listeners()
    >>> _ = ping.connect(got.append)
    >>> ping.emit(1); got
    [1]
    >>> ping.disconnect(got.append); ping.emit(2); got
    [1]
    """

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., Any]] = []
        self._lock = threading.Lock()

    def connect(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``callback`` on every :meth:`emit`; returns it (usable as a decorator)."""
        with self._lock:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` (a no-op when it is not connected)."""
        with self._lock:
            self._callbacks = [c for c in self._callbacks if c != callback]

    def emit(self, *args: Any) -> None:
        """Call every connected callback with ``args``."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - a listener never stops the run
                logger.exception("a session listener failed")


class SessionEvents:
    """The session's callbacks: progress, preliminary, result, error, state, bundle."""

    def __init__(self) -> None:
        self.progress = Listeners()
        self.preliminary = Listeners()
        self.result = Listeners()
        self.error = Listeners()
        self.state = Listeners()
        self.bundle = Listeners()


@dataclass(frozen=True)
class SlideInput:
    """One chosen slide: a slide file or an open Slide, with its own level-0 microns per
    pixel (None: the file's) and include/exclude regions in its level-0 pixels."""

    source: Slide | str | os.PathLike
    mpp: float | None = None
    regions: Regions | None = None

    @property
    def name(self) -> str:
        """The slide file's name."""
        path = getattr(self.source, "path", self.source)
        return Path(str(path)).name


def _slide_input(item: SlideInput | Slide | str | os.PathLike) -> SlideInput:
    return item if isinstance(item, SlideInput) else SlideInput(item)


def _bundle_key(path: Path) -> tuple[str, int, int] | None:
    """(resolved path, mtime ns, size): the same key means the same, unchanged file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path.resolve()), st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class RunJob:
    """What one run is given, fixed when it starts (later choices do not change it)."""

    slides: tuple[SlideInput, ...]
    bundle: ModelBundle
    options: PredictOptions
    patient: str | None

    def __call__(self, *, cancel: threading.Event, progress=None,
                 preliminary=None) -> Prediction:
        """Run the prediction in this thread (``predict_slide`` or ``predict_patient``)."""
        if len(self.slides) == 1 and self.patient is None:
            s = self.slides[0]
            extra = {"mpp": s.mpp} if s.mpp is not None else {}
            return predict_slide(s.source, self.bundle, self.options, regions=s.regions,
                                 progress=progress, cancel=cancel, preliminary=preliminary,
                                 **extra)
        mpps = [s.mpp for s in self.slides]
        regions = [s.regions for s in self.slides]
        return predict_patient(
            [s.source for s in self.slides], self.bundle, self.options, patient=self.patient,
            mpp=mpps if any(m is not None for m in mpps) else None,
            regions=regions if any(r is not None for r in regions) else None,
            progress=progress, cancel=cancel, preliminary=preliminary)


class PredictionSession:
    """Slides, model, options, run and result of interactive predictions (no Qt).

    Parameters
    ----------
    bundle : ModelBundle or path, optional
        The model to start with (:meth:`choose_bundle`).
    options : PredictOptions, optional
        The run's options (default: the declared defaults).

    Attributes
    ----------
    events : SessionEvents
        ``progress``, ``preliminary``, ``result``, ``error``, ``state`` and ``bundle``
        callbacks (:class:`Listeners`).
    result : Prediction or None
        The last run's prediction (None before, during, and after a failed or cancelled
        run).
    progressive : bool
        Ask each run for preliminary answers (``events.preliminary``), as the dock does.
    """

    def __init__(self, bundle: ModelBundle | str | os.PathLike | None = None,
                 options: PredictOptions | None = None) -> None:
        self.events = SessionEvents()
        self._options = options if options is not None else PredictOptions()
        self._slides: tuple[SlideInput, ...] = ()
        self.patient: str | None = None
        self._bundle: ModelBundle | None = None
        self._bundle_key: tuple[str, int, int] | None = None
        self.result: Prediction | None = None
        self._state = "idle"
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        #: ask for preliminary answers while patches are embedded (``events.preliminary``);
        #: a ``preliminary`` callback given to :meth:`run` asks for them too
        self.progressive = False
        if bundle is not None:
            self.choose_bundle(bundle)

    # ------------------------------------------------------------------ model

    @property
    def bundle(self) -> ModelBundle | None:
        """The chosen model bundle (None: none)."""
        return self._bundle

    def choose_bundle(self, bundle: ModelBundle | str | os.PathLike | None) -> ModelBundle | None:
        """Choose the model: a loaded bundle, a ``.safetensors`` file (loaded here, once:
        the same unchanged file again returns the bundle already loaded) or None.

        Raises
        ------
        BundleError
            The file is not a usable bundle (the session keeps its previous model).
        """
        if bundle is None or isinstance(bundle, ModelBundle):
            key = _bundle_key(bundle.path) if bundle is not None and bundle.path else None
            self._set_bundle(bundle, key)
            return bundle
        key = _bundle_key(Path(bundle))
        if key is not None and key == self._bundle_key and self._bundle is not None:
            return self._bundle
        loaded = load_bundle(bundle)
        self._set_bundle(loaded, key)
        return loaded

    def _set_bundle(self, bundle: ModelBundle | None, key) -> None:
        self._bundle, self._bundle_key = bundle, key
        self.events.bundle.emit(bundle)

    # ------------------------------------------------------------------ slides, options

    @property
    def slides(self) -> tuple[SlideInput, ...]:
        """The chosen slides (the first is the patient's main slide)."""
        return self._slides

    def choose_slides(self, slides: Iterable[SlideInput | Slide | str | os.PathLike],
                      patient: str | None = None) -> tuple[SlideInput, ...]:
        """Choose the slide (one) or the patient's slides (several, scored as one bag
        named ``patient``)."""
        self._slides = tuple(_slide_input(s) for s in slides)
        self.patient = patient
        return self._slides

    @property
    def options(self) -> PredictOptions:
        """The typed options of the next run."""
        return self._options

    @options.setter
    def options(self, value: PredictOptions) -> None:
        if not isinstance(value, PredictOptions):
            raise SessionError(f"options must be a PredictOptions, got {type(value).__name__}: "
                               "make them with PredictOptions.create(...)")
        self._options = value

    def set_options(self, options: PredictOptions | None = None, **fields: Any) -> PredictOptions:
        """Set the options: ``options`` (default: the current ones) with ``fields`` by
        name (``device="cpu"``, ``top_k=5``); returns them."""
        self._options = PredictOptions.create(options if options is not None else self._options,
                                              **fields)
        return self._options

    # ------------------------------------------------------------------ run

    @property
    def state(self) -> str:
        """One of :data:`STATES`."""
        return self._state

    @property
    def running(self) -> bool:
        """True while a run works (also while it is being cancelled)."""
        return self._running

    def _set_state(self, state: str) -> None:
        self._state = state
        self.events.state.emit(state)

    def prepare(self) -> RunJob:
        """The next run's inputs, checked and fixed.

        Raises
        ------
        SessionError
            No model or no slide chosen.
        """
        if self._bundle is None:
            raise SessionError("no model chosen: choose a G-HANet model bundle "
                               "(.safetensors) first")
        if not self._slides:
            raise SessionError("no slide chosen: choose a slide (or a patient's slides) first")
        return RunJob(self._slides, self._bundle, self._options, self.patient)

    def run(self, *, cancel: threading.Event | None = None, progress=None,
            preliminary=None) -> Prediction:
        """Predict in this thread; the events report progress, preliminary answers, the
        result and the state. ``cancel`` (or :meth:`cancel`) stops the run: then no
        result is kept and :class:`~napari_ghanet.errors.Cancelled` is raised.
        ``progress(stage, done, total)`` and ``preliminary(estimate)`` are also called
        directly (e.g. a terminal progress printer).

        Raises
        ------
        SessionError
            Another run is working, or no model / no slide is chosen.
        GHANetError
            Whatever the prediction raises (also reported by ``events.error``).
        """
        job = self.prepare()
        with self._lock:
            if self._running:
                raise SessionError("a prediction is already running: wait for it or "
                                   "cancel it first")
            self._running = True
            self._cancel = cancel if cancel is not None else threading.Event()
        cancel_event = self._cancel
        self.result = None
        self._set_state("running")
        try:
            wanted = self.progressive or preliminary is not None
            prediction = job(cancel=cancel_event,
                             progress=self._relay(self.events.progress, progress),
                             preliminary=(self._relay(self.events.preliminary, preliminary)
                                          if wanted else None))
            if cancel_event.is_set():
                raise Cancelled("prediction cancelled")
        except BaseException as e:
            self._running = False
            if isinstance(e, Cancelled | KeyboardInterrupt):
                cancel_event.set()
                self._set_state("cancelled")
            else:
                self._set_state("failed")
                self.events.error.emit(e)
            raise
        self.result = prediction
        self._running = False
        self._set_state("done")
        self.events.result.emit(prediction)
        return prediction

    @staticmethod
    def _relay(listeners: Listeners, direct) -> Callable[..., None]:
        def relay(*args: Any) -> None:
            if direct is not None:
                direct(*args)
            listeners.emit(*args)

        return relay

    def start(self, executor=None) -> Future:
        """:meth:`run` in a worker thread the session starts (or on ``executor``, e.g. a
        ``concurrent.futures`` executor: anything with ``submit(fn)``); returns a Future
        of the Prediction. Failures and cancellation reach the events (and the
        Future), never the caller."""
        self.prepare()  # refused here, in the caller's thread
        if self._running:
            raise SessionError("a prediction is already running: wait for it or cancel it "
                               "first")
        self._cancel = threading.Event()
        cancel = self._cancel

        def work() -> Prediction:
            return self.run(cancel=cancel)

        if executor is not None:
            return executor.submit(work)
        future: Future = Future()

        def thread_main() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(work())
            except BaseException as e:  # noqa: BLE001 - reported by the events
                future.set_exception(e)

        threading.Thread(target=thread_main, name="ghanet-session", daemon=True).start()
        return future

    def cancel(self) -> None:
        """Ask the running prediction to stop (it checks between batches)."""
        self._cancel.set()
        if self._running:
            self._set_state("cancelling")

    # ------------------------------------------------------------------ exports

    def _require_result(self) -> Prediction:
        if self.result is None:
            raise SessionError("nothing to export yet: predict first")
        return self.result

    def export(self, kind: str, path: str | os.PathLike) -> Path:
        """Write the result as export ``kind`` (a prediction kind of the export
        registry) to ``path``; returns the path written."""
        return write_export(kind, self._require_result(), path)

    def export_all(self, out_dir: str | os.PathLike,
                   kinds: Sequence[str] | None = None) -> dict[str, Path]:
        """Write the result as each kind (default: the registry's default kinds) into
        ``out_dir`` with the default names; returns the paths by kind."""
        return export_all(self._require_result(), out_dir, kinds)
