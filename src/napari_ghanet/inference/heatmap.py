"""Smooth attention heatmaps from overlapping patches (as CLAM's heatmaps).

The model scores the slide on its own, non-overlapping grid. For display, a grid shifted
by a fraction of a patch can be scored too (:func:`overlap_grid` gives the extra patch
positions; ``GHANet.score_patches`` scores them in the bag's context without changing the
prediction). Every patch then covers ``k x k`` cells of a finer lattice with a pitch of
``patch * (1 - overlap)`` (``k = 1 / (1 - overlap)``: 2 at 50 % overlap, 4 at 75 %), and
:func:`overlap_heatmap` gives each cell the mean score of all patches covering it.

Cost: the extra patches must be embedded, about ``k**2 - 1`` times the grid's patches
(3x more at 50 % overlap, 15x more at 75 %), i.e. ``1 / (1 - overlap)**2`` patches in all.

Coordinates: level-0 pixels, (x, y) for patch corners, (row, col) for image transforms,
with the convention of :mod:`napari_ghanet.inference.overlays` (pixel ``i`` of an image
drawn with scale ``s`` and translate ``t`` is centred on ``t + i * s``). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from napari_ghanet.errors import ArgumentError
from napari_ghanet.preprocessing.patches import PatchGrid, mask_fraction
from napari_ghanet.preprocessing.tissue import TissueMask

__all__ = ["Heatmap", "overlap_factor", "overlap_grid", "overlap_heatmap"]


def overlap_factor(overlap: float) -> int:
    """Cells per patch side, ``k = 1 / (1 - overlap)``, for overlap 0, 0.5, 0.75, ...

    Examples
    --------
    >>> overlap_factor(0.0), overlap_factor(0.5), overlap_factor(0.75)
    (1, 2, 4)
    """
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise ArgumentError(f"overlap must be in [0, 1), got {overlap}")
    k = 1.0 / (1.0 - overlap)
    if abs(k - round(k)) > 1e-6 or round(k) > 16:
        raise ArgumentError(
            f"overlap {overlap:g} does not split a patch into whole steps: use 0, 0.5, 0.75 "
            "(or 1 - 1/k for an integer k <= 16)"
        )
    return int(round(k))


def _lattice(coords: np.ndarray, origin: np.ndarray, cell: float) -> np.ndarray:
    idx = (coords - origin) / cell
    rounded = np.rint(idx)
    if np.any(np.abs(idx - rounded) * cell > 1.0):
        raise ArgumentError(
            f"patch corners are not on a lattice of pitch {cell:g} level-0 pixels: the grid's "
            "step must be a multiple of patch * (1 - overlap)"
        )
    return rounded.astype(np.int64)


def overlap_grid(grid: PatchGrid, overlap: float, mask: TissueMask | None = None) -> PatchGrid:
    """The extra patches to score for an overlapping-stride heatmap.

    Parameters
    ----------
    grid : PatchGrid
        The model's grid (``preprocessing.patches.patch_grid``).
    overlap : float
        Fraction of a patch shared by neighbouring heatmap patches: 0, 0.5 or 0.75.
    mask : TissueMask, optional
        The tissue mask the grid was made with; extra patches need the grid's
        ``min_tissue_fraction`` of tissue. Without it, an extra patch is kept when its
        centre lies on a patch of ``grid``.

    Returns
    -------
    PatchGrid
        Only the extra patches (none of ``grid``'s), inside the slide, row-major; same
        patch size and reading level as ``grid``; ``step_level0`` is the heatmap pitch and
        ``extra["overlap"]`` the overlap. About ``(1 / (1 - overlap)**2 - 1) * len(grid)``
        patches: this is what the smooth map costs to embed.

    Examples
    --------
    >>> from napari_ghanet.preprocessing.patches import PatchGrid
    >>> square = np.array([[0, 0], [256, 0], [0, 256], [256, 256]])  # 2 x 2 patches
    >>> g = PatchGrid(coords=square, patch_size_level0=256, patch_px=256, target_mpp=0.5,
    ...               step_level0=256, level=0, level_patch_size=256,
    ...               tissue_fraction=np.ones(4, np.float32), min_tissue_fraction=0.5,
    ...               slide_dimensions=(1024, 1024), slide_mpp=0.5)
    >>> overlap_grid(g, 0.5).coords.tolist()  # shifted by half a patch, centres on the grid
    [[128, 0], [0, 128], [128, 128], [256, 128], [128, 256]]
    >>> len(overlap_grid(g, 0.75))  # 6 x 6 positions at a 64 px pitch, less the 4
    32
    """
    k = overlap_factor(overlap)
    size0 = int(grid.patch_size_level0)
    empty = replace(
        grid.select(np.zeros(0, np.int64)),
        extra={**grid.extra, "overlap": float(overlap)},
    )
    if k == 1 or grid.empty:
        return empty
    cell = size0 / k
    coords = np.asarray(grid.coords, np.int64)
    origin = coords.min(axis=0)
    lat = _lattice(coords, origin, cell)
    offsets = np.arange(-(k - 1), k)
    ox, oy = np.meshgrid(offsets, offsets)
    shifts = np.stack([ox.ravel(), oy.ravel()], axis=1)
    cand = (lat[:, None, :] + shifts[None]).reshape(-1, 2)
    span = int(lat.max()) + 2 * k + 2
    base = lat.min() - k - 1

    def key(a: np.ndarray) -> np.ndarray:
        return (a[:, 1] - base) * span + (a[:, 0] - base)

    cand = np.unique(cand, axis=0)
    cand = cand[~np.isin(key(cand), key(lat))]
    pos = origin + np.rint(cand * cell).astype(np.int64)
    w0, h0 = grid.slide_dimensions
    inside = (pos >= 0).all(axis=1) & (pos[:, 0] + size0 <= w0) & (pos[:, 1] + size0 <= h0)
    cand, pos = cand[inside], pos[inside]
    if mask is not None:
        frac = mask_fraction(mask, pos, size0)
        keep = frac >= grid.min_tissue_fraction - 1e-6
        if grid.min_tissue_fraction <= 0:
            keep &= frac > 0
    else:
        # centre (lattice units) u = cand + k/2 lies on grid patch G when G <= u < G + k
        grid_keys = key(lat)
        keep = np.zeros(len(cand), bool)
        centre = cand + k // 2 if k % 2 == 0 else cand + (k - 1) // 2  # floor(u)
        for tx in range(k):
            for ty in range(k):
                g = centre - np.array([tx, ty])
                keep |= np.isin(key(g), grid_keys)
        frac = np.ones(len(cand), np.float32)
    pos, frac = pos[keep], np.asarray(frac, np.float32)[keep]
    order = np.lexsort((pos[:, 0], pos[:, 1]))
    return replace(
        grid,
        coords=np.ascontiguousarray(pos[order]),
        tissue_fraction=frac[order],
        step_level0=int(round(cell)),
        message="",
        extra={**grid.extra, "overlap": float(overlap)},
    )


@dataclass
class Heatmap:
    """Patch scores averaged on a lattice finer than the patches.

    Attributes
    ----------
    image : ndarray of float32, shape (rows, cols)
        Mean score of the patches covering each cell; NaN where none does.
    count : ndarray of int32, shape (rows, cols)
        Patches covering each cell.
    cell_level0 : float
        Cell side in level-0 pixels, ``patch * (1 - overlap)``.
    origin : (int, int)
        Level-0 (x, y) of the top-left corner of cell (0, 0).
    scale, translate : (float, float)
        (row, col) transform that lays ``image`` over the slide layer (given its level-0
        transform), cell (r, c) centred on the middle of the level-0 area it covers.
    coords : ndarray of int64, shape (N, 2), optional
        The scored patches behind the map (level-0 top-left x, y), when kept.
    scores : ndarray of float32, shape (N,), optional
        Their scores: ``overlap_heatmap(coords, patch, scores, overlap)`` gives ``image``.
    """

    image: np.ndarray
    count: np.ndarray
    cell_level0: float
    origin: tuple[int, int]
    scale: tuple[float, float]
    translate: tuple[float, float]
    coords: np.ndarray | None = None
    scores: np.ndarray | None = None


def overlap_heatmap(
    coords: np.ndarray,
    patch_size_level0: int,
    scores: np.ndarray,
    overlap: float = 0.0,
    *,
    level0_scale: tuple[float, float] = (1.0, 1.0),
    level0_translate: tuple[float, float] = (0.0, 0.0),
) -> Heatmap:
    """Average per-patch scores over the cells each patch covers.

    Parameters
    ----------
    coords : ndarray of int, shape (N, 2)
        Top-left (x, y) level-0 pixels of every scored patch (the grid's and the extra
        ones from :func:`overlap_grid`).
    patch_size_level0 : int
        Patch side, level-0 pixels.
    scores : ndarray, shape (N,)
        Finite score per patch (e.g. attention logits, or their percentile ranks).
    overlap : float
        0, 0.5 or 0.75; the cell pitch is ``patch_size_level0 * (1 - overlap)``.
    level0_scale, level0_translate : (float, float)
        The slide layer's (row, col) transform of its level-0 pixels.

    Returns
    -------
    Heatmap

    Examples
    --------
    Two patches of 256 px at 50 % overlap, side by side with one in between:

    >>> hm = overlap_heatmap(np.array([[0, 0], [128, 0], [256, 0]]), 256,
    ...                      np.array([0.0, 1.0, 2.0]), overlap=0.5)
    >>> hm.image.tolist()
    [[0.0, 0.5, 1.5, 2.0], [0.0, 0.5, 1.5, 2.0]]
    >>> hm.scale, hm.translate
    ((128.0, 128.0), (63.5, 63.5))
    """
    k = overlap_factor(overlap)
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    scores = np.asarray(scores, np.float64).ravel()
    if scores.shape[0] != coords.shape[0]:
        raise ArgumentError(f"{scores.shape[0]} scores for {coords.shape[0]} patches")
    if not np.all(np.isfinite(scores)):
        raise ArgumentError("heatmap scores must be finite")
    cell = int(patch_size_level0) / k
    sy, sx = (float(v) for v in level0_scale)
    ty, tx = (float(v) for v in level0_translate)
    if len(coords) == 0:
        z = np.zeros((0, 0), np.float32)
        return Heatmap(z, z.astype(np.int32), cell, (0, 0), (cell * sy, cell * sx), (ty, tx))
    origin = coords.min(axis=0)
    lat = _lattice(coords, origin, cell)
    rows, cols = int(lat[:, 1].max()) + k, int(lat[:, 0].max()) + k
    # Scores at each patch's corner cell, then a k x k box sum via 2-D cumulative sums.
    corner_sum = np.zeros((rows + 1, cols + 1), np.float64)
    corner_cnt = np.zeros((rows + 1, cols + 1), np.float64)
    np.add.at(corner_sum, (lat[:, 1] + 1, lat[:, 0] + 1), scores)
    np.add.at(corner_cnt, (lat[:, 1] + 1, lat[:, 0] + 1), 1.0)

    def box(a: np.ndarray) -> np.ndarray:
        c = a.cumsum(0).cumsum(1)  # c[r, q] = sum of corners in cells [0, r) x [0, q)
        r = np.arange(1, rows + 1)
        q = np.arange(1, cols + 1)
        r0 = np.maximum(r - k, 0)
        q0 = np.maximum(q - k, 0)
        return c[r][:, q] - c[r0][:, q] - c[r][:, q0] + c[r0][:, q0]

    total, count = box(corner_sum), np.rint(box(corner_cnt)).astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
    half = cell / 2.0 - 0.5
    ox, oy = int(origin[0]), int(origin[1])
    return Heatmap(
        image=image,
        count=count,
        cell_level0=float(cell),
        origin=(ox, oy),
        scale=(cell * sy, cell * sx),
        translate=(ty + (oy + half) * sy, tx + (ox + half) * sx),
    )
