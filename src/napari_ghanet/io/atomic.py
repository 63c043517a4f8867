"""Atomic file writes: a file is either complete or absent, never half-written.

Every file the package writes goes through :func:`atomic_path` (or :func:`atomic_write`):
the data goes to a temporary file beside the target, is flushed to disk (``fsync``), given
the permissions an ordinary ``open()`` would give (``0o666`` less the process umask, not
the ``0o600`` of a temporary file) and then renamed over the target with ``os.replace``.

Temporary files are named ``.<target name>.ghanet-tmp-<random><suffix>``. One left behind
by a killed process is removed the next time this process writes into that folder, once
it is older than :data:`STALE_TEMP_SECONDS` (a day), so a run still writing is never
disturbed.

:func:`check_writable_dir` lets the command lines and the widget refuse an output folder
before the work rather than after it.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> p = atomic_write(folder / "note.txt", "hello")
>>> p.read_text()
'hello'
>>> check_writable_dir(folder) == folder
True
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_ghanet.errors import NotWritableError

__all__ = [
    "STALE_TEMP_SECONDS",
    "NotWritableError",
    "atomic_path",
    "atomic_write",
    "check_writable_dir",
    "remove_stale_temp_files",
]

STALE_TEMP_SECONDS = 24 * 3600
_TEMP_TAG = ".ghanet-tmp-"
# .<name>.ghanet-tmp-<8 random chars from tempfile><suffix>
_TEMP_RE = re.compile(r"^\..+\.ghanet-tmp-[A-Za-z0-9_]{8}(\.[A-Za-z0-9]{1,10})?$")
_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _cleaned_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def remove_stale_temp_files(
    folder: str | os.PathLike, max_age_s: float = STALE_TEMP_SECONDS
) -> list[Path]:
    """Delete this package's temporary files in ``folder`` older than ``max_age_s`` seconds.

    Only names of the form ``.<name>.ghanet-tmp-<8 chars>[.ext]`` are touched. Returns the
    removed paths; a file that cannot be removed is left alone.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if _TEMP_TAG not in entry.name or not _TEMP_RE.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > max_age_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _clean_once(folder: Path) -> None:
    key = str(folder.resolve())
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    remove_stale_temp_files(folder)


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block ends
    without error and is removed otherwise (also on KeyboardInterrupt).

    The temporary file lies in the same folder so ``os.replace`` is atomic; ``suffix``
    lets writers that infer the format from the name (matplotlib) see the right one.
    Before the rename the file is flushed to disk (``fsync``, so writers such as h5py
    that keep their own handle need not do it) and given the umask's permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TEMP_TAG}", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_path(tmp_path)
        try:
            os.chmod(tmp_path, 0o666 & ~_umask())
        except OSError:
            pass
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``path`` atomically, flushed to disk."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Call before long work so a read-only or mistyped output folder is refused at once.

    Raises
    ------
    NotWritableError
        ``path`` is a file, cannot be created, or refuses a test file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotWritableError(f"the {what} {path} is a file, not a folder: give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NotWritableError(
            f"cannot create the {what} {path} ({e.strerror or e}): choose another folder"
        ) from e
    try:
        fd, probe = tempfile.mkstemp(prefix=f".probe{_TEMP_TAG}", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NotWritableError(
            f"cannot write into the {what} {path} ({e.strerror or e}): choose a folder you "
            "can write to"
        ) from e
    return path
