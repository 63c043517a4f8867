"""Nuclei: their parameters, the populations of each kind, and stamping them into pixels.

The populations are drawn in a fixed order from one stream (fibroblasts, lymphocytes,
gland and vessel linings, tumour), so a slide depends only on its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_ghanet.datasets.synthetic.fields import (
    _COARSE_UM,
    _Grid,
    _jittered_points,
    _poisson_points,
    _sig,
    _smooth_noise,
)
from napari_ghanet.datasets.synthetic.glands import _Ring
from napari_ghanet.datasets.synthetic.result import NucleusKind, Region


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


class _Lookup:
    """Values of the fine region map and of coarse fields at points given in um."""

    def __init__(self, regions_f: np.ndarray, fine_um: float):
        self.regions_f = regions_f
        self.fine_um = fine_um
        self.hf, self.wf = regions_f.shape

    def region_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        i = np.clip((y_um / self.fine_um).astype(np.intp), 0, self.hf - 1)
        j = np.clip((x_um / self.fine_um).astype(np.intp), 0, self.wf - 1)
        return self.regions_f[i, j]

    @staticmethod
    def coarse_at(f: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        coords = np.stack([y_um / _COARSE_UM - 0.5, x_um / _COARSE_UM - 0.5])
        return ndi.map_coordinates(f, coords, order=1, mode="nearest")


def _fibroblasts(
    rng: np.random.Generator,
    look: _Lookup,
    shape_um: tuple[float, float],
    theta_f: np.ndarray,
    mpp: float,
) -> _Nuclei:
    """Sparse, elongated nuclei along the local fibre direction, in stroma and septa."""
    x, y = _jittered_points(rng, shape_um, 1e3 / math.sqrt(1800.0), 0.5)
    reg = look.region_at(x, y)
    keep = ((reg == Region.STROMA) & (rng.random(len(x)) < 0.8)) | (reg == Region.TUMOUR_STROMA)
    x, y = x[keep], y[keep]
    theta = 0.5 * np.arctan2(
        look.coarse_at(np.sin(2 * theta_f), x, y), look.coarse_at(np.cos(2 * theta_f), x, y)
    )
    return _make_nuclei(
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


def _lymphocytes(
    rng: np.random.Generator,
    look: _Lookup,
    grid: _Grid,
    inflam: float,
) -> _Nuclei:
    """Small round dark nuclei, clustered in the stroma, fewer inside tumour nests."""
    mpp, shape_um = grid.mpp, (grid.h_um, grid.w_um)
    lymph_density = 200.0 + 1100.0 * inflam
    cluster = np.exp(1.1 * _smooth_noise(rng, grid.coarse_shape, _sig(70.0)) - 0.6)
    x, y = _poisson_points(rng, shape_um, lymph_density * float(cluster.max()))
    reg = look.region_at(x, y)
    weight = look.coarse_at(cluster, x, y) / float(cluster.max())
    weight *= np.select(
        [reg == Region.STROMA, reg == Region.TUMOUR_STROMA, reg == Region.TUMOUR],
        [1.0, 1.5, 0.25],
        0.0,
    )
    keep = rng.random(len(x)) < weight
    return _make_nuclei(
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


def _tumour_nuclei(
    rng: np.random.Generator,
    look: _Lookup,
    shape_um: tuple[float, float],
    mpp: float,
    *,
    size_t: float,
    prolif: float,
    hyper: float,
) -> _Nuclei:
    """Dense, large, pleomorphic, hyperchromatic, vesicular nuclei in the tumour nests."""
    tumour_density = 4000.0 + 4000.0 * prolif
    x, y = _jittered_points(rng, shape_um, 1e3 / math.sqrt(tumour_density), 0.42)
    keep = look.region_at(x, y) == Region.TUMOUR
    d_mean = 7.0 + 3.5 * size_t
    return _make_nuclei(
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


def _populate_nuclei(
    rng: np.random.Generator,
    grid: _Grid,
    regions_f: np.ndarray,
    theta_f: np.ndarray,
    rings: list[_Ring],
    *,
    size_t: float,
    prolif: float,
    hyper: float,
    inflam: float,
) -> _Nuclei:
    """Every nucleus of the slide, placed by the fine region map (level-0 pixels)."""
    mpp, shape_um = grid.mpp, (grid.h_um, grid.w_um)
    look = _Lookup(regions_f, grid.fine_um)
    parts = [
        _fibroblasts(rng, look, shape_um, theta_f, mpp),
        _lymphocytes(rng, look, grid, inflam),
    ]
    # gland and vessel linings
    ring_nuc = _ring_nuclei(rng, rings, grid.fine_um, mpp)
    if len(ring_nuc):
        reg = look.region_at(ring_nuc.x * mpp, ring_nuc.y * mpp)
        parts.append(ring_nuc.take(np.flatnonzero(reg == Region.EPITHELIUM)))
    parts.append(
        _tumour_nuclei(rng, look, shape_um, mpp, size_t=size_t, prolif=prolif, hyper=hyper)
    )
    return _Nuclei.concat(parts)
