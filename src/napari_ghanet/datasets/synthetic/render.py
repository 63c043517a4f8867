"""The two pixel passes: region labels and stain background on the fine grid, then level 0.

Both run in bands of rows (threads; numpy releases the GIL) whose random streams are fixed
per band, so the image does not depend on the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_ghanet.datasets.synthetic.fields import (
    _BAND_ROWS,
    _COARSE_UM,
    _DETAIL_UM,
    _OD_LEVELS,
    _OD_STEP,
    _blur121,
    _CoarseFields,
    _Grid,
    _Linear1D,
    _run_bands,
    _smooth_noise,
    _stain_lut,
)
from napari_ghanet.datasets.synthetic.nuclei import _Nuclei, _stamp_nuclei
from napari_ghanet.datasets.synthetic.result import Region


@dataclass(frozen=True)
class _FinePass:
    """The fine grid (``(hf, wf)``): region codes and the stain background concentrations."""

    regions: np.ndarray  # uint8 Region codes
    conc_h: np.ndarray  # float32 haematoxylin concentration (optical density)
    conc_e: np.ndarray  # float32 eosin concentration (optical density)


def _fine_pass(
    grid: _Grid,
    coarse: _CoarseFields,
    ring_f: np.ndarray,
    ring_is_vessel: np.ndarray,
    rng_stroma: np.random.Generator,
    *,
    hyper: float,
    workers: int,
) -> _FinePass:
    """Region labels and the stain background (cytoplasm, fibres, lumens) on the fine grid."""
    coarse_shape, hf, wf = grid.coarse_shape, grid.hf, grid.wf
    h_um, w_um, fine_px, fine_um = grid.h_um, grid.w_um, grid.fine_px, grid.fine_um
    fields, septa_thr, lumen_thr = coarse.stack, coarse.septa_thr, coarse.lumen_thr
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
    return _FinePass(regions_f, conc_h_f, conc_e_f)


def _level0_pass(
    grid: _Grid,
    fine: _FinePass,
    nuclei: _Nuclei,
    bg: Sequence[int],
    stamp_ss: np.random.SeedSequence,
    noise_ss: np.random.SeedSequence,
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Upsample the stain background, stamp the nuclei, Beer-Lambert via a lookup table.

    Returns the level-0 RGB image (H, W, 3) uint8 and its region codes (H, W) uint8.
    """
    h, w, hf, wf, fine_px = grid.h, grid.w, grid.hf, grid.wf, grid.fine_px
    regions_f, conc_h_f, conc_e_f = fine.regions, fine.conc_h, fine.conc_e
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
    return rgb, regions
