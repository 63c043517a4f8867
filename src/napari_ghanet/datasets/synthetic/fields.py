"""Random fields and resampling: the coarse fields that shape tissue, tumour and fibres.

Every field lives on a grid of ``_COARSE_UM`` cells (8 um) and is upsampled per band of
rows by :class:`_Linear1D`; :func:`_coarse_fields` draws the ten fields one slide needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri

from napari_ghanet.preprocessing.stain import STAIN_VECTORS

_COARSE_UM = 8.0  # cell of the random fields that shape tissue, tumour and fibres
_FINE_UM = 1.0  # resolution of the stain background (stroma, cytoplasm, lumens)
_DETAIL_UM = 2.0  # cell of the small-scale noise that frays fibres and edges
_OD_STEP = 1.0 / 256.0  # concentration quantum of the colour lookup table
_OD_LEVELS = 512  # concentrations 0 .. 2.0 for each stain
_BAND_ROWS = 256  # level-0 rows rendered at once; fixed so results do not depend on it


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation, correlation length ~sigma cells."""
    pad = int(math.ceil(2 * sigma))
    raw = rng.standard_normal((shape[0] + 2 * pad, shape[1] + 2 * pad), dtype=np.float32)
    smooth = ndi.gaussian_filter(raw, sigma, mode="wrap")[
        pad : pad + shape[0], pad : pad + shape[1]
    ]
    std = float(smooth.std())
    return (smooth - float(smooth.mean())) / (std if std > 0 else 1.0)


class _Linear1D:
    """Linear interpolation indices from a coarse axis of ``n_src`` cells to ``n_dst`` pixels."""

    def __init__(self, n_src: int, n_dst: int, scale: float):
        pos = (np.arange(n_dst, dtype=np.float64) + 0.5) / scale - 0.5
        pos = np.clip(pos, 0, n_src - 1)
        self.i0 = np.floor(pos).astype(np.intp)
        self.i1 = np.minimum(self.i0 + 1, n_src - 1)
        self.w1 = (pos - self.i0).astype(np.float32)
        self.w0 = (1 - self.w1).astype(np.float32)
        self.scale = scale

    def cols(self, a: np.ndarray) -> np.ndarray:
        return a[..., self.i0] * self.w0 + a[..., self.i1] * self.w1

    def rows(self, a: np.ndarray, start: int, stop: int, src_offset: int = 0) -> np.ndarray:
        i0 = self.i0[start:stop] - src_offset
        i1 = self.i1[start:stop] - src_offset
        return a[..., i0, :] * self.w0[start:stop, None] + a[..., i1, :] * self.w1[start:stop, None]


def _blur121(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur of a 2-D array (edges replicated): ~0.7 px optical blur."""
    out = a * 0.5
    out[1:] += a[:-1] * 0.25
    out[:-1] += a[1:] * 0.25
    out[0] += a[0] * 0.25
    out[-1] += a[-1] * 0.25
    res = out * 0.5
    res[:, 1:] += out[:, :-1] * 0.25
    res[:, :-1] += out[:, 1:] * 0.25
    res[:, 0] += out[:, 0] * 0.25
    res[:, -1] += out[:, -1] * 0.25
    return res


def _run_bands(fn: Callable[[int], None], starts: Sequence[int] | range, workers: int) -> None:
    """Run ``fn`` on every band; numpy releases the GIL, so threads use several cores."""
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            fn(start)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(fn, start) for start in starts]:
            future.result()


def _stain_lut(background: Sequence[int]) -> np.ndarray:
    """(OD_LEVELS**2, 3) uint8 RGB for every quantised (H, E) concentration pair."""
    q = np.arange(_OD_LEVELS, dtype=np.float64) * _OD_STEP
    h = np.asarray(STAIN_VECTORS["hematoxylin"])
    e = np.asarray(STAIN_VECTORS["eosin"])
    od = q[:, None, None] * h + q[None, :, None] * e
    rgb = np.asarray(background, np.float64) * np.power(10.0, -od)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(-1, 3)


def _sig(um: float) -> float:
    """A length in um as a number of coarse cells (the sigma of :func:`_smooth_noise`)."""
    return um / _COARSE_UM


@dataclass(frozen=True)
class _Grid:
    """The three grids of a slide: level-0 pixels, fine cells (~1 um) and coarse cells."""

    h: int  # level-0 height, px
    w: int  # level-0 width, px
    mpp: float
    h_um: float
    w_um: float
    fine_px: int  # level-0 pixels per fine cell (an integer)
    fine_um: float  # fine cell edge, um
    hf: int  # fine grid height, cells
    wf: int  # fine grid width, cells
    coarse_shape: tuple[int, int]

    @classmethod
    def of(cls, shape: tuple[int, int], mpp: float) -> _Grid:
        h, w = shape
        h_um, w_um = h * mpp, w * mpp
        # fine grid: ~1 um cells, an integer number of level-0 pixels
        fine_px = max(1, int(round(_FINE_UM / mpp)))
        fine_um = fine_px * mpp
        hf, wf = math.ceil(h / fine_px), math.ceil(w / fine_px)
        coarse_shape = (math.ceil(h_um / _COARSE_UM) + 1, math.ceil(w_um / _COARSE_UM) + 1)
        return cls(h, w, mpp, h_um, w_um, fine_px, fine_um, hf, wf, coarse_shape)


@dataclass(frozen=True)
class _CoarseFields:
    """The coarse fields of one slide (all ``(coarse_h, coarse_w)`` float32)."""

    tissue: np.ndarray  # > 0 inside the tissue, in units of its spread
    tumour: np.ndarray  # > 0 inside the tumour
    theta: np.ndarray  # local fibre direction, radians
    stack: np.ndarray  # (10, coarse_h, coarse_w): every field the fine pass reads
    septa_thr: float  # nest-field level below which tumour is stromal septum
    lumen_thr: float  # lumen-field level above which tumour is a lumen


def _tissue_field(rng: np.random.Generator, grid: _Grid, tissue_fraction: float) -> np.ndarray:
    """An elongated, frayed tissue section: > 0 on ``tissue_fraction`` of the cells."""
    coarse_shape, h_um, w_um = grid.coarse_shape, grid.h_um, grid.w_um
    cy_, cx_ = np.meshgrid(
        (np.arange(coarse_shape[0]) + 0.5) * _COARSE_UM / h_um - 0.5,
        (np.arange(coarse_shape[1]) + 0.5) * _COARSE_UM / w_um - 0.5,
        indexing="ij",
    )
    rot = rng.uniform(0, np.pi)
    ex, ey = cx_ * math.cos(rot) + cy_ * math.sin(rot), cy_ * math.cos(rot) - cx_ * math.sin(rot)
    elong = rng.uniform(0.55, 1.0)
    size_um_max = max(h_um, w_um)
    envelope = -(ex**2 + (ey / elong) ** 2) * 6.0
    tissue_f = (
        envelope
        + 0.6 * _smooth_noise(rng, coarse_shape, _sig(0.15 * size_um_max))
        + 0.35 * _smooth_noise(rng, coarse_shape, _sig(60.0))
        + 0.08 * _smooth_noise(rng, coarse_shape, _sig(16.0))
    ).astype(np.float32)
    tissue_f -= np.quantile(tissue_f, 1.0 - tissue_fraction)
    tissue_f /= max(float(np.abs(tissue_f).std()), 1e-6)
    return tissue_f


def _tumour_fields(
    rng: np.random.Generator,
    grid: _Grid,
    tissue_f: np.ndarray,
    tumour_fraction: float,
    dediff: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Tumour extent (> 0 on ``tumour_fraction`` of the tissue), nests and lumens.

    Returns the tumour, nest and lumen fields and the septa and lumen thresholds.
    """
    coarse_shape = grid.coarse_shape
    tumour_f = (
        0.85 * _smooth_noise(rng, coarse_shape, _sig(160.0))
        + 0.4 * _smooth_noise(rng, coarse_shape, _sig(45.0))
    ).astype(np.float32)
    inside = tissue_f > 0
    if tumour_fraction <= 0 or not inside.any():
        tumour_thr = np.inf
    else:
        tumour_thr = float(np.quantile(tumour_f[inside], 1.0 - tumour_fraction))
    tumour_f -= np.float32(tumour_thr if np.isfinite(tumour_thr) else 1e9)
    nest_f = _smooth_noise(rng, coarse_shape, _sig(18.0))
    lumen_f = _smooth_noise(rng, coarse_shape, _sig(9.0))
    septa_thr = float(ndtri(0.28 - 0.16 * dediff))
    lumen_thr = float(ndtri(1.0 - (0.02 + 0.16 * (1.0 - dediff))))
    return tumour_f, nest_f, lumen_f, septa_thr, lumen_thr


def _coarse_fields(
    grid: _Grid,
    rng_tissue: np.random.Generator,
    rng_tumour: np.random.Generator,
    rng_stroma: np.random.Generator,
    *,
    tissue_fraction: float,
    tumour_fraction: float,
    dediff: float,
) -> _CoarseFields:
    """Draw the tissue, tumour and stroma fields (fibre direction, warp, bundles, stain)."""
    coarse_shape = grid.coarse_shape
    tissue_f = _tissue_field(rng_tissue, grid, tissue_fraction)
    tumour_f, nest_f, lumen_f, septa_thr, lumen_thr = _tumour_fields(
        rng_tumour, grid, tissue_f, tumour_fraction, dediff
    )
    theta_f = rng_stroma.uniform(0, np.pi) + 1.3 * _smooth_noise(
        rng_stroma, coarse_shape, _sig(110.0)
    )
    warp_f = (
        1.2 * _smooth_noise(rng_stroma, coarse_shape, _sig(10.0))
        + 2.2 * _smooth_noise(rng_stroma, coarse_shape, _sig(20.0))
        + 6.0 * _smooth_noise(rng_stroma, coarse_shape, _sig(70.0))
    )
    bundle_f = _smooth_noise(rng_stroma, coarse_shape, _sig(14.0))
    loose_f = _smooth_noise(rng_stroma, coarse_shape, _sig(90.0))
    stain_f = _smooth_noise(rng_stroma, coarse_shape, _sig(250.0))
    stack = np.stack(
        [
            tissue_f,
            tumour_f,
            nest_f,
            lumen_f,
            np.cos(2 * theta_f),
            np.sin(2 * theta_f),
            warp_f,
            bundle_f,
            loose_f,
            stain_f,
        ]
    ).astype(np.float32)
    return _CoarseFields(tissue_f, tumour_f, theta_f, stack, septa_thr, lumen_thr)


def _jittered_points(
    rng: np.random.Generator, shape_um: tuple[float, float], spacing_um: float, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points on a square grid with uniform jitter (fraction of the spacing), in um (x, y)."""
    ny = int(math.ceil(shape_um[0] / spacing_um))
    nx = int(math.ceil(shape_um[1] / spacing_um))
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    x = (gx.ravel() + 0.5 + rng.uniform(-jitter, jitter, gx.size)) * spacing_um
    y = (gy.ravel() + 0.5 + rng.uniform(-jitter, jitter, gy.size)) * spacing_um
    inside = (x < shape_um[1]) & (y < shape_um[0]) & (x >= 0) & (y >= 0)
    return x[inside], y[inside]


def _poisson_points(
    rng: np.random.Generator, shape_um: tuple[float, float], density_per_mm2: float
) -> tuple[np.ndarray, np.ndarray]:
    n = rng.poisson(density_per_mm2 * shape_um[0] * shape_um[1] * 1e-6)
    return rng.uniform(0, shape_um[1], n), rng.uniform(0, shape_um[0], n)
