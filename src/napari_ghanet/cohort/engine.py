"""Run one task per slide (or patient, or fold) in-process or on Dask distributed.

``run_tasks(fn, items)`` calls ``fn(item, *args, **kwargs)`` for every item and returns one
:class:`TaskResult` per item, in the items' order. ``fn`` returns a row dict (``status`` one
of ``done``, ``skipped``, ``failed``). Where it runs:

* ``cluster=None`` and ``scheduler=None`` (default): in this process, one item after the
  other, through the same wrapper as on a cluster.
* ``cluster="local:N"``: a Dask ``LocalCluster`` of N worker processes with one task
  thread each; each worker's torch/OpenMP threads are set so that workers x threads does
  not exceed this machine's cores.
* ``cluster="local:gpus"``: one worker process per visible GPU, pinned to it with
  ``CUDA_VISIBLE_DEVICES`` and offering the resource ``GPU=1``.
* ``scheduler="tcp://host:8786"``: an existing scheduler (``dask scheduler`` +
  ``dask worker``, or dask-jobqueue); GPU tasks then ask for ``resources={"GPU": 1}``
  when the workers offer it.

Failures never stop the run: an exception inside a task becomes a ``failed`` row (caught
in the task), and a task whose worker process died (a native crash, the out-of-memory
killer) is submitted once more and, if its worker dies again, becomes a ``failed`` row
naming ``KilledWorker``. The cluster and client are closed whatever happens (Ctrl-C
included).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from napari_ghanet.errors import Cancelled, CohortError, GHANetError
from napari_ghanet.options import ExecutionOptions, OptionError
from napari_ghanet.options import parse_cluster as _parse_cluster

logger = logging.getLogger(__name__)

__all__ = [
    "TaskResult",
    "available_cores",
    "gpu_worker_specs",
    "open_client",
    "parse_cluster",
    "run_tasks",
]

#: submissions of a task whose worker died (1 = retried once)
MAX_ATTEMPTS = 2
_THREADS_ENV = "GHANET_TORCH_THREADS"

ProgressFn = Callable[[int, int, "TaskResult"], None]


@dataclass
class TaskResult:
    """Outcome of one task.

    Attributes
    ----------
    index : int
        Position of the item in the input list.
    row : dict
        The task's row: at least ``status`` (done | skipped | failed) and ``error``.
    attempts : int
        Submissions (2 when the first worker died).
    """

    index: int
    row: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1

    @property
    def status(self) -> str:
        return str(self.row.get("status", "failed"))

    @property
    def error(self) -> str:
        return str(self.row.get("error") or "")

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def parse_cluster(cluster: str | None) -> tuple[str, int | None]:
    """:func:`napari_ghanet.options.parse_cluster`, a bad value as a
    :class:`~napari_ghanet.errors.CohortError`.

    Examples
    --------
    >>> parse_cluster("local:2"), parse_cluster("local:gpus"), parse_cluster(None)
    (('local', 2), ('gpus', None), ('inprocess', None))
    """
    try:
        return _parse_cluster(cluster)
    except OptionError as e:
        raise CohortError(str(e)) from None


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA
        return []


def _worker_env(threads: int) -> dict[str, str]:
    t = str(max(1, int(threads)))
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
            _THREADS_ENV: t}


def gpu_worker_specs(devices: Sequence[str], threads: int | None = None) -> dict[str, dict]:
    """Dask ``SpecCluster`` worker specs: one single-threaded worker process per GPU,
    pinned with ``CUDA_VISIBLE_DEVICES`` and offering the resource ``GPU=1``.

    Examples
    --------
    >>> spec = gpu_worker_specs(["0", "1"], threads=4)
    >>> sorted(spec), spec["gpu-1"]["options"]["env"]["CUDA_VISIBLE_DEVICES"]
    (['gpu-0', 'gpu-1'], '1')
    >>> spec["gpu-0"]["options"]["resources"]
    {'GPU': 1}
    """
    from distributed import Nanny

    if threads is None:
        threads = max(1, available_cores() // max(1, len(devices)))
    return {
        f"gpu-{d}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "resources": {"GPU": 1},
                "env": {**_worker_env(threads), "CUDA_VISIBLE_DEVICES": str(d)},
            },
        }
        for d in devices
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _plan(cluster: str | None, scheduler: str | None,
          execution: ExecutionOptions | None) -> tuple[str, int | None, str | None]:
    """``(kind, n, scheduler)`` of a run: the execution options' plan (parsed when they
    were made), or ``cluster`` parsed here, once."""
    if execution is not None:
        if cluster is not None or scheduler is not None:
            raise TypeError("give the execution options or cluster/scheduler, not both")
        kind, n = execution.cluster_plan
        return kind, n, execution.scheduler
    kind, n = parse_cluster(cluster)
    if scheduler is not None and kind != "inprocess":
        raise CohortError("give either a local cluster or a scheduler address, not both")
    return kind, n, scheduler


@contextmanager
def open_client(
    cluster: str | None = None,
    scheduler: str | None = None,
    *,
    execution: ExecutionOptions | None = None,
    threads: int | None = None,
    say: Callable[[str], None] | None = _say,
) -> Iterator[Any]:
    """A connected ``distributed.Client`` (a new local cluster, or an existing scheduler);
    yields None for in-process runs. Everything it started is closed on exit.

    Where: ``cluster`` / ``scheduler``, or ``execution`` (their options, parsed once when
    made). ``threads``: torch/OpenMP threads per local worker (default: cores // workers)."""
    with _client(*_plan(cluster, scheduler, execution), threads=threads, say=say) as c:
        yield c


@contextmanager
def _client(kind: str, n: int | None, scheduler: str | None, *, threads: int | None = None,
            say: Callable[[str], None] | None = _say) -> Iterator[Any]:
    """:func:`open_client` for a parsed plan."""
    if scheduler is None and kind == "inprocess":
        yield None
        return
    import dask
    from distributed import Client, LocalCluster, Scheduler, SpecCluster

    say = say or (lambda s: None)
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise CohortError(
                f"cannot reach the Dask scheduler at {scheduler}: {exc}; start one with "
                "`dask scheduler` and `dask worker ADDRESS`"
            ) from exc
        with client:
            say(f"Dask scheduler {scheduler}: {len(client.scheduler_info()['workers'])} "
                f"worker(s); dashboard {client.dashboard_link}")
            yield client
        return
    # Worker deaths are retried by run_tasks (once), not by the scheduler.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        if kind == "local":
            threads = threads or max(1, available_cores() // n)
            cm = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                env=_worker_env(threads), silence_logs=logging.ERROR,
            )
            what = f"{n} worker process(es) x {threads} torch thread(s)"
        else:
            devices = _visible_gpus()
            if not devices:
                raise CohortError("cluster local:gpus: no GPU is visible on this machine; use "
                                  "local:N for N CPU worker processes")
            cm = SpecCluster(
                scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                workers=gpu_worker_specs(devices, threads), silence_logs=logging.ERROR,
            )
            what = f"{len(devices)} GPU worker(s) (devices {', '.join(devices)})"
        with cm as local, Client(local) as client:
            say(f"Dask local cluster: {what}; dashboard {client.dashboard_link}")
            yield client


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GHANetError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_one(fn: Callable[..., dict], item: Any, args: tuple, kwargs: dict) -> dict:
    """Call ``fn(item, *args, **kwargs)``; any exception becomes a ``failed`` row, so one
    bad item never stops the run. Sets torch's threads where the worker says so."""
    t0 = time.perf_counter()
    threads = os.environ.get(_THREADS_ENV)
    if threads and "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))
    try:
        row = dict(fn(item, *args, **kwargs) or {})
    except Exception as exc:  # noqa: BLE001 - recorded as the item's failure
        logger.debug("task failed:\n%s", traceback.format_exc())
        return {"status": "failed", "error": _describe(exc),
                "seconds": round(time.perf_counter() - t0, 3)}
    row.setdefault("status", "done")
    row.setdefault("error", "")
    row.setdefault("seconds", round(time.perf_counter() - t0, 3))
    return row


class _Progress:
    """Slides done / total and overall patches per second, as a tqdm bar on stderr."""

    def __init__(self, total: int, progress: bool | ProgressFn | None, unit: str):
        self.total = total
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.done = 0
        self.patches = 0
        self.failed = 0
        self.t0 = time.perf_counter()
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.5)

    def update(self, result: TaskResult) -> None:
        self.done += 1
        if result.status == "done":
            self.patches += int(result.row.get("n_patches") or 0)
        if result.status == "failed":
            self.failed += 1
        if self.bar is not None:
            rate = self.patches / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} patches/s, {self.failed} failed",
                                     refresh=False)
            self.bar.update(1)
        if self.callback is not None:
            self.callback(self.done, self.total, result)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _wants_gpu(client, kind: str, gpu: bool | None) -> bool:
    if gpu is not None:
        return bool(gpu)
    if kind == "gpus":
        return True
    try:
        workers = client.scheduler_info().get("workers", {}).values()
    except Exception:  # noqa: BLE001
        return False
    return any((w.get("resources") or {}).get("GPU") for w in workers)


def run_tasks(
    fn: Callable[..., dict],
    items: Sequence[Any],
    *,
    args: tuple = (),
    kwargs: dict | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
    execution: ExecutionOptions | None = None,
    client: Any = None,
    gpu: bool | None = None,
    progress: bool | ProgressFn | None = True,
    cancel: threading.Event | Callable[[], bool] | None = None,
    unit: str = "slide",
    say: Callable[[str], None] | None = _say,
) -> list[TaskResult]:
    """Run ``fn(item, *args, **kwargs)`` for every item; one :class:`TaskResult` per item,
    in order.

    Parameters
    ----------
    fn : callable
        A top-level (picklable) function returning a row dict.
    items : sequence
        Picklable task inputs (slide items, patient groups, fold numbers).
    cluster : {None, "local:N", "local:gpus"}
        Where to run (see the module docstring); None runs in this process.
    scheduler : str, optional
        Address of a running Dask scheduler (instead of ``cluster``).
    execution : ExecutionOptions, optional
        ``cluster`` and ``scheduler`` as options, parsed once when they were made (instead
        of the two strings).
    client : distributed.Client, optional
        An already connected client (reused, not closed).
    gpu : bool, optional
        Ask each task for the worker resource ``GPU=1``; default: when the cluster is
        ``local:gpus`` or the scheduler's workers offer GPUs.
    progress : bool or callable(done, total, TaskResult)
        True: a tqdm bar on stderr (items done / total, patches per second).
    cancel : threading.Event or callable, optional
        When set, pending tasks are cancelled and :class:`~napari_ghanet.errors.Cancelled`
        is raised (finished items keep their outputs).

    Returns
    -------
    list of TaskResult

    Examples
    --------
    >>> res = run_tasks(lambda x: {"n_patches": 12 // x}, [3, 0], progress=False)
    >>> [(r.status, r.row.get("n_patches")) for r in res]  # the error is recorded, not raised
    [('done', 4), ('failed', None)]
    >>> res[1].error
    'ZeroDivisionError: integer division or modulo by zero'
    """
    kwargs = dict(kwargs or {})
    items = list(items)
    if client is not None:
        return _run_distributed(client, fn, items, args, kwargs, "client", gpu, progress, unit,
                                cancel)
    kind, n, scheduler = _plan(cluster, scheduler, execution)
    if scheduler is None and kind == "inprocess":
        out = []
        bar = _Progress(len(items), progress, unit)
        try:
            for i, item in enumerate(items):
                if _cancelled(cancel):
                    raise Cancelled(f"cancelled after {i} of {len(items)} {unit}(s)")
                res = TaskResult(i, run_one(fn, item, args, kwargs))
                bar.update(res)
                out.append(res)
        finally:
            bar.close()
        return out
    with _client(kind, n, scheduler, say=say) as c:
        return _run_distributed(c, fn, items, args, kwargs, kind, gpu, progress, unit, cancel)


def _run_distributed(client, fn, items, args, kwargs, kind, gpu, progress, unit, cancel):
    from distributed import wait

    resources = {"GPU": 1} if _wants_gpu(client, kind, gpu) else None
    token = uuid.uuid4().hex[:8]
    name = getattr(fn, "__name__", "task")

    def submit(i: int, attempt: int):
        return client.submit(run_one, fn, items[i], args, kwargs, pure=False,
                             key=f"ghanet-{name}-{token}-{i}-{attempt}", resources=resources)

    # At most one task per worker thread is in flight: a dying worker then takes only the
    # task it was running with it (the scheduler would otherwise hand it queued ones too).
    queue = deque((i, 1) for i in range(len(items)))
    pending: dict[Any, tuple[int, int]] = {}
    results: dict[int, TaskResult] = {}
    bar = _Progress(len(items), progress, unit)
    try:
        while queue or pending:
            if _cancelled(cancel):
                raise Cancelled(f"cancelled after {len(results)} of {len(items)} task(s)")
            cap = _capacity(client)
            while queue and len(pending) < cap:
                i, attempt = queue.popleft()
                pending[submit(i, attempt)] = (i, attempt)
            try:
                done, _ = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for fut in done:
                i, attempt = pending.pop(fut)
                if fut.status == "finished":
                    res = TaskResult(i, fut.result(), attempt)
                else:
                    exc = fut.exception()
                    if attempt < MAX_ATTEMPTS and _worker_died(exc):
                        logger.warning("item %d: worker died (%s); retrying", i, exc)
                        queue.appendleft((i, attempt + 1))
                        fut.release()
                        continue
                    why = _describe(exc)
                    if _worker_died(exc):
                        why = (f"the worker process died {attempt} time(s) running it "
                               f"({why})")
                    res = TaskResult(i, {"status": "failed", "error": why}, attempt)
                fut.release()
                results[i] = res
                bar.update(res)
    finally:
        bar.close()
        if pending:
            client.cancel(list(pending))
    return [results[i] for i in range(len(items))]


def _capacity(client) -> int:
    """Task threads of the connected workers (at least 1)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - scheduler busy: be conservative
        return 1


def _worker_died(exc: BaseException | None) -> bool:
    from distributed.scheduler import KilledWorker

    return isinstance(exc, KilledWorker)
