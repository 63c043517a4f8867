"""One prediction run in a worker thread: start, progress, cancel, result.

:class:`PredictionRun` runs a job (the dock's
:meth:`~napari_ghanet.inference.session.PredictionSession.run` and the result layers, as
:mod:`~._qt.dock_run` hands it) in a superqt worker thread: the Qt side of a Qt-free
session, which only marshals its callbacks to the GUI thread. It tells its owner what
happens through four signals, delivered in the GUI thread: ``progressed(stage, done,
total)``, ``returned(result)``, ``failed(exception)`` (a cancelled run fails with
:class:`~napari_ghanet.errors.Cancelled`) and ``finished()`` (always last). It holds its
share of the GC freeze (:class:`~._qt.gc_hold.GCHold`) from :meth:`start` until
:meth:`release`, which the owner calls once the result is on screen; a run that fails
or is cancelled releases it itself. It knows neither the dock nor its panels.

:class:`ProgressBar` shows a run's progress in napari's activity dock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_ghanet._qt.gc_hold import GCHold
from napari_ghanet.errors import Cancelled

logger = logging.getLogger(__name__)

__all__ = ["PredictionRun", "ProgressBar"]


class PredictionRun(QObject):
    """A job run once in a worker thread, with progress, cancel and a GC freeze.

    Parameters
    ----------
    job : callable
        Called in the worker thread as ``job(*args, cancel=Event, progress=callable,
        **kwargs)``; ``progress(stage, done, total)`` may be called from any thread. Its
        return value is emitted by ``returned``; its exception by ``failed``.
    args, kwargs
        The job's other arguments.
    preliminary : bool
        Also pass the job ``preliminary=callable``, whose values (preliminary risks)
        ``preliminary_ready`` delivers in the GUI thread.

    Signals
    -------
    progressed(str, int, int)
        Stage name, items done, items in the stage (0: unknown).
    returned(object)
        The job's result (not emitted when the run was cancelled meanwhile: then
        ``failed`` gets a ``Cancelled``).
    failed(BaseException)
        The job raised (``Cancelled`` when stopped by :meth:`cancel`).
    finished()
        After ``returned`` or ``failed``: the worker is done.
    preliminary_ready(object)
        A preliminary answer the job reported (with ``preliminary=True``).
    """

    progressed = Signal(str, int, int)
    preliminary_ready = Signal(object)
    returned = Signal(object)
    failed = Signal(object)
    finished = Signal()

    def __init__(self, job: Callable[..., Any], *args: Any, preliminary: bool = False,
                 **kwargs: Any) -> None:
        super().__init__()
        self._job, self._args, self._kwargs = job, args, kwargs
        if preliminary:
            ready = self.preliminary_ready  # emitted from the worker: a queued signal
            self._kwargs["preliminary"] = ready.emit
        self._cancel = threading.Event()
        self._gc = GCHold()
        self._worker = None
        self._done = False

    @property
    def running(self) -> bool:
        """True from :meth:`start` until ``finished``."""
        return self._worker is not None and not self._done

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel.is_set()

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._worker is not None:
            raise RuntimeError("a PredictionRun starts once")
        from superqt.utils import create_worker

        progressed = self.progressed  # emitted from the worker: a queued signal

        def progress(stage: str, done: int, total: int) -> None:
            progressed.emit(stage, int(done), int(total))

        # Errors go to failed (the owner shows them), never re-raised in the GUI thread.
        self._worker = create_worker(
            self._job, *self._args, _start_thread=False, _ignore_errors=True,
            _connect={"returned": self._on_returned, "errored": self._on_errored,
                      "finished": self._on_finished},
            cancel=self._cancel, progress=progress, **self._kwargs)
        # A full garbage collection of a napari process holds the GIL for ~250 ms, and the
        # worker's allocations trigger one: keep the objects alive now (viewer, slide,
        # plugin) out of collections until the owner calls release().
        self._gc.acquire()
        self._worker.start()

    def cancel(self) -> None:
        """Ask the job to stop (it checks between batches); ``failed`` follows."""
        self._cancel.set()

    def release(self) -> None:
        """Give back this run's share of the GC freeze (safe to call twice)."""
        self._gc.release()

    def _on_returned(self, result: Any) -> None:
        if self.cancelled:
            self._on_errored(Cancelled("prediction cancelled"))
            return
        self.returned.emit(result)

    def _on_errored(self, exc: BaseException) -> None:
        self.release()  # nothing will be shown
        self.failed.emit(exc)

    def _on_finished(self) -> None:
        self._done = True
        self.finished.emit()


class ProgressBar:
    """A run's progress in napari's activity dock ("features" stages move the bar; the
    description shows the stage's text). Display only: failures are logged."""

    def __init__(self, description: str = "G-HANet prediction") -> None:
        self._last_done = 0
        try:
            from napari.utils import progress

            self._pbar = progress(total=0, desc=description)
        except Exception:  # noqa: BLE001
            self._pbar = None

    def show(self, stage: str, done: int, total: int, text: str) -> None:
        """Move the bar to ``done`` of ``total`` (features stage) and show ``text``."""
        pbar = self._pbar
        if pbar is None:
            return
        try:
            if stage == "features" and total > 0:
                if pbar.total != total:
                    pbar.total = total
                    self._last_done = 0
                    pbar.n = 0
                pbar.update(max(0, done - self._last_done))
                self._last_done = done
            pbar.set_description(text)
        except Exception:  # noqa: BLE001
            logger.exception("progress display failed")

    def close(self) -> None:
        """Take the bar away (safe to call twice)."""
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:  # noqa: BLE001
                pass
            self._pbar = None
