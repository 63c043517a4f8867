"""Tissue detection on a slide thumbnail.

Glass is bright and grey, stained tissue is coloured: the mask thresholds the HSV
saturation of a thumbnail (Otsu's threshold by default), after a median filter, then
closes small gaps, removes small objects and fills small holes. Every size is physical
(um, um^2), converted to thumbnail pixels with the thumbnail's resolution, so the same
parameters give the same mask at any thumbnail resolution and for any scanner.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from napari_ghanet.errors import ArgumentError
from napari_ghanet.io.slide import Slide
from napari_ghanet.preprocessing.stain_stats import stain_descriptors

logger = logging.getLogger(__name__)

__all__ = ["TissueMask", "TissueParams", "saturation", "tissue_mask", "tissue_mask_from_rgb"]


@dataclass
class TissueParams:
    """Editable tissue-detection parameters (physical units).

    Attributes
    ----------
    thumbnail_mpp : float
        Resolution (um/px) of the thumbnail the mask is computed on.
    max_size : int
        Upper bound on the thumbnail's longer side (px); coarsens ``thumbnail_mpp`` for
        very large slides so memory and time stay bounded.
    saturation_threshold : float or None
        HSV saturation in [0, 1] above which a pixel is tissue; None = Otsu's threshold,
        clipped to ``otsu_bounds`` so a blank slide does not produce tissue from noise.
    otsu_bounds : (float, float)
    smoothing_um : float
        Width of the median filter applied to the saturation, um.
    closing_um : float
        Radius of the morphological closing that bridges small gaps, um.
    min_object_um2 : float
        Tissue pieces smaller than this (um^2) are removed (dust, debris).
    max_hole_um2 : float
        Holes smaller than this (um^2) are filled; larger ones (lumens, fat) are kept.
    max_brightness : float
        Pixels brighter than this (mean RGB / 255) are never tissue (glass glare).
    """

    thumbnail_mpp: float = 4.0
    max_size: int = 4096
    saturation_threshold: float | None = None
    otsu_bounds: tuple[float, float] = (0.05, 0.25)
    smoothing_um: float = 16.0
    closing_um: float = 8.0
    min_object_um2: float = 10_000.0
    max_hole_um2: float = 4_000.0
    max_brightness: float = 0.97

    def validate(self) -> None:
        if not self.thumbnail_mpp > 0:
            raise ArgumentError(f"thumbnail_mpp must be > 0 um/px, got {self.thumbnail_mpp}")
        if self.max_size < 16:
            raise ArgumentError(f"max_size must be at least 16 px, got {self.max_size}")
        if self.saturation_threshold is not None and not 0 <= self.saturation_threshold <= 1:
            raise ArgumentError(
                f"saturation_threshold must be in [0, 1] or None, got {self.saturation_threshold}"
            )
        for name in ("smoothing_um", "closing_um", "min_object_um2", "max_hole_um2"):
            if getattr(self, name) < 0:
                raise ArgumentError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TissueMask:
    """Result of :func:`tissue_mask`.

    Attributes
    ----------
    mask : ndarray of bool, shape (h, w)
        True on tissue. Mask pixel (i, j) covers level-0 pixels
        [j * downsample, (j + 1) * downsample) x [i * downsample, (i + 1) * downsample).
    downsample : float
        Level-0 pixels per mask pixel.
    mpp : float
        Microns per mask pixel.
    threshold : float
        Saturation threshold used (Otsu's when it was not given).
    params : TissueParams
    """

    mask: np.ndarray
    downsample: float
    mpp: float
    threshold: float
    params: TissueParams = field(default_factory=TissueParams)
    stain: dict | None = None
    """Stain colour of the tissue pixels on the thumbnail
    (:func:`~napari_ghanet.preprocessing.stain_stats.stain_descriptors`), None when unmeasured."""

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide area covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_um2(self) -> float:
        """Tissue area in um^2."""
        return float(self.mask.sum()) * self.mpp * self.mpp

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    def describe(self) -> dict:
        return {
            "downsample": self.downsample,
            "mpp": self.mpp,
            "threshold": self.threshold,
            "tissue_fraction": self.tissue_fraction,
            "params": asdict(self.params),
        }


# Rows of a thumbnail converted at a time (bounds the float temporaries to ~4 MB each).
_ROWS = 256


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an RGB uint8 image, float32 (h, w) in [0, 1].

    Computed in bands of rows, so the only full-size array is the result.
    """
    rgb = np.asarray(rgb)
    out = np.empty(rgb.shape[:2], np.float32)
    for r0 in range(0, rgb.shape[0], _ROWS):
        band = rgb[r0 : r0 + _ROWS]
        mx = band.max(axis=2).astype(np.float32)
        mn = band.min(axis=2).astype(np.float32)
        out[r0 : r0 + _ROWS] = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)
    return out


def _not_glare(rgb: np.ndarray, max_brightness: float) -> np.ndarray:
    """Bool (h, w): mean of R, G, B / 255 at most ``max_brightness``, in bands of rows."""
    out = np.empty(rgb.shape[:2], bool)
    for r0 in range(0, rgb.shape[0], _ROWS):
        bright = rgb[r0 : r0 + _ROWS].mean(axis=2, dtype=np.float32) / 255.0
        out[r0 : r0 + _ROWS] = bright <= max_brightness
    return out


def _disk(radius_px: float) -> np.ndarray:
    r = max(0, int(math.floor(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= radius_px * radius_px + 1e-9


def _drop_small_components(mask: np.ndarray, max_px: int) -> np.ndarray:
    """``mask`` without its 8-connected components of at most ``max_px`` pixels."""
    from scipy import ndimage as ndi

    labels = np.empty(mask.shape, np.int32)  # not the default intp: half the memory
    n = ndi.label(mask, structure=np.ones((3, 3), bool), output=labels)
    if n == 0:
        return mask
    # counted and looked up in bands of rows: no int64 copy of the labels
    sizes = np.zeros(n + 1, np.int64)
    for r0 in range(0, labels.shape[0], _ROWS):
        sizes += np.bincount(labels[r0 : r0 + _ROWS].ravel(), minlength=n + 1)
    keep = sizes > max_px
    keep[0] = False
    out = np.empty(mask.shape, bool)
    for r0 in range(0, labels.shape[0], _ROWS):
        out[r0 : r0 + _ROWS] = keep[labels[r0 : r0 + _ROWS]]
    return out


def tissue_mask_from_rgb(
    rgb: np.ndarray, mpp: float, params: TissueParams
) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB uint8 image at ``mpp`` um/px; returns (mask, threshold)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    sat = saturation(rgb)
    k = int(round(params.smoothing_um / mpp))
    if k >= 2:
        k |= 1
        sat = ndi.median_filter(sat, size=k, mode="nearest")
    if params.saturation_threshold is None:
        lo, hi = params.otsu_bounds
        if float(sat.max()) - float(sat.min()) < 1e-6:
            thr = lo
        else:
            thr = float(np.clip(threshold_otsu(sat), lo, hi))
    else:
        thr = float(params.saturation_threshold)
    mask = sat > thr
    del sat
    mask &= _not_glare(rgb, params.max_brightness)
    r = params.closing_um / mpp
    if r >= 1:
        # pad so the closing does not glue tissue to the image border
        pad = int(math.ceil(r))
        mask = ndi.binary_closing(np.pad(mask, pad), structure=_disk(r))[pad:-pad, pad:-pad]
    px_area = mpp * mpp
    min_obj = int(params.min_object_um2 / px_area)
    if min_obj >= 1 and mask.any():
        mask = _drop_small_components(mask, min_obj)
    max_hole = int(params.max_hole_um2 / px_area)
    if max_hole >= 1 and mask.any():
        mask = ~_drop_small_components(~mask, max_hole)
    return mask.astype(bool, copy=False), thr


def tissue_mask(slide: Slide, params: TissueParams | None = None, **overrides) -> TissueMask:
    """Detect tissue on a thumbnail of ``slide``.

    Parameters
    ----------
    slide : Slide
        An open slide with a known ``mpp``.
    params : TissueParams, optional
        Defaults: :class:`TissueParams`. Keyword ``overrides`` (e.g.
        ``saturation_threshold=0.1, min_object_um2=5e4``) replace single fields.

    Returns
    -------
    TissueMask
        Boolean mask (h, w) with its downsample (level-0 px per mask px) and mpp.
    """
    params = TissueParams(**{**asdict(params or TissueParams()), **overrides})
    params.validate()
    if slide.mpp is None:
        raise ArgumentError(f"{slide.path}: tissue detection needs the slide's microns per pixel")
    w0, h0 = slide.dimensions
    ds = max(1.0, params.thumbnail_mpp / slide.mpp, max(w0, h0) / params.max_size)
    # Unreadable tiles read as background (counted in slide.warnings), as on pyramids, where
    # the thumbnail comes from a coarse level and a bad level-0 tile only skips its patches.
    rgb = slide.read_downsampled(ds, skip_unreadable=True)
    # the mask grid is the thumbnail grid: ceil(W / ds) pixels of ds level-0 pixels
    mpp = slide.mpp * ds
    mask, thr = tissue_mask_from_rgb(rgb, mpp, params)
    result = TissueMask(
        mask=mask, downsample=float(ds), mpp=float(mpp), threshold=thr, params=params,
        stain=stain_descriptors(rgb, mask),
    )
    if result.empty:
        logger.warning("%s: no tissue found (saturation threshold %.3f)", slide.path, thr)
    return result
