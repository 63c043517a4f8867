"""Where napari-ghanet keeps what it can make again: the user cache folder, and the key
that signs the feature files this user writes.

``$NAPARI_GHANET_CACHE`` when set, else ``$XDG_CACHE_HOME/napari-ghanet`` or
``~/.cache/napari-ghanet``. Its subfolders: ``features/`` (patch-feature cache), ``onnx/``
(exported encoders) and the generated demo slide. Everything in it can be deleted.

:func:`feature_key` is 32 random bytes in ``<cache folder>/feature-key`` (permissions
0600, created atomically the first time it is needed; one per user). Feature files carry
an HMAC-SHA256 made with it (``content_hmac``), and cached features are reused only when
that HMAC matches: a cache altered or forged by someone who cannot read this key is never
trusted. A key file that is not a regular file of 32 bytes owned by this user and closed
to others is replaced by a new key (every cache it signed is then recomputed). Deleting
the key is safe: the next run makes a new one and recomputes the caches.

Examples
--------
>>> from napari_ghanet.io.cache import cache_dir
>>> cache_dir().is_dir()
True
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
from pathlib import Path

from napari_ghanet.io.atomic import clean_folder_once, temp_name

__all__ = ["FEATURE_KEY_FILE", "cache_dir", "feature_key"]

logger = logging.getLogger(__name__)

#: Name of the feature-signing key inside :func:`cache_dir`.
FEATURE_KEY_FILE = "feature-key"
_KEY_BYTES = 32
_key_lock = threading.Lock()


def cache_dir() -> Path:
    """napari-ghanet's user cache folder (created when missing)."""
    env = os.environ.get("NAPARI_GHANET_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = base if env else base / "napari-ghanet"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_key(path: Path) -> bytes | None:
    """The key at ``path`` when it is one this user alone can read; None otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        mine = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
        if (not stat.S_ISREG(st.st_mode) or not mine or st.st_mode & 0o077
                or st.st_size != _KEY_BYTES):
            return None
        data = os.read(fd, _KEY_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == _KEY_BYTES else None


def _new_key(folder: Path, path: Path, replace: bool) -> bytes | None:
    """Write a new key (0600) to a private temporary file and link or rename it to
    ``path``; the key that ends up at ``path`` (another process may win the race)."""
    key = secrets.token_bytes(_KEY_BYTES)
    clean_folder_once(folder)  # a key temporary left by a killed process is removed
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails when another process made one first
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not os.path.lexists(path):
                    os.replace(tmp, path)
    except OSError as e:
        logger.warning("cannot create the feature key in %s (%s): cached features "
                       "will not be reused", folder, e.strerror or e)
        return None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    return _read_key(path)


def feature_key(create: bool = True) -> bytes | None:
    """This user's 32-byte feature-signing key (see the module text); None when there is
    none and ``create`` is False, or it cannot be made (the cache folder is read-only)."""
    try:
        folder = cache_dir()
    except OSError:
        return None
    path = folder / FEATURE_KEY_FILE
    with _key_lock:
        key = _read_key(path)
        if key is not None or not create:
            return key
        exists = os.path.lexists(path)
        if exists:
            logger.warning("%s is not a private 32-byte key file of this user: replacing "
                           "it (cached features are recomputed)", path)
            if os.path.isdir(path) and not os.path.islink(path):
                return None
        return _new_key(folder, path, replace=exists)
