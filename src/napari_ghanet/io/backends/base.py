"""What every slide backend provides, and the helpers they share.

A backend class reads one family of files. :func:`napari_ghanet.io.slide.open_slide`
builds a :class:`Probe` of the file once (its first bytes, what tifffile and OpenSlide say
about it), asks each registered backend in order whether it ``can_open`` the probe, and
opens the first that does. A backend may still decline at open time by raising
:class:`BackendDeclined` (not an error: the next backend is tried silently); any other
failure is a *fallback*, recorded in :attr:`Slide.warnings` when a later backend opens the
file.

Backend coordinates are the level's own pixels, (x, y) order, top-left corners; every read
returns RGB ``uint8`` of shape ``(h, w, 3)`` with transparent and outside pixels white.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Backend", "BackendDeclined", "Probe", "TiffLogCapture"]

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
WHITE = 255


class BackendDeclined(Exception):
    """Raised by a backend's constructor when another backend suits the file better."""


class Probe:
    """What is known about a file before any backend opens it (computed lazily, once).

    Attributes
    ----------
    path : Path
    kind : str
        ``"tiff"`` when the file starts with a TIFF/BigTIFF signature, else ``"other"``.
    log : TiffLogCapture
        What tifffile logged while the file was probed and opened (``log.messages``).
    """

    def __init__(self, path: Path, log: TiffLogCapture | None = None):
        self.path = path
        self.log = log if log is not None else TiffLogCapture()
        with open(path, "rb") as fh:
            head = fh.read(8)
        self.kind = "tiff" if head[:4] in TIFF_MAGIC else "other"
        self._tiff: tuple[int, bool, str | None] | None = None
        self._openslide: tuple[str | None, str | None] | None = None

    def _tiff_info(self) -> tuple[int, bool, str | None]:
        if self._tiff is None:
            if self.kind != "tiff":
                self._tiff = (0, False, "not a TIFF")
            else:
                import tifffile

                try:
                    with tifffile.TiffFile(str(self.path)) as tif:
                        levels = len(tif.series[0].levels) if tif.series else 0
                        self._tiff = (levels, bool(tif.is_ome), None)
                except Exception as exc:  # noqa: BLE001 - a broken TIFF may still suit OpenSlide
                    self._tiff = (0, False, str(exc))
        return self._tiff

    @property
    def tiff_levels(self) -> int:
        """Pyramid levels tifffile sees in the first series (0 when none or not a TIFF)."""
        return self._tiff_info()[0]

    @property
    def is_ome(self) -> bool:
        return self._tiff_info()[1]

    @property
    def tiff_error(self) -> str | None:
        """Why tifffile could not parse the file, or None."""
        return self._tiff_info()[2] if self.kind == "tiff" else None

    def _openslide_info(self) -> tuple[str | None, str | None]:
        if self._openslide is None:
            import openslide

            try:
                self._openslide = (openslide.OpenSlide.detect_format(str(self.path)), None)
            except Exception as exc:  # noqa: BLE001
                self._openslide = (None, str(exc))
        return self._openslide

    @property
    def openslide_format(self) -> str | None:
        """OpenSlide's vendor name for the file (``"aperio"``, ``"generic-tiff"``...) or None."""
        return self._openslide_info()[0]

    @property
    def openslide_error(self) -> str | None:
        return self._openslide_info()[1]


class Backend:
    """What a file format must provide; coordinates here are in the level's own pixels.

    Subclasses set the attributes below in ``__init__(path, probe)`` and implement
    :meth:`read`; :meth:`can_open` says from the probe alone whether to try them.
    ``warnings`` collects what the user should know about the file (tags tifffile could
    not read, ...); :class:`Slide` shows them as ``Slide.warnings``.
    """

    name = "?"
    vendor = "unknown"
    level_dimensions: list[tuple[int, int]]
    downsamples: list[float]
    tile_sizes: list[tuple[int, int] | None]
    properties: dict[str, str]
    objective_power: float | None = None
    file_mpp: float | None = None
    mpp_source: str = "the file"

    def __init__(self, path: Path, probe: Probe):  # pragma: no cover - interface
        self.path = path
        self.warnings: list[str] = []

    @classmethod
    def can_open(cls, probe: Probe) -> bool:
        """Whether this backend should be tried on the probed file."""
        raise NotImplementedError

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the rectangle in level pixels; outside is white."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - trivial default
        pass


class TiffLogCapture(logging.Filter):
    """Collect (and keep out of the log) what tifffile logs in this thread.

    tifffile reports tags it cannot parse through the ``tifffile`` logger and then goes on
    with defaults (a lost photometric tag becomes min-is-white); the messages collected here
    let the backends refuse such a file or record the warning on the slide. Records from
    other threads pass through untouched.

    Examples
    --------
    >>> import logging
    >>> with TiffLogCapture() as cap:
    ...     logging.getLogger("tifffile").error("<tifffile.TiffTag 262 @8> invalid data type")
    >>> cap.messages
    ['<tifffile.TiffTag 262 @8> invalid data type']
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self._thread:
            return True
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)
        return False

    def __enter__(self) -> TiffLogCapture:
        logging.getLogger("tifffile").addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("tifffile").removeFilter(self)


# --------------------------------------------------------------------------- helpers


def to_rgb8(arr: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array -> RGB uint8 (h, w, 3); alpha composited on white.

    Examples
    --------
    >>> to_rgb8(np.array([[0, 65535]], np.uint16)).tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    """
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
        return composite(np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1])
    if c == 3:
        return np.ascontiguousarray(a)
    return composite(a[:, :, :3], a[:, :, 3])


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight (non-premultiplied) alpha over white, uint8 in and out."""
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[:, :, None]
    out = (rgb.astype(np.uint16) * a + WHITE * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def resize_rgb(arr: np.ndarray, width: int, height: int) -> np.ndarray:
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


UNIT_TO_UM = {
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


def mpp_from_resolution(res: float | None, unit: str | None) -> float | None:
    """TIFF-style pixels-per-unit resolution -> um/px; None when the unit is not physical.

    Examples
    --------
    >>> mpp_from_resolution(20000.0, "centimeter")
    0.5
    >>> mpp_from_resolution(72.0, "none") is None
    True
    """
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


def fmt_prop(value: Any, limit: int = 2000) -> str:
    """A property value as text, at most ``limit`` characters."""
    text = value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."
