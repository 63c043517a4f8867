"""The training-distribution summary a bundle carries: what the training slides looked like.

Written by ``ghanet-train bundle`` (and ``cv``) into the bundle's metadata under
``"distribution"``, read by :mod:`napari_ghanet.inference.distribution` to say whether a
new slide is like the training slides. A few tens of kilobytes:

* ``embedding.slide``: a PCA of the training slides' mean patch features (standardised,
  at most 16 components, whitened) and ``embedding.patch``: a PCA of a sample of their
  patch features (at most 32 components). A feature's *distance* to the training
  distribution is its whitened PCA score length plus the part the components leave out
  (scaled so that a typical training value is about 1); :func:`distance` computes it.
* ``patch_threshold``: the 99th percentile of the training patches' distances; a patch
  beyond it is "unlike any training patch".
* ``checks``: for each measure a new slide is compared on, the training slides'
  quantiles (0, 1, ..., 100 %): ``slide_distance`` and ``patch_outlier_share``
  (*cross-fitted*: each training slide measured against a PCA fitted without its fold,
  so the training values are what a new slide of the same kind gets), the stain colour
  (:mod:`napari_ghanet.preprocessing.stain_stats`), ``mpp`` (level-0 µm/px),
  ``tissue_area_mm2`` and ``patch_count``. Measures the features files did not record
  are absent (their checks are then not available).

Arrays are stored as base64 float32 text with their shape; :func:`summary_problems`
checks every size, shape and value (finite) before anything is decoded into use.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> slides = [rng.normal(size=(40, 8)).astype(np.float32) for _ in range(30)]
>>> s = build_summary(slides, [{"mpp": 0.5}] * 30, encoder="demo", target_mpp=0.5)
>>> summary_problems(s), sorted(s["checks"])[:3]
([], ['mpp', 'patch_outlier_share', 'slide_distance'])
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_ghanet.errors import BundleError, CohortError

__all__ = [
    "CHECK_NAMES",
    "SUMMARY_VERSION",
    "Pca",
    "build_summary",
    "decode_array",
    "distance",
    "encode_array",
    "summary_problems",
]

SUMMARY_VERSION = 1
#: every check a summary may hold, in report order
CHECK_NAMES = (
    "slide_distance", "patch_outlier_share", "hematoxylin_share", "stain_intensity",
    "off_stain", "mpp", "tissue_area_mm2", "patch_count",
)
_N_QUANTILES = 101
MAX_DIM = 65_536
MAX_COMPONENTS = 64
MAX_SUMMARY_FLOATS = 2_000_000  # 8 MB of float32, far above what build_summary writes
_SLIDE_COMPONENTS = 16
_PATCH_COMPONENTS = 32
_PATCHES_PER_SLIDE = 200
_FOLDS = 5


# --------------------------------------------------------------------------- arrays


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """``{"shape": [...], "f4": base64}`` of a float array (little-endian float32)."""
    a = np.ascontiguousarray(np.asarray(a, dtype="<f4"))
    return {"shape": list(a.shape), "f4": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(entry: Any, what: str = "array") -> np.ndarray:
    """The float32 array of :func:`encode_array`; ValueError on any inconsistency."""
    if not isinstance(entry, dict) or set(entry) != {"shape", "f4"}:
        raise BundleError(f"{what} must be an object with 'shape' and 'f4'")
    shape, text = entry["shape"], entry["f4"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_DIM
            for s in shape)):
        raise BundleError(f"{what} has an invalid shape")
    n = math.prod(shape)
    if n > MAX_SUMMARY_FLOATS or not isinstance(text, str) or len(text) != 4 * ((4 * n + 2) // 3):
        raise BundleError(f"{what}: its data do not match its shape {shape}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise BundleError(f"{what} is not base64 text") from None
    a = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
    if not np.isfinite(a).all():
        raise BundleError(f"{what} holds NaN or infinite values")
    return a


# --------------------------------------------------------------------------- PCA


class Pca:
    """Standardised, whitened PCA with a residual term; see :func:`distance`."""

    def __init__(self, mean, scale, components, sdev, residual: float):
        self.mean = np.asarray(mean, np.float32)
        self.scale = np.asarray(scale, np.float32)
        self.components = np.asarray(components, np.float32)
        self.sdev = np.asarray(sdev, np.float32)
        self.residual = float(residual)

    @classmethod
    def fit(cls, x: np.ndarray, max_components: int) -> Pca:
        x = np.asarray(x, np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-12), scale, 1.0)
        z = (x - mean) / scale
        k = int(max(1, min(max_components, x.shape[0] - 1, x.shape[1])))
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        comps = vt[:k]
        sdev = s[:k] / math.sqrt(max(x.shape[0] - 1, 1))
        sdev = np.maximum(sdev, 1e-3 * max(float(sdev[0]), 1e-6))
        resid = z - (z @ comps.T) @ comps
        residual = float((resid**2).sum(axis=1).mean())
        return cls(mean, scale, comps, sdev, max(residual, 1e-6 * x.shape[1]))

    def distances(self, x: np.ndarray) -> np.ndarray:
        """float64 (n,): distance of each row (see :func:`distance`)."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        scores = z @ self.components.T.astype(np.float64)
        resid = (z**2).sum(axis=1) - (scores**2).sum(axis=1)
        d2 = ((scores / self.sdev) ** 2).sum(axis=1) + np.clip(resid, 0, None) / self.residual
        return np.sqrt(d2 / (len(self.sdev) + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": encode_array(self.mean), "scale": encode_array(self.scale),
                "components": encode_array(self.components), "sdev": encode_array(self.sdev),
                "residual": self.residual}

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "pca") -> Pca:
        if not isinstance(d, dict):
            raise BundleError(f"{what} must be an object")
        mean = decode_array(d.get("mean"), f"{what}.mean")
        scale = decode_array(d.get("scale"), f"{what}.scale")
        comps = decode_array(d.get("components"), f"{what}.components")
        sdev = decode_array(d.get("sdev"), f"{what}.sdev")
        residual = d.get("residual")
        dim = mean.shape[0]
        if mean.ndim != 1 or scale.shape != (dim,) or comps.ndim != 2 or comps.shape[1] != dim:
            raise BundleError(f"{what}: mean, scale and components disagree on the feature size")
        if not 1 <= comps.shape[0] <= MAX_COMPONENTS or sdev.shape != (comps.shape[0],):
            raise BundleError(f"{what}: 1-{MAX_COMPONENTS} components, one sdev each")
        if (scale <= 0).any() or (sdev <= 0).any():
            raise BundleError(f"{what}: scales must be positive")
        if not (isinstance(residual, int | float) and math.isfinite(residual) and residual > 0):
            raise BundleError(f"{what}.residual must be a positive number")
        return cls(mean, scale, comps, sdev, float(residual))


def distance(pca: Pca, x: np.ndarray) -> np.ndarray:
    """Distance of feature rows ``x`` to the training distribution ``pca`` describes:
    sqrt((sum of squared whitened scores + residual / typical residual) / (k + 1)), about
    1 for a typical training row, growing with how unlike the training rows it is."""
    return pca.distances(x)


# --------------------------------------------------------------------------- build


def _quantiles(values: Sequence[float]) -> list[float]:
    return [float(v) for v in np.quantile(np.asarray(values, np.float64),
                                          np.linspace(0, 1, _N_QUANTILES))]


def _folds(n: int, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, int)
    fold[order] = np.arange(n) % min(_FOLDS, n)
    return fold


def _patch_sample(f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(f) <= _PATCHES_PER_SLIDE:
        return f
    return f[np.sort(rng.choice(len(f), _PATCHES_PER_SLIDE, replace=False))]


def _cross_fitted(slide_feats: list[np.ndarray], means: np.ndarray
                  ) -> tuple[np.ndarray, list]:
    """Per training slide: its mean feature's distance and its patches' distances, each
    against PCAs fitted on the other folds' slides."""
    n = len(slide_feats)
    rng = np.random.default_rng(0)
    samples = [_patch_sample(f, rng) for f in slide_feats]
    fold = _folds(n)
    slide_d = np.empty(n)
    patch_d: list[np.ndarray] = [np.empty(0)] * n
    for k in np.unique(fold):
        held, kept = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        sp = Pca.fit(means[kept], min(_SLIDE_COMPONENTS, max(1, len(kept) // 4)))
        slide_d[held] = sp.distances(means[held])
        pp = Pca.fit(np.concatenate([samples[i] for i in kept]), _PATCH_COMPONENTS)
        for i in held:
            patch_d[i] = pp.distances(slide_feats[i])
    return slide_d, patch_d


def build_summary(
    slide_features: Sequence[np.ndarray],
    acquisition: Sequence[dict[str, Any] | None],
    *,
    encoder: str,
    target_mpp: float | None,
    means: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The summary of the training slides (see the module doc).

    Parameters
    ----------
    slide_features : sequence of float32 (n_i, D)
        Each training slide's patch features, or a random sample of them (at least 5
        slides, each with a patch).
    acquisition : sequence of dict or None
        One per slide: what its features file recorded of the slide (``mpp`` level-0
        µm/px, ``tissue_area_mm2``, ``n_patches``, ``stain``: the descriptors of
        :func:`~napari_ghanet.preprocessing.stain_stats.stain_descriptors`); a measure
        absent on more than half the slides is left out.
    encoder, target_mpp
        The encoder's name and the patches' µm/px (reported with the verdict).
    means : sequence of float32 (D,), optional
        Each slide's mean patch feature over all its patches (default: the mean of
        ``slide_features``), for samples.

    Returns
    -------
    dict
        JSON-able; a few tens of kilobytes.
    """
    keep = [i for i, f in enumerate(slide_features) if len(f)]
    if len(keep) < 5:
        raise CohortError(f"a distribution summary needs at least 5 slides with patches, "
                          f"got {len(keep)}")
    feats = [np.asarray(slide_features[i], np.float32) for i in keep]
    mean_of = (np.stack([np.asarray(means[i], np.float64) for i in keep]) if means is not None
               else np.stack([f.mean(axis=0, dtype=np.float64) for f in feats]))
    slide_d, patch_d = _cross_fitted(feats, mean_of)
    threshold = float(np.quantile(np.concatenate(patch_d), 0.99))
    rng = np.random.default_rng(1)
    sample = np.concatenate([_patch_sample(f, rng) for f in feats])
    checks: dict[str, list[float]] = {
        "slide_distance": _quantiles(slide_d),
        "patch_outlier_share": _quantiles([float((d > threshold).mean()) for d in patch_d]),
    }
    acq = [acquisition[i] or {} for i in keep]
    measured = {
        "mpp": [a.get("mpp") for a in acq],
        "tissue_area_mm2": [a.get("tissue_area_mm2") for a in acq],
        "patch_count": [a.get("n_patches") for a in acq],
    }
    for key in ("hematoxylin_share", "stain_intensity", "off_stain"):
        measured[key] = [(a.get("stain") or {}).get(key) for a in acq]
    for key, values in measured.items():
        ok = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
        if ok and len(ok) * 2 >= len(acq):
            checks[key] = _quantiles(ok)
    return {
        "version": SUMMARY_VERSION,
        "n_slides": len(feats),
        "encoder": str(encoder),
        "feature_dim": int(feats[0].shape[1]),
        "target_mpp": None if target_mpp is None else float(target_mpp),
        "slide_pca": Pca.fit(mean_of, min(_SLIDE_COMPONENTS, max(1, len(feats) // 4))).to_dict(),
        "patch_pca": Pca.fit(sample, _PATCH_COMPONENTS).to_dict(),
        "patch_threshold": threshold,
        "checks": {k: {"quantiles": checks[k]} for k in CHECK_NAMES if k in checks},
    }


# --------------------------------------------------------------------------- checks


def summary_problems(s: Any, feature_dim: int | None = None) -> list[str]:
    """Every problem of a summary (empty when sound): types, sizes, shapes, finite values.

    ``feature_dim``: the bundle encoder's feature size the PCAs must match.
    """
    if not isinstance(s, dict):
        return [f"'distribution' must be an object, got {type(s).__name__}"]
    v = s.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        return ["'distribution.version' must be a whole number"]
    if v > SUMMARY_VERSION:  # a newer summary: the verdict says "not available"
        return []
    problems: list[str] = []
    n = s.get("n_slides")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10_000_000:
        problems.append("'distribution.n_slides' must be a positive whole number")
    if not isinstance(s.get("encoder"), str) or len(s["encoder"]) > 200:
        problems.append("'distribution.encoder' must be a name")
    tm = s.get("target_mpp")
    if tm is not None and not (isinstance(tm, int | float) and math.isfinite(tm) and 0 < tm < 1e3):
        problems.append("'distribution.target_mpp' must be a positive number of µm/px")
    thr = s.get("patch_threshold")
    if not (isinstance(thr, int | float) and not isinstance(thr, bool) and math.isfinite(thr)
            and thr > 0):
        problems.append("'distribution.patch_threshold' must be a positive number")
    for key in ("slide_pca", "patch_pca"):
        try:
            pca = Pca.from_dict(s.get(key), f"'distribution.{key}'")
        except ValueError as e:
            problems.append(str(e))
            continue
        if feature_dim is not None and pca.mean.shape[0] != feature_dim:
            problems.append(f"'distribution.{key}' describes {pca.mean.shape[0]}-d features "
                            f"but the encoder makes {feature_dim}-d")
    checks = s.get("checks")
    if not isinstance(checks, dict):
        return problems + ["'distribution.checks' must be an object"]
    for name, entry in checks.items():
        q = entry.get("quantiles") if isinstance(entry, dict) else None
        if name not in CHECK_NAMES:
            problems.append(f"'distribution.checks' has the unknown check {str(name)[:40]!r}")
        elif not (isinstance(q, list) and len(q) == _N_QUANTILES and all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in q) and all(b >= a for a, b in zip(q, q[1:]))):
            problems.append(f"'distribution.checks.{name}.quantiles' must be "
                            f"{_N_QUANTILES} finite, non-decreasing numbers")
    return problems
