"""The rendered slide and its ground truth: region and nucleus codes, traits, truth summary."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

import numpy as np

from napari_ghanet.errors import ArgumentError

__all__ = ["ACTIVITY_TRAITS", "BACKGROUND_RGB", "NucleusKind", "Region", "SyntheticSlide"]


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
            raise ArgumentError(f"cell_um must be positive, got {cell_um}")
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
