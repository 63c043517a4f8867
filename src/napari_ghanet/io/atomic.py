"""Atomic file writes: a file is either complete or absent, never half-written.

Every file the package writes goes through :func:`atomic_path` (or :func:`atomic_write`):
the data goes to a temporary file beside the target, is flushed to disk (``fsync``), given
the permissions an ordinary ``open()`` would give (``0o666`` less the process umask, not
the ``0o600`` of a temporary file) and then renamed over the target with ``os.replace``.

Temporary files are named ``.<target name>.ghanet-tmp-<pid>-<host>-<random><suffix>``:
``pid`` is the writer's process id (base 36) and ``host`` six hex digits of a hash of the
machine's boot id and the writer's PID namespace. One left behind by a killed process
(``kill -9``, a power cut) is removed the next time napari-ghanet writes into, or reads
its cache from, that folder: at once when it was written on this machine since its last
boot and its writer process is gone (no process with that id, or one that started after
the file was last written), else once it is older than :data:`STALE_TEMP_SECONDS` (a day:
names of older versions, other machines sharing the folder), so a run still writing is
never disturbed. Temporary folders (a SpatialData store being written, ``temp_name``) and
stores set aside while being replaced (``.<name>.ghanet-old-...``) are removed the same way.

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

import hashlib
import os
import re
import shutil
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
    "clean_folder_once",
    "remove_stale_temp_files",
    "WRITING_MARKER",
    "interrupted_folder",
    "temp_name",
    "writer_gone",
    "writer_tag",
]

STALE_TEMP_SECONDS = 24 * 3600
_TEMP_TAG = ".ghanet-tmp-"
_OLD_TAG = ".ghanet-old-"
# .<name>.ghanet-(tmp|old)-[<pid base 36>-<host 6 hex>-]<8 random chars><suffix>
_TEMP_RE = re.compile(
    r"^\..+\.ghanet-(?P<kind>tmp|old)-(?:(?P<pid>[0-9a-z]{1,8})-(?P<host>[0-9a-f]{6})-)?"
    r"[A-Za-z0-9_]{8}(\.[A-Za-z0-9]{1,10})?$")
_DIGITS36 = "0123456789abcdefghijklmnopqrstuvwxyz"
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


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS36[r] + out
        if not n:
            return out


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(4096)
    except OSError:
        return ""


def _host_tag() -> str:
    """Six hex digits naming this boot of this machine and this PID namespace (empty where
    the system does not tell them: then only the age rule applies)."""
    boot = _read_small("/proc/sys/kernel/random/boot_id").strip()
    if not boot:
        return ""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return hashlib.sha256(f"{boot}|{ns}".encode()).hexdigest()[:6]


_HOST = _host_tag()


def _writer_tag() -> str:
    """``<pid base 36>-<host>`` for this process (empty without a host tag)."""
    return f"{_base36(os.getpid())}-{_HOST}" if _HOST else ""


def writer_tag() -> str:
    """This process's writer tag, ``<pid base 36>-<host>`` (empty where the system gives no
    boot id): what temporary names carry, for :func:`writer_gone` to judge later."""
    return _writer_tag()


#: File inside a folder (a SpatialData store) while it is put in place: its writer's tag.
WRITING_MARKER = ".ghanet-writing"


def interrupted_folder(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` holds a :data:`WRITING_MARKER` whose writer is gone
    (:func:`writer_gone`): it was put in place by a run killed before it finished, so a
    re-run may replace it without being told to overwrite."""
    marker = Path(path) / WRITING_MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        with open(marker, encoding="ascii", errors="replace") as fh:
            tag = fh.read(64)
        return writer_gone(tag, marker.stat().st_mtime)
    except OSError:
        return False


def writer_gone(tag: str, mtime: float) -> bool:
    """Whether the process that wrote ``tag`` (:func:`writer_tag`) into something last
    changed at ``mtime`` is gone: True only when the tag is of this machine's boot and no
    such process runs (or its id now belongs to a process started after ``mtime``)."""
    m = re.fullmatch(r"([0-9a-z]{1,8})-([0-9a-f]{6})", tag.strip())
    if m is None or not _HOST or m[2] != _HOST:
        return False
    return _writer_gone(int(m[1], 36), mtime, "tmp")


def temp_name(path: str | os.PathLike, kind: str = "tmp", suffix: str = "") -> Path:
    """A fresh temporary name beside ``path`` carrying this process's writer tag:
    ``.<name>.ghanet-<kind>-<pid>-<host>-<8 random chars><suffix>`` (``kind`` "tmp" for a
    file or folder being written, "old" for one set aside while it is replaced), which
    :func:`remove_stale_temp_files` removes once its writer is gone."""
    import secrets

    path = Path(path)
    rand = "".join(secrets.choice(_DIGITS36) for _ in range(8))
    tag = _writer_tag()
    return path.parent / f".{path.name}.ghanet-{kind}-{tag + '-' if tag else ''}{rand}{suffix}"


def _boot_time() -> float | None:
    """When this machine booted (s since the epoch), from ``/proc/stat``; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _writer_gone(pid: int, mtime: float, kind: str) -> bool:
    """Whether process ``pid`` of this machine cannot be the writer of a temporary last
    changed at ``mtime``: there is no such process, or it started after that change."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # a process of another user: alive
    if kind != "tmp":  # a store set aside keeps its old time: the start-time test says nothing
        return False
    stat_text = _read_small(f"/proc/{pid}/stat")
    boot = _boot_time()
    try:
        ticks = int(stat_text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return False
    if boot is None:
        return False
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return started > mtime + 2.0  # the pid was reused by a process born after the write


def remove_stale_temp_files(
    folder: str | os.PathLike, max_age_s: float = STALE_TEMP_SECONDS
) -> list[Path]:
    """Delete this package's temporary files and folders in ``folder`` whose writer is
    gone, or (names without a writer tag of this machine) older than ``max_age_s`` s.

    Only names of the form ``.<name>.ghanet-tmp-[<pid>-<host>-]<8 chars>[.ext]`` (and
    ``.ghanet-old-``) are touched; symbolic links are never followed. Returns the removed
    paths; one that cannot be removed is left alone.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if (_TEMP_TAG not in entry.name and _OLD_TAG not in entry.name) or not (
                m := _TEMP_RE.match(entry.name)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            is_dir = entry.is_dir(follow_symlinks=False)
            if not (is_dir or entry.is_file(follow_symlinks=False)):
                continue
            if m["host"] and m["host"] == _HOST:
                stale = _writer_gone(int(m["pid"], 36), st.st_mtime, m["kind"])
            else:
                stale = now - st.st_mtime > max_age_s
            if not stale:
                continue
            if is_dir:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except (OSError, ValueError):
            continue
    return removed


def clean_folder_once(folder: str | os.PathLike) -> None:
    """:func:`remove_stale_temp_files` in ``folder``, once per process and folder."""
    try:
        key = str(Path(folder).resolve())
    except OSError:
        return
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
    clean_folder_once(path.parent)
    tag = _writer_tag()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TEMP_TAG}{tag + '-' if tag else ''}",
                               suffix=suffix, dir=path.parent)
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
        tag = _writer_tag()
        fd, probe = tempfile.mkstemp(prefix=f".probe{_TEMP_TAG}{tag + '-' if tag else ''}",
                                     suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NotWritableError(
            f"cannot write into the {what} {path} ({e.strerror or e}): choose a folder you "
            "can write to"
        ) from e
    return path
