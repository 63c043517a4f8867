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

8-bit (``backend="onnx-int8"``, only when asked; ``auto`` never picks it): the fp32 export
is statically quantized by ONNX Runtime: QDQ format, int8 weights per output channel,
uint8 activations with min-max ranges; only Conv, MatMul and Gemm are quantized (residual
adds, normalisation, softmax, GELU and pooling stay fp32). Calibration: patches the caller
hands over, ``wrap_for_cpu(..., calibration=PATCHES or PROVIDER)``; this module reads no
slide. The pipeline gives :data:`napari_ghanet.inference.calibration.CMU_CALIBRATION`, 32
real H&E tissue patches read at the input side S (px, about 0.5 um/px) from the Aperio
slide ``cmu_small_region.svs``, the same for every slide, so that all slides of a cohort
are embedded by one network. Without calibration patches (none given, or the provider has
none), the first batch of the slide being embedded calibrates (one model per calibration,
a notice says so). Bias
correction: the mean difference of the fp32 and int8 features (D,) on the calibration
patches is added to every int8 output, which removes the part of the error common to all
patches. The quantized model is cached under ``<cache>/int8-<key>/`` (key: the fp32 key,
the digest of the calibration patches, the ONNX Runtime version and the recipe), written
atomically with the bias and the fp32 features of the calibration patches. On first use
in a process its (corrected) features on the calibration patches are compared with those
fp32 features, per patch: a cosine below :data:`INT8_MIN_COSINE`, or a mean centred cosine
below :data:`INT8_MIN_CENTRED_COSINE`, refuses it and the fp32 export runs instead, with
one logged warning. ONNX Runtime's CPU provider has no bfloat16 Conv/MatMul kernels, so
there is no bf16 path.

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
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_ghanet.errors import EncoderError
from napari_ghanet.io.atomic import clean_folder_once, temp_name
from napari_ghanet.io.cache import cache_dir as user_cache_dir

__all__ = [
    "BACKENDS",
    "CalibrationProvider",
    "INT8_CALIBRATION_PATCHES",
    "INT8_MIN_CENTRED_COSINE",
    "INT8_MIN_COSINE",
    "Int8Check",
    "Int8Rejected",
    "OnnxEncoder",
    "OnnxInt8Encoder",
    "compare_features",
    "onnx_cache_dir",
    "supports_onnx",
    "wrap_for_cpu",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "onnx-int8", "torch")
_EXPORT_VERSION = 1  # bump when the export recipe changes
_PARITY_ATOL = 1e-3  # export check on random input (features are O(1))
#: int8 is refused when a calibration patch's features have a cosine below this to fp32
INT8_MIN_COSINE = 0.99
#: ... or when the mean cosine of the centred features (the fp32 mean feature of the
#: calibration patches subtracted: what tells patches apart) is below this
INT8_MIN_CENTRED_COSINE = 0.95
#: calibration patches taken from the real slide (or at most from the first batch)
INT8_CALIBRATION_PATCHES = 32
_INT8_RECIPE = {  # part of the cache key: any change gives a new quantized model
    "version": 1,
    "format": "QDQ",
    "ops": ["Conv", "MatMul", "Gemm"],
    "weights": "int8 per channel",
    "activations": "uint8 min-max",
    "calibration_batch": 1,  # ORT's calibrator holds ~activations x batch: 1 keeps it low
    "bias_correction": "mean fp32 - int8 feature on the calibration patches",
}
_sessions: OrderedDict[tuple[str, int], Any] = OrderedDict()
_sessions_lock = threading.Lock()
_export_lock = threading.RLock()  # the int8 build exports the fp32 model under it


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


def _build_folder(root: Path, name: str, marker: str, build: Callable[[Path], Any]) -> Path:
    """``root / name``, built by ``build(tmp)`` in a temporary folder and renamed into
    place (atomic: the folder appears complete) unless ``root / name / marker`` exists."""
    final = root / name
    with _export_lock:
        if not (final / marker).is_file():
            clean_folder_once(root)  # folders of a killed export (kill -9) are removed
            tmp = temp_name(final)  # names this process: removed once it is gone
            tmp.mkdir(parents=True)
            try:
                build(tmp)
                if final.exists():  # an incomplete folder left by a crash
                    shutil.rmtree(final, ignore_errors=True)
                try:
                    os.replace(tmp, final)
                except OSError:
                    if not (final / marker).is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _new_session(model: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def _session(model: Path, threads: int):
    key = (str(model), threads)
    with _sessions_lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    sess = _new_session(model, threads)
    with _sessions_lock:
        _sessions[key] = sess
        while len(_sessions) > 4:
            _sessions.popitem(last=False)
    return sess


def _threads() -> int:
    return max(1, torch.get_num_threads())


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
        self._keys: dict[int, str] = {}
        self._failed: str | None = None

    def __getattr__(self, item: str) -> Any:  # name, dim, target_mpp, spec, ...
        if item == "encoder":
            raise AttributeError(item)
        return getattr(self.encoder, item)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self.encoder, 'name', '?')}, backend={self.backend})"

    def spec(self):
        return self.encoder.spec()

    def _root(self) -> Path:
        root = self.cache_dir or onnx_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def cache_key(self, side: int) -> str:
        """Key of the exported model for inputs of ``side`` px."""
        if side not in self._keys:  # random weights: hashing the tensors takes a while
            fields = {
                "encoder": getattr(self.encoder, "name", type(self.encoder).__name__),
                "class": f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}",
                "weights": _weights_key(self.encoder),
                "side": int(side),
                "torch": torch.__version__,
                "export": _EXPORT_VERSION,
            }
            blob = json.dumps(fields, sort_keys=True).encode()
            self._keys[side] = hashlib.sha256(blob).hexdigest()[:24]
        return self._keys[side]

    def model_path(self, side: int) -> Path:
        """The exported model for ``side`` px inputs, exporting it first if needed."""
        if side in self._models:
            return self._models[side]

        def build(tmp: Path) -> None:
            was_training = self.encoder.training
            self.encoder.eval()
            try:
                _export(self.encoder, side, tmp)
            finally:
                self.encoder.train(was_training)
            info = {"encoder": getattr(self.encoder, "name", ""), "side": side}
            (tmp / "info.json").write_text(json.dumps(info))

        final = _build_folder(self._root(), self.cache_key(side), "model.onnx", build)
        self._models[side] = final / "model.onnx"
        return self._models[side]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        side = int(x.shape[-1])
        new = side not in self._models
        sess = _session(self.model_path(side), _threads())
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
        msg = _one_line(exc)
        if self.strict:
            if isinstance(exc, EncoderError):
                raise exc
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --------------------------------------------------------------------------- int8


@dataclass(frozen=True)
class CalibrationProvider:
    """Where the int8 calibration patches of an input side come from (handed over by the
    pipeline; the encoders read no slide).

    Attributes
    ----------
    read : callable(side) -> uint8 array (M, side, side, 3) or None
        The patches for ``side`` px inputs; None when there are none (the first batch
        embedded calibrates then).
    name : str
        The source, as the int8 model's ``info.json`` and :class:`Int8Check` name it.
    missing : str
        Why there may be none, for the notice (e.g. "the slide is not installed").
    """

    read: Callable[[int], np.ndarray | None]
    name: str
    missing: str = "no calibration patches"


@dataclass
class Int8Check:
    """The int8 model against fp32 on the calibration patches (cosine of the features).

    Attributes
    ----------
    side : int
        Network input side, px.
    n_patches : int
    source : str
        Where the calibration patches came from.
    min_cosine, mean_cosine : float
        Cosine of int8 to fp32 features, per patch: minimum and mean.
    centred_cosine : float
        Mean cosine after subtracting the fp32 mean feature of the patches.
    accepted : bool
        ``min_cosine >= INT8_MIN_COSINE and centred_cosine >= INT8_MIN_CENTRED_COSINE``.
    """

    side: int
    n_patches: int
    source: str
    min_cosine: float
    mean_cosine: float
    centred_cosine: float
    accepted: bool


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


def compare_features(int8: np.ndarray, ref: np.ndarray, side: int, source: str) -> Int8Check:
    """:class:`Int8Check` of features ``int8`` against ``ref`` (both float (N, D))."""
    c = _cosines(int8, ref)
    mu = ref.mean(0, keepdims=True)
    cc = _cosines(int8 - mu, ref - mu) if len(ref) > 1 else c
    finite = bool(np.isfinite(int8).all())
    lo, mean, centred = (float(c.min()), float(c.mean()), float(cc.mean())) if finite else (
        float("nan"),) * 3
    ok = finite and lo >= INT8_MIN_COSINE and centred >= INT8_MIN_CENTRED_COSINE
    return Int8Check(int(side), len(ref), source, lo, mean, centred, ok)


def _run_batches(sess, x: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([sess.run(None, {"x": x[i : i + batch]})[0]
                           for i in range(0, len(x), batch)])


class _DropQuantNotes(logging.Filter):
    """Drops ONNX Runtime's quantization advice (logged on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        return record.levelno >= logging.ERROR or "onnxruntime/quantization" not in path


@contextlib.contextmanager
def _quiet():
    root, note = logging.getLogger(), _DropQuantNotes()
    root.addFilter(note)
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(note)


def _quantize(fp32: Path, out: Path, x: np.ndarray) -> None:
    """Static QDQ quantization of ``fp32`` into ``out``, calibrated on float ``x``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    step = int(_INT8_RECIPE["calibration_batch"])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            self.i += step
            return {"x": x[self.i - step : self.i]}

    with _quiet():
        quantize_static(
            str(fp32),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(_INT8_RECIPE["ops"]),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=True,
        )


class Int8Rejected(RuntimeError):
    """The int8 model's features are too far from fp32 (see :class:`Int8Check`)."""


class OnnxInt8Encoder(OnnxEncoder):
    """A patch encoder whose network runs 8-bit in ONNX Runtime (static quantization).

    As :class:`OnnxEncoder`, with the network quantized and checked as the module says;
    ``backend`` is ``"onnxruntime-int8"`` while int8 runs. When quantizing fails or the
    check refuses the model, the fp32 export runs (``backend`` ``"onnxruntime"``, one
    logged warning), and torch when that fails too.

    Parameters
    ----------
    encoder : PatchEncoder
    cache_dir : Path, optional
        Default :func:`onnx_cache_dir`.
    strict : bool
        Raise :class:`EncoderError` instead of falling back.
    calibration : uint8 array (N, H, W, 3) or CalibrationProvider, optional
        Calibration patches (RGB, at the encoder's resolution; resized to the input side
        when needed), or where to get them for each input side. Default (or a provider
        with none): the first batch embedded.

    Attributes
    ----------
    checks : dict[int, Int8Check]
        The check of each input side used so far.
    """

    def __init__(self, encoder: torch.nn.Module, cache_dir: Path | None = None, strict=False,
                 calibration: np.ndarray | CalibrationProvider | None = None):
        super().__init__(encoder, cache_dir=cache_dir, strict=strict)
        self.backend = "onnxruntime-int8"
        if calibration is not None and not isinstance(calibration, CalibrationProvider):
            calibration = np.ascontiguousarray(calibration)
            if calibration.dtype != np.uint8 or calibration.ndim != 4 or \
                    calibration.shape[-1] != 3 or len(calibration) == 0:
                raise EncoderError(
                    f"calibration patches must be uint8 (N, H, W, 3), got "
                    f"{calibration.dtype} {tuple(calibration.shape)}")
        self.calibration = calibration
        self.checks: dict[int, Int8Check] = {}
        self._int8: dict[int, tuple[Any, torch.Tensor]] = {}  # side -> session, bias
        self._calib: dict[int, tuple[np.ndarray, str, str]] = {}
        self._int8_failed: str | None = None

    def _calibration(self, side: int, first: torch.Tensor | None) -> tuple[np.ndarray, str, str]:
        """(float inputs (M, 3, side, side), source, digest) for ``side`` px."""
        if side in self._calib:
            return self._calib[side]
        provider, missing = self.calibration, "no calibration patches given"
        if isinstance(provider, CalibrationProvider):
            u8 = provider.read(side)
            source = f"{0 if u8 is None else len(u8)} patches of {provider.name}"
            missing = provider.missing
        elif provider is not None:
            u8, source = provider, f"{len(provider)} given patches"
        else:
            u8 = None
        if u8 is not None:
            digest = hashlib.sha256(f"{u8.shape}".encode() + u8.tobytes()).hexdigest()[:16]
            with torch.inference_mode():
                x = self.encoder.preprocess(torch.from_numpy(np.array(u8)))
                if int(x.shape[-1]) != side or int(x.shape[-2]) != side:
                    x = F.interpolate(x, size=(side, side), mode="bilinear",
                                      align_corners=False, antialias=True)
            x = x.float().cpu().numpy()
        elif first is None:
            raise EncoderError(f"no int8 calibration patches ({missing}); give calibration "
                               "patches")
        else:
            x = first[:INT8_CALIBRATION_PATCHES].detach().float().cpu().numpy()
            digest = "batch:" + hashlib.sha256(x.tobytes()).hexdigest()[:16]
            source = f"the first {len(x)} patches embedded"
            logger.warning("%s: int8 calibrated on %s", missing, source)
        self._calib[side] = (np.ascontiguousarray(x, np.float32), source, digest)
        return self._calib[side]

    def int8_key(self, side: int, digest: str) -> str:
        """Key of the quantized model: the fp32 key, the calibration patches' ``digest``,
        the ONNX Runtime version and the recipe."""
        import onnxruntime

        fields = {"fp32": self.cache_key(side), "calibration": digest,
                  "onnxruntime": onnxruntime.__version__, "recipe": _INT8_RECIPE}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]

    def int8_model_path(self, side: int, first: torch.Tensor | None = None) -> Path:
        """The quantized model for ``side`` px inputs, quantized first if needed.

        ``first``: the preprocessed batch at hand (calibrates when there is no real set).
        """
        x, source, digest = self._calibration(side, first)
        key = self.int8_key(side, digest)

        def build(tmp: Path) -> None:
            t0 = time.perf_counter()
            fp32 = self.model_path(side)
            ref = _run_batches(_new_session(fp32, _threads()), x)
            with torch.inference_mode():  # the fp32 reference itself is checked
                torch_ref = self.encoder(torch.from_numpy(x[:2])).float().numpy()
            err = float(np.abs(ref[:2] - torch_ref).max())
            if not err <= _PARITY_ATOL * max(1.0, float(np.abs(torch_ref).max())):
                raise RuntimeError(f"exported model differs from torch by {err:.3g}")
            _quantize(fp32, tmp / "model.onnx", x)
            raw = _run_batches(_new_session(tmp / "model.onnx", _threads()), x)
            np.save(tmp / "bias.npy", (ref - raw).mean(0).astype(np.float32))
            np.save(tmp / "reference.npy", ref.astype(np.float32))
            info = {"encoder": getattr(self.encoder, "name", ""), "side": side,
                    "calibration": source, "calibration_digest": digest,
                    "recipe": _INT8_RECIPE, "seconds": round(time.perf_counter() - t0, 2)}
            (tmp / "info.json").write_text(json.dumps(info, indent=1))

        return _build_folder(self._root(), f"int8-{key}", "info.json", build) / "model.onnx"

    def _int8_session(self, side: int, first: torch.Tensor):
        if side in self._int8:
            return self._int8[side]
        model = self.int8_model_path(side, first)
        sess = _session(model, _threads())
        x, source, _ = self._calib[side]
        ref = np.load(model.parent / "reference.npy")
        bias = np.load(model.parent / "bias.npy")
        y = _run_batches(sess, x) + bias
        if y.shape != ref.shape or bias.shape != ref.shape[1:]:
            raise RuntimeError(f"int8 features {y.shape} do not match fp32 {ref.shape}")
        check = compare_features(y, ref, side, source)
        self.checks[side] = check
        if not check.accepted:
            raise Int8Rejected(
                f"int8 features differ from fp32 on {check.n_patches} calibration patches: "
                f"min cosine {check.min_cosine:.4f} (needs >= {INT8_MIN_COSINE}), centred "
                f"{check.centred_cosine:.4f} (needs >= {INT8_MIN_CENTRED_COSINE})")
        logger.info("int8 %s at %d px: %s", getattr(self.encoder, "name", ""), side,
                    asdict(check))
        self._int8[side] = (sess, torch.from_numpy(bias))
        return self._int8[side]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._int8_failed is None:
            try:
                sess, bias = self._int8_session(int(x.shape[-1]), x)
                arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
                return torch.from_numpy(sess.run(None, {"x": arr})[0]).add_(bias)
            except Exception as exc:  # noqa: BLE001 - any quantization/runtime failure
                name = getattr(self.encoder, "name", "encoder")
                msg = _one_line(exc)
                if self.strict:
                    raise EncoderError(f"ONNX Runtime int8 failed for {name}: {msg}") from exc
                self._int8_failed = msg
                self.backend = "onnxruntime"
                self._models.clear()  # the fp32 export is checked against torch on first use
                logger.warning("ONNX Runtime int8 unusable for %s (%s); running fp32 ONNX "
                               "Runtime", name, msg)
        return super()._run(x)


def wrap_for_cpu(
    encoder: torch.nn.Module,
    backend: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    calibration: np.ndarray | CalibrationProvider | None = None,
):
    """The object to call ``encode()`` on for CPU inference.

    Parameters
    ----------
    encoder : PatchEncoder
    backend : {"auto", "onnx", "onnx-int8", "torch"}
        ``auto``: ONNX Runtime when the encoder supports it (:func:`supports_onnx`), with
        torch as fallback; ``onnx``: ONNX Runtime or an :class:`EncoderError`;
        ``onnx-int8``: 8-bit ONNX Runtime (:class:`OnnxInt8Encoder`), falling back to
        fp32 ONNX Runtime, then torch, with a logged warning; ``torch``: the encoder
        itself.
    cache_dir : path, optional
        Where exported models are kept (default :func:`onnx_cache_dir`).
    calibration : uint8 array (N, H, W, 3) or CalibrationProvider, optional
        ``onnx-int8`` only: calibration patches or their provider (the pipeline gives
        :data:`~napari_ghanet.inference.calibration.CMU_CALIBRATION`; default: the first
        batch, see :class:`OnnxInt8Encoder`).

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
    name = getattr(encoder, "name", "?")
    if not supports_onnx(encoder):
        if backend == "onnx":
            raise EncoderError(
                f"encoder {name} does not run in ONNX Runtime; choose the torch or auto backend"
            )
        if backend == "onnx-int8":
            logger.warning("encoder %s does not run in ONNX Runtime: no int8, running in "
                           "torch", name)
        return encoder
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        if backend == "onnx":
            raise EncoderError(f"onnxruntime is not installed: {exc}") from exc
        logger.warning("onnxruntime is not installed; running %s in torch", name)
        return encoder
    folder = Path(cache_dir) if cache_dir is not None else None
    if backend == "onnx-int8":
        return OnnxInt8Encoder(encoder, cache_dir=folder, calibration=calibration)
    return OnnxEncoder(encoder, cache_dir=folder, strict=backend == "onnx")
