"""Tiled, pyramidal, Aperio-compatible TIFF files that OpenSlide and tifffile read."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from napari_ghanet.errors import ArgumentError
from napari_ghanet.io.atomic import atomic_path

__all__ = ["write_pyramidal_tiff"]


_COMPRESSIONS = {"jpeg": "jpeg", "deflate": "adobe_deflate", "lzw": "lzw", "none": None}


def _downsample_area(img: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an (H, W, C) uint8 image by an integer factor (edges padded by replication)."""
    h, w = img.shape[:2]
    hh, ww = math.ceil(h / factor), math.ceil(w / factor)
    pad = ((0, hh * factor - h), (0, ww * factor - w), (0, 0))
    if any(p[1] for p in pad):
        img = np.pad(img, pad, mode="edge")
    out = np.empty((hh, ww, img.shape[2]), np.uint8)
    band = max(1, 1024 // factor)
    for r0 in range(0, hh, band):
        r1 = min(r0 + band, hh)
        block = img[r0 * factor : r1 * factor].reshape(r1 - r0, factor, ww, factor, -1)
        out[r0:r1] = np.rint(block.mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)
    return out


def _auto_levels(shape_hw: tuple[int, int], tile: int, downsample: int) -> int:
    levels, h, w = 1, *shape_hw
    while min(math.ceil(h / downsample), math.ceil(w / downsample)) >= tile // 2:
        h, w = math.ceil(h / downsample), math.ceil(w / downsample)
        levels += 1
    return levels


def _atomic_target(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file path")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist; create it first")
    return path


def write_pyramidal_tiff(
    path: str | os.PathLike,
    rgb: np.ndarray,
    *,
    mpp: float,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    levels: int | None = None,
    downsample: int = 4,
    objective_power: float | None = None,
    title: str = "napari-ghanet pyramidal TIFF",
    overwrite: bool = True,
) -> Path:
    """Write an RGB image as a tiled, pyramidal TIFF that OpenSlide and tifffile read.

    The layout is Aperio-compatible: page 0 the full-resolution tiled image, page 1 a
    stripped thumbnail, then the tiled reduced levels. The ImageDescription starts
    ``Aperio Image Library`` and carries ``|MPP = ...|AppMag = ...`` so OpenSlide
    reports ``openslide.mpp-x`` and ``openslide.objective-power``; every tiled page
    also has X/YResolution in pixels per centimetre. The file is written to a
    temporary name in the same folder and moved into place, so a failed write leaves
    nothing behind.

    Parameters
    ----------
    path : path-like
        Output file (``.tif``, ``.tiff`` or ``.svs``).
    rgb : (H, W, 3) uint8
        Level-0 image.
    mpp : float
        Microns per pixel at level 0.
    tile : int
        Tile edge in pixels, a multiple of 16.
    compression : {"jpeg", "deflate", "lzw", "none"}
    quality : int
        JPEG quality (1-100).
    levels : int, optional
        Number of pyramid levels, level 0 included. By default levels are added while
        the next one's shorter side is at least ``tile // 2``.
    downsample : {2, 4}
        Size ratio between successive levels; each level is an area average of the
        one above.
    objective_power : float, optional
        Written as ``AppMag``; by default ``10 / mpp`` (20 at 0.5 um/px).

    Returns
    -------
    Path
        The written file.
    """
    import tifffile

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ArgumentError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if not (isinstance(mpp, int | float) and 0 < mpp <= 20):
        raise ArgumentError(f"mpp must be a positive number of microns per pixel (<= 20), got {mpp!r}")
    if compression not in _COMPRESSIONS:
        raise ArgumentError(f"compression must be one of {sorted(_COMPRESSIONS)}, got {compression!r}")
    if tile < 16 or tile % 16:
        raise ArgumentError(f"tile must be a positive multiple of 16, got {tile}")
    if downsample not in (2, 4):
        raise ArgumentError(f"downsample must be 2 or 4, got {downsample}")
    if not 1 <= int(quality) <= 100:
        raise ArgumentError(f"quality must be between 1 and 100, got {quality}")
    n_levels = _auto_levels(rgb.shape[:2], tile, downsample) if levels is None else int(levels)
    if n_levels < 1:
        raise ArgumentError(f"levels must be at least 1, got {levels}")
    path = _atomic_target(path, overwrite)
    mag = float(objective_power) if objective_power is not None else 10.0 / float(mpp)

    pyramid = [rgb]
    for _ in range(1, n_levels):
        pyramid.append(_downsample_area(pyramid[-1], downsample))
    thumb = pyramid[-1]
    while max(thumb.shape[:2]) > 1024:
        thumb = _downsample_area(thumb, 2)

    h, w = rgb.shape[:2]
    description = (
        "Aperio Image Library compatible\r\n"
        f"{w}x{h} ({tile}x{tile}) {compression.upper()}/RGB Q={int(quality)}"
        f"|AppMag = {mag:g}|MPP = {float(mpp):.6g}|Title = {title}"
    )
    codec = _COMPRESSIONS[compression]
    kwargs: dict = {"photometric": "rgb", "metadata": None, "compression": codec}
    if codec == "jpeg":
        kwargs["compressionargs"] = {"level": int(quality)}
    px_per_cm = 1e4 / float(mpp)

    # The temporary name ends in .partial, so a glob for *.tif never sees a half-written slide.
    with atomic_path(path, suffix=".partial") as tmp_name:
        with tifffile.TiffWriter(tmp_name, bigtiff=rgb.nbytes > 2**31) as tif:
            for i, level in enumerate(pyramid):
                scale = float(downsample**i)
                tif.write(
                    level,
                    tile=(tile, tile),
                    resolution=(px_per_cm / scale, px_per_cm / scale),
                    resolutionunit="CENTIMETER",
                    description=description if i == 0 else None,
                    subfiletype=0,
                    maxworkers=2,
                    **kwargs,
                )
                if i == 0:
                    scale_t = w / thumb.shape[1]
                    tif.write(
                        thumb,
                        rowsperstrip=16,
                        resolution=(px_per_cm / scale_t, px_per_cm / scale_t),
                        resolutionunit="CENTIMETER",
                        description=f"{description}\r\n-> {thumb.shape[1]}x{thumb.shape[0]}",
                        subfiletype=0,
                        **kwargs,
                    )
    return path
