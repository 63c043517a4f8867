"""Simple H&E statistics of an RGB image, to compare synthetic with real slides."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_ghanet.errors import ArgumentError
from napari_ghanet.preprocessing.stain import STAIN_VECTORS

__all__ = ["measure_he_statistics"]


def measure_he_statistics(
    rgb: np.ndarray,
    mpp: float,
    *,
    mask: np.ndarray | None = None,
    tissue_od: float = 0.25,
    nuclear_h_od: float = 0.5,
) -> dict[str, float]:
    """Simple H&E statistics of an RGB image, for checking synthetic against real slides.

    Colour deconvolution with :data:`STAIN_VECTORS` (optical density against white,
    255). Tissue is where the summed RGB optical density exceeds ``tissue_od``.
    Nuclear pixels are where the haematoxylin concentration, smoothed over ~0.5 um,
    exceeds ``nuclear_h_od``. Nuclei are counted as maxima of the haematoxylin
    concentration smoothed over ~1.5 um, at least 4 um apart and above
    ``nuclear_h_od``, so touching nuclei still count one by one; blob sizes are the
    equivalent diameters of the connected nuclear-pixel blobs of 2-150 um^2 (larger
    ones are clusters of touching nuclei).

    Parameters
    ----------
    rgb : (H, W, 3) uint8
    mpp : float
        Microns per pixel.
    mask : (H, W) bool, optional
        Restrict the measurement to these pixels.

    Returns
    -------
    dict
        ``tissue_fraction`` (of the image or mask), ``median_h_od`` and ``median_e_od``
        (stain concentrations in tissue), ``nuclear_density_per_mm2`` (nuclei per mm^2
        of tissue), ``median_nuclear_diameter_um`` (blobs), ``nuclear_area_fraction``
        (of tissue) and ``median_nuclear_h_od`` (in nuclear pixels).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ArgumentError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if not (isinstance(mpp, int | float) and mpp > 0):
        raise ArgumentError(f"mpp must be a positive number, got {mpp!r}")
    if mask is not None and np.shape(mask) != rgb.shape[:2]:
        raise ArgumentError(f"mask shape {np.shape(mask)} does not match the image {rgb.shape[:2]}")
    od = -np.log10(np.maximum(rgb, 1).astype(np.float32) / np.float32(255.0))
    h_vec = np.asarray(STAIN_VECTORS["hematoxylin"])
    e_vec = np.asarray(STAIN_VECTORS["eosin"])
    residual = np.cross(h_vec, e_vec)
    unmix = np.linalg.pinv(np.stack([h_vec, e_vec, residual / np.linalg.norm(residual)]))
    conc = od.reshape(-1, 3) @ unmix.astype(np.float32)[:, :2]
    c_h = conc[:, 0].reshape(rgb.shape[:2])
    c_e = conc[:, 1].reshape(rgb.shape[:2])
    region = np.ones(rgb.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    tissue = (od.sum(axis=2) > tissue_od) & region
    n_tissue = int(tissue.sum())
    if n_tissue == 0:
        return {
            "tissue_fraction": 0.0,
            "median_h_od": 0.0,
            "median_e_od": 0.0,
            "nuclear_density_per_mm2": 0.0,
            "median_nuclear_diameter_um": 0.0,
            "nuclear_area_fraction": 0.0,
            "median_nuclear_h_od": 0.0,
        }
    nuclei = (ndi.gaussian_filter(c_h, max(0.5 / mpp, 0.5)) > nuclear_h_od) & tissue
    # nuclei counted as separated maxima of the smoothed haematoxylin
    smooth = ndi.gaussian_filter(c_h, 1.5 / mpp)
    size = max(3, int(round(4.0 / mpp)) | 1)
    peaks = (smooth == ndi.maximum_filter(smooth, size=size)) & (smooth > nuclear_h_od) & tissue
    labels, n = ndi.label(nuclei)
    area_um2 = np.bincount(labels.ravel(), minlength=n + 1)[1:] * (mpp * mpp)
    single = area_um2[(area_um2 >= 2.0) & (area_um2 <= 150.0)]
    tissue_mm2 = n_tissue * (mpp * 1e-3) ** 2
    return {
        "tissue_fraction": float(n_tissue / max(int(region.sum()), 1)),
        "median_h_od": float(np.median(c_h[tissue])),
        "median_e_od": float(np.median(c_e[tissue])),
        "nuclear_density_per_mm2": float(peaks.sum() / tissue_mm2),
        "median_nuclear_diameter_um": float(np.median(2.0 * np.sqrt(single / np.pi)))
        if len(single)
        else 0.0,
        "nuclear_area_fraction": float(nuclei.sum() / n_tissue),
        "median_nuclear_h_od": float(np.median(c_h[nuclei])) if nuclei.any() else 0.0,
    }
