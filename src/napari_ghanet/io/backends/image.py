"""Pillow backend: PNG, JPEG and other plain images, read into memory as a one-level slide.

Tried last, for files that are not TIFF. Images larger than 2**31 pixels are refused (they
must be tiled TIFFs); 16-bit images keep their high byte. mpp comes from the image's dpi
(a JFIF density of unit 0 is an aspect ratio, not a resolution, and is ignored).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from napari_ghanet.errors import SlideError
from napari_ghanet.io.backends.base import WHITE, Backend, Probe, fmt_prop, to_rgb8

__all__ = ["ImageBackend"]

# Largest plain image decoded into memory (pixels); bigger ones must be tiled TIFFs.
_MAX_PLAIN_PIXELS = 2**31
_PIL_LOCK = threading.Lock()


class ImageBackend(Backend):
    """A plain image decoded whole with Pillow (one level, no tiles)."""

    name = "pillow"

    @classmethod
    def can_open(cls, probe: Probe) -> bool:
        return probe.kind != "tiff"

    def __init__(self, path: Path, probe: Probe):
        from PIL import Image

        self.path = path
        self.warnings = []

        with _PIL_LOCK:
            # Slides are legitimately huge: replace Pillow's bomb guard by our own limit.
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with img:
            if img.width * img.height > _MAX_PLAIN_PIXELS:
                raise SlideError(
                    f"{path}: {img.width}x{img.height} px is too large for a plain image; "
                    "convert it to a tiled pyramidal TIFF"
                )
            self.vendor = (img.format or "image").lower()
            info = dict(img.info)
            try:
                img.load()
            except (OSError, SyntaxError, ValueError) as exc:
                raise SlideError(
                    f"{path}: truncated or corrupt {self.vendor} image: {exc}"
                ) from exc
            if img.mode in ("RGB", "RGBA", "L", "LA"):
                arr = np.asarray(img)
            elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int64)
                arr = (arr >> 8).astype(np.uint8) if img.mode != "I" else arr.clip(0, 255)
            else:
                arr = np.asarray(img.convert("RGBA"))
        self.array = to_rgb8(arr)
        self.level_dimensions = [(self.array.shape[1], self.array.shape[0])]
        self.downsamples = [1.0]
        self.tile_sizes = [None]
        self.properties = {
            f"image.{k}": fmt_prop(v)
            for k, v in info.items()
            if k not in ("icc_profile", "exif", "xmp")
        }
        self.properties["image.format"] = self.vendor
        dpi = info.get("dpi")
        if dpi and self.vendor == "jpeg" and info.get("jfif_unit", 1) == 0:
            dpi = None  # JFIF density unit 0 is an aspect ratio, not a resolution
        if dpi and float(dpi[0]) > 0:
            self.file_mpp = 25400.0 / float(dpi[0])
            self.mpp_source = "image resolution (dpi)"

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr = self.array
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, arr.shape[1]), min(y + h, arr.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[y0:y1, x0:x1]
        return out
