"""The canvas snapshot export: an RGB(A) image written as a PNG file, atomically.

The dock takes the image from the viewer's canvas (``viewer.screenshot``) and hands it
here through the export registry (kind ``png``, :mod:`.export_registry`); nothing here
needs a viewer or Qt.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "snap.png"
>>> write_png(np.zeros((4, 6, 4), np.uint8), out).read_bytes()[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_ghanet.io.atomic import atomic_path

__all__ = ["write_png"]


def write_png(image, path: str | os.PathLike) -> Path:
    """Write ``image`` (uint8 (H, W), (H, W, 3) or (H, W, 4)) as the PNG file ``path``
    (``.png`` added when missing); returns the path written."""
    from matplotlib.image import imsave

    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    with atomic_path(path, suffix=".png") as tmp:
        imsave(str(tmp), array, format="png")
    return path
