"""OpenSlide backend: Aperio ``.svs``, Hamamatsu ``.ndpi``, MIRAX ``.mrxs``, Leica ``.scn``,
Ventana ``.bif``, DICOM WSI and generic tiled TIFF whose pyramid is a chain of main IFDs.

Tried first. It declines a generic TIFF whose pyramid tifffile sees more levels of (levels
in SubIFDs, which OpenSlide ignores) so the tifffile backend reads the whole pyramid.
TIFF-based files are checked for truncation at open (OpenSlide would only fail tile by
tile), and what tifffile cannot parse in their tags is recorded as a warning.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from napari_ghanet.errors import SlideError
from napari_ghanet.io.backends.base import Backend, BackendDeclined, Probe, composite, fmt_prop
from napari_ghanet.io.backends.base import mpp_from_resolution as _mpp_from_resolution
from napari_ghanet.io.backends.tiff import check_tiff_complete

logger = logging.getLogger(__name__)

__all__ = ["OpenSlideBackend"]

_TIFF_FORMATS = ("aperio", "generic-tiff", "trestle", "philips")


class OpenSlideBackend(Backend):
    """Slides read through OpenSlide; level coordinates scaled by OpenSlide's downsamples."""

    name = "openslide"

    @classmethod
    def can_open(cls, probe: Probe) -> bool:
        if probe.kind == "tiff" and probe.is_ome:
            return False  # OME pyramids live in the OME series / SubIFDs: tifffile
        return probe.openslide_format is not None

    def __init__(self, path: Path, probe: Probe):
        import openslide

        self._openslide = openslide
        self.path = path
        self.warnings = []
        self._lock = threading.Lock()
        self._osr = openslide.OpenSlide(str(path))
        osr = self._osr
        self.level_dimensions = [tuple(map(int, d)) for d in osr.level_dimensions]
        fmt = probe.openslide_format
        if fmt == "generic-tiff" and probe.tiff_levels > len(self.level_dimensions):
            osr.close()
            raise BackendDeclined(
                f"OpenSlide sees {len(self.level_dimensions)} of {probe.tiff_levels} levels"
            )
        if probe.kind == "tiff" and fmt in _TIFF_FORMATS:
            try:
                check_tiff_complete(path, probe.log.messages)
            except BaseException:
                osr.close()
                raise
        self.downsamples = [float(d) for d in osr.level_downsamples]
        self.properties = {k: fmt_prop(v) for k, v in osr.properties.items()}
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
        return composite(arr[:, :, :3], arr[:, :, 3])

    def _reopen(self, failed) -> None:
        with self._lock:
            if self._osr is failed:
                try:
                    self._osr = self._openslide.OpenSlide(str(self.path))
                except Exception as exc:  # noqa: BLE001 - keep the old handle, report once
                    logger.error("%s: could not reopen after a read error: %s", self.path, exc)

    def close(self) -> None:
        self._osr.close()
