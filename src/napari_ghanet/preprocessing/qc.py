"""Per-patch artifact QC that needs no weights: pen marks, blur, dark folds.

Three detectors run on RGB uint8 patches (N, H, W, 3), as the encoder reads them:

* **pen**: the fraction of pixels in strongly saturated green or blue hues, or black
  (dark and grey), is at least ``pen_min_fraction``. H&E is pink to purple (hue ~270-360
  and 0-20 degrees); haematoxylin nuclei are blue-purple but darker and less saturated
  than marker ink, hence the saturation and brightness floors of the blue range.
* **fold** (dark folds, over-stained or very thick regions): the fraction of pixels whose
  optical density (mean over R, G, B of ``-log10(I / 255)``) exceeds ``fold_od`` is at
  least ``fold_min_fraction``. Tissue folded over itself stains two to four times darker.
* **blur**: the patch's Laplacian energy (mean squared 4-neighbour Laplacian of the grey
  image, over tissue pixels only so glass does not dilute it) is below ``blur_fraction``
  of the median over the slide's patches. The threshold is relative to the slide, so it
  holds for any stain intensity or scanner; it is decided once all patches are seen, which
  :class:`QCAccumulator` allows while patches stream through the encoder.

Defaults flag none of the 30 tissue patches of the real CMU slide while catching drawn
pen strokes, Gaussian blur (sigma >= 1.5 px) and dark fold bands on H&E-like tissue.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import sys
import threading
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from napari_ghanet.errors import ArgumentError

__all__ = [
    "QCAccumulator",
    "QCParams",
    "QCResult",
    "MMAP_THRESHOLD",
    "REASONS",
    "large_allocations_to_mmap",
    "measure_key",
    "measure_params",
    "patch_measures",
    "qc_patches",
]

#: Flag reasons (``QCResult.reason`` holds the one that flagged a patch most strongly).
REASONS: tuple[str, ...] = ("pen", "fold", "blur")


@dataclass
class QCParams:
    """Thresholds of the artifact detectors (all editable; units stated).

    Attributes
    ----------
    detect : tuple of str
        Detectors to run, among ``REASONS`` ("pen", "fold", "blur").
    green_hue_deg : (float, float)
        HSV hue range (degrees, 0-360) of green ink.
    green_min_saturation : float
        HSV saturation (0-1) above which a green-hued pixel is ink.
    green_min_value : float
        HSV value (brightness, 0-1) above which a green-hued pixel is ink (dark pixels have
        unreliable hue).
    blue_hue_deg : (float, float)
        Hue range (degrees) of blue ink.
    blue_min_saturation : float
        Saturation (0-1) above which a blue-hued pixel is ink; haematoxylin stays below.
    blue_min_value : float
        Value (0-1) above which a blue-hued pixel is ink; dark nuclei stay below.
    black_max_value : float
        Value (0-1) below which a grey pixel is black ink.
    black_max_saturation : float
        Saturation (0-1) below which a dark pixel counts as grey (black ink).
    pen_min_fraction : float
        Fraction (0-1) of a patch's pixels that must be ink to flag it "pen".
    fold_od : float
        Optical density (log10 units, mean over R, G, B; 1.0 = 10 % transmission) above
        which a pixel is dark.
    fold_min_fraction : float
        Fraction (0-1) of a patch's pixels that must be dark to flag it "fold".
    blur_fraction : float
        A patch is "blur" when its Laplacian energy is below this fraction of the median
        energy of the slide's patches (unitless ratio).
    glass_grey : float
        Grey level (0-1) above which a pixel is glass, left out of the Laplacian energy.
    blur_min_tissue : float
        Fraction (0-1) of tissue pixels a patch needs to be judged for blur (and to count
        in the slide median).
    blur_min_patches : int
        Fewest judged patches needed for a slide median; below it blur is not flagged.
    """

    detect: tuple[str, ...] = REASONS
    green_hue_deg: tuple[float, float] = (70.0, 180.0)
    green_min_saturation: float = 0.4
    green_min_value: float = 0.2
    blue_hue_deg: tuple[float, float] = (180.0, 260.0)
    blue_min_saturation: float = 0.6
    blue_min_value: float = 0.35
    black_max_value: float = 0.2
    black_max_saturation: float = 0.5
    pen_min_fraction: float = 0.05
    fold_od: float = 1.0
    fold_min_fraction: float = 0.2
    blur_fraction: float = 0.15
    glass_grey: float = 0.85
    blur_min_tissue: float = 0.25
    blur_min_patches: int = 8

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range threshold."""
        unknown = set(self.detect) - set(REASONS)
        if unknown:
            raise ArgumentError(f"unknown QC detectors {sorted(unknown)}; choose among {REASONS}")
        for name in (
            "green_min_saturation", "green_min_value", "blue_min_saturation", "blue_min_value",
            "black_max_value", "black_max_saturation", "pen_min_fraction", "fold_min_fraction",
            "blur_fraction", "glass_grey", "blur_min_tissue",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ArgumentError(f"QC threshold {name} must be in [0, 1], got {v}")
        if not self.fold_od > 0:
            raise ArgumentError(f"fold_od must be > 0 (optical density), got {self.fold_od}")
        for name in ("green_hue_deg", "blue_hue_deg"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi <= 360:
                raise ArgumentError(f"{name} must be a range within 0-360 degrees, got {(lo, hi)}")
        if self.blur_min_patches < 1:
            raise ArgumentError(f"blur_min_patches must be >= 1, got {self.blur_min_patches}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["detect"] = list(self.detect)
        d["green_hue_deg"] = list(self.green_hue_deg)
        d["blue_hue_deg"] = list(self.blue_hue_deg)
        return d


@dataclass
class QCResult:
    """Artifact flags of N patches.

    Attributes
    ----------
    flags : dict of str -> ndarray of bool, shape (N,)
        One entry per reason in ``REASONS`` (all False for detectors not run).
    reason : ndarray of str, shape (N,)
        The reason that flagged each patch most strongly (its measure over its threshold:
        a black pen stroke is also dark, a dark fold has near-black pixels), "" when clean.
    pen_fraction, dark_fraction : ndarray of float32, shape (N,)
        Fraction of ink / dark pixels.
    blur_ratio : ndarray of float32, shape (N,)
        Laplacian energy over the slide median (NaN where not judged).
    params : QCParams
    note : str
        Why blur was not judged, when it was not.
    """

    flags: dict[str, np.ndarray]
    reason: np.ndarray
    pen_fraction: np.ndarray
    dark_fraction: np.ndarray
    blur_ratio: np.ndarray
    params: QCParams = field(default_factory=QCParams)
    note: str = ""

    def __len__(self) -> int:
        return int(self.reason.shape[0])

    @property
    def flagged(self) -> np.ndarray:
        """bool (N,): True where any detector flagged the patch."""
        return self.reason != ""

    @property
    def keep(self) -> np.ndarray:
        """bool (N,): True for clean patches."""
        return self.reason == ""

    @property
    def counts(self) -> dict[str, int]:
        """Patches per reason (a patch counts once, under its reason) and total."""
        out = {r: int((self.reason == r).sum()) for r in REASONS}
        out["total"] = int(self.flagged.sum())
        return out

    def to_dict(self) -> dict:
        """JSON-able summary for reports: counts, the patches QC looked at, params, note."""
        return {
            "n_patches": len(self),
            "flagged": self.counts,
            "flagged_by_detector": {r: int(f.sum()) for r, f in self.flags.items()},
            "params": self.params.to_dict(),
            "note": self.note,
        }


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value (0-1) of uint8 RGB (..., 3), float32."""
    f = rgb.astype(np.float32) * (1.0 / 255.0)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    mx = f.max(axis=-1)
    mn = f.min(axis=-1)
    d = mx - mn
    dd = np.where(d > 0, d, 1.0)
    h = np.where(
        mx == r,
        np.mod((g - b) / dd, 6.0),
        np.where(mx == g, (b - r) / dd + 2.0, (r - g) / dd + 4.0),
    )
    h = np.where(d > 0, h * 60.0, 0.0)
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
    return h, s, mx


#: Bytes from which an allocation gets its own mapping (returned to the system when freed).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
_heap_done: bool | None = None
_heap_lock = threading.Lock()


def large_allocations_to_mmap() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` for this process (once).

    glibc serves requests above its *mmap threshold* with their own mapping (returned to
    the system on ``free``), the rest from the heap. The threshold starts at 128 KiB and
    by default rises to the size of any mapped block freed (up to 32 MiB), so after the
    first batch a streaming run serves its multi-MB batch arrays (patches, float copies,
    QC work arrays, encoder inputs) from the heap, where blocks of different lifetimes
    interleave and freed space is neither reused nor returned: a 4,610-patch prediction
    (ResNet50-trunc, batch 16, QC on) grew by ~0.9 MB per patch (1.5 -> 3.6 GB). With
    the threshold fixed (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, which also stops the
    adjustment) it stays flat at 1.5 GB. :class:`QCAccumulator` calls it.

    Returns True when the policy is in force (set now or before), False where it cannot
    be set (not Linux/glibc) or ``MALLOC_MMAP_THRESHOLD_`` in the environment chose one.

    Examples
    --------
    >>> large_allocations_to_mmap() in (True, False)
    True
    """
    global _heap_done
    with _heap_lock:
        if _heap_done is not None:
            return _heap_done
        _heap_done = False
        if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        _heap_done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        return _heap_done


class _Scratch:
    """Work arrays reused from batch to batch (by name; grown when too small), so that
    measuring a batch allocates nothing large."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._bufs.get(name)
        if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
            buf = self._bufs[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


def patch_measures(
    patches: np.ndarray, params: QCParams | None = None, scratch: _Scratch | None = None
) -> dict[str, np.ndarray]:
    """Per-patch measures behind the flags (no slide-relative decision).

    Parameters
    ----------
    patches : ndarray of uint8, shape (N, H, W, 3)
        RGB patches.
    params : QCParams, optional
    scratch : _Scratch, optional
        Work arrays to reuse (:class:`QCAccumulator` keeps one; about 32 MB for 256 px
        patches); a fresh one by default.

    Returns
    -------
    dict
        ``pen_fraction``, ``dark_fraction`` (float32 (N,), 0-1), ``lap_energy``
        (float32 (N,), mean squared Laplacian of the 0-255 grey image over tissue pixels;
        NaN when under ``blur_min_tissue`` of the patch is tissue).

    Examples
    --------
    >>> p = np.full((1, 32, 32, 3), 200, np.uint8); p[0, :, :8] = (20, 160, 60)  # green ink
    >>> m = patch_measures(p)
    >>> float(m["pen_fraction"][0]), float(m["dark_fraction"][0])
    (0.25, 0.0)
    """
    params = params or QCParams()
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ArgumentError(f"QC expects RGB patches (N, H, W, 3), got shape {patches.shape}")
    if patches.dtype != np.uint8:
        raise ArgumentError(f"QC expects uint8 patches, got {patches.dtype}")
    n = patches.shape[0]
    pen = np.zeros(n, np.float32)
    dark = np.zeros(n, np.float32)
    energy = np.full(n, np.nan, np.float32)
    lut = _colour_lut(_lut_key(params)) if {"pen", "fold"} & set(params.detect) else None
    scr = scratch if scratch is not None else _Scratch()
    chunk = max(1, (1 << 20) // max(1, patches.shape[1] * patches.shape[2]))  # ~1 Mpx a pass
    for a in range(0, n, chunk):
        p = patches[a : a + chunk]
        if lut is not None:
            pix = p.shape[:3]
            code, tmp = scr.get("code", pix, np.int32), scr.get("tmp", pix, np.int32)
            np.copyto(code, p[..., 0])
            np.left_shift(code, 16, out=code)
            np.copyto(tmp, p[..., 1])
            np.left_shift(tmp, 8, out=tmp)
            np.bitwise_or(code, tmp, out=code)
            np.bitwise_or(code, p[..., 2], out=code)
            bits = np.take(lut, code, out=scr.get("bits", pix, np.uint8), mode="clip")
            one = scr.get("one", pix, np.uint8)  # bit 0: ink, bit 1: dark
            if "pen" in params.detect:
                pen[a : a + chunk] = np.bitwise_and(bits, 1, out=one).mean(axis=(1, 2))
            if "fold" in params.detect:
                dark[a : a + chunk] = np.right_shift(bits, 1, out=one).mean(axis=(1, 2))
        if "blur" in params.detect:
            energy[a : a + chunk] = _laplacian_energy(p, params, scr)
    return {"pen_fraction": pen, "dark_fraction": dark, "lap_energy": energy}


def measure_params(params: QCParams) -> QCParams:
    """``params`` with every detector on: the settings per-patch measures are taken with,
    so that any later choice of detectors and thresholds can be applied to them."""
    return replace(params, detect=REASONS)


def measure_key(params: QCParams) -> str:
    """The settings that change the per-patch measures themselves (colour ranges, the
    fold optical density, the glass grey level and the blur tissue floor), as text.

    Measures stored with one key can be re-decided with any ``pen_min_fraction``,
    ``fold_min_fraction``, ``blur_fraction``, ``blur_min_patches`` or ``detect``; another
    key needs the patches measured again.

    Examples
    --------
    >>> measure_key(QCParams()) == measure_key(QCParams(pen_min_fraction=0.2))
    True
    >>> measure_key(QCParams()) == measure_key(QCParams(fold_od=1.2))
    False
    """
    key = (*_lut_key(params), params.glass_grey, params.blur_min_tissue)
    return "qc-measures-v1 " + json.dumps(
        [list(v) if isinstance(v, tuple) else float(v) for v in key]
    )


def _lut_key(params: QCParams) -> tuple:
    return (
        tuple(params.green_hue_deg), params.green_min_saturation, params.green_min_value,
        tuple(params.blue_hue_deg), params.blue_min_saturation, params.blue_min_value,
        params.black_max_value, params.black_max_saturation, params.fold_od,
    )


@functools.lru_cache(maxsize=4)
def _colour_lut(key: tuple) -> np.ndarray:
    """uint8 (2**24,) over every RGB colour: bit 0 = ink, bit 1 = dark (OD > fold_od).

    One table lookup per pixel replaces the HSV and optical-density arithmetic (~0.5 s to
    build, 16 MiB, cached for the last few parameter sets).
    """
    (glo, ghi), gs, gv, (blo, bhi), bs, bv, kv, ks, fold_od = key
    od = -np.log10(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0)
    lut = np.empty(1 << 24, np.uint8)
    gb = np.arange(1 << 16)
    g, b = (gb >> 8).astype(np.uint8), (gb & 255).astype(np.uint8)
    for r in range(256):
        rgb = np.stack([np.full(gb.shape, r, np.uint8), g, b], axis=-1)
        h, s, v = _hsv(rgb)
        ink = (h >= glo) & (h < ghi) & (s >= gs) & (v >= gv)
        ink |= (h >= blo) & (h < bhi) & (s >= bs) & (v >= bv)
        ink |= (v < kv) & (s < ks)
        dk = (od[r] + od[g] + od[b]) / 3.0 > fold_od
        lut[r << 16 : (r + 1) << 16] = ink.astype(np.uint8) | (dk.astype(np.uint8) << 1)
    return lut


def _laplacian_energy(p: np.ndarray, params: QCParams, scr: _Scratch) -> np.ndarray:
    """Mean squared 4-neighbour Laplacian of the grey image over tissue pixels, per patch
    (float32 (n,)); every full-size array lives in ``scr``."""
    pf = scr.get("pf", p.shape, np.float32)
    np.copyto(pf, p)
    grey = np.matmul(pf, np.array([0.299, 0.587, 0.114], np.float32),
                     out=scr.get("grey", p.shape[:3], np.float32))  # (n, H, W)
    inner = grey[:, 1:-1, 1:-1]
    lap = np.multiply(inner, 4.0, out=scr.get("lap", inner.shape, np.float32))
    for side in (grey[:, :-2, 1:-1], grey[:, 2:, 1:-1], grey[:, 1:-1, :-2], grey[:, 1:-1, 2:]):
        np.subtract(lap, side, out=lap)
    tissue = np.less(inner, params.glass_grey * 255.0, out=scr.get("tissue", inner.shape, bool))
    count = tissue.sum(axis=(1, 2))
    np.multiply(lap, lap, out=lap)
    total = np.multiply(lap, tissue, out=lap).sum(axis=(1, 2))  # squared Laplacian on tissue
    frac = count / float(tissue.shape[1] * tissue.shape[2])
    out = np.where(frac >= params.blur_min_tissue, total / np.maximum(count, 1), np.nan)
    return out.astype(np.float32)


class QCAccumulator:
    """Streaming QC: feed batches of patches as they are embedded, decide at the end.

    Pen and fold flags depend on each patch alone; blur compares each patch with the
    slide's median Laplacian energy, known only once every patch has been seen. Only
    three floats per patch are kept, in one float32 (capacity, 3) buffer that doubles when
    full, and the batch's work arrays are reused from batch to batch. (Fresh multi-MB
    temporaries for every batch, allocated between the encoder's, fragmented the C heap:
    a whole-slide prediction grew by ~1 MB per patch.)

    Examples
    --------
    >>> acc = QCAccumulator()
    >>> acc.update(np.full((4, 32, 32, 3), 200, np.uint8))
    >>> acc.update(np.zeros((2, 32, 32, 3), np.uint8))  # black: pen (and dark)
    >>> acc.result().reason.tolist()
    ['', '', '', '', 'pen', 'pen']
    """

    def __init__(self, params: QCParams | None = None):
        self.params = params or QCParams()
        self.params.validate()
        self._buf = np.empty((0, 3), np.float32)  # pen_fraction, dark_fraction, lap_energy
        self._n = 0
        self._scratch = _Scratch()
        # a streaming run: keep multi-MB batch arrays off the fragmenting C heap
        large_allocations_to_mmap()

    def __len__(self) -> int:
        return self._n

    def _append(self, pen, dark, energy) -> None:
        m = len(pen)
        if self._n + m > len(self._buf):
            grown = np.empty((max(2 * len(self._buf), self._n + m, 1024), 3), np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        rows = self._buf[self._n : self._n + m]
        rows[:, 0], rows[:, 1], rows[:, 2] = pen, dark, energy
        self._n += m

    def update(self, patches: np.ndarray) -> None:
        """Measure a batch of RGB uint8 patches (B, H, W, 3), in grid order."""
        m = patch_measures(patches, self.params, self._scratch)
        self._append(m["pen_fraction"], m["dark_fraction"], m["lap_energy"])

    def add_measures(self, measures: dict[str, np.ndarray] | np.ndarray) -> None:
        """Add patches measured before (e.g. stored with cached features): a dict as
        :func:`patch_measures` returns, or a float32 (B, 3) array of its three columns
        (pen_fraction, dark_fraction, lap_energy), measured with settings of the same
        :func:`measure_key`."""
        keys = ("pen_fraction", "dark_fraction", "lap_energy")
        if not isinstance(measures, dict):
            a = np.asarray(measures, np.float32).reshape(-1, 3)
            measures = {k: a[:, i] for i, k in enumerate(keys)}
        self._append(*(np.asarray(measures[k], np.float32) for k in keys))

    def measures(self) -> np.ndarray:
        """float32 (N, 3): every patch's pen_fraction, dark_fraction, lap_energy so far."""
        return self._buf[: self._n].copy()

    def result(self) -> QCResult:
        """Flags of every patch seen so far (blur judged against their median)."""
        prm = self.params
        keys = ("pen_fraction", "dark_fraction", "lap_energy")
        m = {k: self._buf[: self._n, i].copy() for i, k in enumerate(keys)}
        n = len(m["pen_fraction"])
        flags = {r: np.zeros(n, bool) for r in REASONS}
        if "pen" in prm.detect:
            flags["pen"] = m["pen_fraction"] >= prm.pen_min_fraction
        if "fold" in prm.detect:
            flags["fold"] = m["dark_fraction"] >= prm.fold_min_fraction
        ratio = np.full(n, np.nan, np.float32)
        note = ""
        if "blur" in prm.detect:
            e = m["lap_energy"]
            judged = np.isfinite(e) & ~flags["pen"] & ~flags["fold"]
            if judged.sum() >= prm.blur_min_patches:
                med = float(np.median(e[judged]))
                if med > 0:
                    ratio = (e / med).astype(np.float32)
                    flags["blur"] = np.isfinite(ratio) & (ratio < prm.blur_fraction)
            else:
                note = (
                    f"blur not judged: {int(judged.sum())} patches with enough tissue, fewer "
                    f"than the {prm.blur_min_patches} a slide-relative threshold needs"
                )
        # Each patch's reason is the detector that flagged it most strongly (measure over
        # threshold): a black pen stroke is dark too, a dark fold has near-black pixels.
        with np.errstate(divide="ignore", invalid="ignore"):
            strength = np.stack([
                m["pen_fraction"] / max(prm.pen_min_fraction, 1e-9),
                m["dark_fraction"] / max(prm.fold_min_fraction, 1e-9),
                prm.blur_fraction / np.where(ratio > 0, ratio, 1e-9),
            ])
        strength = np.where(np.stack([flags[r] for r in REASONS]), strength, -np.inf)
        best = np.argmax(strength, axis=0)
        reason = np.where(np.isfinite(strength.max(axis=0)) if n else np.zeros(0, bool),
                          np.asarray(REASONS, dtype="<U4")[best], "")
        reason = reason.astype("<U4")
        return QCResult(
            flags=flags,
            reason=reason,
            pen_fraction=m["pen_fraction"],
            dark_fraction=m["dark_fraction"],
            blur_ratio=ratio,
            params=prm,
            note=note,
        )


def qc_patches(patches: np.ndarray, params: QCParams | None = None) -> QCResult:
    """Flag pen marks, dark folds and blur on a slide's patches (see module docstring).

    Parameters
    ----------
    patches : ndarray of uint8, shape (N, H, W, 3)
        RGB patches of one slide (blur is judged against their median).
    params : QCParams, optional

    Returns
    -------
    QCResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> grey = rng.integers(120, 200, (10, 32, 32, 1), dtype=np.uint8)  # textured
    >>> tissue = np.repeat(grey, 3, axis=-1)
    >>> tissue[9] = 160  # flat: no texture, as out of focus
    >>> res = qc_patches(tissue)
    >>> res.reason.tolist()[-2:], res.counts["blur"]
    (['', 'blur'], 1)
    """
    acc = QCAccumulator(params)
    acc.update(patches)
    return acc.result()
