"""tifffile backend: OME-TIFF and pyramidal TIFFs OpenSlide does not read in full (pyramid
levels in SubIFDs or in the OME series), and plain (striped or tiled) single-level TIFFs.

Regions are decoded tile by tile (strip by strip), so a read never loads a whole level;
decoded segments are kept in a 64 MiB LRU cache. mpp comes from OME ``PhysicalSizeX``
(with its unit), ImageJ metadata, an Aperio description or the resolution tags.

A file whose basic tags (photometric interpretation, samples per pixel, image and tile
size, tile/strip offsets, compression) cannot be read or contradict each other is refused
with a :class:`~napari_ghanet.errors.SlideError` naming the tag: tifffile would otherwise
go on with defaults (a lost photometric tag decodes as min-is-white, in wrong colours).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

import numpy as np

from napari_ghanet.errors import SlideError
from napari_ghanet.io.backends.base import (
    UNIT_TO_UM,
    WHITE,
    Backend,
    Probe,
    fmt_prop,
    mpp_from_resolution,
    to_rgb8,
)

logger = logging.getLogger(__name__)

__all__ = ["TiffBackend", "check_basic_tags", "check_tiff_complete"]

# Tags without which a level cannot be decoded faithfully (TIFF 6.0 names).
_BASIC_TAGS = {
    256: "ImageWidth",
    257: "ImageLength",
    258: "BitsPerSample",
    259: "Compression",
    262: "PhotometricInterpretation",
    273: "StripOffsets",
    277: "SamplesPerPixel",
    278: "RowsPerStrip",
    279: "StripByteCounts",
    284: "PlanarConfiguration",
    322: "TileWidth",
    323: "TileLength",
    324: "TileOffsets",
    325: "TileByteCounts",
}
_JPEG_CODECS = (6, 7, 33003, 33005, 34892)
_TAG_CODE = re.compile(r"TiffTag (\d+)")


def check_basic_tags(page, where: str, messages: list[str] | tuple = ()) -> None:
    """Refuse a page whose basic tags are missing, unreadable or inconsistent.

    Parameters
    ----------
    page : tifffile.TiffPage
        The page holding a pyramid level.
    where : str
        How the message names the page ("level 0 of /path/x.svs").
    messages : list of str
        What tifffile logged while parsing the file; a basic tag named there and absent
        from the page was damaged, and the message is quoted as the reason.

    Raises
    ------
    SlideError
        Naming the tag and why.

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "ok.tif"
    >>> tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    >>> with tifffile.TiffFile(path) as tif:
    ...     check_basic_tags(tif.pages[0], "ok.tif")  # nothing to say
    """
    tags = page.tags
    reported = {}
    for msg in messages:
        for code in _TAG_CODE.findall(msg):
            reported.setdefault(int(code), msg)
    required = {256, 257, 262}
    required |= {322, 323, 324, 325} if page.is_tiled else {273, 279}
    for code, name in _BASIC_TAGS.items():
        if code in tags:
            continue
        if code in reported:
            raise SlideError(
                f"{where}: the TIFF tag {name} ({code}) cannot be read ({reported[code]}); "
                "the file is damaged, and decoding it with a guessed value would change its "
                "colours or layout. Re-export or re-scan the slide"
            )
        if code in required:
            raise SlideError(
                f"{where}: the required TIFF tag {name} ({code}) is missing; the file is "
                "damaged or not a valid slide. Re-export or re-scan the slide"
            )
    photometric = int(page.photometric)
    spp = int(page.samplesperpixel)
    compression = int(page.compression)
    problem = None
    if photometric in (2, 6) and spp < 3:
        problem = f"photometric {page.photometric.name} needs 3 samples per pixel, not {spp}"
    elif photometric == 3 and spp != 1:
        problem = f"a palette image must have 1 sample per pixel, not {spp}"
    elif photometric in (0, 1) and spp >= 3 and compression in _JPEG_CODECS:
        problem = (
            f"{spp}-sample JPEG data cannot be photometric {page.photometric.name} "
            "(colour JPEG is RGB or YCbCr)"
        )
    elif page.is_tiled and (page.tilewidth <= 0 or page.tilelength <= 0):
        problem = f"tile size {page.tilewidth}x{page.tilelength} px is not positive"
    elif len(page.dataoffsets) != len(page.databytecounts):
        problem = (
            f"{len(page.dataoffsets)} segment offsets but {len(page.databytecounts)} byte counts"
        )
    else:
        if page.is_tiled:
            nx = -(-int(page.imagewidth) // int(page.tilewidth))
            ny = -(-int(page.imagelength) // int(page.tilelength))
        else:
            rps = int(min(page.rowsperstrip or page.imagelength, page.imagelength)) or 1
            nx, ny = 1, -(-int(page.imagelength) // rps)
        planes = spp if page.planarconfig == 2 else 1
        expected = nx * ny * planes * max(1, int(page.imagedepth or 1))
        if len(page.dataoffsets) not in (expected, 0):
            kind = "tiles" if page.is_tiled else "strips"
            problem = (
                f"the image needs {expected} {kind} but the directory lists {len(page.dataoffsets)}"
            )
    if problem is None:
        from tifffile import TIFF

        if compression != 1 and compression not in TIFF.DECOMPRESSORS:
            problem = f"compression {compression} has no decoder"
    if problem is not None:
        raise SlideError(
            f"{where}: inconsistent TIFF tags: {problem}; the file is damaged or not a "
            "supported slide"
        )


def check_tiff_complete(path: Path, messages: list[str] | tuple = ()) -> None:
    """Refuse a truncated or damaged TIFF-based slide at open (OpenSlide would fail tile by
    tile, or read what its own decoder guesses).

    The first directory and every tiled one (the pyramid levels) must pass
    :func:`check_basic_tags`; ``messages`` are tifffile's log lines about the file.

    Raises
    ------
    SlideError
        When some directory's image data lies beyond the end of the file, or a level's
        basic tags are unreadable or inconsistent.
    """
    import tifffile

    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            for i, page in enumerate(tif.pages):
                if i == 0 or page.is_tiled:
                    check_basic_tags(page, f"{path}: directory {i}", messages)
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


class TiffLevel:
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


class TiffBackend(Backend):
    """TIFF pyramids (main IFDs, SubIFDs, OME series) and plain TIFFs, read with tifffile."""

    name = "tifffile"

    @classmethod
    def can_open(cls, probe: Probe) -> bool:
        return probe.kind == "tiff" and probe.tiff_error is None

    def __init__(self, path: Path, probe: Probe):
        import tifffile

        self.path = path
        self.warnings = []
        self._messages = probe.log.messages
        self._tif = tifffile.TiffFile(str(path))
        try:
            self._setup(self._tif)
        except BaseException:
            self._tif.close()
            raise
        self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._fd_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = 64 * 2**20
        self._cache_lock = threading.Lock()

    # -- structure

    def _setup(self, tif) -> None:
        path = self.path
        self._file_size = os.path.getsize(path)
        if not tif.series or not len(tif.pages):
            raise SlideError(
                f"{path}: file is truncated or corrupt: no readable image directory in the TIFF"
            )
        series = max(tif.series[:1] or tif.series, key=lambda s: int(np.prod(s.shape)))
        self.vendor = "ome-tiff" if tif.is_ome else "tiff"
        self.levels: list[TiffLevel] = []
        for i, lev in enumerate(series.levels):
            check_basic_tags(lev.keyframe, f"{path}: level {i}", self._messages)
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

    def _make_level(self, lev) -> TiffLevel:
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
            return TiffLevel(kf, chans, width, height)
        if kf.photometric not in (0, 1, 2, 3, 6) and kf.samplesperpixel not in (1, 3, 4):
            raise SlideError(
                f"{self.path}: photometric interpretation {kf.photometric!r} is not supported"
            )
        return TiffLevel(kf, [pages[0]], width, height)

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
            props[f"tiff.{tag.name}"] = fmt_prop(tag.value)
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
                    scale = UNIT_TO_UM.get(unit)
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
            scale = UNIT_TO_UM.get(unit)
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
                self.file_mpp = mpp_from_resolution(res, str(int(unit.value)))
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

    def _read_raw_rows(self, lv: TiffLevel, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
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
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        if lv.raw_rows:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = to_rgb8(self._read_raw_rows(lv, x0, y0, x1, y1))
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
                out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = to_rgb8(block)
        return out

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._tif.close()
