"""Stain colour of a slide's tissue, measured on the tissue-detection thumbnail.

A few numbers that say how a slide was stained and scanned, in the optical-density (OD)
space of :mod:`napari_ghanet.preprocessing.stain`: each tissue pixel's OD is split into
haematoxylin, eosin and what neither stain explains (the direction perpendicular to both).
They let a prediction compare a new slide's staining with the training slides'
(:mod:`napari_ghanet.inference.distribution`):

* ``hematoxylin_share``: haematoxylin / (haematoxylin + eosin), mean concentrations over
  the tissue pixels (0-1; higher is bluer-purple, lower pinker);
* ``stain_intensity``: mean OD length of the tissue pixels (OD units; higher is darker);
* ``off_stain``: share of the tissue's OD that lies outside the H&E plane (0-1; near 0 for
  H&E, about 0.3 for DAB brown of an IHC stain, 0.2 for grey);
* ``od_mean``: the mean OD vector (R, G, B).

Examples
--------
>>> import numpy as np
>>> rgb = np.full((32, 32, 3), 240, np.uint8); rgb[8:24, 8:24] = (150, 60, 140)
>>> mask = np.zeros((32, 32), bool); mask[8:24, 8:24] = True
>>> d = stain_descriptors(rgb, mask)
>>> 0 < d["hematoxylin_share"] < 1, d["off_stain"] < 0.2, d["n_pixels"]
(True, True, 256)
"""

from __future__ import annotations

import numpy as np

from napari_ghanet.preprocessing.stain import EOSIN_OD, HEMATOXYLIN_OD

__all__ = ["STAIN_KEYS", "stain_descriptors"]

#: the scalar descriptors, in the order the distribution checks use them
STAIN_KEYS = ("hematoxylin_share", "stain_intensity", "off_stain")

_MAX_PIXELS = 200_000
_MIN_OD = 0.15  # total OD below which a pixel is near-white glass, not stained tissue


def _basis() -> np.ndarray:
    h = np.asarray(HEMATOXYLIN_OD, np.float64)
    e = np.asarray(EOSIN_OD, np.float64)
    r = np.cross(h, e)
    return np.stack([h, e, r / np.linalg.norm(r)])


def stain_descriptors(rgb: np.ndarray, mask: np.ndarray | None = None) -> dict | None:
    """Stain descriptors of the tissue pixels of ``rgb`` (see the module doc).

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
        A thumbnail of the slide.
    mask : ndarray of bool, shape (h, w), optional
        Tissue pixels (default: every pixel). At most 200,000 of them are used, evenly
        spaced.

    Returns
    -------
    dict or None
        ``hematoxylin_share``, ``stain_intensity`` (OD units), ``off_stain`` (fractions),
        ``od_mean`` (3 OD values) and ``n_pixels``; None when no tissue pixel is stained.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        return None
    if mask is None:
        idx = np.arange(rgb.shape[0] * rgb.shape[1])
    else:
        idx = np.flatnonzero(np.asarray(mask, bool))
    if idx.size == 0:
        return None
    if idx.size > _MAX_PIXELS:
        idx = idx[:: int(np.ceil(idx.size / _MAX_PIXELS))]
    px = rgb[..., :3].reshape(-1, 3)[idx].astype(np.float64)
    od = -np.log10((px + 1.0) / 256.0)
    od = od[od.sum(axis=1) > _MIN_OD]
    if len(od) == 0:
        return None
    conc = od @ np.linalg.inv(_basis())  # od = conc @ basis
    h = np.clip(conc[:, 0], 0, None).mean()
    e = np.clip(conc[:, 1], 0, None).mean()
    length = np.linalg.norm(od, axis=1)
    return {
        "hematoxylin_share": float(h / max(h + e, 1e-9)),
        "stain_intensity": float(length.mean()),
        "off_stain": float(np.abs(conc[:, 2]).sum() / max(length.sum(), 1e-9)),
        "od_mean": [float(v) for v in od.mean(axis=0)],
        "n_pixels": int(len(od)),
    }
