"""Patch-feature files: the HDF5 cache (CLAM/TRIDENT layout) and CLAM ``.pt`` tensors.

File layout written by :func:`save_features` (HDF5):

* dataset ``features``: float32, shape (N, D), one row per patch;
* dataset ``coords``: int64, shape (N, 2), top-left corner (x, y) in level-0 pixels;
* optional dataset ``qc_measures``: float32, shape (N, 3), the artifact-QC measures of each
  patch (:data:`QC_MEASURES`), with attributes ``qc_measure_key`` (the QC settings they
  were measured with) and ``qc_sha256`` (their digest, checked on load);
* root attributes: ``encoder`` (name), ``encoder_spec`` (JSON), ``feature_dim``,
  ``patch_size`` (pixels at the target mpp), ``patch_size_level0``, ``target_mpp``,
  ``slide_mpp``, ``slide_fingerprint``, ``slide_path``, ``grid_key``, ``n_skipped``,
  ``package_version`` (and whatever else the caller put in ``attrs``).

Files are built in memory and written atomically (:func:`napari_ghanet.io.h5safe.write_h5`:
free space checked first, then a temporary file in the same folder, fsync, ``os.replace``),
so an interrupted run or a full disk never leaves a half-written file under the final name.

Integrity (:mod:`napari_ghanet.io.feature_integrity`): :func:`save_features` stores
``content_sha256``, the SHA-256 of the ``features`` and ``coords`` bytes, and
``content_hmac``, an HMAC-SHA256 with this user's key
(:func:`napari_ghanet.io.cache.feature_key`) over the data and every attribute.
:func:`load_features` refuses a file whose data no longer match the SHA-256 (a flipped bit,
a partial copy) and, given the key, one whose HMAC is missing or does not match.
Coordinates are checked too (non-negative, unique, on one lattice of the stored
``step_level0``) and, for the cache, against the patch grid they claim. The cache and
``ghanet embed``'s resume (:func:`match_features`) reuse a file only when its HMAC
matches: any other file (damaged, crafted, written by version 0.1 or by another user) is
recomputed and replaced with a warning (logged, and appended to ``notices`` when given).
What an HDF5 file may hold (plain datasets inside the file, bounded typed attributes) is
:mod:`napari_ghanet.io.h5safe`'s to check.

:func:`load_features` also reads CLAM/TRIDENT ``.h5`` files (attributes may be absent;
TRIDENT keeps them on ``coords``, and its encoder's name on ``features``, read as
``attrs["source_encoder"]``), ``.pt`` files holding a feature tensor (loaded with
``torch.load(weights_only=True)``; they carry no coordinates) and slide2vec's ``.npz``
tile embeddings, with the scalars of a ``<stem>.meta.json`` beside them.

The feature cache of a slide lives at
``<cache_dir>/<encoder name>/<slide stem>.<key>.h5`` where ``key`` hashes the slide
fingerprint, the encoder spec and the patch grid, so a changed slide, encoder or grid never
reads stale features.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_ghanet._version import __version__
from napari_ghanet.errors import FeaturesError, GHANetError, InputFileError
from napari_ghanet.io.atomic import clean_folder_once
from napari_ghanet.io.cache import feature_key
from napari_ghanet.io.encoder_spec import EncoderSpec, encoder_mismatch
from napari_ghanet.io.feature_integrity import (
    canonical_json,
    check_coords,
    features_digest,
    json_default,
    keyed_digest,
    qc_digest,
)
from napari_ghanet.io.h5safe import (
    MAX_DATASET_BYTES,
    MAX_JSON_DEPTH,
    json_depth,
    open_h5,
    plain_dataset,
    read_attrs,
    write_h5,
)
from napari_ghanet.io.safe_read import check_regular_file, read_text_file

logger = logging.getLogger(__name__)

__all__ = [
    "FeaturesError",
    "PatchFeatures",
    "QC_MEASURES",
    "cached_features_path",
    "check_coords",
    "features_digest",
    "grid_key",
    "json_default",
    "keyed_digest",
    "load_cached_features",
    "load_features",
    "load_matching_features",
    "match_features",
    "qc_digest",
    "save_features",
]

#: Columns of ``PatchFeatures.qc_measures`` (dataset ``qc_measures`` of a cache file).
QC_MEASURES: tuple[str, ...] = ("pen_fraction", "dark_fraction", "lap_energy")


@dataclass
class PatchFeatures:
    """A slide's bag of patch features.

    Attributes
    ----------
    features : ndarray of float32, shape (N, D)
    coords : ndarray of int64, shape (N, 2), or None
        Top-left (x, y) of each patch in level-0 pixels; None for files without them.
    attrs : dict
        Provenance (encoder, encoder_spec dict, patch geometry, slide fingerprint...).
    qc_measures : ndarray of float32, shape (N, 3), or None
        Artifact-QC measures of each patch (``QC_MEASURES``: ink fraction, dark fraction,
        Laplacian energy; see :mod:`napari_ghanet.preprocessing.qc`), measured with the
        settings in ``attrs["qc_measure_key"]``; None when not measured. Measures, not
        decisions: QC thresholds are applied at prediction time.
    """

    features: np.ndarray
    coords: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    qc_measures: np.ndarray | None = None

    def __post_init__(self) -> None:
        f = np.asarray(self.features)
        if f.ndim != 2:
            raise FeaturesError(f"features must be 2-D (N, D), got shape {f.shape}")
        self.features = np.ascontiguousarray(f, dtype=np.float32)
        if self.coords is not None:
            c = np.asarray(self.coords)
            if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] != f.shape[0]:
                raise FeaturesError(
                    f"coords must have shape ({f.shape[0]}, 2) to match the features, got {c.shape}"
                )
            self.coords = np.ascontiguousarray(np.rint(c) if c.dtype.kind == "f" else c).astype(
                np.int64, copy=False
            )

        if self.qc_measures is not None:
            m = np.ascontiguousarray(self.qc_measures, dtype=np.float32)
            if m.shape != (f.shape[0], len(QC_MEASURES)):
                raise FeaturesError(
                    f"qc_measures must have shape ({f.shape[0]}, {len(QC_MEASURES)}), "
                    f"got {m.shape}"
                )
            self.qc_measures = m

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def select(self, index: np.ndarray) -> PatchFeatures:
        """The rows ``index`` (int indices or a bool mask) as new PatchFeatures."""
        return PatchFeatures(
            self.features[index],
            None if self.coords is None else self.coords[index],
            dict(self.attrs),
            None if self.qc_measures is None else self.qc_measures[index],
        )

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def encoder_spec(self) -> dict[str, Any] | None:
        spec = self.attrs.get("encoder_spec")
        return dict(spec) if isinstance(spec, dict) else None


# --------------------------------------------------------------------------- keys


def grid_key(grid: Any) -> str:
    """Hash (hex) of a patch grid: its geometry and every coordinate.

    ``grid`` needs ``coords`` (N, 2), ``patch_size_level0``, ``patch_px`` and
    ``target_mpp`` (a ``patches.PatchGrid``). Two grids with the same key give the same
    patches, whatever tissue parameters produced them.
    """
    h = hashlib.sha256()
    geom = {
        "patch_px": int(grid.patch_px),
        "patch_size_level0": int(grid.patch_size_level0),
        "target_mpp": round(float(grid.target_mpp), 6),
    }
    h.update(canonical_json(geom).encode())
    h.update(np.ascontiguousarray(grid.coords, dtype="<i8").tobytes())
    return h.hexdigest()[:32]


def _spec_key(encoder_spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(encoder_spec).encode()).hexdigest()[:32]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "slide"


def cached_features_path(
    cache_dir: str | os.PathLike, slide: Any, encoder_spec: dict[str, Any], grid: Any
) -> Path:
    """Where the cached features of ``slide`` for this encoder and grid live.

    ``<cache_dir>/<encoder name>/<slide stem>.<key>.h5``; ``key`` hashes the slide
    fingerprint, the encoder spec (JSON) and :func:`grid_key`.
    """
    key = hashlib.sha256(
        "|".join((slide.fingerprint(), _spec_key(encoder_spec), grid_key(grid))).encode()
    ).hexdigest()[:16]
    name = _safe_name(EncoderSpec.from_dict(encoder_spec).name or "encoder")
    return Path(cache_dir) / name / f"{_safe_name(Path(slide.path).stem)}.{key}.h5"


def match_features(
    path: str | os.PathLike,
    *,
    slide_fingerprint: str,
    encoder_spec: dict[str, Any],
    grid: Any | None = None,
) -> tuple[PatchFeatures | None, str, str]:
    """``(features, status, why)`` for the file at ``path``: status ``"hit"`` (features of
    this slide, encoder and grid, signed with this user's key), ``"missing"``,
    ``"damaged"`` (unreadable, crafted, unsigned or altered: never trusted; ``why`` says
    how) or ``"differs"`` (sound, but of another slide, encoder or grid)."""
    path = Path(path)
    if not os.path.lexists(path):
        return None, "missing", ""
    clean_folder_once(path.parent)
    key = feature_key()
    if key is None:
        return None, "damaged", (f"{path}: no feature key to check it with (the user cache "
                                 "folder is not writable)")
    try:
        feats = load_features(path, key=key)
    except FeaturesError as exc:
        return None, "damaged", str(exc)
    a = feats.attrs
    why = []
    if a.get("slide_fingerprint") != slide_fingerprint:
        why.append("slide fingerprint")
    stored = a.get("encoder_spec")
    try:
        spec_why = encoder_mismatch(encoder_spec, stored) if isinstance(stored, dict) else "?"
    except (GHANetError, TypeError, ValueError, KeyError, AttributeError):  # malformed spec
        spec_why = "?"
    if spec_why is not None:
        why.append("encoder spec")
    if grid is not None and a.get("grid_key") != grid_key(grid):
        why.append("patch grid")
    if feats.coords is None:
        why.append("coordinates")
    if why:
        return None, "differs", ", ".join(why)
    if grid is not None:
        problems = check_coords(
            feats.coords,
            step_level0=int(getattr(grid, "step_level0", 0) or 0),
            extent=getattr(grid, "slide_dimensions", None),
            patch_size_level0=int(getattr(grid, "patch_size_level0", 0) or 0),
            allowed=getattr(grid, "coords", None),
        )
        if problems:
            return None, "damaged", f"{path}: " + "; ".join(problems)
    return feats, "hit", ""


def load_matching_features(
    path: str | os.PathLike,
    *,
    slide_fingerprint: str,
    encoder_spec: dict[str, Any],
    grid: Any | None = None,
    notices: list[str] | None = None,
) -> PatchFeatures | None:
    """Features at ``path`` if they were made from this slide with this encoder (and this
    grid, when given) and signed with this user's key; None otherwise.

    A damaged, unsigned or altered file (see :func:`match_features`) is not reused: a
    warning is logged and, when ``notices`` is a list, appended to it. ``encoder_spec``
    (dict or EncoderSpec) is compared with the stored one by
    :func:`napari_ghanet.io.encoder_spec.encoder_mismatch`.
    """
    feats, status, why = match_features(path, slide_fingerprint=slide_fingerprint,
                                        encoder_spec=encoder_spec, grid=grid)
    if status == "damaged":
        _damaged(why, notices)
    elif status == "differs":
        logger.info("%s: not reused (%s differ)", path, why)
    return feats


def _damaged(why: str, notices: list[str] | None) -> None:
    text = f"ignoring cached features that cannot be trusted, recomputing them: {why}"
    logger.warning("%s", text)
    if notices is not None:
        notices.append(text)


def load_cached_features(
    cache_dir: str | os.PathLike,
    slide: Any,
    encoder_spec: dict[str, Any],
    grid: Any,
    notices: list[str] | None = None,
) -> PatchFeatures | None:
    """The cached features for this slide, encoder and grid, or None on a miss.

    A damaged cache file is a miss; why is logged and appended to ``notices`` (a list,
    e.g. the prediction's warnings) when given.
    """
    path = cached_features_path(cache_dir, slide, encoder_spec, grid)
    return load_matching_features(
        path,
        slide_fingerprint=slide.fingerprint(),
        encoder_spec=encoder_spec,
        grid=grid,
        notices=notices,
    )


# --------------------------------------------------------------------------- writing


def _attr_value(value: Any) -> Any:
    """HDF5-storable form of an attribute (dicts and lists become JSON text)."""
    if value is None:
        return "null"
    if isinstance(value, dict | list | tuple):
        return canonical_json(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool | int | float | str | np.generic):
        return value
    return str(value)


def save_features(path: str | os.PathLike, feats: PatchFeatures,
                  key: bytes | None | bool = True) -> Path:
    """Write ``feats`` to an HDF5 file atomically.

    The datasets are ``features`` (N, D) float32 and ``coords`` (N, 2) int64; every entry of
    ``feats.attrs`` becomes a root attribute (dicts as JSON text), ``encoder_spec`` is also
    stored as JSON, and ``feature_dim`` / ``package_version`` are always set. With a key
    (``True``: this user's :func:`~napari_ghanet.io.cache.feature_key`) the file is also
    signed (``content_hmac``, :func:`keyed_digest`). The file is built in memory and
    written by :func:`napari_ghanet.io.h5safe.write_h5`: free space is checked first and a
    full disk is one :class:`~napari_ghanet.errors.NotWritableError` line (an ``OSError``),
    nothing left behind. Returns the final path.
    """
    path = Path(path)
    if key is True:
        key = feature_key()
    attrs = dict(feats.attrs)
    for drop in ("content_hmac", "content_sha256", "coords_missing"):
        attrs.pop(drop, None)
    attrs["feature_dim"] = feats.dim
    attrs.setdefault("n_skipped", 0)
    attrs["package_version"] = __version__
    spec = attrs.get("encoder_spec")
    if callable(getattr(spec, "to_dict", None)):  # an EncoderSpec: stored as its JSON dict
        spec = attrs["encoder_spec"] = spec.to_dict()
    if isinstance(spec, dict):
        attrs.setdefault("encoder", spec.get("name", ""))
    coords = feats.coords if feats.coords is not None else np.zeros((len(feats), 2), np.int64)
    coords = np.ascontiguousarray(coords, dtype=np.int64)
    attrs["content_sha256"] = features_digest(feats.features, coords)

    def build(f: Any) -> None:
        n = len(feats)
        f.create_dataset(
            "features",
            data=feats.features,
            chunks=(max(1, min(n, 1024)), feats.dim) if n else None,
        )
        f.create_dataset("coords", data=coords)
        if feats.qc_measures is not None:
            qkey = str(attrs.get("qc_measure_key", ""))
            f.create_dataset("qc_measures", data=feats.qc_measures)
            attrs["qc_sha256"] = qc_digest(feats.qc_measures, qkey)
        else:
            attrs.pop("qc_measure_key", None)
            attrs.pop("qc_sha256", None)
        if feats.coords is None:
            f.attrs["coords_missing"] = True
        for name, value in attrs.items():
            f.attrs[name] = _attr_value(value)
        if key:
            # signed as a reader will see them: read back through the same checks
            signed = _read_h5_data(f, path, data=False)[3]
            f.attrs["content_hmac"] = keyed_digest(
                key, feats.features, coords, feats.qc_measures, signed,
                content=attrs["content_sha256"])

    return write_h5(path, build, "features file")


# --------------------------------------------------------------------------- reading


_JSON_ATTRS = ("encoder_spec",)

#: Attributes napari-ghanet interprets, and the types their values must have: a file
#: whose attribute has another type is damaged (a cache is recomputed, not trusted).
ATTR_TYPES: dict[str, tuple[type, ...]] = {
    "slide_fingerprint": (str,), "grid_key": (str,), "content_sha256": (str,),
    "content_hmac": (str,), "qc_sha256": (str,), "qc_measure_key": (str,),
    "encoder": (str,), "encoder_spec": (dict,), "package_version": (str,),
    "backend": (str,), "step_level0": (int,), "n_skipped": (int,), "feature_dim": (int,),
    "seconds": (float,), "coords_missing": (bool,), "skipped_coords": (list,),
}


def _read_h5_data(f: Any, path: Path, data: bool = True) -> tuple[np.ndarray, np.ndarray | None,
                                                 np.ndarray | None, dict[str, Any]]:
    """Raw ``features``, ``coords``, ``qc_measures`` and the attributes (root, coords,
    features) of an open file, each checked by :mod:`napari_ghanet.io.h5safe` first."""
    ds = plain_dataset(f, "features", path, kinds="fiu")
    if ds is None:
        raise FeaturesError(
            f"{path}: no 'features' dataset (found: {', '.join(list(f.keys())[:8]) or 'nothing'})")
    cds = plain_dataset(f, "coords", path, kinds="fiu")
    qds = plain_dataset(f, "qc_measures", path, kinds="f")
    read = {"types": ATTR_TYPES, "json_keys": _JSON_ATTRS}
    signed = {
        "root": read_attrs(f, path, **read),
        "coords": read_attrs(cds, path, **read) if cds is not None else {},
        "features": read_attrs(ds, path, **read),
    }
    if not data:
        return None, None, None, signed
    raw_feats = np.asarray(ds[()])
    raw_coords = np.asarray(cds[()]) if cds is not None else None
    qc = np.asarray(qds[()]) if qds is not None else None
    return raw_feats, raw_coords, qc, signed


def _check_h5_digests(path: Path, raw_feats, raw_coords, qc, signed, attrs,
                      key: bytes | None) -> None:
    if qc is not None:
        qkey = str(attrs.get("qc_measure_key", ""))
        if attrs.get("qc_sha256") != qc_digest(qc, qkey) or qc.shape != (
                raw_feats.shape[0], len(QC_MEASURES)):
            raise FeaturesError(
                f"{path}: damaged feature file: the QC measures no longer match the "
                "digest stored when they were written; delete it (a cache file is "
                "recomputed)")
    digest = attrs.get("content_sha256")
    actual = features_digest(raw_feats, raw_coords) if (
        digest is not None or key is not None) else None
    if digest is not None and actual != digest:
        raise FeaturesError(
            f"{path}: damaged feature file: the features or coordinates no longer "
            "match the digest stored when it was written; delete it (a cache "
            "file is recomputed) or re-embed the slide")
    if key is None:
        return
    stored = signed["root"].get("content_hmac")
    if not isinstance(stored, str):
        raise FeaturesError(
            f"{path}: feature file without this user's keyed digest (written by another "
            "user or an older version, or altered): not trusted")
    if not hmac.compare_digest(stored, keyed_digest(key, raw_feats, raw_coords, qc, signed,
                                                    content=actual)):
        raise FeaturesError(
            f"{path}: the keyed digest does not match (altered, or signed with another "
            "user's key): not trusted")


def _load_h5(path: Path, key: bytes | None = None) -> PatchFeatures:
    try:
        with open_h5(path) as f:
            raw_feats, raw_coords, qc, signed = _read_h5_data(f, path)
    except FeaturesError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, MemoryError) as exc:
        raise FeaturesError(f"{path}: corrupt feature file ({_short_exc(exc)})") from None
    attrs = dict(signed["coords"])
    attrs.update(signed["root"])
    # TRIDENT keeps the encoder's name on the features dataset ('encoder')
    source = signed["features"].get("encoder")
    if isinstance(source, str) and "encoder_spec" not in attrs:
        attrs["source_encoder"] = source
    feats = _squeeze_rows(raw_feats, None, "features", path)
    coords = None
    if raw_coords is not None and not attrs.get("coords_missing", False):
        coords = _squeeze_rows(raw_coords, 2, "coords", path)
    _check_h5_digests(path, raw_feats, raw_coords, qc, signed, attrs, key)
    attrs.pop("coords_missing", None)
    if coords is not None and coords.shape[0] != feats.shape[0]:
        raise FeaturesError(
            f"{path}: {feats.shape[0]} feature rows but {coords.shape[0]} coordinates"
        )
    if coords is not None and coords.dtype.kind == "f" and not (
            np.isfinite(coords).all() and (np.abs(coords) < 2.0**53).all()):
        raise FeaturesError(f"{path}: coordinates that are not finite whole numbers")
    return PatchFeatures(feats.astype(np.float32, copy=False), coords, attrs, qc)


def _squeeze_rows(a: np.ndarray, width: int | None, what: str, path: Path) -> np.ndarray:
    """(1, N, D) / (N, D) -> (N, D), as CLAM and TRIDENT variants store them."""
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 1 and width is None:
        a = a[None, :]
    if a.ndim != 2 or (width is not None and a.shape[1] != width):
        raise FeaturesError(f"{path}: dataset {what!r} has shape {a.shape}, expected (N, D)")
    return a


def _short_exc(exc: BaseException, n: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= n else text[: n - 3] + "..."


def _load_pt(path: Path) -> PatchFeatures:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise FeaturesError(
            f"{path}: cannot load as a tensor file (only plain tensors are accepted, "
            f"no pickled objects): {exc}"
        ) from exc
    coords = None
    attrs: dict[str, Any] = {}
    if isinstance(obj, dict):
        if "features" not in obj:
            raise FeaturesError(f"{path}: dict without a 'features' entry ({list(obj)[:5]})")
        coords = obj.get("coords")
        attrs = {k: v for k, v in obj.items() if k not in ("features", "coords")}
        attrs = {k: v for k, v in attrs.items() if isinstance(v, str | int | float | bool)}
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor):
        raise FeaturesError(f"{path}: holds a {type(obj).__name__}, not a feature tensor")
    feats = _squeeze_rows(obj.detach().float().cpu().numpy(), None, "features", path)
    if coords is not None:
        coords = _squeeze_rows(np.asarray(torch.as_tensor(coords).cpu()), 2, "coords", path)
    return PatchFeatures(feats, coords, attrs)


def _check_npz_members(path: Path) -> None:
    """Refuse an ``.npz`` whose ``features``/``coords`` declare more data than the archive
    member holds (or than :data:`~napari_ghanet.io.h5safe.MAX_DATASET_BYTES`): np.load
    would allocate the declared array before reading it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            for name in ("features.npy", "coords.npy"):
                try:
                    info = zf.getinfo(name)
                except KeyError:
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(fh)
                if dtype.hasobject:
                    raise FeaturesError(f"{path}: {name} holds Python objects; not read")
                declared = math.prod(shape) * dtype.itemsize
                if declared > min(info.file_size, MAX_DATASET_BYTES):
                    raise FeaturesError(
                        f"{path}: {name} declares {declared} bytes of data but holds "
                        f"{info.file_size}; a damaged or crafted file")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise FeaturesError(f"{path}: not a readable .npz feature file "
                            f"({_short_exc(exc)})") from None


def _load_npz(path: Path) -> PatchFeatures:
    _check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as payload:
            if "features" not in payload:
                raise FeaturesError(
                    f"{path}: no 'features' array (found: {', '.join(payload.files) or 'nothing'})"
                )
            raw = np.asarray(payload["features"])
            raw_coords = np.asarray(payload["coords"]) if "coords" in payload else None
    except FeaturesError:
        raise
    except (OSError, ValueError, EOFError, MemoryError) as exc:
        raise FeaturesError(f"{path}: not a readable .npz feature file "
                            f"({_short_exc(exc)})") from None
    if raw.dtype.kind not in "fiu" or (raw_coords is not None and raw_coords.dtype.kind not in "fiu"):
        raise FeaturesError(f"{path}: features and coords must be numbers")
    feats = _squeeze_rows(raw, None, "features", path).astype(np.float32, copy=False)
    coords = None if raw_coords is None else _squeeze_rows(raw_coords, 2, "coords", path)
    return PatchFeatures(feats, coords, {})


def _sidecar_attrs(path: Path) -> dict[str, Any]:
    """Scalar entries of slide2vec's ``<stem>.meta.json`` beside a ``.pt``/``.npz`` file
    (a regular file of at most 1 MiB, JSON nested at most 32 levels)."""
    meta = path.with_name(path.stem + ".meta.json")
    if not os.path.lexists(meta):
        return {}
    try:
        text = read_text_file(meta, "feature metadata file", max_bytes=1024 * 1024)
        if json_depth(text) > MAX_JSON_DEPTH:
            raise FeaturesError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        data = json.loads(text)
    except (InputFileError, ValueError, RecursionError) as exc:
        raise FeaturesError(f"{meta}: unreadable metadata file ({_short_exc(exc)})") from None
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)}


def _read_head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of a regular file (opened without blocking: never a FIFO)."""
    p = check_regular_file(path, "feature file")
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputFileError(f"feature file {p}: is not a regular file; give a file on disk")
        return fh.read(n)


def load_features(path: str | os.PathLike, *, key: bytes | None = None) -> PatchFeatures:
    """Read patch features from an ``.h5`` (this package, CLAM, TRIDENT), ``.pt`` (CLAM,
    TRIDENT, slide2vec) or ``.npz`` (slide2vec) file.

    A ``<stem>.meta.json`` beside a ``.pt`` / ``.npz`` file (slide2vec's metadata, e.g.
    ``encoder_name``) adds its scalar entries to ``attrs``.

    Returns
    -------
    PatchFeatures
        ``features`` float32 (N, D); ``coords`` int64 (N, 2) or None (``.pt`` files);
        ``attrs`` with ``encoder_spec`` decoded from JSON when present.

    With ``key`` (bytes), an HDF5 file must also carry the keyed digest made with it
    (:func:`keyed_digest`), as the feature cache must.

    Raises
    ------
    FeaturesError
        Missing, not a regular file, corrupt, crafted or unexpected file (see
        :mod:`napari_ghanet.io.h5safe` for what an HDF5 file may hold).
    """
    path = Path(path)
    try:
        head = _read_head(path, 8)
    except InputFileError as e:
        raise FeaturesError(str(e)) from None
    except OSError as e:
        raise FeaturesError(f"feature file {path}: cannot be read ({e.strerror or e})") from None
    if head == b"\x89HDF\r\n\x1a\n" or path.suffix.lower() in (".h5", ".hdf5"):
        feats = _load_h5(path, key)
    elif key is not None:
        raise FeaturesError(f"{path}: not an HDF5 feature file of this package")
    elif path.suffix.lower() == ".npz":
        feats = _load_npz(path)
        feats.attrs = {**_sidecar_attrs(path), **feats.attrs}
    elif path.suffix.lower() in (".pt", ".pth") or head[:2] == b"PK":
        feats = _load_pt(path)
        feats.attrs = {**_sidecar_attrs(path), **feats.attrs}
    else:
        raise FeaturesError(f"{path}: unknown feature file type (expected .h5, .pt or .npz)")
    if not np.isfinite(feats.features).all():
        bad = int((~np.isfinite(feats.features)).any(axis=1).sum())
        raise FeaturesError(f"{path}: {bad} feature rows contain NaN or infinity")
    if "target_mpp" in feats.attrs and not (
        isinstance(feats.attrs["target_mpp"], int | float)
        and math.isfinite(feats.attrs["target_mpp"])
    ):
        feats.attrs.pop("target_mpp")
    step = feats.attrs.get("step_level0")
    problems = check_coords(
        feats.coords, step_level0=step if isinstance(step, int) and step > 0 else 0
    )
    if problems:
        raise FeaturesError(f"{path}: damaged patch coordinates: " + "; ".join(problems))
    return feats
