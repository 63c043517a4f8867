"""Patch embedding: threaded patch reading feeding batched CPU/GPU inference.

Reader threads read patches into a bounded queue (OpenSlide and the TIFF decoders release
the GIL, so reading runs in parallel with inference); the main thread assembles batches
and runs the encoder under ``torch.inference_mode``. Patches are visited in grid order,
or (``order="spread"``, for preliminary answers) in a spatially stratified order
(:func:`~napari_ghanet.inference.progressive.visit_order`) so that the patches embedded
at any moment cover the tissue; results come back in grid order.

On the CPU the encoder's network runs in ONNX Runtime when it supports it (``backend=
"auto"``, see :mod:`napari_ghanet.encoders.onnx_backend`), else in torch. On CUDA: bf16
(or fp16) autocast, channels-last memory for CNNs, PyTorch SDPA attention for ViTs,
batches copied through a ring of reused pinned buffers, as many reader threads as cores,
and ``torch.compile`` on request. While the device computes one batch, the host prepares
the next. Memory stays bounded
by ``prefetch`` batches whatever the slide size, the output keeps the grid's order, and
the run can be cancelled between any two batches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from napari_ghanet.device import resolve_device
from napari_ghanet.encoders import EncoderSpec, PatchEncoder, create_encoder
from napari_ghanet.encoders.onnx_backend import BACKENDS, wrap_for_cpu
from napari_ghanet.errors import ArgumentError, Cancelled, EncoderError
from napari_ghanet.inference.calibration import CMU_CALIBRATION
from napari_ghanet.inference.progressive import visit_order
from napari_ghanet.io.features import PatchFeatures, grid_key
from napari_ghanet.io.slide import Slide, SlideError
from napari_ghanet.options import CPU_READERS, EmbedOptions
from napari_ghanet.preprocessing.patches import PatchGrid

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingCancelled", "embed_slide", "iter_patch_batches", "resolve_device"]

_MAX_UNIT = 16  # most patches one reader reads at a time


EmbeddingCancelled = Cancelled  # the package's one cancellation type


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class _Reader:
    """Reads the grid in units of ``unit`` patches on worker threads, in order, with at
    most ``max_units`` units read (or being read) but not yet taken."""

    def __init__(self, slide: Slide, grid: PatchGrid, unit: int, workers: int, max_units: int,
                 names: np.ndarray | None = None):
        self.slide = slide
        self.grid = grid
        self.names = names  # the patches' indices as the caller knows them (log messages)
        self.unit = unit
        self.n = len(grid)
        self.n_units = math.ceil(self.n / unit)
        self.workers = workers
        self._next = 0
        self._done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._slots = threading.Semaphore(max(1, max_units))
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._threads = [
            threading.Thread(target=self._run, name=f"ghanet-reader-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def _read_unit(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = u * self.unit, min(self.n, (u + 1) * self.unit)
        px = self.grid.patch_px
        out = np.full((hi - lo, px, px, 3), 255, dtype=np.uint8)
        ok = np.ones(hi - lo, dtype=bool)
        for j, i in enumerate(range(lo, hi)):
            if self._stop.is_set():
                break
            try:
                out[j] = self.grid.read(self.slide, i)
            except SlideError as exc:
                ok[j] = False
                x, y = (int(v) for v in self.grid.coords[i])
                name = int(self.names[i]) if self.names is not None else i
                logger.warning("skipping patch %d at (%d, %d): %s", name, x, y, exc)
        return out, ok

    def _run(self) -> None:
        while not self._stop.is_set():
            self._slots.acquire()
            with self._lock:
                if self._stop.is_set() or self._next >= self.n_units:
                    self._slots.release()
                    return
                u = self._next
                self._next += 1
            try:
                result = self._read_unit(u)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                with self._lock:
                    self._error = exc
                    self._ready.notify_all()
                return
            with self._lock:
                self._done[u] = result
                self._ready.notify_all()

    def take(self, u: int, cancel) -> tuple[np.ndarray, np.ndarray]:
        """Unit ``u`` once read (units must be taken in order)."""
        if self.workers == 0:
            return self._read_unit(u)
        with self._lock:
            while u not in self._done:
                if self._error is not None:
                    raise self._error
                if _is_cancelled(cancel):
                    raise EmbeddingCancelled()
                self._ready.wait(timeout=0.1)
            result = self._done.pop(u)
        self._slots.release()
        return result

    def close(self) -> None:
        self._stop.set()
        for _ in self._threads:
            self._slots.release()
        for t in self._threads:
            t.join(timeout=30)


def iter_patch_batches(
    slide: Slide,
    grid: PatchGrid,
    *,
    batch_size: int = EmbedOptions.batch_size,
    workers: int = CPU_READERS,
    prefetch: int | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    names: np.ndarray | None = None,
    read_ahead: int = EmbedOptions.read_ahead,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Read the grid's patches in batches, in grid order, on ``workers`` threads.

    Yields ``(lo, hi, patches, ok)``: patches ``lo:hi`` of the grid as uint8
    (hi - lo, patch_px, patch_px, 3) RGB and a bool (hi - lo,) array, False where the
    patch could not be read (logged with its index, or ``names[i]`` when given; its
    pixels are white). At most ``prefetch`` batches are read ahead. Closing the generator
    stops the threads.
    """
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ArgumentError(f"workers must be >= 0, got {workers}")
    n = len(grid)
    if n == 0:
        return
    # reading unit: the largest divisor of the batch size up to _MAX_UNIT, so that batches
    # are exactly batch_size patches and several threads share the reading of one batch
    unit = max(d for d in range(1, min(batch_size, _MAX_UNIT) + 1) if batch_size % d == 0)
    units_per_batch = batch_size // unit
    if prefetch is None:
        prefetch = max(read_ahead, math.ceil(max(workers, 1) / units_per_batch) + 1)
    if prefetch < 1:
        raise ArgumentError(f"prefetch must be >= 1, got {prefetch}")
    reader = _Reader(slide, grid, unit, workers, max_units=prefetch * units_per_batch,
                     names=names)
    try:
        next_unit = 0
        for lo in range(0, n, batch_size):
            if _is_cancelled(cancel):
                raise EmbeddingCancelled()
            hi = min(n, lo + batch_size)
            parts, oks = [], []
            while next_unit * unit < hi:
                arr, ok = reader.take(next_unit, cancel)
                parts.append(arr)
                oks.append(ok)
                next_unit += 1
            batch = np.concatenate(parts) if len(parts) > 1 else parts[0]
            ok = np.concatenate(oks) if len(oks) > 1 else oks[0]
            yield lo, hi, batch, ok
    finally:
        reader.close()


def _spec_for(encoder: PatchEncoder, grid: PatchGrid) -> EncoderSpec:
    return encoder.spec().with_geometry(int(grid.patch_px), float(grid.target_mpp))


def _cuda_setup(encoder: PatchEncoder, compile: bool) -> tuple[Any, Callable[[], None]]:
    """CUDA: channels-last for CNNs, SDPA attention for timm ViTs, cuDNN autotuning and
    ``torch.compile`` on request. Returns the forward callable and an undo function."""
    channels_last = getattr(encoder, "channels_last_ok", True)
    fused_saved: list[tuple[Any, bool]] = []
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    for m in encoder.modules():
        if hasattr(m, "fused_attn") and isinstance(m.fused_attn, bool):
            fused_saved.append((m, m.fused_attn))
            m.fused_attn = True
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    forward = torch.compile(encoder, dynamic=False) if compile else encoder

    def undo() -> None:
        torch.backends.cudnn.benchmark = old_benchmark
        for mod, flag in fused_saved:
            mod.fused_attn = flag
        if channels_last:
            encoder.to(memory_format=torch.contiguous_format)

    return forward, undo


class _CudaPipe:
    """Batches through two reused pinned input and two pinned output buffers: an input
    buffer is refilled only once its copy to the device has completed, and a batch's
    features are handed on while the device computes the next one."""

    def __init__(self, encoder: PatchEncoder, forward, dev, batch_size: int):
        self.encoder = encoder
        self.forward = forward
        self.dev = dev
        self.batch_size = batch_size
        self.amp_dtype = None
        if getattr(encoder, "autocast_ok", True):
            self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported()
                              else torch.float16)
        self.channels_last = getattr(encoder, "channels_last_ok", True)
        self.pinned_in: list[torch.Tensor] = []
        self.pinned_out: list[torch.Tensor] = []
        self.copied: list[Any] = [None, None]
        self.step = 0

    def submit(self, host: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Start one batch: (features buffer, its ready event, the raw output)."""
        m = host.shape[0]
        k = self.step % 2
        self.step += 1
        if not self.pinned_in:
            shape = (self.batch_size, *host.shape[1:])
            self.pinned_in = [torch.empty(shape, dtype=torch.uint8).pin_memory()
                              for _ in range(2)]
            out_shape = (self.batch_size, int(self.encoder.dim))
            self.pinned_out = [torch.empty(out_shape).pin_memory() for _ in range(2)]
        if self.copied[k] is not None:
            self.copied[k].synchronize()
        buf = self.pinned_in[k][:m]
        buf.copy_(host)
        batch = buf.to(self.dev, non_blocking=True)
        self.copied[k] = torch.cuda.Event()
        self.copied[k].record()
        x = self.encoder.preprocess(batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast(device_type="cuda", dtype=self.amp_dtype)
               if self.amp_dtype is not None else contextlib.nullcontext())
        with ctx:
            y = self.forward(x)
        _check_shape(self.encoder, y, m)
        out = self.pinned_out[k][:m]
        out.copy_(y.float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return out, event, y


def _check_shape(encoder: PatchEncoder, y: torch.Tensor, m: int) -> None:
    if y.shape != (m, encoder.dim):
        raise EncoderError(
            f"encoder {encoder.name} returned shape {tuple(y.shape)} for a batch "
            f"of {m}, expected ({m}, {encoder.dim})"
        )


def _provenance(slide: Slide, grid: PatchGrid, encoder: PatchEncoder, dev) -> dict[str, Any]:
    """What a features file records of its making (``features_io.save_features``)."""
    return {
        "encoder": encoder.name,
        "encoder_spec": _spec_for(encoder, grid).to_dict(),  # JSON form, as stored
        "feature_dim": int(encoder.dim),
        **grid.geometry(),
        "slide_fingerprint": slide.fingerprint(),
        "slide_path": str(slide.path),
        "grid_key": grid_key(grid),
        "n_patches": len(grid),
        "device": str(dev),
    }


def _encode_batches(batches, order: np.ndarray, valid: np.ndarray, runner, encoder,
                    pipe: _CudaPipe | None, on_batch, finish) -> None:
    """Encode every batch ``batches`` yields (patches ``lo:hi`` of the visiting order):
    mark the readable ones in ``valid`` (grid order), hand them to ``on_batch``, and
    call ``finish(lo, hi, features)``; on CUDA one batch behind, so that the host
    prepares the next batch while the device computes."""
    pending: tuple[int, int, torch.Tensor, Any] | None = None
    with torch.inference_mode():
        for lo, hi, arr, ok in batches:
            index = order[lo:hi]
            valid[index] = ok
            if on_batch is not None:
                on_batch(arr if ok.all() else arr[ok], index if ok.all() else index[ok])
            host = torch.from_numpy(arr)
            if pipe is None:
                y = runner.encode(host)
                _check_shape(encoder, y, hi - lo)
                finish(lo, hi, y.float().cpu())
                continue
            out, event, _ = pipe.submit(host)
            if pending is not None:
                pending[3].synchronize()
                finish(*pending[:3])
            pending = (lo, hi, out, event)
        if pending is not None:
            pending[3].synchronize()
            finish(*pending[:3])


def _check_args(encoder, grid: PatchGrid, dev, batch_size: int, workers: int | None,
                backend: str) -> int:
    """Refuse impossible arguments; warn about a grid at another resolution than the
    encoder's. Returns the reader thread count."""
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
    if backend not in BACKENDS:
        raise EncoderError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if workers is None:
        workers = (max(CPU_READERS, os.cpu_count() or CPU_READERS) if dev.type == "cuda"
                   else CPU_READERS)
    if workers < 0:
        raise ArgumentError(f"workers must be >= 0, got {workers}")
    if backend.startswith("onnx") and dev.type != "cpu":
        raise EncoderError(f"backend {backend!r} runs on the CPU only, not on {dev}")
    if encoder.target_mpp and abs(grid.target_mpp / encoder.target_mpp - 1) > 0.05:
        logger.warning(
            "encoder %s is meant for %.3g um/px patches, the grid is at %.3g um/px",
            encoder.name,
            encoder.target_mpp,
            grid.target_mpp,
        )
    return workers


def embed_slide(
    slide: Slide,
    grid: PatchGrid,
    encoder: PatchEncoder | str,
    *,
    device: str | torch.device = "auto",
    batch_size: int = EmbedOptions.batch_size,
    workers: int | None = None,
    prefetch: int | None = None,
    read_ahead: int = EmbedOptions.read_ahead,
    progress: Callable[[int, int], Any] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    backend: str = "auto",
    compile: bool = False,
    on_batch: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    on_encoded: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    order: str = "grid",
) -> PatchFeatures:
    """Embed every patch of ``grid``.

    Parameters
    ----------
    slide : Slide
    grid : PatchGrid
        From ``patches.patch_grid``.
    encoder : PatchEncoder or str
        An encoder, or a registered name built with default arguments.
    device : str or torch.device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, checked by
        :func:`~napari_ghanet.device.resolve_device`; a ``torch.device`` is taken as
        already resolved (the pipeline resolves the device once per run).
    batch_size : int
        Patches per forward pass.
    workers : int, optional
        Reader threads (0 reads on the calling thread). Default: 4 on the CPU; on CUDA
        one per core (at least 4), enough decoding to keep the GPU busy.
    prefetch : int, optional
        Batches read ahead (default: ``read_ahead``, or ``workers`` / batch units if
        larger).
    read_ahead : int
        Least batches read ahead when ``prefetch`` is not given (the declared option).
    progress : callable(done, total), optional
        Called with the number of patches embedded so far.
    cancel : threading.Event or callable returning bool, optional
        Checked between batches; when set, :class:`EmbeddingCancelled` is raised.
    backend : {"auto", "onnx", "onnx-int8", "torch"}
        CPU inference engine: ``auto`` runs the network in ONNX Runtime when the encoder
        supports it (exported once and cached), torch otherwise or when that fails (one
        logged warning); ``onnx`` insists on ONNX Runtime; ``onnx-int8`` runs an 8-bit
        quantized export (only when asked); ``torch`` never uses ONNX Runtime. No effect
        on CUDA. The features' spec is the same whichever runs.
    compile : bool
        CUDA only: run the network through ``torch.compile`` (slow first batch; pays off
        on whole slides with large ViTs).
    on_batch : callable(patches, index), optional
        Called on this thread with each batch of readable patches as read, before they
        are encoded: uint8 (B, patch_px, patch_px, 3) RGB and int64 (B,) their indices in
        ``grid`` (unreadable patches left out), in visiting order. E.g. artifact QC
        (:class:`~napari_ghanet.preprocessing.qc.QCAccumulator`) measures the patches
        the encoder sees without reading them twice.
    on_encoded : callable(index, features), optional
        Called on this thread with each batch once encoded: int64 (B,) grid indices and
        float32 (B, D) their features (unreadable patches left out). E.g. a preliminary
        risk from the patches embedded so far
        (:class:`~napari_ghanet.inference.progressive.ProgressiveEstimator`).
    order : {"grid", "spread"}
        The order patches are read and encoded in: ``grid`` (row by row: neighbours
        share the slide's tiles, the fastest to read) or ``spread``
        (:func:`~napari_ghanet.inference.progressive.visit_order`: spatially stratified,
        the same for the same grid, so that the patches embedded at any moment cover the
        whole tissue). The features come back in grid order either way, and a patch's
        features do not depend on the batch it is in (checked bitwise by the tests for
        ResNet50 in torch and ONNX Runtime on the CPU).

    Returns
    -------
    PatchFeatures
        ``features`` float32 (M, D) and ``coords`` int64 (M, 2) in grid order, where M is
        the number of patches minus those whose tiles could not be read (logged, counted
        in ``attrs["n_skipped"]``); ``attrs`` hold the provenance written by
        ``features_io.save_features``.

    Raises
    ------
    EmbeddingCancelled
    SlideError
        When no patch at all could be read.
    """
    if isinstance(encoder, str):
        encoder = create_encoder(encoder)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    workers = _check_args(encoder, grid, dev, batch_size, workers, backend)
    n = len(grid)
    attrs = _provenance(slide, grid, encoder, dev)
    runner: Any = (wrap_for_cpu(encoder, backend, calibration=CMU_CALIBRATION)
                   if dev.type == "cpu" else encoder)
    t0 = time.perf_counter()
    if progress is not None:
        progress(0, n)
    if n == 0:
        attrs.update(n_skipped=0, seconds=0.0)
        return PatchFeatures(
            np.zeros((0, encoder.dim), np.float32), np.zeros((0, 2), np.int64), attrs
        )
    if order not in ("grid", "spread"):
        raise ArgumentError(f"order must be 'grid' or 'spread', got {order!r}")
    spread = order == "spread"
    visit = (visit_order(grid.coords, grid.step_level0) if spread
             else np.arange(n, dtype=np.int64))
    batches = iter_patch_batches(
        slide, grid.select(visit) if spread else grid, batch_size=batch_size,
        workers=workers, prefetch=prefetch, read_ahead=read_ahead, cancel=cancel,
        names=visit if spread else None,
    )
    feats, valid = _encode_all(batches, visit, encoder, runner, dev, batch_size=batch_size,
                               compile=compile, on_batch=on_batch, on_encoded=on_encoded,
                               progress=progress)
    # read after the run: an engine that fell back on its first batch says so
    attrs["backend"] = getattr(runner, "backend", "torch")
    return _embedded(slide, grid, feats, valid, attrs, time.perf_counter() - t0)


def _encode_all(batches, visit: np.ndarray, encoder: PatchEncoder, runner: Any,
                dev: torch.device, *, batch_size: int, compile: bool,
                on_batch: Callable[[np.ndarray, np.ndarray], Any] | None,
                on_encoded: Callable[[np.ndarray, np.ndarray], Any] | None,
                progress: Callable[[int, int], Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """Encode every batch of ``batches`` (patches in ``visit`` order) with ``runner`` on
    ``dev``: float32 (N, D) features in grid order and bool (N,) which patches were read.
    ``batches`` is closed and the encoder's mode restored whatever happens."""
    n = len(visit)
    feats = np.empty((n, encoder.dim), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)

    def finish(lo: int, hi: int, out: torch.Tensor) -> None:
        index = visit[lo:hi]
        feats[index] = out.numpy()
        if on_encoded is not None:
            ok = valid[index]
            on_encoded(index[ok], feats[index[ok]])
        if progress is not None:
            progress(hi, n)

    was_training = encoder.training
    encoder.eval()
    encoder.to(dev)
    undo: Callable[[], None] = lambda: None  # noqa: E731
    try:
        pipe = None
        if dev.type == "cuda":
            forward, undo = _cuda_setup(encoder, compile)
            pipe = _CudaPipe(encoder, forward, dev, batch_size)
        _encode_batches(batches, visit, valid, runner, encoder, pipe, on_batch, finish)
    finally:
        batches.close()
        undo()
        encoder.train(was_training)
    return feats, valid


def _embedded(slide: Slide, grid: PatchGrid, feats: np.ndarray, valid: np.ndarray,
              attrs: dict[str, Any], seconds: float) -> PatchFeatures:
    """The readable patches' features with their coordinates and the run's record
    (patches skipped, seconds); a SlideError when none could be read."""
    n = len(grid)
    n_skipped = int((~valid).sum())
    if n_skipped == n:
        raise SlideError(f"{slide.path}: none of the {n} patches could be read")
    if n_skipped:
        logger.warning("%s: %d of %d patches skipped (unreadable)", slide.path, n_skipped, n)
    attrs.update(n_skipped=n_skipped, seconds=round(seconds, 3))
    if n_skipped:
        bad = grid.coords[~valid][:1000]
        attrs["skipped_coords"] = bad.tolist()
    return PatchFeatures(feats[valid], grid.coords[valid], attrs)
