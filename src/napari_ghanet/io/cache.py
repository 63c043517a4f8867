"""Where napari-ghanet keeps what it can make again: the user cache folder.

``$NAPARI_GHANET_CACHE`` when set, else ``$XDG_CACHE_HOME/napari-ghanet`` or
``~/.cache/napari-ghanet``. Its subfolders: ``features/`` (patch-feature cache), ``onnx/``
(exported encoders) and the generated demo slide. Everything in it can be deleted.

Examples
--------
>>> from napari_ghanet.io.cache import cache_dir
>>> cache_dir().is_dir()
True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """napari-ghanet's user cache folder (created when missing)."""
    env = os.environ.get("NAPARI_GHANET_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = base if env else base / "napari-ghanet"
    path.mkdir(parents=True, exist_ok=True)
    return path
