"""Glands and vessels: elliptical rings of epithelium around a lumen, on the fine grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_ghanet.datasets.synthetic.fields import _COARSE_UM, _Grid, _jittered_points


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


def _place_rings(
    rng: np.random.Generator, grid: _Grid, tissue_f: np.ndarray, tumour_f: np.ndarray
) -> list[_Ring]:
    """Glands (every ~230 um) and vessels (every ~170 um) in the non-tumour tissue."""
    h_um, w_um, fine_um, coarse_shape = grid.h_um, grid.w_um, grid.fine_um, grid.coarse_shape
    rings: list[_Ring] = []
    margin = 0.25
    for vessel, spacing in ((False, 230.0), (True, 170.0)):
        gx, gy = _jittered_points(rng, (h_um, w_um), spacing, 0.45)
        ci = np.clip((gy / _COARSE_UM).astype(int), 0, coarse_shape[0] - 1)
        cj = np.clip((gx / _COARSE_UM).astype(int), 0, coarse_shape[1] - 1)
        ok = (tissue_f[ci, cj] > margin) & (tumour_f[ci, cj] < -0.2)
        ok &= rng.random(len(gx)) < (0.55 if not vessel else 0.4)
        for x_um, y_um in zip(gx[ok], gy[ok]):
            if vessel:
                r_out = rng.uniform(7.0, 16.0)
                thick = rng.uniform(2.5, 3.5)
                aspect, wob = rng.uniform(0.55, 0.95), rng.uniform(0.0, 0.08)
            else:
                r_out = rng.uniform(32.0, 65.0)
                thick = rng.uniform(14.0, 19.0)
                aspect, wob = rng.uniform(0.55, 0.95), rng.uniform(0.02, 0.12)
            rings.append(
                _Ring(
                    cy=y_um / fine_um - 0.5,
                    cx=x_um / fine_um - 0.5,
                    r_out=r_out / fine_um,
                    aspect=aspect,
                    angle=rng.uniform(0, np.pi),
                    thickness=thick / fine_um,
                    wobble=wob,
                    wobble_phase=rng.uniform(0, 2 * np.pi),
                    vessel=vessel,
                )
            )
    return rings


def _ring_map(rings: list[_Ring], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The rings on the fine grid: (0 none, 1 wall/epithelium, 2 lumen) and "is a vessel"."""
    ring_f = _render_rings([g for g in rings if not g.vessel], shape)
    vessel_f = _render_rings([g for g in rings if g.vessel], shape)
    ring_is_vessel = vessel_f > 0
    ring_f = np.where(ring_is_vessel, vessel_f, ring_f)
    return ring_f, ring_is_vessel
