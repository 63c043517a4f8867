"""HDF5 feature files read and written defensively: a crafted file is refused in one line,
never followed elsewhere, never allowed to hang, exhaust memory or crash the process.

Reading (:func:`open_h5`, :func:`plain_dataset`, :func:`read_attrs`):

* the path must be a regular file (:func:`napari_ghanet.io.safe_read.check_regular_file`:
  a FIFO or device is never opened);
* a dataset is read only when it is reached by a hard link (no soft or external link is
  followed), is stored inside the file (contiguous, chunked or compact layout: no HDF5
  external storage, no virtual dataset whose sources could be other files or FIFOs), uses
  only the standard filters, has a plain numeric dtype of the kinds asked for and at most
  three dimensions, and declares no more data than the file holds (``storage`` bytes
  without compression, 64 times that (or 64 MiB) with it, and at most :data:`MAX_DATASET_BYTES` or
  half the machine's memory):
  a 19 KB file declaring 477 GiB is refused before anything is allocated;
* attributes: at most :data:`MAX_ATTRS`, each at most :data:`MAX_ATTR_BYTES`; JSON text
  (values starting with ``{`` or ``[``) nested at most :data:`MAX_JSON_DEPTH` levels,
  measured before parsing; a known attribute (``types``) of the wrong type is refused,
  an unknown one that is not a number, text or a small numeric array is dropped.

Every refusal is a :class:`~napari_ghanet.errors.FeaturesError` naming the file.

Writing (:func:`write_h5`): the file is built in memory by h5py and only then written to
disk by plain Python writes, through :func:`napari_ghanet.io.atomic.atomic_path`. So
libhdf5 never meets a disk error (a full disk used to crash it inside its own cleanup);
free space is checked against the exact size before the first byte is written, and an
I/O error on the way is one :class:`~napari_ghanet.errors.NotWritableError` line, with the
temporary file removed.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> p = pathlib.Path(tempfile.mkdtemp()) / "f.h5"
>>> _ = write_h5(p, lambda f: f.create_dataset("x", data=np.arange(3.0)))
>>> with open_h5(p) as f:
...     plain_dataset(f, "x", p, kinds="f")[()].tolist()
[0.0, 1.0, 2.0]
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet.errors import FeaturesError, InputFileError, NotWritableError
from napari_ghanet.io.atomic import atomic_path
from napari_ghanet.io.safe_read import check_regular_file

__all__ = [
    "MAX_ATTRS",
    "MAX_ATTR_BYTES",
    "MAX_DATASET_BYTES",
    "MAX_JSON_DEPTH",
    "check_free_space",
    "json_depth",
    "open_h5",
    "plain_dataset",
    "read_attrs",
    "write_h5",
]

#: Most attributes one object may carry.
MAX_ATTRS = 256
#: Largest attribute value read, in bytes (the JSON of 100,000 skipped patch corners fits).
MAX_ATTR_BYTES = 4 * 1024 * 1024
#: Deepest JSON nesting accepted in an attribute.
MAX_JSON_DEPTH = 32
#: Largest dataset read, in bytes (a 200,000-patch bag of 4,096-d float32 features is 3 GiB),
#: and never more than half of this machine's memory.
MAX_DATASET_BYTES = 16 * 1024**3
#: Filtered (compressed) data may declare at most this many times its stored bytes.
MAX_FILTER_RATIO = 64


def _memory_cap() -> int:
    try:
        return min(MAX_DATASET_BYTES,
                   os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):
        return MAX_DATASET_BYTES
#: Free space left over after a write, in bytes (room for the small files that follow).
SPACE_MARGIN = 64 * 1024

# HDF5's standard filters: deflate, shuffle, fletcher32, szip, nbit, scaleoffset; LZF.
_SAFE_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


def _mib(n: float) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{int(n)} bytes"


@contextmanager
def open_h5(path: str | os.PathLike, what: str = "feature file") -> Iterator[Any]:
    """``h5py.File`` of ``path`` for reading, as a context manager, once ``path`` is known
    to be a regular file; a :class:`FeaturesError` naming ``what`` otherwise. The file is
    opened without blocking and checked again once open (a path swapped for a FIFO after
    the check cannot hang the read); h5py reads through that open file."""
    import h5py

    try:
        p = check_regular_file(path, what)
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except InputFileError as e:
        raise FeaturesError(str(e)) from None
    except OSError as e:
        raise FeaturesError(f"{what} {path}: cannot be opened ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise FeaturesError(f"{what} {p}: is not a regular file; give a file on disk")
        try:
            f = h5py.File(fh, "r")
        except (OSError, ValueError, RuntimeError) as exc:
            raise FeaturesError(f"{p}: not a readable HDF5 file ({_short(exc)})") from None
        with f:
            yield f


def _short(exc: BaseException, n: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= n else text[: n - 3] + "..."


def _link_text(link: Any) -> str:
    import h5py

    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.path!r} in {link.filename!r}"
    if isinstance(link, h5py.SoftLink):
        return f"a soft link to {link.path!r}"
    return "not a plain link"


def plain_dataset(f: Any, name: str, path: str | os.PathLike, *, kinds: str = "fiu",
                  max_ndim: int = 3):
    """The dataset ``name`` of the open file ``f`` (None when absent), once it is known to
    be plain data stored inside the file (see the module text); else FeaturesError.

    ``kinds``: the numpy dtype kinds accepted (``"f"`` float, ``"i"``/``"u"`` integers).
    Nothing is read: the caller reads ``ds[()]`` once this returns.
    """
    import h5py

    link = f.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise FeaturesError(
            f"{path}: {name!r} is {_link_text(link)}; only data stored inside the file is read")
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise FeaturesError(f"{path}: {name!r} is a {type(ds).__name__}, not a dataset")
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        raise FeaturesError(
            f"{path}: {name!r} is a virtual dataset (its data would come from other files); "
            "only data stored inside the file is read")
    if dcpl.get_external_count():
        raise FeaturesError(
            f"{path}: {name!r} is stored in external file(s) outside the HDF5 file; only "
            "data stored inside the file is read")
    nfilters = dcpl.get_nfilters()
    for i in range(nfilters):
        fid = dcpl.get_filter(i)[0]
        if fid not in _SAFE_FILTERS:
            raise FeaturesError(f"{path}: {name!r} needs HDF5 filter {fid}, which is not one "
                                "of the standard ones (deflate, shuffle, szip, LZF, ...)")
    dt = ds.dtype
    if dt.kind not in kinds or dt.fields is not None or dt.subdtype is not None or (
            dt.itemsize > 8):
        raise FeaturesError(f"{path}: {name!r} holds {dt} values; expected "
                            f"{'numbers' if len(kinds) > 1 else 'floating-point numbers'}")
    shape = ds.shape
    if shape is None or len(shape) > max_ndim:
        raise FeaturesError(f"{path}: {name!r} has shape {shape}; expected at most "
                            f"{max_ndim} dimensions")
    declared = math.prod(shape) * dt.itemsize
    stored = int(ds.id.get_storage_size())
    file_size = int(f.id.get_filesize())
    limit = stored if nfilters == 0 else max(stored * MAX_FILTER_RATIO, 64 * 1024**2)
    if (declared > _memory_cap() or declared > limit
            or (file_size is not None and stored > file_size)):
        raise FeaturesError(
            f"{path}: {name!r} declares {_mib(declared)} of data but the file holds "
            f"{_mib(stored)} of it; a damaged or crafted file")
    return ds


def json_depth(text: str) -> int:
    """Nesting depth of JSON ``text`` (brackets outside strings), measured without parsing.

    Examples
    --------
    >>> json_depth('{"a": [1, {"b": "[[["}]}')
    3
    """
    depth = top = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            top = max(top, depth)
        elif ch in "]}":
            depth -= 1
    return top


_TYPE_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true/false",
               dict: "a JSON object", list: "a JSON list"}


def _decode(key: str, value: Any, json_keys: tuple[str, ...], path: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if len(value) > MAX_ATTR_BYTES:
            raise FeaturesError(f"{path}: attribute {key!r} is longer than "
                                f"{_mib(MAX_ATTR_BYTES)}")
        if key in json_keys or value[:1] in "{[" or value == "null":
            if json_depth(value) > MAX_JSON_DEPTH:
                raise FeaturesError(f"{path}: attribute {key!r} holds JSON nested more than "
                                    f"{MAX_JSON_DEPTH} levels deep; a damaged or crafted file")
            try:
                return json.loads(value)
            except (ValueError, RecursionError):
                return value
    return value


def _type_ok(value: Any, want: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in want:
        return False
    if float in want and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, want)


def read_attrs(obj: Any, path: str | os.PathLike, *,
               types: dict[str, tuple[type, ...]] | None = None,
               json_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The attributes of an HDF5 object (file, group or dataset) as Python values, read
    within the limits of the module text.

    Scalars become Python numbers or text (JSON text decoded); small numeric arrays stay
    arrays. ``types`` maps attribute names to the Python types their value must have
    (``float`` accepts whole numbers too); a known attribute of another type is a
    FeaturesError, an unknown attribute that is neither a number, text nor a numeric
    array is left out.
    """
    import h5py

    types = types or {}
    names = list(obj.attrs)
    if len(names) > MAX_ATTRS:
        raise FeaturesError(f"{path}: {len(names)} attributes (at most {MAX_ATTRS} read)")
    out: dict[str, Any] = {}
    for name in names:
        try:
            aid = h5py.h5a.open(obj.id, name.encode("utf-8"))
            dt, shape = aid.dtype, aid.shape
            n = math.prod(shape) if shape is not None else 0
            size = max(int(aid.get_storage_size()), n * dt.itemsize)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FeaturesError(f"{path}: unreadable attribute {name!r} ({_short(exc)})") from None
        is_text = h5py.check_string_dtype(dt) is not None
        plain = is_text or (dt.kind in "biuf" and dt.fields is None and dt.subdtype is None)
        if size > MAX_ATTR_BYTES or not plain or shape is None:
            if name in types:
                raise FeaturesError(
                    f"{path}: attribute {name!r} is {_mib(size)} of {dt} data; expected "
                    f"{_TYPE_NAMES.get(types[name][0], types[name][0].__name__)}")
            continue  # an unknown attribute of another kind: not read
        try:
            value = obj.attrs[name]
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise FeaturesError(f"{path}: unreadable attribute {name!r} ({_short(exc)})") from None
        if isinstance(value, np.ndarray) and value.size > 1 and is_text:
            if name in types:
                raise FeaturesError(f"{path}: attribute {name!r} is a list of texts; expected "
                                    f"{_TYPE_NAMES.get(types[name][0], 'one value')}")
            continue
        value = _decode(name, value, json_keys, path)
        want = types.get(name)
        if want is not None and not _type_ok(value, want):
            raise FeaturesError(
                f"{path}: attribute {name!r} is {type(value).__name__} "
                f"{_short(repr(value), 40)}; expected {_TYPE_NAMES.get(want[0], want[0].__name__)}")
        if isinstance(value, float) and float in (want or ()) and not math.isfinite(value):
            raise FeaturesError(f"{path}: attribute {name!r} is {value}; expected a finite number")
        out[name] = value
    return out


# --------------------------------------------------------------------------- writing


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """NotWritableError when the disk of ``folder`` has less than ``need`` bytes (plus a
    64 KiB margin) free for an unprivileged writer; nothing when it cannot be told."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need + SPACE_MARGIN:
        raise NotWritableError(
            f"cannot write the {what}: it needs {_mib(need)} and only {_mib(free)} is free "
            f"on the disk of {folder}; free some space or choose another folder")


def write_h5(path: str | os.PathLike, build: Callable[[Any], Any],
             what: str = "feature file") -> Path:
    """Write an HDF5 file that ``build(h5py.File)`` fills, atomically and without letting
    libhdf5 touch the disk: the file is made in memory, the free space is checked against
    its exact size, then its bytes are written through a temporary file and renamed.

    Raises
    ------
    NotWritableError
        Not enough free space, or an I/O error while writing (the disk filled up, the
        folder went away); one line naming ``what`` and the path. Nothing is left behind.
    """
    import h5py

    path = Path(path)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    data = buf.getbuffer()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(path.parent, len(data), f"{what} {path}")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except NotWritableError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "the disk is full; free some space or choose another folder"
        else:
            why = f"{(e.strerror or _short(e)).lower()}; choose another folder or file name"
        raise NotWritableError(f"cannot write the {what} {path}: {why}") from None
    finally:
        data.release()
    return path
