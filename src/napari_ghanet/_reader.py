"""npe2 reader: whole-slide images as lazy, multiscale RGB layers in microns.

Each pyramid level becomes one dask array chunked by the file's own tiles; a chunk is
read (through :mod:`napari_ghanet.io.slide`) only when napari draws it, so opening a slide
of any size reads nothing but its header, and viewing reads only the visible tiles of
the level that matches the zoom. The layer's scale is the slide's microns per pixel, so
slides, attention overlays and other layers line up in physical units.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["napari_get_reader", "read_slide", "slide_layer_data", "slide_level_arrays"]

# Chunk side for levels the file stores untiled (striped TIFF, plain images).
_UNTILED_CHUNK = 1024
# Extensions tifffile/napari's own readers handle better when the file is not a slide.
_TIFF_SUFFIXES = (".tif", ".tiff")


class _SlideLevel:
    """Array-like view of one pyramid level: shape (height, width, 3) uint8.

    Indexing with slices reads just that rectangle (level pixels) from the slide.
    """

    def __init__(self, slide, level: int):
        self.slide = slide
        self.level = level
        w, h = slide.level_dimensions[level]
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._downsample = float(slide.level_downsamples[level])

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (3 - len(index))
        ys, xs, cs = index
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)[:, :, cs]
        ds = self._downsample
        region = self.slide.read_region((x0 * ds, y0 * ds), self.level, (x1 - x0, y1 - y0))
        return region[:, :, cs]


def slide_level_arrays(slide) -> list:
    """One lazy dask array (height, width, 3) uint8 per pyramid level, chunked by tiles."""
    import dask.array as da

    arrays = []
    url = getattr(slide.path, "url", None)  # a DICOMweb series: no file to stat
    key = f"{slide.path}-{slide.fingerprint() if url else os.stat(slide.path).st_mtime_ns}"
    for level in range(slide.level_count):
        tile = slide.level_tile_sizes[level] if slide.level_tile_sizes else None
        w, h = slide.level_dimensions[level]
        tw, th = tile if tile else (_UNTILED_CHUNK, _UNTILED_CHUNK)
        # One chunk per tile (tiny tiles grouped to >= 128 px to bound the task count).
        fx = max(1, 128 // max(1, tw))
        fy = max(1, 128 // max(1, th))
        chunks = (min(h, th * fy), min(w, tw * fx), 3)
        arrays.append(
            da.from_array(
                _SlideLevel(slide, level),
                chunks=chunks,
                asarray=False,
                fancy=False,
                lock=False,
                inline_array=True,
                meta=np.empty((0, 0, 0), np.uint8),
                name=f"ghanet-slide-{abs(hash(key)):x}-level{level}",
            )
        )
    return arrays


def slide_layer_data(slide) -> tuple[Any, dict, str]:
    """napari layer data tuple ``(data, kwargs, "image")`` for an open slide."""
    arrays = slide_level_arrays(slide)
    multiscale = len(arrays) > 1
    mpp = slide.mpp
    scale = (mpp, mpp) if mpp else (1.0, 1.0)
    metadata = {
        "path": str(slide.path),
        "mpp": mpp,
        "mpp_source": slide.mpp_source,
        "objective_power": slide.objective_power,
        "vendor": slide.vendor,
        "backend": slide.backend,
        "level_dimensions": [tuple(d) for d in slide.level_dimensions],
        "level_downsamples": list(slide.level_downsamples),
        "reader": "napari-ghanet",
    }
    kwargs: dict[str, Any] = {
        "name": Path(slide.path).name,
        "rgb": True,
        "multiscale": multiscale,
        "scale": scale,
        "contrast_limits": (0, 255),
        "metadata": metadata,
    }
    if mpp:
        kwargs["units"] = ("micrometer", "micrometer")
    return (arrays if multiscale else arrays[0], kwargs, "image")


def read_slide(path: str | os.PathLike, mpp: float | None = None) -> list[tuple]:
    """Open ``path`` and return napari layer data (one lazy multiscale RGB image layer).

    Raises ``napari_ghanet.io.slide.SlideError`` when the file cannot be read.
    """
    from napari_ghanet.io.slide import open_slide

    slide = open_slide(path, mpp=mpp, require_mpp=False)
    return [slide_layer_data(slide)]


def _looks_like_slide(slide) -> bool:
    """Whether a TIFF that opened is an RGB slide rather than a stack napari reads better."""
    if slide.level_count > 1 or slide.mpp is not None:
        return True
    return slide.backend in ("openslide", "jpegtiles") or slide.vendor == "ome-tiff"


def napari_get_reader(path):
    """npe2 reader hook: a reader function for a slide file, or None if it is not one."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | os.PathLike):
        return None
    if isinstance(path, str) and path[:8].lower().startswith(("http://", "https://")):
        return _url_reader(path)
    path = Path(path)
    if not path.is_file():
        return None
    from napari_ghanet.io.slide import SlideError, open_slide

    try:
        slide = open_slide(path, require_mpp=False)
    except SlideError as exc:
        logger.debug("napari-ghanet does not read %s: %s", path, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a reader hook must never raise
        logger.debug("napari-ghanet does not read %s: %s", path, exc)
        return None
    if path.name.lower().endswith(_TIFF_SUFFIXES) and not _looks_like_slide(slide):
        slide.close()
        return None

    def reader(_path) -> list[tuple]:
        return [slide_layer_data(slide)]

    return reader


def _url_reader(url: str):
    """npe2 reader for a DICOMweb series URL (File > Open with the URL)."""
    from napari_ghanet.io.slide import SlideError, open_slide

    try:
        slide = open_slide(url, require_mpp=False)
    except SlideError as exc:  # a reader hook must never raise
        logger.debug("napari-ghanet does not read %s: %s", url, exc)
        return None

    def reader(_path) -> list[tuple]:
        return [slide_layer_data(slide)]

    return reader
