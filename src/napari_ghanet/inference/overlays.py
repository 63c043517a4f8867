"""Turn a prediction's per-patch values into small images laid out on the patch grid.

A slide of 100,000 x 100,000 pixels has ~150,000 patches of 256 px; drawing attention at
full resolution would need a 30 GB canvas. Instead each patch becomes one cell of a
(rows, cols) array with a scale of one patch and a translate to the grid origin, so an
image layer with that transform lies exactly over the slide at every zoom.

Conventions (those of napari and of most array viewers): pixel ``i`` of an array drawn
with scale ``s`` and translate ``t`` is centred on ``t + i * s`` and spans half a pixel
either side. Coordinates here are level-0 pixels, (x, y) for patch corners as in the rest
of the package and (row, col) = (y, x) for array transforms. Pure numpy: no napari import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from math import gcd

import numpy as np

from napari_ghanet.errors import ArgumentError

__all__ = [
    "PatchLattice",
    "patch_lattice",
    "grid_image",
    "percentile_normalise",
    "attention_image",
    "lattice_transform",
    "mask_outline",
    "mask_transform",
    "region_rectangles",
    "region_centre",
]


@dataclass(frozen=True)
class PatchLattice:
    """Where each patch sits on a regular grid.

    origin: (x, y) level-0 pixels of the top-left corner of cell (0, 0).
    step: grid pitch in level-0 pixels (the patch stride; equal to the patch size for
    non-overlapping CLAM grids).
    shape: (rows, cols) of the grid image.
    rows, cols: int64 (N,) cell of each patch, in patch order.
    """

    origin: tuple[int, int]
    step: int
    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray


def patch_lattice(
    coords: np.ndarray, patch_size_level0: int, step_level0: int | None = None
) -> PatchLattice:
    """Lattice of patches whose top-left corners are ``coords`` (N, 2) int (x, y) level 0.

    ``step_level0`` is the grid pitch; when None it is the largest divisor of the patch
    size that all coordinate offsets share (the patch size itself for a regular,
    non-overlapping grid), so cells never merge two patches.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    size = int(patch_size_level0)
    if size < 1:
        raise ArgumentError(f"patch_size_level0 must be >= 1, got {patch_size_level0}")
    if len(coords) == 0:
        return PatchLattice((0, 0), size, (0, 0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    origin = coords.min(axis=0)
    offsets = coords - origin
    if step_level0 is None:
        step = reduce(gcd, np.unique(offsets).tolist(), size)
    else:
        step = int(step_level0)
        if step < 1 or np.any(offsets % step):
            raise ArgumentError(
                f"patch corners are not on a grid of pitch {step_level0} level-0 pixels"
            )
    cols = offsets[:, 0] // step
    rows = offsets[:, 1] // step
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    return PatchLattice((int(origin[0]), int(origin[1])), int(step), shape, rows, cols)


def grid_image(
    values: np.ndarray, lattice: PatchLattice, fill: float = np.nan, dtype=np.float32
) -> np.ndarray:
    """Values (N,) of the patches as a (rows, cols) image; cells without a patch = ``fill``."""
    values = np.asarray(values)
    if values.shape != lattice.rows.shape:
        raise ArgumentError(
            f"{values.shape[0] if values.ndim else 0} values for {lattice.rows.shape[0]} patches"
        )
    image = np.full(lattice.shape, fill, dtype=dtype)
    image[lattice.rows, lattice.cols] = values
    return image


def percentile_normalise(values: np.ndarray) -> np.ndarray:
    """Rank of each value among ``values`` (N,) scaled to (0, 1]: float32 (N,).

    Ties share their mean rank. Attention is heavy-tailed (a few patches take most of the
    mass), so ranks show the structure that a linear colour scale would hide.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return np.zeros(0, np.float32)
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    # Mean rank of each tie group (1-based), via the first/last index of each group.
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat(mean_rank, counts)
    return (ranks / n).astype(np.float32)


def attention_image(
    attention: np.ndarray, lattice: PatchLattice, floor: float = 0.02
) -> np.ndarray:
    """Percentile-normalised attention (N,) on the grid: float32 (rows, cols).

    Patches with attention get values in [``floor``, 1]: exact zeros (patches outside a
    genome token's top-k) sit at ``floor``, the others are ranked among themselves over
    (floor, 1]. Cells without a patch are 0, which a colormap that is transparent at 0
    leaves see-through (non-tissue).
    """
    attention = np.asarray(attention, dtype=np.float64).ravel()
    scaled = np.full(attention.shape, floor, dtype=np.float32)
    positive = attention > 0
    if positive.any():
        ranks = percentile_normalise(attention[positive])
        scaled[positive] = floor + (1.0 - floor) * ranks
    return grid_image(scaled, lattice, fill=0.0)


def lattice_transform(
    lattice: PatchLattice,
    level0_scale: tuple[float, float] = (1.0, 1.0),
    level0_translate: tuple[float, float] = (0.0, 0.0),
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, translate) in (row, col) order for a grid image over a slide layer.

    ``level0_scale``/``level0_translate`` are the slide layer's transform of its level-0
    pixels (e.g. (mpp, mpp) and (0, 0) for a layer in microns). The returned transform
    centres cell (r, c) on the middle of its patch.
    """
    sy, sx = (float(v) for v in level0_scale)
    ty, tx = (float(v) for v in level0_translate)
    step = float(lattice.step)
    ox, oy = lattice.origin
    half = step / 2.0 - 0.5  # from a patch's first pixel centre to its middle
    return (step * sy, step * sx), (ty + (oy + half) * sy, tx + (ox + half) * sx)


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Boundary of a boolean mask (h, w): uint8 (h, w), 1 on the ``width`` mask pixels
    inside the edge of each region (holes included), 0 elsewhere."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    if width < 1 or not mask.any():
        return mask.astype(np.uint8)
    inner = ndi.binary_erosion(mask, iterations=int(width), border_value=0)
    return (mask & ~inner).astype(np.uint8)


def mask_transform(
    downsample: float | tuple[float, float],
    level0_scale: tuple[float, float] = (1.0, 1.0),
    level0_translate: tuple[float, float] = (0.0, 0.0),
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, translate) in (row, col) order for a mask whose pixel covers ``downsample``
    level-0 pixels (one number, or (row, col)) starting at the slide's corner."""
    dy, dx = (downsample, downsample) if np.isscalar(downsample) else downsample
    dy, dx = float(dy), float(dx)
    sy, sx = (float(v) for v in level0_scale)
    ty, tx = (float(v) for v in level0_translate)
    return (dy * sy, dx * sx), (ty + (dy / 2 - 0.5) * sy, tx + (dx / 2 - 0.5) * sx)


def region_rectangles(
    xywh: np.ndarray,
    level0_scale: tuple[float, float] = (1.0, 1.0),
    level0_translate: tuple[float, float] = (0.0, 0.0),
) -> list[np.ndarray]:
    """Rectangles of regions ``xywh`` (K, 4) level-0 (x, y, width, height), as K float64
    (4, 2) arrays of (row, col) corners in the slide layer's world coordinates, drawn on
    the outer edges of the patch's pixels."""
    sy, sx = (float(v) for v in level0_scale)
    ty, tx = (float(v) for v in level0_translate)
    out = []
    for x, y, w, h in np.asarray(xywh, dtype=np.float64).reshape(-1, 4):
        top, left = y - 0.5, x - 0.5
        bottom, right = y + h - 0.5, x + w - 0.5
        corners = np.array(
            [[top, left], [top, right], [bottom, right], [bottom, left]], dtype=np.float64
        )
        out.append(corners * (sy, sx) + (ty, tx))
    return out


def region_centre(
    x: float,
    y: float,
    width: float,
    height: float,
    level0_scale: tuple[float, float] = (1.0, 1.0),
    level0_translate: tuple[float, float] = (0.0, 0.0),
) -> tuple[float, float]:
    """World (row, col) of the middle of a level-0 region."""
    sy, sx = (float(v) for v in level0_scale)
    ty, tx = (float(v) for v in level0_translate)
    return ty + (y + height / 2 - 0.5) * sy, tx + (x + width / 2 - 0.5) * sx
