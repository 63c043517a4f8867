"""Seeded synthetic H&E-like whole-slide images for tests, demos and benchmarks.

A slide is rendered in optical-density (OD) space: every pixel holds a haematoxylin
and an eosin concentration, and the RGB value follows Beer-Lambert,
``I = I0 * 10 ** -(c_H * h + c_E * e)``, with unit stain vectors ``h`` and ``e``
fitted to a real Aperio H&E scan. The tissue is built from a few structures:

* stroma: wavy eosinophilic collagen fibres with white gaps, sparse elongated
  fibroblast nuclei aligned with the fibres and scattered round lymphocytes;
* glands: lumens lined by an epithelium with basal, radially elongated nuclei,
  and small vessels with a flat endothelium and red-cell filled lumens;
* tumour: nests of tumour cells cut by thin stromal septa, with dense, large,
  pleomorphic, hyperchromatic nuclei and a few glandular lumens.

Each patient's pathway ``activity`` (a number in [0, 1], or one per trait in
:data:`ACTIVITY_TRAITS`) sets the tumour extent and the nuclear atypia, so that a
model trained on such slides can learn a prognosis signal from morphology.

Everything is vectorised (coarse random fields upsampled per band of rows,
nuclei stamped in batches); a 6,000 x 6,000 px slide takes a few seconds on two
CPU cores and the output depends only on the arguments (seed included).

This is test and demonstration data: it imitates the colour and the nuclear
statistics of H&E, not the biology of any cancer.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri

from napari_ghanet.io.atomic import atomic_path, atomic_write

# unit optical-density vectors (R, G, B) of haematoxylin and eosin, defined once
from napari_ghanet.preprocessing.stain import STAIN_VECTORS

__all__ = [
    "ACTIVITY_TRAITS",
    "BACKGROUND_RGB",
    "STAIN_VECTORS",
    "NucleusKind",
    "Region",
    "SyntheticSlide",
    "measure_he_statistics",
    "synthetic_slide",
    "write_pyramidal_tiff",
    "write_synthetic_cohort_slides",
    "write_synthetic_slide",
]


#: Transmitted light through bare glass (the slide background), RGB.
BACKGROUND_RGB: tuple[int, int, int] = (246, 243, 244)

#: The morphological traits a per-patient activity vector drives, in order.
#: A scalar activity sets all six to the same value.
ACTIVITY_TRAITS: tuple[str, ...] = (
    "tumour_extent",  # fraction of the tissue occupied by tumour
    "nuclear_size",  # tumour nuclear diameter and pleomorphism
    "proliferation",  # tumour nuclear density
    "dedifferentiation",  # loss of glandular lumens, fewer stromal septa
    "hyperchromasia",  # haematoxylin optical density of tumour nuclei
    "inflammation",  # lymphocyte density in the stroma and the tumour
)


class Region(IntEnum):
    """Codes of :attr:`SyntheticSlide.regions` (uint8, one per level-0 pixel)."""

    BACKGROUND = 0
    STROMA = 1
    EPITHELIUM = 2  # normal gland lining and vessel walls
    LUMEN = 3  # normal gland and vessel lumens
    TUMOUR = 4  # tumour cell nests
    TUMOUR_STROMA = 5  # septa between tumour nests
    TUMOUR_LUMEN = 6


class NucleusKind(IntEnum):
    """Codes of :attr:`SyntheticSlide.nuclei_kind`."""

    FIBROBLAST = 0
    LYMPHOCYTE = 1
    EPITHELIAL = 2
    ENDOTHELIAL = 3
    TUMOUR = 4


_TUMOUR_REGIONS = (Region.TUMOUR, Region.TUMOUR_STROMA, Region.TUMOUR_LUMEN)
_COARSE_UM = 8.0  # cell of the random fields that shape tissue, tumour and fibres
_FINE_UM = 1.0  # resolution of the stain background (stroma, cytoplasm, lumens)
_DETAIL_UM = 2.0  # cell of the small-scale noise that frays fibres and edges
_OD_STEP = 1.0 / 256.0  # concentration quantum of the colour lookup table
_OD_LEVELS = 512  # concentrations 0 .. 2.0 for each stain
_BAND_ROWS = 256  # level-0 rows rendered at once; fixed so results do not depend on it
_MAX_PIXELS = 1_500_000_000


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class SyntheticSlide:
    """A rendered synthetic slide with its ground truth.

    Attributes
    ----------
    rgb : (H, W, 3) uint8
        The image at level 0.
    regions : (H, W) uint8
        :class:`Region` code of every pixel.
    nuclei_xy : (N, 2) float32
        Nucleus centres in level-0 pixels, (x, y) order.
    nuclei_kind : (N,) uint8
        :class:`NucleusKind` of every nucleus.
    nuclei_diameter_um : (N,) float32
        Equivalent diameter (of the area) of every nucleus, um.
    mpp : float
        Microns per pixel at level 0.
    seed : int
    activity : dict[str, float]
        The trait values used, keyed by :data:`ACTIVITY_TRAITS`.
    target_tumour_fraction : float
        Requested tumour area fraction of the tissue.
    """

    rgb: np.ndarray
    regions: np.ndarray
    nuclei_xy: np.ndarray
    nuclei_kind: np.ndarray
    nuclei_diameter_um: np.ndarray
    mpp: float
    seed: int
    activity: dict[str, float]
    target_tumour_fraction: float

    @property
    def shape_hw(self) -> tuple[int, int]:
        return self.rgb.shape[:2]

    @property
    def tissue_mask(self) -> np.ndarray:
        """(H, W) bool: pixels inside the tissue section (lumens included)."""
        return self.regions != Region.BACKGROUND

    @property
    def tumour_mask(self) -> np.ndarray:
        """(H, W) bool: pixels of the tumour (nests, septa and tumour lumens)."""
        return self.regions >= Region.TUMOUR

    def nuclear_density_map(self, cell_um: float = 64.0) -> np.ndarray:
        """Nuclei per mm^2 of slide area on a grid of ``cell_um`` x ``cell_um`` cells.

        Returns a float32 array of shape ``(ceil(H * mpp / cell_um), ceil(W * mpp / cell_um))``;
        cell ``(i, j)`` covers level-0 pixels ``[i * cell_um / mpp, (i + 1) * cell_um / mpp)``.
        """
        if not cell_um > 0:
            raise ValueError(f"cell_um must be positive, got {cell_um}")
        h, w = self.shape_hw
        cell_px = cell_um / self.mpp
        shape = (math.ceil(h / cell_px), math.ceil(w / cell_px))
        counts = np.zeros(shape, np.float64)
        if len(self.nuclei_xy):
            iy = (self.nuclei_xy[:, 1] // cell_px).astype(np.int64).clip(0, shape[0] - 1)
            ix = (self.nuclei_xy[:, 0] // cell_px).astype(np.int64).clip(0, shape[1] - 1)
            np.add.at(counts, (iy, ix), 1.0)
        return (counts / (cell_um * cell_um * 1e-6)).astype(np.float32)

    def truth(self) -> dict:
        """Ground-truth summary (JSON-serialisable): fractions, densities, sizes, counts.

        Fractions are of the tissue area (``tumour_fraction``) or of the slide area
        (``tissue_fraction``); densities are nuclei per mm^2 of the named region;
        diameters are means in um. Returns a fresh copy on every call.
        """
        return copy.deepcopy(self._truth)

    @cached_property
    def _truth(self) -> dict:
        counts = np.bincount(self.regions.ravel(), minlength=len(Region))
        px_mm2 = (self.mpp * 1e-3) ** 2
        tissue_px = int(counts[1:].sum())
        tumour_px = int(sum(counts[r] for r in _TUMOUR_REGIONS))
        non_tumour_px = tissue_px - tumour_px
        if len(self.nuclei_xy):
            xi = self.nuclei_xy[:, 0].astype(np.int64).clip(0, self.shape_hw[1] - 1)
            yi = self.nuclei_xy[:, 1].astype(np.int64).clip(0, self.shape_hw[0] - 1)
            in_tumour = self.regions[yi, xi] >= Region.TUMOUR
        else:
            in_tumour = np.zeros(0, bool)

        def density(n: int, px: int) -> float:
            return float(n / (px * px_mm2)) if px else 0.0

        def mean_diameter(sel: np.ndarray) -> float:
            return float(self.nuclei_diameter_um[sel].mean()) if sel.any() else 0.0

        kinds = np.bincount(self.nuclei_kind, minlength=len(NucleusKind))
        truth = {
            "seed": int(self.seed),
            "mpp": float(self.mpp),
            "shape_hw": [int(v) for v in self.shape_hw],
            "activity": {k: float(v) for k, v in self.activity.items()},
            "target_tumour_fraction": float(self.target_tumour_fraction),
            "tissue_fraction": float(tissue_px / self.regions.size),
            "tumour_fraction": float(tumour_px / tissue_px) if tissue_px else 0.0,
            "nuclear_density_per_mm2": {
                "tissue": density(len(self.nuclei_kind), tissue_px),
                "tumour": density(int(in_tumour.sum()), tumour_px),
                "non_tumour": density(int((~in_tumour).sum()), non_tumour_px),
            },
            "mean_nuclear_diameter_um": {
                "tumour": mean_diameter(self.nuclei_kind == NucleusKind.TUMOUR),
                "non_tumour": mean_diameter(self.nuclei_kind != NucleusKind.TUMOUR),
            },
            "nuclei_count": {k.name.lower(): int(kinds[k]) for k in NucleusKind},
        }
        return truth


# --------------------------------------------------------------------------- helpers


def _activity_vector(activity: float | Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(activity, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(len(ACTIVITY_TRAITS), float(arr))
    if arr.shape != (len(ACTIVITY_TRAITS),):
        raise ValueError(
            f"activity must be a number or a sequence of {len(ACTIVITY_TRAITS)} numbers "
            f"({', '.join(ACTIVITY_TRAITS)}), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"activity values must lie in [0, 1], got {arr.tolist()}")
    return arr


def _resolve_shape(
    shape_hw: Sequence[int] | None, size_um: float | Sequence[float] | None, mpp: float
) -> tuple[int, int]:
    if not (isinstance(mpp, int | float) and 0.1 <= float(mpp) <= 2.0):
        raise ValueError(f"mpp must be between 0.1 and 2.0 um/px, got {mpp!r}")
    if (shape_hw is None) == (size_um is None):
        raise ValueError("give exactly one of shape_hw (pixels) or size_um (microns)")
    if size_um is not None:
        size = np.broadcast_to(np.asarray(size_um, dtype=np.float64), (2,))
        if not np.all(np.isfinite(size)) or size.min() <= 0:
            raise ValueError(f"size_um must be positive, got {size_um!r}")
        shape = tuple(int(round(s / mpp)) for s in size)
    else:
        if len(shape_hw) != 2:
            raise ValueError(f"shape_hw must be (height, width), got {shape_hw!r}")
        shape = (int(shape_hw[0]), int(shape_hw[1]))
    if min(shape) < 64:
        raise ValueError(f"the slide must be at least 64 x 64 pixels, got {shape}")
    if shape[0] * shape[1] > _MAX_PIXELS:
        raise ValueError(
            f"a {shape[0]} x {shape[1]} px slide does not fit in memory here; "
            f"keep it under {_MAX_PIXELS:,} pixels"
        )
    return shape


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


# --------------------------------------------------------------------------- nuclei


@dataclass
class _Nuclei:
    """Nucleus parameters in level-0 pixels (all arrays of length N)."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray  # semi-axis along angle, px
    b: np.ndarray  # perpendicular semi-axis, px
    angle: np.ndarray
    wobble: np.ndarray  # amplitude of a three-lobed contour irregularity
    wobble_phase: np.ndarray
    peak: np.ndarray  # haematoxylin concentration at the rim
    vesicular: np.ndarray  # 0 solid chromatin .. 1 pale centre
    chromatin: np.ndarray  # (N, 5): amplitude, frequency, direction, two phases
    nucleolus: np.ndarray  # (N, 3): amplitude, position (u, v) in the unit nucleus
    kind: np.ndarray

    @staticmethod
    def concat(parts: list[_Nuclei]) -> _Nuclei:
        parts = [p for p in parts if len(p.x)]
        if not parts:
            z = np.zeros(0, np.float32)
            return _Nuclei(
                z,
                z,
                z,
                z,
                z,
                z,
                z,
                z,
                z,
                np.zeros((0, 5), np.float32),
                np.zeros((0, 3), np.float32),
                np.zeros(0, np.uint8),
            )
        return _Nuclei(
            *[np.concatenate([getattr(p, f) for p in parts]) for f in _Nuclei.__dataclass_fields__]
        )

    def take(self, idx: np.ndarray) -> _Nuclei:
        return _Nuclei(*[getattr(self, f)[idx] for f in _Nuclei.__dataclass_fields__])

    def __len__(self) -> int:
        return len(self.x)


def _make_nuclei(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    kind: NucleusKind,
    *,
    diameter_um: tuple[float, float],
    aspect: tuple[float, float],
    angle: np.ndarray | None,
    angle_jitter: float,
    wobble: float,
    peak: tuple[float, float],
    vesicular: float,
    mpp: float,
    chromatin: float = 0.15,
    nucleolus: float = 0.0,
) -> _Nuclei:
    """Nuclei of one kind at the given centres; diameter and aspect are (mean, sd)."""
    n = len(x)
    d = np.clip(rng.normal(diameter_um[0], diameter_um[1], n), 0.45 * diameter_um[0], None)
    ar = np.clip(rng.normal(aspect[0], aspect[1], n), 1.0, None)
    # keep the area of a d-diameter disc: a * b = (d / 2)^2
    r_px = d / (2 * mpp)
    a = r_px * np.sqrt(ar)
    b = r_px / np.sqrt(ar)
    if angle is None:
        ang = rng.uniform(0, np.pi, n)
    else:
        ang = angle + rng.normal(0, angle_jitter, n)
    return _Nuclei(
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        a=a.astype(np.float32),
        b=b.astype(np.float32),
        angle=ang.astype(np.float32),
        wobble=(rng.uniform(0, wobble, n)).astype(np.float32),
        wobble_phase=rng.uniform(0, 2 * np.pi, n).astype(np.float32),
        peak=np.clip(rng.normal(peak[0], peak[1], n), 0.2, 1.9).astype(np.float32),
        vesicular=np.full(n, vesicular, np.float32),
        chromatin=np.stack(
            [
                rng.uniform(0.5, 1.0, n) * chromatin,
                rng.uniform(4.0, 7.5, n),
                rng.uniform(0, np.pi, n),
                rng.uniform(0, 2 * np.pi, n),
                rng.uniform(0, 2 * np.pi, n),
            ],
            axis=1,
        ).astype(np.float32),
        nucleolus=np.stack(
            [
                np.where(rng.random(n) < 0.7, nucleolus, 0.0),
                rng.uniform(-0.35, 0.35, n),
                rng.uniform(-0.35, 0.35, n),
            ],
            axis=1,
        ).astype(np.float32),
        kind=np.full(n, int(kind), np.uint8),
    )


def _stamp_nuclei(
    canvas: np.ndarray,
    y0: int,
    nuc: _Nuclei,
    rng: np.random.Generator,
) -> None:
    """Draw nuclei (haematoxylin concentration) into ``canvas`` rows ``y0 ..``, keeping the max.

    Nuclei are drawn in batches of equal bounding-box size: the contour of a batch is
    one ``(n, S, S)`` array evaluation; the chromatin is then computed on the pixels
    inside the nuclei only, and scattered with ``np.maximum.at``.
    """
    if not len(nuc):
        return
    rows, width = canvas.shape
    flat = canvas.reshape(-1)
    reach = nuc.a * (1.0 + nuc.wobble) + 1.5
    half = np.ceil(reach).astype(np.int64)
    for h in np.unique(half):
        sel = np.flatnonzero(half == h)
        size = 2 * int(h) + 1
        offs = np.arange(-h, h + 1, dtype=np.float32)
        ioffs = np.arange(-h, h + 1)
        chunk = max(1, 2_000_000 // (size * size))
        for start in range(0, len(sel), chunk):
            s = sel[start : start + chunk]
            cx = np.rint(nuc.x[s]).astype(np.int64)
            cy = np.rint(nuc.y[s]).astype(np.int64)
            dx = offs[None, None, :] - (nuc.x[s] - cx)[:, None, None]
            dy = offs[None, :, None] - (nuc.y[s] - cy)[:, None, None]
            cos = np.cos(nuc.angle[s])[:, None, None]
            sin = np.sin(nuc.angle[s])[:, None, None]
            u = (dx * cos + dy * sin) / nuc.a[s][:, None, None]
            v = (dy * cos - dx * sin) / nuc.b[s][:, None, None]
            r = np.sqrt(u * u + v * v + 1e-6)
            # three-lobed contour: cos(3 phi - psi) of the polar angle phi of (u, v)
            c1, s1 = u / r, v / r
            c3 = c1 * (4 * c1 * c1 - 3)
            s3 = s1 * (3 - 4 * s1 * s1)
            psi = nuc.wobble_phase[s]
            lobes = c3 * np.cos(psi)[:, None, None] + s3 * np.sin(psi)[:, None, None]
            edge = 1.0 + nuc.wobble[s][:, None, None] * lobes
            # signed distance to the contour in pixels (along the short axis), 1.6 px ramp
            alpha = 0.5 - (r - edge) * (nuc.b[s][:, None, None] / 1.6)
            row_ok = ((cy - y0)[:, None] + ioffs >= 0) & ((cy - y0)[:, None] + ioffs < rows)
            col_ok = (cx[:, None] + ioffs >= 0) & (cx[:, None] + ioffs < width)
            keep = (alpha > 0) & row_ok[:, :, None] & col_ok[:, None, :]
            ni, iy, ix = np.nonzero(keep)
            if not len(ni):
                continue
            alpha_k = np.minimum(alpha[keep], 1.0)
            u_k, v_k, r_k = u[keep], v[keep], r[keep]
            rel2 = np.minimum(r_k / edge[keep], 1.0) ** 2
            # solid nuclei are domed (darkest in the middle); vesicular ones have a dark
            # rim of marginated chromatin around a paler centre
            ves = nuc.vesicular[s][ni]
            profile = (1.0 - ves) * (1.0 - 0.35 * rel2) + ves * (0.55 + 0.45 * rel2)
            # coarse chromatin clumps (a per-nucleus checker of two sines) + fine grain
            tex = nuc.chromatin[s][ni]
            cb, sb = np.cos(tex[:, 2]), np.sin(tex[:, 2])
            clumps = np.sin(tex[:, 1] * (u_k * cb + v_k * sb) + tex[:, 3])
            clumps *= np.sin(tex[:, 1] * (v_k * cb - u_k * sb) + tex[:, 4])
            grain = 0.88 + 0.24 * rng.random(len(ni), dtype=np.float32)
            # nucleolus: a small round dark spot (quadratic bump, radius 0.2 of the nucleus)
            nl = nuc.nucleolus[s][ni]
            d2 = (u_k - nl[:, 1]) ** 2 + (v_k - nl[:, 2]) ** 2
            spot = nl[:, 0] * np.maximum(1.0 - 25.0 * d2, 0.0) ** 2
            value = nuc.peak[s][ni] * alpha_k * (profile * (1 + tex[:, 0] * clumps) * grain + spot)
            index = (cy[ni] - y0 + iy - h) * width + (cx[ni] + ix - h)
            np.maximum.at(flat, index, value.astype(np.float32, copy=False))


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


# --------------------------------------------------------------------------- rendering


@dataclass
class _Ring:
    """A gland or a vessel: an elliptical ring of epithelium around a lumen (fine pixels)."""

    cy: float
    cx: float
    r_out: float  # outer radius along the major axis
    aspect: float  # minor / major
    angle: float
    thickness: float
    wobble: float
    wobble_phase: float
    vessel: bool


def _render_rings(rings: list[_Ring], shape: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 on the fine grid: 0 none, 1 wall/epithelium, 2 lumen."""
    out = np.zeros(shape, np.uint8)
    for g in rings:
        reach = g.r_out * (1 + g.wobble) + 2
        y0, y1 = max(int(g.cy - reach), 0), min(int(g.cy + reach) + 1, shape[0])
        x0, x1 = max(int(g.cx - reach), 0), min(int(g.cx + reach) + 1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - g.cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - g.cx
        c, s = math.cos(g.angle), math.sin(g.angle)
        u = (xx * c + yy * s) / g.r_out
        v = (yy * c - xx * s) / (g.r_out * g.aspect)
        phi = np.arctan2(v, u)
        r = np.sqrt(u * u + v * v) / (1 + g.wobble * np.cos(3 * phi + g.wobble_phase))
        inner = 1.0 - g.thickness / (g.r_out * g.aspect)
        box = out[y0:y1, x0:x1]
        box[(r < 1.0) & (box == 0)] = 1
        box[r < inner] = 2
    return out


def _ring_nuclei(
    rng: np.random.Generator, rings: list[_Ring], fine_um: float, mpp: float
) -> _Nuclei:
    """Nuclei along each ring: basal, radial, round-oval for glands; flat for vessels."""
    parts = []
    for g in rings:
        inner = 1.0 - g.thickness / (g.r_out * g.aspect)
        depth = 0.75 if not g.vessel else 0.5  # basal half of the epithelium
        radius = inner + (1 - inner) * depth
        perim_um = 2 * np.pi * g.r_out * radius * fine_um * (1 + g.aspect) / 2
        spacing = 11.0 if g.vessel else 7.0
        n = max(int(perim_um / spacing), 3)
        t = (np.arange(n) + rng.uniform(-0.25, 0.25, n)) * 2 * np.pi / n
        u = np.cos(t) * radius
        v = np.sin(t) * radius
        # the ring contour follows the same three-lobed wobble as _render_rings
        phi = np.arctan2(v, u)
        scale = 1 + g.wobble * np.cos(3 * phi + g.wobble_phase)
        u, v = u * scale, v * scale
        c, s = math.cos(g.angle), math.sin(g.angle)
        px = (u * g.r_out) * c - (v * g.r_out * g.aspect) * s + g.cx
        py = (u * g.r_out) * s + (v * g.r_out * g.aspect) * c + g.cy
        normal = np.arctan2(np.sin(t) / g.aspect, np.cos(t)) + g.angle
        keep = rng.random(n) > (0.1 if g.vessel else 0.06)
        xs = (px[keep] + 0.5) * fine_um / mpp
        ys = (py[keep] + 0.5) * fine_um / mpp
        if g.vessel:
            parts.append(
                _make_nuclei(
                    rng,
                    xs,
                    ys,
                    NucleusKind.ENDOTHELIAL,
                    diameter_um=(5.0, 0.6),
                    aspect=(3.5, 0.6),
                    angle=normal[keep] + np.pi / 2,
                    angle_jitter=0.15,
                    wobble=0.05,
                    peak=(0.95, 0.1),
                    vesicular=0.0,
                    mpp=mpp,
                )
            )
        else:
            parts.append(
                _make_nuclei(
                    rng,
                    xs,
                    ys,
                    NucleusKind.EPITHELIAL,
                    diameter_um=(6.3, 0.6),
                    aspect=(1.7, 0.25),
                    angle=normal[keep],
                    angle_jitter=0.2,
                    wobble=0.06,
                    peak=(0.7, 0.1),
                    vesicular=0.15,
                    mpp=mpp,
                )
            )
    return _Nuclei.concat(parts)


def synthetic_slide(
    shape_hw: Sequence[int] | None = None,
    *,
    size_um: float | Sequence[float] | None = None,
    mpp: float = 0.5,
    seed: int = 0,
    activity: float | Sequence[float] = 0.5,
    tumour_fraction: float | None = None,
    tissue_fraction: float = 0.5,
    background_rgb: Sequence[int] = BACKGROUND_RGB,
    workers: int | None = None,
) -> SyntheticSlide:
    """Render a synthetic H&E-like slide with its ground truth.

    Parameters
    ----------
    shape_hw : (int, int), optional
        Level-0 size in pixels (height, width). Give this or ``size_um``.
    size_um : float or (float, float), optional
        Physical size (height, width) in um; the pixel size is ``size_um / mpp``.
    mpp : float
        Microns per pixel at level 0 (0.5 is 20x). Every structure is sized in um.
    seed : int
        Seed of every random choice; the same arguments give the same slide.
    activity : float or sequence of 6 floats in [0, 1]
        Pathway activity of the patient; one value per :data:`ACTIVITY_TRAITS` entry,
        or a single value for all. Higher is more tumour and more atypia.
    tumour_fraction : float, optional
        Tumour area as a fraction of the tissue area, overriding the
        ``tumour_extent`` trait (``0.05 + 0.6 * tumour_extent``). For one seed the
        tumour masks of increasing fractions are nested.
    tissue_fraction : float
        Approximate fraction of the slide area covered by tissue.
    background_rgb : (int, int, int)
        Colour of bare glass.
    workers : int, optional
        Threads rendering bands of rows (default: up to 4 CPUs). The result does not
        depend on it.

    Returns
    -------
    SyntheticSlide
        ``rgb`` (H, W, 3) uint8, ``regions`` (H, W) uint8, nuclei centres, kinds and
        sizes, and :meth:`SyntheticSlide.truth`.
    """
    shape = _resolve_shape(shape_hw, size_um, mpp)
    mpp = float(mpp)
    act = _activity_vector(activity)
    if tumour_fraction is None:
        tumour_fraction = 0.05 + 0.6 * act[0]
    if not 0.0 <= tumour_fraction <= 0.95:
        raise ValueError(f"tumour_fraction must lie in [0, 0.95], got {tumour_fraction}")
    if not 0.05 <= tissue_fraction <= 0.95:
        raise ValueError(f"tissue_fraction must lie in [0.05, 0.95], got {tissue_fraction}")
    bg = tuple(int(c) for c in background_rgb)
    if len(bg) != 3 or min(bg) < 1 or max(bg) > 255:
        raise ValueError(f"background_rgb must be three values in 1..255, got {background_rgb!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

    streams = np.random.SeedSequence(int(seed)).spawn(8)
    rng_tissue, rng_tumour, rng_stroma, rng_rings, rng_nuclei = (
        np.random.default_rng(s) for s in streams[:5]
    )
    stamp_ss, noise_ss = streams[5], streams[6]  # one child stream per band of rows
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    _, size_t, prolif, dediff, hyper, inflam = (float(v) for v in act)  # extent: above

    h, w = shape
    h_um, w_um = h * mpp, w * mpp
    # fine grid: ~1 um cells, an integer number of level-0 pixels
    fine_px = max(1, int(round(_FINE_UM / mpp)))
    fine_um = fine_px * mpp
    hf, wf = math.ceil(h / fine_px), math.ceil(w / fine_px)
    coarse_shape = (math.ceil(h_um / _COARSE_UM) + 1, math.ceil(w_um / _COARSE_UM) + 1)

    def sig(um: float) -> float:
        return um / _COARSE_UM

    # ---- coarse random fields (cells of 8 um)
    cy_, cx_ = np.meshgrid(
        (np.arange(coarse_shape[0]) + 0.5) * _COARSE_UM / h_um - 0.5,
        (np.arange(coarse_shape[1]) + 0.5) * _COARSE_UM / w_um - 0.5,
        indexing="ij",
    )
    rot = rng_tissue.uniform(0, np.pi)
    ex, ey = cx_ * math.cos(rot) + cy_ * math.sin(rot), cy_ * math.cos(rot) - cx_ * math.sin(rot)
    elong = rng_tissue.uniform(0.55, 1.0)
    size_um_max = max(h_um, w_um)
    envelope = -(ex**2 + (ey / elong) ** 2) * 6.0
    tissue_f = (
        envelope
        + 0.6 * _smooth_noise(rng_tissue, coarse_shape, sig(0.15 * size_um_max))
        + 0.35 * _smooth_noise(rng_tissue, coarse_shape, sig(60.0))
        + 0.08 * _smooth_noise(rng_tissue, coarse_shape, sig(16.0))
    ).astype(np.float32)
    tissue_f -= np.quantile(tissue_f, 1.0 - tissue_fraction)
    tissue_f /= max(float(np.abs(tissue_f).std()), 1e-6)

    tumour_f = (
        0.85 * _smooth_noise(rng_tumour, coarse_shape, sig(160.0))
        + 0.4 * _smooth_noise(rng_tumour, coarse_shape, sig(45.0))
    ).astype(np.float32)
    inside = tissue_f > 0
    if tumour_fraction <= 0 or not inside.any():
        tumour_thr = np.inf
    else:
        tumour_thr = float(np.quantile(tumour_f[inside], 1.0 - tumour_fraction))
    tumour_f -= np.float32(tumour_thr if np.isfinite(tumour_thr) else 1e9)
    nest_f = _smooth_noise(rng_tumour, coarse_shape, sig(18.0))
    lumen_f = _smooth_noise(rng_tumour, coarse_shape, sig(9.0))
    septa_thr = float(ndtri(0.28 - 0.16 * dediff))
    lumen_thr = float(ndtri(1.0 - (0.02 + 0.16 * (1.0 - dediff))))

    theta_f = rng_stroma.uniform(0, np.pi) + 1.3 * _smooth_noise(
        rng_stroma, coarse_shape, sig(110.0)
    )
    warp_f = (
        1.2 * _smooth_noise(rng_stroma, coarse_shape, sig(10.0))
        + 2.2 * _smooth_noise(rng_stroma, coarse_shape, sig(20.0))
        + 6.0 * _smooth_noise(rng_stroma, coarse_shape, sig(70.0))
    )
    bundle_f = _smooth_noise(rng_stroma, coarse_shape, sig(14.0))
    loose_f = _smooth_noise(rng_stroma, coarse_shape, sig(90.0))
    stain_f = _smooth_noise(rng_stroma, coarse_shape, sig(250.0))
    fields = np.stack(
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

    # ---- glands and vessels in the non-tumour tissue (on the fine grid)
    rings: list[_Ring] = []
    margin = 0.25
    for vessel, spacing in ((False, 230.0), (True, 170.0)):
        gx, gy = _jittered_points(rng_rings, (h_um, w_um), spacing, 0.45)
        ci = np.clip((gy / _COARSE_UM).astype(int), 0, coarse_shape[0] - 1)
        cj = np.clip((gx / _COARSE_UM).astype(int), 0, coarse_shape[1] - 1)
        ok = (tissue_f[ci, cj] > margin) & (tumour_f[ci, cj] < -0.2)
        ok &= rng_rings.random(len(gx)) < (0.55 if not vessel else 0.4)
        for x_um, y_um in zip(gx[ok], gy[ok]):
            if vessel:
                r_out = rng_rings.uniform(7.0, 16.0)
                thick = rng_rings.uniform(2.5, 3.5)
                aspect, wob = rng_rings.uniform(0.55, 0.95), rng_rings.uniform(0.0, 0.08)
            else:
                r_out = rng_rings.uniform(32.0, 65.0)
                thick = rng_rings.uniform(14.0, 19.0)
                aspect, wob = rng_rings.uniform(0.55, 0.95), rng_rings.uniform(0.02, 0.12)
            rings.append(
                _Ring(
                    cy=y_um / fine_um - 0.5,
                    cx=x_um / fine_um - 0.5,
                    r_out=r_out / fine_um,
                    aspect=aspect,
                    angle=rng_rings.uniform(0, np.pi),
                    thickness=thick / fine_um,
                    wobble=wob,
                    wobble_phase=rng_rings.uniform(0, 2 * np.pi),
                    vessel=vessel,
                )
            )
    ring_f = _render_rings([g for g in rings if not g.vessel], (hf, wf))
    vessel_f = _render_rings([g for g in rings if g.vessel], (hf, wf))
    ring_is_vessel = vessel_f > 0
    ring_f = np.where(ring_is_vessel, vessel_f, ring_f)

    # ---- fine pass: region labels and the stain background (cytoplasm, fibres, lumens)
    ly = _Linear1D(coarse_shape[0], hf, _COARSE_UM / fine_um)
    lx = _Linear1D(coarse_shape[1], wf, _COARSE_UM / fine_um)
    fields_x = lx.cols(fields)  # (F, coarse_h, wf)
    # 2 um detail noise: frays fibre bundles and the tissue edge
    detail_shape = (math.ceil(h_um / _DETAIL_UM) + 1, math.ceil(w_um / _DETAIL_UM) + 1)
    detail = _smooth_noise(rng_stroma, detail_shape, 2.0)
    dy = _Linear1D(detail_shape[0], hf, _DETAIL_UM / fine_um)
    detail_x = _Linear1D(detail_shape[1], wf, _DETAIL_UM / fine_um).cols(detail)
    regions_f = np.empty((hf, wf), np.uint8)
    conc_h_f = np.empty((hf, wf), np.float32)
    conc_e_f = np.empty((hf, wf), np.float32)
    # collagen: a ~9 um fibre period beaten with a ~21 um one gives bundles of varied width
    k_fine = np.float32(2 * np.pi * fine_um / 9.0)
    k_wide = np.float32(2 * np.pi * fine_um / 21.0)
    xs_f = np.arange(wf, dtype=np.float32)[None, :]
    diag = np.float32(1 / math.sqrt(2))
    band_f = max(1, _BAND_ROWS // fine_px)

    def fine_band(r0: int) -> None:
        r1 = min(r0 + band_f, hf)
        (tv, tu, ne, lu, c2, s2, wa, bu, lo, st) = ly.rows(fields_x, r0, r1)
        de = dy.rows(detail_x, r0, r1)
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        # gratings at 0/90 and 45/135 degrees, weighted by the local fibre orientation
        # (weights cos^2 + sin^2 of twice the angle sum to one, so the blend is seamless)
        proj_a = np.where(c2 > 0, xs_f, ys)
        proj_b = np.where(s2 > 0, (xs_f + ys) * diag, (ys - xs_f) * diag)
        fibre = c2 * c2 * (np.sin(proj_a * k_fine + wa) + 0.8 * np.sin(proj_a * k_wide + 1.7 * bu))
        fibre += s2 * s2 * (np.sin(proj_b * k_fine + wa) + 0.8 * np.sin(proj_b * k_wide + 1.7 * bu))
        # bright bundles and white clefts whose width follows the looseness field
        gap = 0.25 * lo - 0.25 * bu + 0.3 * de
        coll = np.clip((fibre - gap) * 0.9, 0.0, 1.0)
        coll = np.sqrt(coll) * (0.8 + 0.2 * bu + 0.1 * de)
        stain = 1.0 + 0.07 * st
        e_bg = (0.045 + 0.68 * coll) * stain
        h_bg = (0.02 + 0.05 * coll) * stain

        alpha = np.clip((tv + 0.05 * (fibre + 0.5) + 0.04 * de) / 0.06 + 0.5, 0.0, 1.0)
        tissue = alpha >= 0.5
        # detail noise roughens the otherwise smooth (piecewise-linear) region borders
        tumour = tissue & (tu + 0.06 * de > 0)
        septa = tumour & (ne + 0.2 * de < septa_thr)
        t_lumen = tumour & ~septa & (lu + 0.2 * de > lumen_thr)
        nest = tumour & ~septa & ~t_lumen
        rf = ring_f[r0:r1]
        epi = tissue & ~tumour & (rf == 1)
        lum = tissue & ~tumour & (rf == 2)
        vessel = ring_is_vessel[r0:r1]

        reg = np.where(tissue, np.uint8(Region.STROMA), np.uint8(Region.BACKGROUND))
        reg[epi] = Region.EPITHELIUM
        reg[lum] = Region.LUMEN
        reg[nest] = Region.TUMOUR
        reg[septa] = Region.TUMOUR_STROMA
        reg[t_lumen] = Region.TUMOUR_LUMEN
        regions_f[r0:r1] = reg

        # desmoplastic septa: denser, bluer fibres
        e_bg = np.where(septa, e_bg * 0.9 + 0.05, e_bg)
        h_bg = np.where(septa, h_bg + 0.04, h_bg)
        # cytoplasm of gland epithelium and vessel walls
        e_bg = np.where(epi, np.where(vessel, 0.55, 0.42 + 0.04 * bu + 0.03 * de) * stain, e_bg)
        h_bg = np.where(epi, np.where(vessel, 0.06, 0.18 + 0.02 * de) * stain, h_bg)
        # lumens: faint secretion in glands, packed red cells in vessels
        e_bg = np.where(lum, np.where(vessel, 0.95 + 0.1 * bu, 0.03 + 0.02 * bu), e_bg)
        h_bg = np.where(lum, np.where(vessel, 0.04, 0.01), h_bg)
        # tumour cytoplasm: amphophilic, more basophilic with hyperchromasia
        e_bg = np.where(nest, (0.44 + 0.05 * bu + 0.04 * de) * stain, e_bg)
        h_bg = np.where(nest, (0.20 + 0.10 * hyper + 0.02 * bu + 0.02 * de) * stain, h_bg)
        e_bg = np.where(t_lumen, 0.05 + 0.03 * bu, e_bg)
        h_bg = np.where(t_lumen, 0.02, h_bg)
        conc_e_f[r0:r1] = e_bg * alpha
        conc_h_f[r0:r1] = h_bg * alpha

    _run_bands(fine_band, range(0, hf, band_f), workers)

    # ---- nuclei
    def region_at(x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        i = np.clip((y_um / fine_um).astype(np.intp), 0, hf - 1)
        j = np.clip((x_um / fine_um).astype(np.intp), 0, wf - 1)
        return regions_f[i, j]

    def coarse_at(f: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        coords = np.stack([y_um / _COARSE_UM - 0.5, x_um / _COARSE_UM - 0.5])
        return ndi.map_coordinates(f, coords, order=1, mode="nearest")

    rng = rng_nuclei
    parts: list[_Nuclei] = []
    shape_um = (h_um, w_um)

    # fibroblasts: sparse, elongated, along the local fibre direction
    x, y = _jittered_points(rng, shape_um, 1e3 / math.sqrt(1800.0), 0.5)
    reg = region_at(x, y)
    keep = ((reg == Region.STROMA) & (rng.random(len(x)) < 0.8)) | (reg == Region.TUMOUR_STROMA)
    x, y = x[keep], y[keep]
    theta = 0.5 * np.arctan2(
        coarse_at(np.sin(2 * theta_f), x, y), coarse_at(np.cos(2 * theta_f), x, y)
    )
    parts.append(
        _make_nuclei(
            rng,
            x / mpp,
            y / mpp,
            NucleusKind.FIBROBLAST,
            diameter_um=(5.2, 0.8),
            aspect=(3.4, 0.8),
            angle=theta,
            angle_jitter=0.2,
            wobble=0.08,
            peak=(0.78, 0.12),
            vesicular=0.0,
            mpp=mpp,
        )
    )

    # lymphocytes: clustered in the stroma, fewer inside tumour nests
    lymph_density = 200.0 + 1100.0 * inflam
    cluster = np.exp(1.1 * _smooth_noise(rng, coarse_shape, sig(70.0)) - 0.6)
    x, y = _poisson_points(rng, shape_um, lymph_density * float(cluster.max()))
    reg = region_at(x, y)
    weight = coarse_at(cluster, x, y) / float(cluster.max())
    weight *= np.select(
        [reg == Region.STROMA, reg == Region.TUMOUR_STROMA, reg == Region.TUMOUR],
        [1.0, 1.5, 0.25],
        0.0,
    )
    keep = rng.random(len(x)) < weight
    parts.append(
        _make_nuclei(
            rng,
            x[keep] / mpp,
            y[keep] / mpp,
            NucleusKind.LYMPHOCYTE,
            diameter_um=(5.6, 0.4),
            aspect=(1.1, 0.08),
            angle=None,
            angle_jitter=0.0,
            wobble=0.05,
            peak=(0.98, 0.1),
            vesicular=0.0,
            mpp=mpp,
        )
    )

    # gland and vessel linings
    ring_nuc = _ring_nuclei(rng, rings, fine_um, mpp)
    if len(ring_nuc):
        reg = region_at(ring_nuc.x * mpp, ring_nuc.y * mpp)
        parts.append(ring_nuc.take(np.flatnonzero(reg == Region.EPITHELIUM)))

    # tumour: dense, large, pleomorphic, hyperchromatic, vesicular nuclei
    tumour_density = 4000.0 + 4000.0 * prolif
    x, y = _jittered_points(rng, shape_um, 1e3 / math.sqrt(tumour_density), 0.42)
    keep = region_at(x, y) == Region.TUMOUR
    d_mean = 7.0 + 3.5 * size_t
    parts.append(
        _make_nuclei(
            rng,
            x[keep] / mpp,
            y[keep] / mpp,
            NucleusKind.TUMOUR,
            diameter_um=(d_mean, d_mean * (0.08 + 0.14 * size_t)),
            aspect=(1.3, 0.2),
            angle=None,
            angle_jitter=0.0,
            wobble=0.05 + 0.15 * size_t,
            peak=(0.66 + 0.4 * hyper, 0.1),
            vesicular=0.5 * (1.0 - 0.6 * hyper),
            mpp=mpp,
            chromatin=0.3,
            nucleolus=0.5 + 0.4 * size_t,
        )
    )
    nuclei = _Nuclei.concat(parts)

    # ---- level-0 pass: upsample the stain background, stamp nuclei, Beer-Lambert via a LUT
    rgb = np.empty((h, w, 3), np.uint8)
    regions = np.empty((h, w), np.uint8)
    lut = _stain_lut(bg)
    fy = _Linear1D(hf, h, fine_px)
    fx = _Linear1D(wf, w, fine_px)
    order = np.argsort(nuclei.y, kind="stable")
    nuclei_sorted = nuclei.take(order)
    reach = float(nuclei_sorted.a.max() * 1.3 + 3) if len(nuclei_sorted) else 0.0
    inv_step = np.float32(1.0 / _OD_STEP)
    col_index = np.arange(w) // fine_px
    n_bands = math.ceil(h / _BAND_ROWS)
    band_streams = list(zip(stamp_ss.spawn(n_bands), noise_ss.spawn(n_bands)))

    def level0_band(k: int) -> None:
        y0 = k * _BAND_ROWS
        y1 = min(y0 + _BAND_ROWS, h)
        rng_stamp = np.random.default_rng(band_streams[k][0])
        rng_noise = np.random.default_rng(band_streams[k][1])
        f0, f1 = int(fy.i0[y0]), int(fy.i1[y1 - 1]) + 1
        stack = np.stack([conc_h_f[f0:f1], conc_e_f[f0:f1]])
        c_h, c_e = fy.rows(fx.cols(stack), y0, y1, src_offset=f0)
        # one halo row each side so the optical blur is seamless across bands
        nuc_h = np.zeros((y1 - y0 + 2, w), np.float32)
        lo_i, hi_i = np.searchsorted(nuclei_sorted.y, [y0 - reach, y1 + reach])
        _stamp_nuclei(nuc_h, y0 - 1, nuclei_sorted.take(np.arange(lo_i, hi_i)), rng_stamp)
        nuc_h = _blur121(nuc_h)[1:-1]
        # nuclei displace cytoplasm and fibres, and carry some eosin themselves
        displaced = 1.0 - 0.5 * np.minimum(nuc_h, 1.0)
        c_e *= displaced
        c_e += 0.85 * nuc_h
        c_h *= displaced
        c_h += nuc_h
        # stain/sensor noise and dithering of the quantised concentrations
        q_h = c_h * inv_step + 2.0 * rng_noise.random(c_h.shape, dtype=np.float32) - 0.5
        q_e = c_e * inv_step + 2.0 * rng_noise.random(c_e.shape, dtype=np.float32) - 0.5
        idx = np.clip(q_h, 0, _OD_LEVELS - 1).astype(np.int32) * _OD_LEVELS
        idx += np.clip(q_e, 0, _OD_LEVELS - 1).astype(np.int32)
        rgb[y0:y1] = lut[idx]
        regions[y0:y1] = regions_f[np.arange(y0, y1) // fine_px][:, col_index]

    _run_bands(level0_band, range(n_bands), workers)

    diameter = 2.0 * np.sqrt(nuclei.a * nuclei.b) * mpp
    return SyntheticSlide(
        rgb=rgb,
        regions=regions,
        nuclei_xy=np.stack([nuclei.x, nuclei.y], axis=1).astype(np.float32),
        nuclei_kind=nuclei.kind.astype(np.uint8),
        nuclei_diameter_um=diameter.astype(np.float32),
        mpp=mpp,
        seed=int(seed),
        activity=dict(zip(ACTIVITY_TRAITS, (float(v) for v in act))),
        target_tumour_fraction=float(tumour_fraction),
    )


# --------------------------------------------------------------------------- measuring


def measure_he_statistics(
    rgb: np.ndarray,
    mpp: float,
    *,
    mask: np.ndarray | None = None,
    tissue_od: float = 0.25,
    nuclear_h_od: float = 0.5,
) -> dict[str, float]:
    """Simple H&E statistics of an RGB image, for checking synthetic against real slides.

    Colour deconvolution with :data:`STAIN_VECTORS` (optical density against white,
    255). Tissue is where the summed RGB optical density exceeds ``tissue_od``.
    Nuclear pixels are where the haematoxylin concentration, smoothed over ~0.5 um,
    exceeds ``nuclear_h_od``. Nuclei are counted as maxima of the haematoxylin
    concentration smoothed over ~1.5 um, at least 4 um apart and above
    ``nuclear_h_od``, so touching nuclei still count one by one; blob sizes are the
    equivalent diameters of the connected nuclear-pixel blobs of 2-150 um^2 (larger
    ones are clusters of touching nuclei).

    Parameters
    ----------
    rgb : (H, W, 3) uint8
    mpp : float
        Microns per pixel.
    mask : (H, W) bool, optional
        Restrict the measurement to these pixels.

    Returns
    -------
    dict
        ``tissue_fraction`` (of the image or mask), ``median_h_od`` and ``median_e_od``
        (stain concentrations in tissue), ``nuclear_density_per_mm2`` (nuclei per mm^2
        of tissue), ``median_nuclear_diameter_um`` (blobs), ``nuclear_area_fraction``
        (of tissue) and ``median_nuclear_h_od`` (in nuclear pixels).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if not (isinstance(mpp, int | float) and mpp > 0):
        raise ValueError(f"mpp must be a positive number, got {mpp!r}")
    if mask is not None and np.shape(mask) != rgb.shape[:2]:
        raise ValueError(f"mask shape {np.shape(mask)} does not match the image {rgb.shape[:2]}")
    od = -np.log10(np.maximum(rgb, 1).astype(np.float32) / np.float32(255.0))
    h_vec = np.asarray(STAIN_VECTORS["hematoxylin"])
    e_vec = np.asarray(STAIN_VECTORS["eosin"])
    residual = np.cross(h_vec, e_vec)
    unmix = np.linalg.pinv(np.stack([h_vec, e_vec, residual / np.linalg.norm(residual)]))
    conc = od.reshape(-1, 3) @ unmix.astype(np.float32)[:, :2]
    c_h = conc[:, 0].reshape(rgb.shape[:2])
    c_e = conc[:, 1].reshape(rgb.shape[:2])
    region = np.ones(rgb.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    tissue = (od.sum(axis=2) > tissue_od) & region
    n_tissue = int(tissue.sum())
    if n_tissue == 0:
        return {
            "tissue_fraction": 0.0,
            "median_h_od": 0.0,
            "median_e_od": 0.0,
            "nuclear_density_per_mm2": 0.0,
            "median_nuclear_diameter_um": 0.0,
            "nuclear_area_fraction": 0.0,
            "median_nuclear_h_od": 0.0,
        }
    nuclei = (ndi.gaussian_filter(c_h, max(0.5 / mpp, 0.5)) > nuclear_h_od) & tissue
    # nuclei counted as separated maxima of the smoothed haematoxylin
    smooth = ndi.gaussian_filter(c_h, 1.5 / mpp)
    size = max(3, int(round(4.0 / mpp)) | 1)
    peaks = (smooth == ndi.maximum_filter(smooth, size=size)) & (smooth > nuclear_h_od) & tissue
    labels, n = ndi.label(nuclei)
    area_um2 = np.bincount(labels.ravel(), minlength=n + 1)[1:] * (mpp * mpp)
    single = area_um2[(area_um2 >= 2.0) & (area_um2 <= 150.0)]
    tissue_mm2 = n_tissue * (mpp * 1e-3) ** 2
    return {
        "tissue_fraction": float(n_tissue / max(int(region.sum()), 1)),
        "median_h_od": float(np.median(c_h[tissue])),
        "median_e_od": float(np.median(c_e[tissue])),
        "nuclear_density_per_mm2": float(peaks.sum() / tissue_mm2),
        "median_nuclear_diameter_um": float(np.median(2.0 * np.sqrt(single / np.pi)))
        if len(single)
        else 0.0,
        "nuclear_area_fraction": float(nuclei.sum() / n_tissue),
        "median_nuclear_h_od": float(np.median(c_h[nuclei])) if nuclei.any() else 0.0,
    }


# --------------------------------------------------------------------------- writing


_COMPRESSIONS = {"jpeg": "jpeg", "deflate": "adobe_deflate", "lzw": "lzw", "none": None}


def _downsample_area(img: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an (H, W, C) uint8 image by an integer factor (edges padded by replication)."""
    h, w = img.shape[:2]
    hh, ww = math.ceil(h / factor), math.ceil(w / factor)
    pad = ((0, hh * factor - h), (0, ww * factor - w), (0, 0))
    if any(p[1] for p in pad):
        img = np.pad(img, pad, mode="edge")
    out = np.empty((hh, ww, img.shape[2]), np.uint8)
    band = max(1, 1024 // factor)
    for r0 in range(0, hh, band):
        r1 = min(r0 + band, hh)
        block = img[r0 * factor : r1 * factor].reshape(r1 - r0, factor, ww, factor, -1)
        out[r0:r1] = np.rint(block.mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)
    return out


def _auto_levels(shape_hw: tuple[int, int], tile: int, downsample: int) -> int:
    levels, h, w = 1, *shape_hw
    while min(math.ceil(h / downsample), math.ceil(w / downsample)) >= tile // 2:
        h, w = math.ceil(h / downsample), math.ceil(w / downsample)
        levels += 1
    return levels


def _atomic_target(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file path")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist; create it first")
    return path


def write_pyramidal_tiff(
    path: str | os.PathLike,
    rgb: np.ndarray,
    *,
    mpp: float,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    levels: int | None = None,
    downsample: int = 4,
    objective_power: float | None = None,
    title: str = "napari-ghanet pyramidal TIFF",
    overwrite: bool = True,
) -> Path:
    """Write an RGB image as a tiled, pyramidal TIFF that OpenSlide and tifffile read.

    The layout is Aperio-compatible: page 0 the full-resolution tiled image, page 1 a
    stripped thumbnail, then the tiled reduced levels. The ImageDescription starts
    ``Aperio Image Library`` and carries ``|MPP = ...|AppMag = ...`` so OpenSlide
    reports ``openslide.mpp-x`` and ``openslide.objective-power``; every tiled page
    also has X/YResolution in pixels per centimetre. The file is written to a
    temporary name in the same folder and moved into place, so a failed write leaves
    nothing behind.

    Parameters
    ----------
    path : path-like
        Output file (``.tif``, ``.tiff`` or ``.svs``).
    rgb : (H, W, 3) uint8
        Level-0 image.
    mpp : float
        Microns per pixel at level 0.
    tile : int
        Tile edge in pixels, a multiple of 16.
    compression : {"jpeg", "deflate", "lzw", "none"}
    quality : int
        JPEG quality (1-100).
    levels : int, optional
        Number of pyramid levels, level 0 included. By default levels are added while
        the next one's shorter side is at least ``tile // 2``.
    downsample : {2, 4}
        Size ratio between successive levels; each level is an area average of the
        one above.
    objective_power : float, optional
        Written as ``AppMag``; by default ``10 / mpp`` (20 at 0.5 um/px).

    Returns
    -------
    Path
        The written file.
    """
    import tifffile

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if not (isinstance(mpp, int | float) and 0 < mpp <= 20):
        raise ValueError(f"mpp must be a positive number of microns per pixel (<= 20), got {mpp!r}")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(_COMPRESSIONS)}, got {compression!r}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if downsample not in (2, 4):
        raise ValueError(f"downsample must be 2 or 4, got {downsample}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    n_levels = _auto_levels(rgb.shape[:2], tile, downsample) if levels is None else int(levels)
    if n_levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    path = _atomic_target(path, overwrite)
    mag = float(objective_power) if objective_power is not None else 10.0 / float(mpp)

    pyramid = [rgb]
    for _ in range(1, n_levels):
        pyramid.append(_downsample_area(pyramid[-1], downsample))
    thumb = pyramid[-1]
    while max(thumb.shape[:2]) > 1024:
        thumb = _downsample_area(thumb, 2)

    h, w = rgb.shape[:2]
    description = (
        "Aperio Image Library compatible\r\n"
        f"{w}x{h} ({tile}x{tile}) {compression.upper()}/RGB Q={int(quality)}"
        f"|AppMag = {mag:g}|MPP = {float(mpp):.6g}|Title = {title}"
    )
    codec = _COMPRESSIONS[compression]
    kwargs: dict = {"photometric": "rgb", "metadata": None, "compression": codec}
    if codec == "jpeg":
        kwargs["compressionargs"] = {"level": int(quality)}
    px_per_cm = 1e4 / float(mpp)

    # The temporary name ends in .partial, so a glob for *.tif never sees a half-written slide.
    with atomic_path(path, suffix=".partial") as tmp_name:
        with tifffile.TiffWriter(tmp_name, bigtiff=rgb.nbytes > 2**31) as tif:
            for i, level in enumerate(pyramid):
                scale = float(downsample**i)
                tif.write(
                    level,
                    tile=(tile, tile),
                    resolution=(px_per_cm / scale, px_per_cm / scale),
                    resolutionunit="CENTIMETER",
                    description=description if i == 0 else None,
                    subfiletype=0,
                    maxworkers=2,
                    **kwargs,
                )
                if i == 0:
                    scale_t = w / thumb.shape[1]
                    tif.write(
                        thumb,
                        rowsperstrip=16,
                        resolution=(px_per_cm / scale_t, px_per_cm / scale_t),
                        resolutionunit="CENTIMETER",
                        description=f"{description}\r\n-> {thumb.shape[1]}x{thumb.shape[0]}",
                        subfiletype=0,
                        **kwargs,
                    )
    return path


def write_synthetic_slide(
    path: str | os.PathLike,
    shape_hw: Sequence[int] | None = None,
    *,
    size_um: float | Sequence[float] | None = None,
    mpp: float = 0.5,
    seed: int = 0,
    activity: float | Sequence[float] = 0.5,
    tumour_fraction: float | None = None,
    tissue_fraction: float = 0.5,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    levels: int | None = None,
    downsample: int = 4,
    overwrite: bool = True,
) -> tuple[Path, dict]:
    """Render a synthetic slide (:func:`synthetic_slide`) and write it as a pyramidal TIFF.

    See :func:`synthetic_slide` for the tissue arguments and :func:`write_pyramidal_tiff`
    for the file layout. Returns the path and :meth:`SyntheticSlide.truth` (with the
    path and the level count added).
    """
    slide = synthetic_slide(
        shape_hw,
        size_um=size_um,
        mpp=mpp,
        seed=seed,
        activity=activity,
        tumour_fraction=tumour_fraction,
        tissue_fraction=tissue_fraction,
    )
    n_levels = _auto_levels(slide.shape_hw, tile, downsample) if levels is None else int(levels)
    act = ", ".join(f"{k}={v:.3f}" for k, v in slide.activity.items())
    out = write_pyramidal_tiff(
        path,
        slide.rgb,
        mpp=mpp,
        tile=tile,
        compression=compression,
        quality=quality,
        levels=n_levels,
        downsample=downsample,
        title=f"synthetic H&E-like slide, seed={seed}, {act} (test/demo data)",
        overwrite=overwrite,
    )
    truth = slide.truth()
    truth["path"] = str(out)
    truth["levels"] = n_levels
    return out, truth


_SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _slide_seed(seed: int, slide_id: str) -> int:
    ss = np.random.SeedSequence([int(seed), zlib.crc32(slide_id.encode("utf-8"))])
    return int(ss.generate_state(1, np.uint32)[0])


def write_synthetic_cohort_slides(
    out_dir: str | os.PathLike,
    activities: Mapping[str, float | Sequence[float]],
    *,
    shape_hw: Sequence[int] = (2048, 2048),
    mpp: float = 0.5,
    seed: int = 0,
    suffix: str = ".tiff",
    tissue_fraction: float = 0.55,
    compression: str = "jpeg",
    quality: int = 90,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, dict]:
    """Write one synthetic slide per patient, each shaped by that patient's activity.

    Every slide gets its own seed derived from ``seed`` and its id, so adding or
    removing a patient changes no other slide. A ``synthetic_truth.csv`` with one row
    per slide (id, file, seed, activity traits, tumour fraction, nuclear densities)
    and a ``synthetic_truth.json`` with every slide's full truth (see
    :meth:`SyntheticSlide.truth`) and settings are written next to the slides.

    Parameters
    ----------
    out_dir : path-like
        Folder for the slides (created if missing).
    activities : mapping of slide id to activity
        Activity per slide (see :func:`synthetic_slide`); ids become file names, so
        they may hold letters, digits, ``.``, ``_`` and ``-`` only.
    shape_hw : (int, int)
        Level-0 size of every slide; the default 2048 x 2048 px at 0.5 um/px gives
        ~35 tissue patches of 256 px and takes about half a second.
    overwrite : bool
        Render every slide again. By default a slide whose file exists and whose
        record in ``synthetic_truth.json`` matches (seed, activity, settings) is kept.
    progress : callable(done, total, slide_id), optional
    cancel : callable() -> bool, optional
        Polled before each slide; when it returns True the function stops and
        raises ``InterruptedError`` (slides already written stay, each complete).

    Returns
    -------
    dict
        Slide id -> truth dict (see :meth:`SyntheticSlide.truth`) with ``path``.
    """
    if not activities:
        raise ValueError("activities is empty: give at least one slide id and its activity")
    bad = [k for k in activities if not isinstance(k, str) or not _SLIDE_ID.match(k)]
    if bad:
        raise ValueError(
            f"slide ids must be file-name safe (letters, digits, '.', '_', '-'): {bad[:5]}"
        )
    if suffix not in (".tif", ".tiff", ".svs"):
        raise ValueError(f"suffix must be .tif, .tiff or .svs, got {suffix!r}")
    shape = _resolve_shape(shape_hw, None, mpp)
    for slide_id, act in activities.items():
        try:
            _activity_vector(act)
        except ValueError as exc:
            raise ValueError(f"slide {slide_id!r}: {exc}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_json = out_dir / "synthetic_truth.json"
    previous: dict = {}
    if truth_json.is_file() and not overwrite:
        try:
            previous = json.loads(truth_json.read_text(encoding="utf-8")).get("slides", {})
        except (OSError, ValueError, AttributeError):
            previous = {}  # unreadable: every slide is rendered again
    settings = {
        "shape_hw": list(shape),
        "mpp": float(mpp),
        "tissue_fraction": float(tissue_fraction),
        "compression": compression,
        "quality": int(quality),
    }
    results: dict[str, dict] = {}
    total = len(activities)
    try:
        for done, (slide_id, act) in enumerate(activities.items()):
            if cancel is not None and cancel():
                raise InterruptedError(f"cancelled after {done} of {total} slides")
            slide_seed = _slide_seed(seed, slide_id)
            path = out_dir / f"{slide_id}{suffix}"
            activity = dict(zip(ACTIVITY_TRAITS, _activity_vector(act).tolist()))
            old = previous.get(slide_id)
            if (
                path.is_file()
                and isinstance(old, dict)
                and old.get("seed") == slide_seed
                and old.get("activity") == activity
                and old.get("settings") == settings
            ):
                truth = dict(old)
                truth["path"] = str(path)
            else:
                _, truth = write_synthetic_slide(
                    path,
                    shape,
                    mpp=mpp,
                    seed=slide_seed,
                    activity=act,
                    tissue_fraction=tissue_fraction,
                    compression=compression,
                    quality=quality,
                )
                truth["settings"] = settings
            results[slide_id] = truth
            if progress is not None:
                progress(done + 1, total, slide_id)
    finally:
        # the records of every complete slide, also when cancelled part way
        if results:
            kept = {k: v for k, v in previous.items() if k not in results}
            record = {"generator": "napari_ghanet.datasets.synthetic", "slides": {**kept, **results}}
            atomic_write(truth_json, json.dumps(record, indent=1, sort_keys=True))
            _write_truth_csv(out_dir / "synthetic_truth.csv", results)
    return results


def _write_truth_csv(path: Path, results: Mapping[str, dict]) -> None:
    header = [
        "slide_id",
        "file",
        "seed",
        *ACTIVITY_TRAITS,
        "tumour_fraction",
        "tissue_fraction",
        "nuclear_density_tumour_per_mm2",
        "nuclear_density_non_tumour_per_mm2",
        "mean_tumour_nuclear_diameter_um",
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for slide_id, t in results.items():
        writer.writerow(
            [
                slide_id,
                Path(t["path"]).name,
                t["seed"],
                *(f"{t['activity'][k]:.6g}" for k in ACTIVITY_TRAITS),
                f"{t['tumour_fraction']:.6g}",
                f"{t['tissue_fraction']:.6g}",
                f"{t['nuclear_density_per_mm2']['tumour']:.6g}",
                f"{t['nuclear_density_per_mm2']['non_tumour']:.6g}",
                f"{t['mean_nuclear_diameter_um']['tumour']:.6g}",
            ]
        )
    atomic_write(path, buf.getvalue())
