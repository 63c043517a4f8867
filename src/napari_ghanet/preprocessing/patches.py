"""CLAM-style patch grid over the tissue of a slide, in level-0 pixels.

The G-HANet/CLAM default is 256 x 256 px patches at 0.5 um/px ("20x"): on a 40x scan at
~0.25 um/px a patch covers 512 level-0 pixels and is read from the best pyramid level,
then resized to 256 px. Patches are kept where the tissue mask covers at least
``min_tissue_fraction`` of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from napari_ghanet.errors import ArgumentError
from napari_ghanet.io.encoder_spec import EncoderSpec
from napari_ghanet.io.slide import Slide
from napari_ghanet.preprocessing.tissue import TissueMask

logger = logging.getLogger(__name__)

__all__ = ["PatchGrid", "mask_fraction", "patch_grid", "patch_size_level0"]

# A slide within this relative distance of an integer multiple of the target resolution
# is tiled at that multiple (a 20x scan at 0.499 um/px gives 256 px patches, not 257).
_SNAP_TOLERANCE = 0.025


@dataclass
class PatchGrid:
    """Patches to embed, in grid (row-major) order.

    Attributes
    ----------
    coords : ndarray of int64, shape (N, 2)
        Top-left (x, y) of each patch in level-0 pixels.
    patch_size_level0 : int
        Side of a patch in level-0 pixels.
    patch_px : int
        Side of a patch as the encoder sees it (pixels at ``target_mpp``).
    target_mpp : float
        Requested resolution of the patches, um/px.
    step_level0 : int
        Distance between neighbouring patches in level-0 pixels.
    level : int
        Pyramid level patches are read from.
    level_patch_size : int
        Side of a patch in pixels of ``level`` (resized to ``patch_px`` after reading).
    tissue_fraction : ndarray of float32, shape (N,)
        Fraction of each patch covered by the tissue mask.
    min_tissue_fraction : float
    slide_dimensions : (int, int)
        Level-0 (width, height) of the slide.
    slide_mpp : float
    message : str
        Why the grid is empty (blank when it is not).
    """

    coords: np.ndarray
    patch_size_level0: int
    patch_px: int
    target_mpp: float
    step_level0: int
    level: int
    level_patch_size: int
    tissue_fraction: np.ndarray
    min_tissue_fraction: float
    slide_dimensions: tuple[int, int]
    slide_mpp: float
    message: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def empty(self) -> bool:
        return len(self) == 0

    @property
    def patch_um(self) -> float:
        """Side of a patch in um."""
        return self.patch_size_level0 * self.slide_mpp

    def geometry(self) -> dict:
        """The grid's geometry as JSON-able values (stored with the features)."""
        return {
            "patch_size": int(self.patch_px),
            "patch_size_level0": int(self.patch_size_level0),
            "target_mpp": float(self.target_mpp),
            "step_level0": int(self.step_level0),
            "slide_mpp": float(self.slide_mpp),
            "min_tissue_fraction": float(self.min_tissue_fraction),
        }

    def select(self, indices) -> PatchGrid:
        """A grid with only the patches ``indices`` (ints or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            coords=np.ascontiguousarray(self.coords[idx]),
            tissue_fraction=self.tissue_fraction[idx],
            extra=dict(self.extra),
        )

    def read(self, slide: Slide, index: int) -> np.ndarray:
        """Patch ``index`` as RGB uint8 (patch_px, patch_px, 3)."""
        x, y = (int(v) for v in self.coords[index])
        return slide.read_patch(x, y, self.patch_size_level0, self.patch_px)


def patch_size_level0(slide_mpp: float, patch_px: int = EncoderSpec.patch_px,
                      target_mpp: float = EncoderSpec.target_mpp) -> int:
    """Level-0 pixels of a ``patch_px`` patch at ``target_mpp``; the resolution ratio is
    snapped to an integer (or 1/integer) when within 2.5%, as magnification-based tiling
    does (a 20x scan at 0.499 um/px gives 256, a 40x scan at 0.2527 um/px gives 512)."""
    return max(1, int(round(patch_px * _snap_ratio(target_mpp, slide_mpp))))


def _snap_ratio(target_mpp: float, slide_mpp: float) -> float:
    ratio = target_mpp / slide_mpp
    nearest = round(ratio)
    if nearest >= 1 and abs(ratio / nearest - 1.0) <= _SNAP_TOLERANCE:
        return float(nearest)
    if ratio < 1:
        inv = round(1 / ratio)
        if inv >= 1 and abs(ratio * inv - 1.0) <= _SNAP_TOLERANCE:
            return 1.0 / inv
    return ratio


def patch_grid(
    slide: Slide,
    mask: TissueMask | None,
    *,
    patch_px: int = EncoderSpec.patch_px,
    target_mpp: float = EncoderSpec.target_mpp,
    patch_um: float | None = None,
    min_tissue_fraction: float = 0.5,
    step_px: int | None = None,
) -> PatchGrid:
    """Square patches over the tissue of ``slide``.

    Parameters
    ----------
    slide : Slide
        Open slide with a known ``mpp``.
    mask : TissueMask or None
        Tissue mask (``tissue.tissue_mask``); None keeps every patch of the slide.
    patch_px : int
        Patch side in pixels as the encoder sees it.
    target_mpp : float
        Resolution of the patches (um/px); ignored when ``patch_um`` is given.
    patch_um : float, optional
        Patch side in um; sets ``target_mpp = patch_um / patch_px``.
    min_tissue_fraction : float
        Keep patches whose area is at least this fraction tissue.
    step_px : int, optional
        Stride in pixels at the target resolution (default ``patch_px``: no overlap).

    Returns
    -------
    PatchGrid
        ``coords`` int64 (N, 2), top-left level-0 (x, y), row-major order. Empty, with a
        logged warning and ``message``, when no patch holds enough tissue.
    """
    if slide.mpp is None:
        raise ArgumentError(f"{slide.path}: tiling needs the slide's microns per pixel (mpp=...)")
    if patch_px < 8:
        raise ArgumentError(f"patch_px must be at least 8, got {patch_px}")
    if patch_um is not None:
        if not patch_um > 0:
            raise ArgumentError(f"patch_um must be > 0, got {patch_um}")
        target_mpp = patch_um / patch_px
    if not target_mpp > 0:
        raise ArgumentError(f"target_mpp must be > 0 um/px, got {target_mpp}")
    if not 0.0 <= min_tissue_fraction <= 1.0:
        raise ArgumentError(f"min_tissue_fraction must be in [0, 1], got {min_tissue_fraction}")
    step_px = patch_px if step_px is None else int(step_px)
    if step_px < 1:
        raise ArgumentError(f"step_px must be >= 1, got {step_px}")

    ratio = _snap_ratio(target_mpp, slide.mpp)  # level-0 px per target px
    size0 = patch_size_level0(slide.mpp, patch_px, target_mpp)
    step0 = max(1, int(round(step_px * ratio)))
    if ratio < 1 / (1 + _SNAP_TOLERANCE):
        logger.warning(
            "%s: the slide (%.3g um/px) is coarser than the target %.3g um/px; patches are "
            "upsampled",
            slide.path,
            slide.mpp,
            target_mpp,
        )
    level = slide.best_level_for_downsample(size0 / patch_px)
    level_size = max(1, int(round(size0 / slide.level_downsamples[level])))

    w0, h0 = slide.dimensions
    xs = np.arange(0, w0 - size0 + 1, step0, dtype=np.int64)
    ys = np.arange(0, h0 - size0 + 1, step0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)  # row-major: y outer, x inner
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    if mask is None:
        frac = np.ones(len(coords), np.float32)
    else:
        frac = mask_fraction(mask, coords, size0)
    keep = frac >= min_tissue_fraction - 1e-6 if mask is not None else np.ones(len(coords), bool)
    if mask is not None and min_tissue_fraction <= 0:
        keep &= frac > 0
    coords, frac = coords[keep], frac[keep].astype(np.float32)

    message = ""
    if len(coords) == 0:
        if xs.size == 0 or ys.size == 0:
            message = (
                f"{slide.path.name}: the slide ({w0}x{h0} px) is smaller than one patch "
                f"({size0} px at level 0)"
            )
        elif mask is not None and mask.empty:
            message = f"{slide.path.name}: no tissue detected; nothing to embed"
        else:
            message = (
                f"{slide.path.name}: no patch has at least {min_tissue_fraction:.0%} tissue; "
                "lower min_tissue_fraction or adjust the tissue parameters"
            )
        logger.warning(message)
    return PatchGrid(
        coords=np.ascontiguousarray(coords, dtype=np.int64),
        patch_size_level0=size0,
        patch_px=int(patch_px),
        target_mpp=float(target_mpp),
        step_level0=step0,
        level=level,
        level_patch_size=level_size,
        tissue_fraction=frac,
        min_tissue_fraction=float(min_tissue_fraction),
        slide_dimensions=(int(w0), int(h0)),
        slide_mpp=float(slide.mpp),
        message=message,
    )


def mask_fraction(mask: TissueMask, coords: np.ndarray, size0: int) -> np.ndarray:
    """Tissue fraction of each patch, from an integral image of the mask (area-exact
    for mask pixels fully inside a patch, fractional at its borders).

    The integral image holds exact integer counts (int32 while they fit, 4 bytes per
    mask pixel), summed in bands of rows: no temporary of the mask's size."""
    m = mask.mask
    h, w = m.shape
    dt = np.int32 if h * w < 2**31 else np.int64
    integral = np.zeros((h + 1, w + 1), dt)
    for r0 in range(0, h, 256):  # the band's own 2-D sums plus all rows above it
        block = m[r0 : r0 + 256].cumsum(axis=0, dtype=dt).cumsum(axis=1, dtype=dt)
        block += integral[r0, 1:]
        integral[r0 + 1 : r0 + 1 + len(block), 1:] = block
    ds = mask.downsample

    def area(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # tissue area of the rectangle [0, x) x [0, y) in mask pixels, bilinear in (x, y)
        x = np.clip(x, 0, w)
        y = np.clip(y, 0, h)
        x0 = np.floor(x).astype(np.int64)
        y0 = np.floor(y).astype(np.int64)
        x1 = np.minimum(x0 + 1, w)
        y1 = np.minimum(y0 + 1, h)
        fx, fy = x - x0, y - y0
        return (
            integral[y0, x0] * (1 - fx) * (1 - fy)
            + integral[y0, x1] * fx * (1 - fy)
            + integral[y1, x0] * (1 - fx) * fy
            + integral[y1, x1] * fx * fy
        )

    x0 = coords[:, 0] / ds
    y0 = coords[:, 1] / ds
    x1 = (coords[:, 0] + size0) / ds
    y1 = (coords[:, 1] + size0) / ds
    total = area(x1, y1) - area(x0, y1) - area(x1, y0) + area(x0, y0)
    denom = (x1 - x0) * (y1 - y0)
    return np.clip(total / np.maximum(denom, 1e-12), 0.0, 1.0).astype(np.float32)


_mask_fraction = mask_fraction  # former private name
