"""Integrity of patch-feature files: digests and coordinate checks, used when feature
files are written and read (:mod:`napari_ghanet.io.features`).

* :func:`features_digest` / :func:`qc_digest`: SHA-256 of the data (``content_sha256``,
  ``qc_sha256``): catch a flipped bit or a partial copy;
* :func:`keyed_digest`: HMAC-SHA256 with this user's key
  (:func:`napari_ghanet.io.cache.feature_key`) over the data and every attribute
  (``content_hmac``): catches a file altered or forged by anyone who cannot read the key;
* :func:`check_coords`: patch corners non-negative, unique, on one lattice, inside the
  slide, part of a grid.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["canonical_json", "check_coords", "features_digest", "json_default",
           "keyed_digest", "qc_digest"]


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (numpy values and paths as :func:`json_default`)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars/arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if callable(getattr(obj, "to_dict", None)):  # an EncoderSpec
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def features_digest(features: np.ndarray, coords: np.ndarray | None) -> str:
    """SHA-256 (hex) of the float32 features and int64 coords, little-endian, row-major.

    Examples
    --------
    >>> import numpy as np
    >>> a = features_digest(np.zeros((2, 3), np.float32), np.zeros((2, 2), np.int64))
    >>> b = features_digest(np.zeros((2, 3), np.float32), np.ones((2, 2), np.int64))
    >>> len(a), a == b
    (64, False)
    """
    h = hashlib.sha256()
    h.update(_bytes(features, "<f4"))
    h.update(b"|coords|")
    if coords is not None:
        h.update(_bytes(coords, "<i8"))
    return h.hexdigest()


def _bytes(a: np.ndarray, dtype: str) -> memoryview:
    """The bytes of ``a`` as ``dtype`` (C order), without a copy when it already is."""
    return memoryview(np.ascontiguousarray(a, dtype=dtype).reshape(-1).view(np.uint8))


def qc_digest(measures: np.ndarray, key: str) -> str:
    """SHA-256 (hex) of the float32 QC measures (little-endian) and their settings key."""
    h = hashlib.sha256()
    h.update(_bytes(measures, "<f4"))
    h.update(b"|qc|" + str(key).encode())
    return h.hexdigest()


def check_coords(
    coords: np.ndarray | None,
    *,
    step_level0: int = 0,
    extent: tuple[int, int] | None = None,
    patch_size_level0: int = 0,
    allowed: np.ndarray | None = None,
) -> list[str]:
    """Problems of patch coordinates (level-0 top-left x, y), empty when they look sound.

    Always: non-negative and unique. ``step_level0`` > 0: all on one lattice of that
    stride. ``extent`` (level-0 width, height): the patch (``patch_size_level0`` px) lies
    inside the slide. ``allowed`` (M, 2): every coordinate is one of these (the grid).

    Examples
    --------
    >>> import numpy as np
    >>> check_coords(np.array([[0, 0], [256, 0]]), step_level0=256, extent=(512, 256),
    ...              patch_size_level0=256)
    []
    >>> check_coords(np.array([[0, 16896]]), extent=(2048, 2048), patch_size_level0=256)
    ['1 patch(es) outside the 2048 x 2048 px slide, e.g. (0, 16896)']
    """
    if coords is None or len(coords) == 0:
        return []
    c = np.asarray(coords, dtype=np.int64)
    why = []
    neg = (c < 0).any(axis=1)
    if neg.any():
        why.append(f"{int(neg.sum())} negative coordinate(s), e.g. {tuple(map(int, c[neg][0]))}")
    if len(np.unique(c, axis=0)) != len(c):
        why.append(f"{len(c) - len(np.unique(c, axis=0))} duplicated coordinate(s)")
    if step_level0 > 0:
        res = c % step_level0
        off = (res != res[0]).any(axis=1)
        if off.any():
            why.append(
                f"{int(off.sum())} coordinate(s) off the {step_level0} px patch lattice, e.g. "
                f"{tuple(map(int, c[off][0]))}"
            )
    if extent is not None:
        w, h = (int(v) for v in extent)
        size = max(0, int(patch_size_level0))
        out = (c[:, 0] + size > w) | (c[:, 1] + size > h)
        if out.any():
            why.append(
                f"{int(out.sum())} patch(es) outside the {w} x {h} px slide, e.g. "
                f"{tuple(map(int, c[out][0]))}"
            )
    if allowed is not None and not why:
        known = set(map(tuple, np.asarray(allowed, dtype=np.int64).tolist()))
        foreign = sum(tuple(r) not in known for r in c.tolist())
        if foreign:
            why.append(f"{foreign} coordinate(s) not on the slide's patch grid")
    return why


def keyed_digest(key: bytes, features: np.ndarray, coords: np.ndarray | None,
                 qc: np.ndarray | None, signed: dict[str, Any],
                 content: str | None = None) -> str:
    """HMAC-SHA256 (hex) with ``key`` of the data's SHA-256 (:func:`features_digest` of
    the features and coordinates, given as ``content`` when already computed), the QC
    measures (float32, little-endian) and the attributes ``signed`` (canonical JSON,
    ``content_hmac`` itself left out). See :func:`napari_ghanet.io.cache.feature_key`.

    Examples
    --------
    >>> import numpy as np
    >>> f, c = np.zeros((2, 3), np.float32), np.zeros((2, 2), np.int64)
    >>> a = keyed_digest(b"k" * 32, f, c, None, {"root": {"grid_key": "g"}})
    >>> b = keyed_digest(b"k" * 32, f, c, None, {"root": {"grid_key": "h"}})
    >>> len(a), a == b
    (64, False)
    """
    h = hmac.new(key, b"napari-ghanet features v1|", hashlib.sha256)
    h.update((content or features_digest(features, coords)).encode())
    h.update(b"|qc|")
    if qc is not None:
        h.update(_bytes(qc, "<f4"))
    clean = {part: {k: v for k, v in attrs.items() if k != "content_hmac"}
             for part, attrs in signed.items()}
    h.update(b"|attrs|" + canonical_json(clean).encode())
    return h.hexdigest()
