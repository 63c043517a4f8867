"""Slides on a DICOMweb archive: metadata from WADO-RS, pixels from batched frame retrieval.

A slide-microscopy series (``.../studies/<Study>/series/<Series>``, see
:mod:`napari_ghanet.io.dicomweb`) is opened from its WADO-RS series metadata: each
``VOLUME`` instance (or concatenation of instances) of the first focal plane and optical
path is a pyramid level; its tile layout (``Columns`` x ``Rows`` frames in a
``TotalPixelMatrixColumns`` x ``TotalPixelMatrixRows`` matrix, ``TILED_FULL`` or
per-frame positions), pixel spacing (mpp), ICC profile presence and optical path come
from the metadata, no pixel is read to open it.

Pixels come from WADO-RS frame retrieval, asking for the frames as stored
(``transfer-syntax=*``): a read fetches the frames it needs *and* the next frames of the
same tile rows (read-ahead, ``readahead`` tiles), several frame numbers per request
(``batch``) and several requests in flight at once (``inflight``), so the patches the
pipeline's reader threads ask for next are usually decoded already. JPEG frames are decoded
by libjpeg-turbo as the local JPEG-tile reader does (:mod:`.jpegtiles`), so a DICOM slide
made from an Aperio file without re-encoding gives the file's pixels; JPEG 2000 (and
HTJ2K), JPEG-LS and lossless JPEG through imagecodecs; uncompressed frames as they are.
Decoded tiles are kept in a bounded LRU cache; a frame fetched by one thread is never
fetched again by another waiting for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from napari_ghanet.io.backends.base import WHITE, Backend, to_rgb8
from napari_ghanet.io.dicomweb import (
    DicomWebClient,
    DicomWebError,
    DicomWebRef,
    is_dicomweb_url,
    parse_url,
    value,
    values,
)

__all__ = ["DicomWebBackend", "SlideURL", "decode_frame", "levels_from_metadata",
           "objective_power", "series_mpp", "series_properties"]

# transfer syntaxes
JPEG_BASELINE = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
             "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
SM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"


class SlideURL(PurePosixPath):
    """The ``Slide.path`` of a DICOMweb series: ``str()`` is the series URL; as a path it is
    ``/dicomweb/<host_port>/<SeriesInstanceUID>.dicomweb``, so ``.name`` / ``.stem`` give
    file-name-safe output names (the series UID) wherever a slide file's would be used.

    Examples
    --------
    >>> p = SlideURL.from_url("http://127.0.0.1:8042/dicom-web/studies/1.2/series/1.2.3")
    >>> str(p), p.stem
    ('http://127.0.0.1:8042/dicom-web/studies/1.2/series/1.2.3', '1.2.3')
    """

    url: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SlideURL:
        ref = parse_url(url)
        host = ref.server.split("://", 1)[1].replace(":", "_")
        p = cls("/dicomweb", host, f"{ref.series or ref.study}.dicomweb")
        p.url = ref.url
        return p

    def __str__(self) -> str:
        return self.url or super().__str__()

    def __repr__(self) -> str:
        return f"SlideURL({str(self)!r})"


@dataclass
class Level:
    """One pyramid level of a DICOM series: its size, tile layout and where each tile is."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    photometric: str
    samples: int
    transfer_syntax: str | None
    #: (first global frame index, SOP Instance UID, number of frames), by first index
    instances: list[tuple[int, str, int]] = field(default_factory=list)
    #: sparse tiling: (tx, ty) -> (SOP Instance UID, 1-based frame number)
    positions: dict[tuple[int, int], tuple[str, int]] | None = None

    @property
    def nx(self) -> int:
        return math.ceil(self.width / self.tile_w)

    @property
    def ny(self) -> int:
        return math.ceil(self.height / self.tile_h)

    def locate(self, tx: int, ty: int) -> tuple[str, int] | None:
        """(SOP Instance UID, 1-based frame number) of tile (tx, ty); None when absent."""
        if self.positions is not None:
            return self.positions.get((tx, ty))
        i = ty * self.nx + tx
        for first, sop, n in self.instances:
            if first <= i < first + n:
                return sop, i - first + 1
        return None


def _is_volume(ds: dict) -> bool:
    kinds = [str(v).upper() for v in values(ds, "00080008")]
    sop_class = value(ds, "00080016")
    return (sop_class in (None, SM_IMAGE_STORAGE) and len(kinds) >= 3 and kinds[2] == "VOLUME"
            and value(ds, "00480006") is not None)


def _positions(ds: dict, tw: int, th: int) -> dict[tuple[int, int], int]:
    """Sparse tiling: (tx, ty) -> 1-based frame number from the per-frame positions."""
    out: dict[tuple[int, int], int] = {}
    for k, item in enumerate(values(ds, "52009230"), start=1):
        pos = value(item, "0048021A")
        if not isinstance(pos, dict):
            continue
        col, row = value(pos, "0048021E"), value(pos, "0048021F")
        if col is None or row is None:
            continue
        out.setdefault(((int(col) - 1) // tw, (int(row) - 1) // th), k)
    return out


def levels_from_metadata(instances: list[dict], where: str) -> list[Level]:
    """The pyramid levels (largest first) of a series' WADO-RS metadata."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for ds in instances:
        if _is_volume(ds):
            key = (int(value(ds, "00480006")), int(value(ds, "00480007")))
            groups.setdefault(key, []).append(ds)
    if not groups:
        raise DicomWebError(f"{where}: the series holds no slide-microscopy VOLUME image "
                            "(is it a whole-slide image series?)")
    levels = []
    for (w, h), items in sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        first = items[0]
        tw, th = int(value(first, "00280011", 0)), int(value(first, "00280010", 0))
        if tw <= 0 or th <= 0:
            raise DicomWebError(f"{where}: a level without a frame size (Rows/Columns)")
        lv = Level(w, h, tw, th, str(value(first, "00280004", "RGB")).upper(),
                   int(value(first, "00280002", 3)), value(first, "00020010"))
        sparse = [ds for ds in items
                  if str(value(ds, "00209311", "TILED_FULL")).upper() != "TILED_FULL"]
        if sparse:
            lv.positions = {}
            for ds in items:
                for key, frame in _positions(ds, tw, th).items():
                    lv.positions.setdefault(key, (str(value(ds, "00080018")), frame))
        else:
            seen = set()
            for ds in sorted(items, key=lambda d: int(value(d, "00209162", 1))):
                first_index = int(value(ds, "00209228", 0))
                if first_index in seen:  # another focal plane / optical path's copy
                    continue
                seen.add(first_index)
                lv.instances.append((first_index, str(value(ds, "00080018")),
                                     int(value(ds, "00280008", 1))))
            lv.instances.sort()
        levels.append(lv)
    return levels


def series_mpp(ds: dict) -> float | None:
    """Microns per pixel of a level's dataset: its PixelSpacing (mm), else its total
    width (mm) over its columns; None when it has neither."""
    shared = value(ds, "52009229")
    measures = value(shared, "00289110") if isinstance(shared, dict) else None
    spacing = values(measures, "00280030") if isinstance(measures, dict) else []
    if len(spacing) == 2 and float(spacing[1]) > 0:
        return float(spacing[1]) * 1000.0  # mm -> um (column spacing: x)
    width_mm, cols = value(ds, "00480001"), value(ds, "00480006")
    if width_mm and cols:
        return float(width_mm) * 1000.0 / float(cols)
    return None


def _optical_path(ds: dict) -> dict:
    item = value(ds, "00480105")
    return item if isinstance(item, dict) else {}


def objective_power(ds: dict) -> float | None:
    """The objective lens power of the dataset's first optical path (None: not given)."""
    lens = value(_optical_path(ds), "00480112")
    return float(lens) if lens else None


def series_properties(ds: dict, ref: DicomWebRef, level0: Level) -> dict[str, str]:
    """The slide's properties (``dicomweb.*``, ``dicom.*``) from its level-0 dataset."""
    path_item = _optical_path(ds)
    return {
        "dicomweb.url": ref.url,
        "dicom.study_instance_uid": ref.study,
        "dicom.series_instance_uid": ref.series or "",
        "dicom.frame_of_reference_uid": str(value(ds, "00200052", "")),
        "dicom.container_identifier": str(value(ds, "00400512", "")),
        "dicom.photometric_interpretation": level0.photometric,
        "dicom.transfer_syntax": str(level0.transfer_syntax or "as stored"),
        "dicom.icc_profile": "present" if "00282000" in path_item else "absent",
        "dicom.optical_path": str(value(path_item, "00480106", "")),
        "dicom.optical_path_description": str(value(path_item, "00480107", "")),
        "dicom.manufacturer": str(value(ds, "00080070", "")),
        "dicom.level0_instances": " ".join(s for _, s, _ in level0.instances)
        or " ".join(sorted({s for s, _ in (level0.positions or {}).values()})),
    }


def decode_frame(data: bytes, ts: str | None, lv: Level) -> np.ndarray:
    """One frame as RGB uint8 (rows, cols, 3), from its transfer syntax."""
    import imagecodecs

    if ts is None:  # the server did not say: recognise the stream
        if data[:3] == b"\xff\xd8\xff":
            ts = JPEG_BASELINE[0]
        elif data[:4] in (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0c"):
            ts = JPEG_2000[0]
        else:
            ts = NATIVE[1]
    if ts in JPEG_BASELINE:
        colorspace = {"RGB": "RGB", "MONOCHROME2": "GRAYSCALE"}.get(lv.photometric, "YCBCR")
        arr = imagecodecs.jpeg8_decode(
            data, colorspace=colorspace,
            outcolorspace="GRAYSCALE" if colorspace == "GRAYSCALE" else "RGB",
        )
    elif ts in JPEG_2000:
        arr = imagecodecs.jpeg2k_decode(data)
    elif ts in JPEG_LS:
        arr = imagecodecs.jpegls_decode(data)
    elif ts in JPEG_LOSSLESS:
        arr = imagecodecs.ljpeg_decode(data)
    elif ts in NATIVE:
        n = lv.tile_w * lv.tile_h * lv.samples
        if len(data) < n:
            raise DicomWebError(f"uncompressed frame of {len(data)} bytes, {n} expected: "
                                "the server sent a truncated frame")
        arr = np.frombuffer(data[:n], np.uint8).reshape(lv.tile_h, lv.tile_w, lv.samples)
    else:
        raise DicomWebError(f"frames in transfer syntax {ts} cannot be decoded: ask the "
                            "server for JPEG, JPEG 2000 or uncompressed frames")
    return to_rgb8(arr)


class DicomWebBackend(Backend):
    """A DICOMweb series as a slide (see the module docstring).

    Parameters
    ----------
    path : SlideURL or str
        The series URL.
    client : DicomWebClient, optional
        Default: a client of the URL's server with the environment's credentials.
    batch : int
        Most frames one WADO-RS request asks for.
    inflight : int
        Most requests one read sends at once.
    readahead : int
        Tiles after the last one a read needs, in the same tile row, fetched with it.
    prefetch_tiles : int
        Tiles of the next tile rows fetched in the background after a read (0: none).
    cache_bytes : int
        Decoded tiles kept (bytes).
    """

    name = "dicomweb"
    vendor = "dicom"
    mpp_source = "DICOM PixelSpacing"

    def __init__(self, path, probe=None, *, client: DicomWebClient | None = None,
                 batch: int = 128, inflight: int = 4, readahead: int = 127,
                 prefetch_tiles: int = 384, cache_bytes: int = 256 * 2**20):
        self.path = path if isinstance(path, SlideURL) else SlideURL.from_url(str(path))
        self.warnings: list[str] = []
        ref: DicomWebRef = parse_url(str(self.path))
        if ref.series is None:
            raise DicomWebError(f"{ref.url}: a study URL names several series; open one "
                                "series URL (.../studies/<Study>/series/<Series>)")
        self.ref = ref
        self.client = client or DicomWebClient(ref.root)
        self.batch, self.inflight, self.readahead = max(1, batch), max(1, inflight), readahead
        self.prefetch_tiles = max(0, prefetch_tiles)
        self._pending = 0
        self.metadata = self.client.series_metadata(ref.study, ref.series)
        self.levels = levels_from_metadata(self.metadata, ref.where())
        self.level_dimensions = [(lv.width, lv.height) for lv in self.levels]
        w0 = self.levels[0].width
        self.downsamples = [w0 / lv.width for lv in self.levels]
        self.tile_sizes = [(lv.tile_w, lv.tile_h) for lv in self.levels]
        base = self._level0_dataset()
        self.file_mpp = series_mpp(base)
        self.objective_power = objective_power(base)
        self.properties = series_properties(base, ref, self.levels[0])
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray | None] = OrderedDict()
        self._cached = 0
        self._inflight: dict[tuple[int, int, int], threading.Event] = {}
        self._errors: dict[tuple[int, int, int], BaseException] = {}
        # fetched but not yet decoded (compressed frame, transfer syntax), oldest first
        self._raw: OrderedDict[tuple[int, int, int], tuple[bytes, str | None]] = OrderedDict()
        self._raw_bytes = 0
        self._decoding: dict[tuple[int, int, int], threading.Event] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.inflight,
                                        thread_name_prefix="ghanet-dicomweb")
        self.fetched = 0  # frames fetched so far (tests and benchmarks)

    @classmethod
    def can_open(cls, probe) -> bool:
        return False  # never a local file; open_slide hands it URLs (accepts_url)

    @classmethod
    def accepts_url(cls, text: str) -> bool:
        return is_dicomweb_url(text)

    # -- metadata

    def _level0_dataset(self) -> dict:
        size = (self.levels[0].width, self.levels[0].height)
        for ds in self.metadata:
            if _is_volume(ds) and (value(ds, "00480006"), value(ds, "00480007")) == size:
                return ds
        return self.metadata[0]  # pragma: no cover - levels_from_metadata found one

    def fingerprint(self) -> str:
        """The series' identity: its UIDs and every level's geometry (no pixel read)."""
        h = hashlib.sha256()
        h.update(f"{self.ref.study}/{self.ref.series}".encode())
        for lv in self.levels:
            h.update(json.dumps([lv.width, lv.height, lv.tile_w, lv.tile_h,
                                 lv.instances]).encode())
        return h.hexdigest()[:32]

    # -- pixels

    def _store(self, key: tuple[int, int, int], arr: np.ndarray | None) -> None:
        with self._lock:
            self._cache[key] = arr
            self._cached += 0 if arr is None else arr.nbytes
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= 0 if old is None else old.nbytes

    def _fetch(self, li: int, sop: str, items: list[tuple[int, tuple[int, int, int]]]) -> None:
        """Fetch frames (frame number, key) of one instance; wake the waiters."""
        lv = self.levels[li]
        try:
            blobs, ts = self.client.frames(self.ref.study, self.ref.series or "", sop,
                                           [n for n, _ in items])
            self.fetched += len(blobs)
            with self._lock:  # kept compressed; the reader that needs a tile decodes it
                for (_, key), data in zip(items, blobs):
                    self._raw[key] = (data, ts or lv.transfer_syntax)
                    self._raw_bytes += len(data)
                while self._raw_bytes > self.cache_bytes // 4 and len(self._raw) > len(items):
                    _, (old, _) = self._raw.popitem(last=False)
                    self._raw_bytes -= len(old)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting reader
            with self._lock:
                for _, key in items:
                    self._errors[key] = exc
        finally:
            with self._lock:
                for _, key in items:
                    ev = self._inflight.pop(key, None)
                    if ev is not None:
                        ev.set()

    def _decode(self, li: int, key: tuple[int, int, int], data: bytes, ts: str | None) -> None:
        """Decode one fetched frame into the cache (a failure is the waiters' error)."""
        try:
            lv = self.levels[li]
            arr = decode_frame(data, ts, lv)
            need_h = min(lv.tile_h, lv.height - key[2] * lv.tile_h)
            need_w = min(lv.tile_w, lv.width - key[1] * lv.tile_w)
            if arr.shape[0] < need_h or arr.shape[1] < need_w:
                raise DicomWebError(f"the frame is {arr.shape[1]}x{arr.shape[0]} px, smaller than "
                                    f"its {need_w}x{need_h} px place in the image")
            arr.flags.writeable = False
            self._store(key, arr)
        except Exception as exc:  # noqa: BLE001 - named per tile
            with self._lock:
                self._errors[key] = DicomWebError(
                    f"{self.ref.where()}: frame of tile {key[1:]} at level {li} cannot be "
                    f"decoded: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                ev = self._decoding.pop(key, None)
            if ev is not None:
                ev.set()

    def _claim(self, li: int, keys: list[tuple[int, int, int]]) -> dict[str, list]:
        """Mark the keys nobody has or fetches as ours; their frames grouped by instance."""
        lv = self.levels[li]
        mine: dict[str, list] = {}
        with self._lock:
            for key in keys:
                if (key in self._cache or key in self._inflight or key in self._raw
                        or key in self._decoding):
                    continue
                where = lv.locate(key[1], key[2])
                if where is None:
                    self._cache[key] = None  # a tile the scanner did not write: background
                    continue
                self._inflight[key] = threading.Event()
                mine.setdefault(where[0], []).append((where[1], key))
        return mine

    def _jobs(self, mine: dict[str, list]) -> list[tuple[str, list]]:
        """Claimed frames as requests of at most ``batch`` frames each."""
        jobs = []
        for sop, items in mine.items():
            items.sort()
            for lo in range(0, len(items), self.batch):
                jobs.append((sop, items[lo: lo + self.batch]))
        return jobs

    def _prefetch(self, li: int, row: int) -> None:
        """Fetch the tiles of the rows from ``row`` on (at most ``prefetch_tiles``) in the
        background, while the caller decodes and the encoder works; at most ``inflight``
        such requests are queued."""
        lv = self.levels[li]
        with self._lock:
            if self._pending >= self.inflight or row >= lv.ny:
                return
        last = min(lv.ny, row + max(1, self.prefetch_tiles // lv.nx))
        with self._lock:
            keys = [(li, tx, ty) for ty in range(row, last) for tx in range(lv.nx)
                    if not ((li, tx, ty) in self._cache or (li, tx, ty) in self._inflight
                            or (li, tx, ty) in self._raw)]
        if len(keys) < self.batch and last < lv.ny:
            return  # wait until a full request's worth of tiles is ahead
        for sop, chunk in self._jobs(self._claim(li, keys)):
            with self._lock:
                self._pending += 1
            fut = self._pool.submit(self._fetch, li, sop, chunk)
            fut.add_done_callback(self._done_prefetch)

    def _done_prefetch(self, _fut) -> None:
        with self._lock:
            self._pending -= 1

    def tiles(self, li: int, need: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray | None]:
        """Decoded tiles (tx, ty) of level ``li`` (None: absent), fetching what is missing
        together with the read-ahead tiles, in batches, several requests at once."""
        lv = self.levels[li]
        keys = [(li, tx, ty) for tx, ty in need]
        extra = []
        if self.readahead > 0 and need:
            last_x = max(tx for tx, _ in need)
            for ty in sorted({ty for _, ty in need}):
                extra += [(li, tx, ty) for tx in range(last_x + 1,
                                                       min(lv.nx, last_x + 1 + self.readahead))]
        jobs = self._jobs(self._claim(li, keys + extra))
        futures = [self._pool.submit(self._fetch, li, sop, chunk) for sop, chunk in jobs[1:]]
        if jobs:
            self._fetch(li, *jobs[0])
        for f in futures:
            f.result()
        if need and self.prefetch_tiles > 0:
            self._prefetch(li, max(ty for _, ty in need) + 1)
        out: dict[tuple[int, int], np.ndarray | None] = {}
        for key in keys:
            while True:
                with self._lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                        out[key[1:]] = self._cache[key]
                        break
                    raw = self._raw.pop(key, None)
                    if raw is not None:
                        self._raw_bytes -= len(raw[0])
                        self._decoding[key] = threading.Event()
                    err = self._errors.pop(key, None)
                    ev = self._inflight.get(key) or self._decoding.get(key)
                if raw is not None:
                    self._decode(li, key, *raw)
                    continue
                if err is not None:
                    if isinstance(err, DicomWebError):
                        raise err
                    raise DicomWebError(f"{self.ref.where()}: {type(err).__name__}: {err}")
                if ev is None:  # evicted or failed elsewhere: fetch it ourselves
                    again = self._claim(li, [key])
                    for sop, items in again.items():
                        self._fetch(li, sop, items)
                    continue
                ev.wait()
        return out

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        lv = self.levels[level]
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        if x0 >= x1 or y0 >= y1:
            return out
        need = [(tx, ty) for ty in range(y0 // lv.tile_h, (y1 - 1) // lv.tile_h + 1)
                for tx in range(x0 // lv.tile_w, (x1 - 1) // lv.tile_w + 1)]
        got = self.tiles(level, need)
        for (tx, ty), arr in got.items():
            if arr is None:
                continue
            ox, oy = tx * lv.tile_w, ty * lv.tile_h
            cx0, cy0 = max(x0, ox), max(y0, oy)
            cx1, cy1 = min(x1, ox + lv.tile_w, ox + arr.shape[1]), min(y1, oy + lv.tile_h,
                                                                      oy + arr.shape[0])
            if cx1 > cx0 and cy1 > cy0:
                out[cy0 - y: cy1 - y, cx0 - x: cx1 - x] = arr[cy0 - oy: cy1 - oy,
                                                              cx0 - ox: cx1 - ox]
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._cache.clear()
            self._raw.clear()
            self._cached = self._raw_bytes = 0
