"""ONNX Runtime backend for patch encoders on the CPU.

The network (after preprocessing, which stays in torch: resizing and normalisation are a
small part of the cost) is exported once with a dynamic batch dimension and cached under
``<user cache>/onnx/<key>/`` where the key covers the encoder's name, its weights (the file
digest recorded in the spec, or a digest of the tensors), the network input side and the
torch version; any change gives a new export. A folder is written under a temporary name
and renamed when complete, so a cached model is never half-written. Each export is checked
against torch on a small batch before use.

When export or ONNX Runtime fail, the encoder runs in torch, with one logged warning. The
morphometric encoder (and any encoder without ``onnx_ok = True``) always runs in torch.

>>> import torch
>>> from napari_ghanet.encoders import create_encoder
>>> enc = wrap_for_cpu(create_encoder("morphometric"))  # not exportable: torch itself
>>> enc.encode(torch.full((1, 64, 64, 3), 200, dtype=torch.uint8)).shape
torch.Size([1, 64])
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ghanet.errors import EncoderError
from napari_ghanet.io.cache import cache_dir as user_cache_dir

__all__ = ["BACKENDS", "OnnxEncoder", "onnx_cache_dir", "supports_onnx", "wrap_for_cpu"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
_EXPORT_VERSION = 1  # bump when the export recipe changes
_PARITY_ATOL = 1e-3  # export check on random input (features are O(1))
_sessions: OrderedDict[tuple[str, int], Any] = OrderedDict()
_sessions_lock = threading.Lock()
_export_lock = threading.Lock()


def onnx_cache_dir() -> Path:
    """Folder of exported models: ``$NAPARI_GHANET_ONNX_CACHE`` or ``<cache>/onnx``."""
    env = os.environ.get("NAPARI_GHANET_ONNX_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        path = user_cache_dir() / "onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def supports_onnx(encoder: Any) -> bool:
    """Whether ``encoder`` declares that its network exports to ONNX (``onnx_ok``)."""
    return bool(getattr(encoder, "onnx_ok", False))


def _weights_key(encoder: torch.nn.Module) -> str:
    desc = ""
    with contextlib.suppress(Exception):
        desc = str(encoder.weights_description())
    if "sha256:" in desc:
        return desc
    h = hashlib.sha256()  # random or unnamed weights: digest of the tensors themselves
    for k, v in encoder.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return "tensors sha256:" + h.hexdigest()[:16]


def _export(encoder: torch.nn.Module, side: int, folder: Path) -> Path:
    """Export ``encoder.forward`` for (N, 3, side, side) float32 into ``folder``."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    x = torch.zeros(2, 3, side, side)
    out = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(out),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (x,),
            str(folder / "model.onnx"),
            dynamo=True,
            input_names=["x"],
            output_names=["features"],
            dynamic_shapes={"x": {0: batch}},
            external_data=True,
            optimize=True,
        )
    return folder / "model.onnx"


def _session(model: Path, threads: int):
    import onnxruntime as ort

    key = (str(model), threads)
    with _sessions_lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    with _sessions_lock:
        _sessions[key] = sess
        while len(_sessions) > 4:
            _sessions.popitem(last=False)
    return sess


class OnnxEncoder:
    """A patch encoder whose network runs in ONNX Runtime on the CPU.

    Same ``encode()`` / ``spec()`` / ``name`` / ``dim`` as the wrapped encoder (other
    attributes are forwarded to it); preprocessing runs in torch as in the encoder.
    Falls back to torch, with one warning, when export or ONNX Runtime fail.

    Parameters
    ----------
    encoder : PatchEncoder
    cache_dir : Path, optional
        Default :func:`onnx_cache_dir`.
    strict : bool
        Raise :class:`EncoderError` instead of falling back to torch.
    """

    def __init__(self, encoder: torch.nn.Module, cache_dir: Path | None = None, strict=False):
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.strict = strict
        self.backend = "onnxruntime"
        self._models: dict[int, Path] = {}
        self._failed: str | None = None

    def __getattr__(self, item: str) -> Any:  # name, dim, target_mpp, spec, ...
        if item == "encoder":
            raise AttributeError(item)
        return getattr(self.encoder, item)

    def __repr__(self) -> str:
        return f"OnnxEncoder({getattr(self.encoder, 'name', '?')}, backend={self.backend})"

    def spec(self):
        return self.encoder.spec()

    def cache_key(self, side: int) -> str:
        """Key of the exported model for inputs of ``side`` px."""
        fields = {
            "encoder": getattr(self.encoder, "name", type(self.encoder).__name__),
            "class": f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}",
            "weights": _weights_key(self.encoder),
            "side": int(side),
            "torch": torch.__version__,
            "export": _EXPORT_VERSION,
        }
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def model_path(self, side: int) -> Path:
        """The exported model for ``side`` px inputs, exporting it first if needed."""
        if side in self._models:
            return self._models[side]
        root = self.cache_dir or onnx_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        key = self.cache_key(side)
        final = root / key
        with _export_lock:
            if not (final / "model.onnx").is_file():
                tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
                try:
                    was_training = self.encoder.training
                    self.encoder.eval()
                    try:
                        _export(self.encoder, side, tmp)
                    finally:
                        self.encoder.train(was_training)
                    info = {"encoder": getattr(self.encoder, "name", ""), "side": side}
                    (tmp / "info.json").write_text(json.dumps(info))
                    if final.exists():  # an incomplete folder left by a crash
                        shutil.rmtree(final, ignore_errors=True)
                    try:
                        os.replace(tmp, final)  # atomic: the folder appears complete
                    except OSError:
                        if not (final / "model.onnx").is_file():
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        self._models[side] = final / "model.onnx"
        return self._models[side]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        side = int(x.shape[-1])
        new = side not in self._models
        sess = _session(self.model_path(side), max(1, torch.get_num_threads()))
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        y = torch.from_numpy(sess.run(None, {"x": arr})[0])
        if new:  # first use of this export: check it against torch
            with torch.inference_mode():
                ref = self.encoder(x[:2]).float()
            err = float((y[:2] - ref).abs().max())
            if not err <= _PARITY_ATOL * max(1.0, float(ref.abs().max())):
                del self._models[side]
                raise RuntimeError(f"exported model differs from torch by {err:.3g}")
        return y

    def _fallback(self, exc: BaseException) -> None:
        name = getattr(self.encoder, "name", "encoder")
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self.strict:
            raise EncoderError(f"ONNX Runtime backend failed for {name}: {msg}") from exc
        self._failed = msg
        self.backend = "torch"
        logger.warning("ONNX Runtime unavailable for %s (%s); running in torch", name, msg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed float (N, 3, S, S) -> float32 (N, dim)."""
        if self._failed is None:
            try:
                return self._run(x)
            except Exception as exc:  # noqa: BLE001 - any export/runtime failure
                self._fallback(exc)
        with torch.inference_mode():
            return self.encoder(x).float()

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocess (torch) and run (ONNX Runtime): uint8 (N, H, W, 3) -> float32 (N, dim)."""
        with torch.inference_mode():
            x = self.encoder.preprocess(batch.to(self.encoder.device))
        return self.forward_features(x)


def wrap_for_cpu(
    encoder: torch.nn.Module, backend: str = "auto", cache_dir: str | os.PathLike | None = None
):
    """The object to call ``encode()`` on for CPU inference.

    Parameters
    ----------
    encoder : PatchEncoder
    backend : {"auto", "onnx", "torch"}
        ``auto``: ONNX Runtime when the encoder supports it (:func:`supports_onnx`), with
        torch as fallback; ``onnx``: ONNX Runtime or an :class:`EncoderError`; ``torch``:
        the encoder itself.
    cache_dir : path, optional
        Where exported models are kept (default :func:`onnx_cache_dir`).

    Returns
    -------
    PatchEncoder or OnnxEncoder
        With the encoder's ``encode()``, ``spec()``, ``name`` and ``dim``; ``backend``
        tells which runs (``getattr(obj, "backend", "torch")``).
    """
    if backend not in BACKENDS:
        raise EncoderError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return encoder
    if not supports_onnx(encoder):
        if backend == "onnx":
            raise EncoderError(
                f"encoder {getattr(encoder, 'name', '?')} does not run in ONNX Runtime; "
                "use backend='torch' or 'auto'"
            )
        return encoder
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        if backend == "onnx":
            raise EncoderError(f"onnxruntime is not installed: {exc}") from exc
        logger.warning("onnxruntime is not installed; running %s in torch", encoder.name)
        return encoder
    return OnnxEncoder(
        encoder,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        strict=backend == "onnx",
    )
