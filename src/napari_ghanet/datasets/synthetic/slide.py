"""``synthetic_slide``: argument checks, then the rendering phases in their fixed order.

1. coarse random fields (tissue, tumour, stroma: :mod:`.fields`);
2. glands and vessels (:mod:`.glands`);
3. the fine pass: region labels and stain background (:mod:`.render`);
4. the nuclei of every kind (:mod:`.nuclei`);
5. the level-0 pass: upsampling, nuclei, Beer-Lambert colour (:mod:`.render`).

Each phase draws from its own random stream spawned from the seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from napari_ghanet.datasets.synthetic.fields import _coarse_fields, _Grid
from napari_ghanet.datasets.synthetic.glands import _place_rings, _ring_map
from napari_ghanet.datasets.synthetic.nuclei import _populate_nuclei
from napari_ghanet.datasets.synthetic.render import _fine_pass, _level0_pass
from napari_ghanet.datasets.synthetic.result import (
    ACTIVITY_TRAITS,
    BACKGROUND_RGB,
    SyntheticSlide,
)
from napari_ghanet.errors import ArgumentError

__all__ = ["synthetic_slide"]

_MAX_PIXELS = 1_500_000_000


def _activity_vector(activity: float | Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(activity, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(len(ACTIVITY_TRAITS), float(arr))
    if arr.shape != (len(ACTIVITY_TRAITS),):
        raise ArgumentError(
            f"activity must be a number or a sequence of {len(ACTIVITY_TRAITS)} numbers "
            f"({', '.join(ACTIVITY_TRAITS)}), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ArgumentError(f"activity values must lie in [0, 1], got {arr.tolist()}")
    return arr


def _resolve_shape(
    shape_hw: Sequence[int] | None, size_um: float | Sequence[float] | None, mpp: float
) -> tuple[int, int]:
    if not (isinstance(mpp, int | float) and 0.1 <= float(mpp) <= 2.0):
        raise ArgumentError(f"mpp must be between 0.1 and 2.0 um/px, got {mpp!r}")
    if (shape_hw is None) == (size_um is None):
        raise ArgumentError("give exactly one of shape_hw (pixels) or size_um (microns)")
    if size_um is not None:
        size = np.broadcast_to(np.asarray(size_um, dtype=np.float64), (2,))
        if not np.all(np.isfinite(size)) or size.min() <= 0:
            raise ArgumentError(f"size_um must be positive, got {size_um!r}")
        shape = tuple(int(round(s / mpp)) for s in size)
    else:
        if len(shape_hw) != 2:
            raise ArgumentError(f"shape_hw must be (height, width), got {shape_hw!r}")
        shape = (int(shape_hw[0]), int(shape_hw[1]))
    if min(shape) < 64:
        raise ArgumentError(f"the slide must be at least 64 x 64 pixels, got {shape}")
    if shape[0] * shape[1] > _MAX_PIXELS:
        raise ArgumentError(
            f"a {shape[0]} x {shape[1]} px slide does not fit in memory here; "
            f"keep it under {_MAX_PIXELS:,} pixels"
        )
    return shape


def _check_arguments(
    shape_hw: Sequence[int] | None,
    size_um: float | Sequence[float] | None,
    mpp: float,
    seed: int,
    activity: float | Sequence[float],
    tumour_fraction: float | None,
    tissue_fraction: float,
    background_rgb: Sequence[int],
) -> tuple[tuple[int, int], float, np.ndarray, float, tuple[int, ...]]:
    """Check the arguments of :func:`synthetic_slide`.

    Returns the level-0 shape, mpp (float), the activity vector, the tumour fraction
    and the background colour.
    """
    shape = _resolve_shape(shape_hw, size_um, mpp)
    mpp = float(mpp)
    act = _activity_vector(activity)
    if tumour_fraction is None:
        tumour_fraction = 0.05 + 0.6 * act[0]
    if not 0.0 <= tumour_fraction <= 0.95:
        raise ArgumentError(f"tumour_fraction must lie in [0, 0.95], got {tumour_fraction}")
    if not 0.05 <= tissue_fraction <= 0.95:
        raise ArgumentError(f"tissue_fraction must lie in [0.05, 0.95], got {tissue_fraction}")
    bg = tuple(int(c) for c in background_rgb)
    if len(bg) != 3 or min(bg) < 1 or max(bg) > 255:
        raise ArgumentError(f"background_rgb must be three values in 1..255, got {background_rgb!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ArgumentError(f"seed must be a non-negative integer, got {seed!r}")
    return shape, mpp, act, tumour_fraction, bg


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

    Examples
    --------
    >>> slide = synthetic_slide((256, 256), seed=1, activity=0.8)
    >>> slide.rgb.shape, slide.rgb.dtype.name
    ((256, 256, 3), 'uint8')
    >>> slide.truth()["activity"]["tumour_extent"]
    0.8
    """
    shape, mpp, act, tumour_fraction, bg = _check_arguments(
        shape_hw, size_um, mpp, seed, activity, tumour_fraction, tissue_fraction, background_rgb
    )

    streams = np.random.SeedSequence(int(seed)).spawn(8)
    rng_tissue, rng_tumour, rng_stroma, rng_rings, rng_nuclei = (
        np.random.default_rng(s) for s in streams[:5]
    )
    stamp_ss, noise_ss = streams[5], streams[6]  # one child stream per band of rows
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    _, size_t, prolif, dediff, hyper, inflam = (float(v) for v in act)  # extent: above
    grid = _Grid.of(shape, mpp)

    coarse = _coarse_fields(
        grid,
        rng_tissue,
        rng_tumour,
        rng_stroma,
        tissue_fraction=tissue_fraction,
        tumour_fraction=tumour_fraction,
        dediff=dediff,
    )
    rings = _place_rings(rng_rings, grid, coarse.tissue, coarse.tumour)
    ring_f, ring_is_vessel = _ring_map(rings, (grid.hf, grid.wf))
    fine = _fine_pass(
        grid, coarse, ring_f, ring_is_vessel, rng_stroma, hyper=hyper, workers=workers
    )
    nuclei = _populate_nuclei(
        rng_nuclei,
        grid,
        fine.regions,
        coarse.theta,
        rings,
        size_t=size_t,
        prolif=prolif,
        hyper=hyper,
        inflam=inflam,
    )
    rgb, regions = _level0_pass(grid, fine, nuclei, bg, stamp_ss, noise_ss, workers)

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
