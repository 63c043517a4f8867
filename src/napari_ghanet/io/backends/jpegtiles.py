"""Direct JPEG-tile backend: tiled JPEG TIFF, Aperio SVS and OME-TIFF read near the speed
of the JPEG decoder.

Tried first. For a TIFF whose pyramid levels are tiled, 8-bit, chunky JPEG (compression 7,
RGB, YCbCr or greyscale) it reads a region by fetching the compressed tiles it covers with
``os.pread`` (offsets and byte counts from tifffile) and decoding each with libjpeg-turbo
(``imagecodecs.jpeg8_decode``, with the level's shared ``JPEGTables``). Everything else
about the file (levels, downsamples, properties, mpp, vendor, OpenSlide's quickhash) comes
from the backend that would otherwise read it: OpenSlide for the formats OpenSlide reads
(Aperio ``.svs``, generic tiled TIFF), tifffile for OME-TIFF and SubIFD pyramids. Levels
that are not tiled JPEG (JPEG 2000 Aperio levels, striped levels, ...) are read through
that backend, so a file reads in full either way.

Colour follows the TIFF photometric tag, as OpenSlide does: YCbCr data (photometric 6)
is converted to RGB by libjpeg-turbo; photometric RGB means the JPEG stream itself is RGB
(Aperio writes RGB JPEG without an Adobe APP14 marker, which libjpeg would otherwise take
for YCbCr), so no colour transform is applied whatever the markers say.

Pixels equal OpenSlide's ``read_region`` at the same level (both are libjpeg-turbo with
its default integer DCT and fancy upsampling): ``tests/test_fast_reader.py`` checks
equality on the real Aperio slide and on generated RGB and YCbCr 4:2:0 pyramids. At
levels whose downsample is not an integer OpenSlide may resample by a fraction of a pixel;
this backend always copies whole level pixels.

Each tile is decoded once while it stays in a small LRU cache (``cache_bytes``, 64 MiB by
default, about 340 RGB tiles of 256 x 256 px), even when several patches, or several
threads at once, ask for it: a thread wanting a tile another thread is decoding waits for
that decode. All reads are thread-safe (``os.pread`` and libjpeg-turbo release the GIL).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from napari_ghanet.errors import SlideError
from napari_ghanet.io.backends.base import WHITE, Backend, BackendDeclined, Probe
from napari_ghanet.io.backends.openslide import OpenSlideBackend
from napari_ghanet.io.backends.tiff import TiffBackend

__all__ = ["JpegTileLevel", "JpegTilesBackend", "TileDecoder", "jpeg_level"]

_JPEG = 7  # TIFF compression "JPEG" (new style, TIFF 6.0 technote 2)
_RGB, _YCBCR, _MINISBLACK = 2, 6, 1


class JpegTileLevel:
    """Where the compressed tiles of one tiled JPEG level lie and how to decode them.

    Attributes
    ----------
    width, height : int
        Level size in pixels.
    tile_w, tile_h : int
        Tile size in pixels.
    nx, ny : int
        Tiles across and down.
    offsets, counts : ndarray of int64
        File offset and byte count of each tile, row-major.
    tables : bytes or None
        The level's ``JPEGTables`` (quantisation and Huffman tables shared by its tiles).
    colorspace : str
        Colour space of the JPEG data: ``"RGB"``, ``"YCBCR"`` or ``"GRAYSCALE"``.
    """

    def __init__(self, page):
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.nx = -(-self.width // self.tile_w)
        self.ny = -(-self.height // self.tile_h)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        tables = getattr(page, "jpegtables", None)
        self.tables = bytes(tables) if tables else None
        photometric = int(page.photometric)
        self.colorspace = {_RGB: "RGB", _YCBCR: "YCBCR", _MINISBLACK: "GRAYSCALE"}[photometric]
        self.outcolorspace = "GRAYSCALE" if photometric == _MINISBLACK else "RGB"
        self.tile_bytes = self.tile_w * self.tile_h * 3


def jpeg_level(page) -> JpegTileLevel | None:
    """A :class:`JpegTileLevel` for a tifffile page this backend decodes directly, or None
    (not tiled, not JPEG, not 8-bit, planar, extra samples, or a tile count that does not
    match the image).

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "t.tif"
    >>> tifffile.imwrite(path, np.zeros((300, 500, 3), np.uint8), tile=(256, 256),
    ...                  compression="jpeg", photometric="rgb")  # stored as YCbCr
    >>> with tifffile.TiffFile(path) as tif:
    ...     lv = jpeg_level(tif.pages[0])
    >>> (lv.nx, lv.ny, lv.colorspace)
    (2, 2, 'YCBCR')
    """
    try:
        if not page.is_tiled or int(page.compression) != _JPEG:
            return None
        if int(page.bitspersample) != 8 or int(page.imagedepth or 1) != 1:
            return None
        if page.extrasamples:
            return None
        photometric, spp = int(page.photometric), int(page.samplesperpixel)
        if not ((photometric in (_RGB, _YCBCR) and spp == 3) or (photometric == 1 and spp == 1)):
            return None
        if spp > 1 and int(page.planarconfig) != 1:
            return None
        level = JpegTileLevel(page)
    except Exception:  # noqa: BLE001 - an odd page is simply left to the other backend
        return None
    if level.tile_w <= 0 or level.tile_h <= 0:
        return None
    if level.offsets.size != level.nx * level.ny or level.counts.size != level.offsets.size:
        return None
    return level


class TileDecoder:
    """Decoded tiles of JPEG levels, each decoded once while cached; thread-safe.

    Parameters
    ----------
    path : Path
        The TIFF file.
    levels : dict of int -> JpegTileLevel
        The levels to decode, by pyramid index.
    cache_bytes : int
        Most bytes of decoded tiles kept (least recently used dropped first; at least one
        tile is always kept).
    """

    def __init__(self, path: Path, levels: dict[int, JpegTileLevel], cache_bytes: int):
        self.path = path
        self.levels = levels
        self.cache_bytes = int(cache_bytes)
        self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._fd_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached = 0
        self._inflight: dict[tuple[int, int], threading.Event] = {}
        self._lock = threading.Lock()
        self.decoded = 0  # tiles decoded so far (a decode-once check for tests)

    def _pread(self, offset: int, count: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, count, offset)
        with self._fd_lock:  # pragma: no cover - platforms without pread
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    def _decode(self, li: int, ti: int) -> np.ndarray | None:
        import imagecodecs

        lv = self.levels[li]
        offset, count = int(lv.offsets[ti]), int(lv.counts[ti])
        if count <= 0 or offset <= 0:
            return None  # a tile the scanner did not write: background
        data = self._pread(offset, count)
        if len(data) != count:
            raise SlideError(f"{self.path}: file is truncated (tile {ti} of level {li})")
        try:
            arr = imagecodecs.jpeg8_decode(
                data, tables=lv.tables, colorspace=lv.colorspace, outcolorspace=lv.outcolorspace
            )
        except Exception as exc:
            raise SlideError(
                f"{self.path}: corrupt JPEG tile {ti} at level {li}: {type(exc).__name__}: {exc}"
            ) from exc
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.shape[2] != 3:  # pragma: no cover - jpeg8_decode returns what was asked
            arr = np.ascontiguousarray(arr[:, :, :3])
        ty, tx = divmod(ti, lv.nx)
        need_h = min(lv.tile_h, lv.height - ty * lv.tile_h)
        need_w = min(lv.tile_w, lv.width - tx * lv.tile_w)
        if arr.shape[0] < need_h or arr.shape[1] < need_w:
            raise SlideError(
                f"{self.path}: JPEG tile {ti} at level {li} is {arr.shape[1]}x{arr.shape[0]} "
                f"px, smaller than its {need_w}x{need_h} px place in the image"
            )
        arr.flags.writeable = False
        self.decoded += 1
        return arr

    def tile(self, li: int, ti: int) -> np.ndarray | None:
        """Decoded tile ``ti`` (row-major) of level ``li``, read-only (rows, cols, 3) uint8;
        None for an absent tile."""
        key = (li, ti)
        while True:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit
                event = self._inflight.get(key)
                if event is None:
                    event = self._inflight[key] = threading.Event()
                    break
            event.wait()  # another thread is decoding it; then look in the cache again
        try:
            arr = self._decode(li, ti)
            if arr is not None:
                with self._lock:
                    self._cache[key] = arr
                    self._cached += arr.nbytes
                    while self._cached > self.cache_bytes and len(self._cache) > 1:
                        _, old = self._cache.popitem(last=False)
                        self._cached -= old.nbytes
            return arr
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            event.set()

    def read(self, li: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the rectangle in level ``li`` pixels; outside is white."""
        lv = self.levels[li]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        inside = x0 == x and y0 == y and x1 == x + w and y1 == y + h
        out = np.empty((h, w, 3), np.uint8) if inside else np.full((h, w, 3), WHITE, np.uint8)
        if x1 <= x0 or y1 <= y0:
            return out
        tw, th = lv.tile_w, lv.tile_h
        for tyi in range(y0 // th, (y1 - 1) // th + 1):
            sy = tyi * th
            cy0, cy1 = max(y0, sy), min(y1, sy + th)
            for txi in range(x0 // tw, (x1 - 1) // tw + 1):
                sx = txi * tw
                cx0, cx1 = max(x0, sx), min(x1, sx + tw)
                seg = self.tile(li, tyi * lv.nx + txi)
                dst = out[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
                if seg is None:
                    dst[...] = WHITE
                else:
                    dst[...] = seg[cy0 - sy : cy1 - sy, cx0 - sx : cx1 - sx]
        return out

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached = 0
        try:
            os.close(self._fd)
        except OSError:
            pass


class JpegTilesBackend(Backend):
    """Tiled JPEG levels decoded straight from the file; metadata, and any other level,
    from the OpenSlide or tifffile backend (see the module docstring)."""

    name = "jpegtiles"
    #: Bytes of decoded tiles kept per open slide.
    cache_bytes = 64 * 2**20

    @classmethod
    def can_open(cls, probe: Probe) -> bool:
        return probe.kind == "tiff" and probe.tiff_error is None

    def __init__(self, path: Path, probe: Probe):
        import tifffile

        self.path = path
        self.warnings = []
        with tifffile.TiffFile(str(path)) as tif:
            jpeg_pages = [
                (int(p.imagewidth), int(p.imagelength), p)
                for p in tif.pages
                if getattr(p, "is_tiled", False) and int(p.compression) == _JPEG
            ]
            if not jpeg_pages:
                raise BackendDeclined("no tiled JPEG directory")
            meta = self._metadata_backend(path, probe)
            try:
                pages = self._level_pages(meta, tif)
                levels = {i: lv for i, p in enumerate(pages) if (lv := jpeg_level(p)) is not None}
            except BaseException:
                meta.close()
                raise
        if not levels:
            meta.close()
            raise BackendDeclined("no pyramid level is a tiled 8-bit JPEG")
        self._meta = meta
        self.base = meta.name
        self.vendor = meta.vendor
        self.level_dimensions = list(meta.level_dimensions)
        self.downsamples = list(meta.downsamples)
        self.tile_sizes = list(meta.tile_sizes)
        self.properties = dict(meta.properties)
        self.properties["ghanet.reader"] = (
            f"jpegtiles (levels {sorted(levels)} decoded directly; the rest via {meta.name})"
        )
        self.objective_power = meta.objective_power
        self.file_mpp = meta.file_mpp
        self.mpp_source = meta.mpp_source
        self.warnings = list(meta.warnings)
        self.decoder = TileDecoder(path, levels, self.cache_bytes)

    @staticmethod
    def _metadata_backend(path: Path, probe: Probe) -> Backend:
        """The backend open_slide would pick after this one (OpenSlide, else tifffile)."""
        order = []
        if OpenSlideBackend.can_open(probe):
            order.append(OpenSlideBackend)
        if TiffBackend.can_open(probe):
            order.append(TiffBackend)
        for cls in order:
            try:
                return cls(path, probe)
            except SlideError:
                raise
            except Exception:  # noqa: BLE001 - Declined or a failure: let open_slide see it
                continue
        raise BackendDeclined("neither OpenSlide nor tifffile opens it")

    @staticmethod
    def _level_pages(meta: Backend, tif) -> list:
        """The tifffile page holding each of ``meta``'s levels (None where none does)."""
        if isinstance(meta, TiffBackend):
            return [lv.pages[0] if len(lv.pages) == 1 else None for lv in meta.levels]
        by_size: dict[tuple[int, int], object] = {}
        for p in tif.pages:
            if getattr(p, "is_tiled", False):
                by_size.setdefault((int(p.imagewidth), int(p.imagelength)), p)
        return [by_size.get(tuple(d)) for d in meta.level_dimensions]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if level in self.decoder.levels:
            return self.decoder.read(level, x, y, w, h)
        return self._meta.read(level, x, y, w, h)

    def close(self) -> None:
        self.decoder.close()
        self._meta.close()
