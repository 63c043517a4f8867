"""The description of a patch encoder that travels with its features: :class:`EncoderSpec`.

Features made by one encoder do not fit a model trained on another's, so every feature
file and model bundle records the spec of the encoder that made it, and the one check
:func:`encoder_mismatch` compares them. Units: ``patch_px`` pixels at ``target_mpp``
um/px (the patch geometry); ``resize`` the side in pixels the network is fed (None = as
read). Torch-free, so the feature and bundle readers can use it without the encoders.

Examples
--------
>>> spec = EncoderSpec("resnet50_trunc", 1024)
>>> spec.with_geometry(224, 0.5).patch_px
224
>>> EncoderSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_ghanet.errors import EncoderError

__all__ = ["EncoderSpec", "encoder_mismatch", "file_digest"]

#: top-level keys of the flat JSON form, in the order written
_CORE = ("name", "dim", "patch_px", "target_mpp", "resize", "mean", "std", "weights")
#: value a core key stands for when a stored spec omits it
_ABSENT = {"patch_px": 256, "target_mpp": 0.5, "resize": None, "mean": None, "std": None,
           "weights": None}


def file_digest(path: str | Path, n: int = 16) -> str:
    """The first ``n`` hex digits of the SHA-256 of a file (read in 4 MiB blocks).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_digest(p)
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:n]


_file_digest = file_digest  # former private name


def _floats3(v: Any, what: str) -> tuple[float, float, float] | None:
    if v is None:
        return None
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise EncoderError(f"encoder spec: {what} must be 3 numbers, got {v!r}") from None
    if len(out) != 3:
        raise EncoderError(f"encoder spec: {what} must be 3 numbers, got {v!r}")
    return out  # type: ignore[return-value]


def _close3(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(float(x), float(y), rel_tol=1e-4, abs_tol=1e-6) for x, y in zip(a, b)
    )


def _weights_file(weights: str) -> str:
    """The description without its digest: ``'resnet50.pth sha256:ab'`` -> ``'resnet50.pth'``."""
    return weights.split("sha256:")[0].strip()


def _digest_of(weights: str | None) -> str | None:
    if weights and "sha256:" in weights:
        return weights.split("sha256:")[-1].strip()
    return None


@dataclass(frozen=True, eq=True)
class EncoderSpec:
    """How patch features were made (see the module docstring for units).

    Attributes
    ----------
    name : str
        Registered encoder name (``resnet50_trunc``, ``morphometric``,
        ``torchscript:<stem>``, ``timm:<arch>`` ...).
    dim : int
        Feature dimension D of the (N, D) features.
    patch_px : int
        Patch side in pixels at ``target_mpp``.
    target_mpp : float
        Patch resolution, um per pixel.
    resize : int or None
        Side (px) the patch is resized to before the network; None = fed as is.
    mean, std : tuple of 3 floats or None
        Channel normalisation of [0, 1] RGB (None: not recorded).
    weights : str or None
        Weights description, e.g. ``"resnet50-0676ba61.pth sha256:0676ba61b9f2a3c4"``.
    extra : dict
        Encoder-specific entries (JSON values), e.g. ``{"version": 1, "standardize": True}``.

    Examples
    --------
    >>> spec = EncoderSpec.from_dict({"name": "morphometric", "dim": 64, "version": 1})
    >>> spec.dim, spec.patch_px, spec.extra
    (64, 256, {'version': 1})
    >>> spec.to_dict()
    {'name': 'morphometric', 'dim': 64, 'version': 1}
    >>> spec.with_geometry(patch_px=512, target_mpp=0.25).patch_px
    512
    """

    name: str
    dim: int
    patch_px: int = 256
    target_mpp: float = 0.5
    resize: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: keys of the dict the spec was read from, to write it back unchanged:
    #: (top-level keys, keys of a nested "extra" or None); None = the flat form
    layout: tuple[tuple[str, ...], tuple[str, ...] | None] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        s = object.__setattr__
        if not isinstance(self.name, str) or not self.name:
            raise EncoderError(f"encoder spec: name must be a non-empty string, got {self.name!r}")
        try:
            s(self, "dim", int(self.dim))
            s(self, "patch_px", int(self.patch_px))
            s(self, "target_mpp", float(self.target_mpp))
            s(self, "resize", None if self.resize in (None, 0) else int(self.resize))
        except (TypeError, ValueError) as exc:
            raise EncoderError(f"encoder spec {self.name!r}: {exc}") from None
        s(self, "mean", _floats3(self.mean, "mean"))
        s(self, "std", _floats3(self.std, "std"))
        s(self, "weights", None if self.weights is None else str(self.weights))
        s(self, "extra", dict(self.extra or {}))

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | EncoderSpec) -> EncoderSpec:
        """Read a spec from its JSON dict (feature-file or bundle form).

        Raises EncoderError when ``name`` or ``dim`` is missing or a value is malformed.

        Examples
        --------
        >>> EncoderSpec.from_dict({"name": "x", "dim": "8", "resize": 0}).resize is None
        True
        """
        if isinstance(d, EncoderSpec):
            return d
        if not isinstance(d, Mapping):
            raise EncoderError(f"encoder spec must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("name", "dim") if k not in d]
        if missing:
            raise EncoderError(f"encoder spec lacks the field {missing[0]!r}")
        nested = d.get("extra")
        if nested is not None and not isinstance(nested, Mapping):
            raise EncoderError(f"encoder spec: 'extra' must be an object, got {nested!r}")
        extra = {k: v for k, v in d.items() if k not in _CORE and k != "extra"}
        extra.update(nested or {})
        weights = d.get("weights", extra.pop("weights", None))
        layout = (tuple(d), None if nested is None else tuple(nested))
        core = {k: d[k] for k in _CORE[2:-1] if k in d}
        return cls(
            name=d["name"], dim=d["dim"], weights=weights, extra=extra, layout=layout, **core
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON dict; the exact form (keys, nesting) the spec was read from.

        Examples
        --------
        >>> d = {"name": "m", "dim": 4, "mean": [0, 0, 0], "extra": {"weights": "none"}}
        >>> EncoderSpec.from_dict(d).to_dict() == d
        True
        """
        flat: dict[str, Any] = {
            "name": self.name,
            "dim": self.dim,
            "patch_px": self.patch_px,
            "target_mpp": self.target_mpp,
            "resize": self.resize,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }
        if self.weights is not None:
            flat["weights"] = self.weights
        flat.update(self.extra)
        if self.layout is None:
            return flat
        top, nested_keys = self.layout
        out: dict[str, Any] = {}
        nested: dict[str, Any] | None = None
        for k in top:
            if k == "extra" and nested_keys is not None:
                nested = out["extra"] = {}
                for ek in nested_keys:
                    if ek in flat and ek not in top:
                        nested[ek] = flat.pop(ek)
            elif k in flat:
                out[k] = flat.pop(k)
        for k, v in flat.items():  # values the stored dict did not have
            if k in _ABSENT and v == _ABSENT[k]:
                continue
            if nested is not None and k not in _CORE:
                nested[k] = v
            else:
                out[k] = v
        return out

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys): what feature-cache keys hash."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def __hash__(self) -> int:
        return hash(self.to_json())

    # ------------------------------------------------------------------ derived

    @property
    def weights_digest(self) -> str | None:
        """The ``sha256:`` digest in :attr:`weights`, or None."""
        return _digest_of(self.weights)

    def with_geometry(self, patch_px: int, target_mpp: float) -> EncoderSpec:
        """This spec at another patch geometry (the grid's, which the features record)."""
        return dataclasses.replace(self, patch_px=int(patch_px), target_mpp=float(target_mpp))

    def replace(self, **changes: Any) -> EncoderSpec:
        """A copy with ``changes`` (field names) applied."""
        return dataclasses.replace(self, **changes)

    def differences(self, actual: EncoderSpec | Mapping[str, Any]) -> list[str]:
        """Why features made with ``actual`` do not fit where ``self`` is expected.

        Checked: name, dim, patch_px, target_mpp (5 % tolerance), resize; mean and std
        (when both record them); the extra entries ``version`` and ``standardize`` (when
        both record them); the weights (their sha256 digests when both have one, else the
        descriptions without digest). Empty when they fit.

        Examples
        --------
        >>> a = EncoderSpec("resnet50_trunc", 1024)
        >>> a.differences(EncoderSpec("resnet50_trunc", 1024, resize=224))
        ['resize 224 instead of None']
        """
        other = EncoderSpec.from_dict(actual)
        why = []
        if other.name != self.name:
            why.append(f"encoder {other.name!r} instead of {self.name!r}")
        if other.dim != self.dim:
            why.append(f"feature dimension {other.dim} instead of {self.dim}")
        if other.patch_px != self.patch_px:
            why.append(f"patch size {other.patch_px} px instead of {self.patch_px} px")
        if not math.isclose(other.target_mpp, self.target_mpp, rel_tol=0.05):
            why.append(f"{other.target_mpp:g} um/px instead of {self.target_mpp:g} um/px")
        if other.resize != self.resize:
            why.append(f"resize {other.resize} instead of {self.resize}")
        for key in ("version", "standardize"):
            a, b = self.extra.get(key), other.extra.get(key)
            if a is not None and b is not None and a != b:
                why.append(f"{key} {b!r} instead of {a!r}")
        for key in ("mean", "std"):
            a, b = getattr(self, key), getattr(other, key)
            if a is not None and b is not None and not _close3(a, b):
                why.append(f"{key} {list(b)!r} instead of {list(a)!r}")
        if self.weights is not None and other.weights is not None:
            da, db = self.weights_digest, other.weights_digest
            if (da != db) if (da and db) else (_weights_file(self.weights)
                                               != _weights_file(other.weights)):
                why.append(f"weights {other.weights!r} instead of {self.weights!r}")
        return why

    def describe(self) -> str:
        """Short human description: ``'name (D-d, P px at M um/px)'``."""
        return f"{self.name!r} ({self.dim}-d, {self.patch_px} px at {self.target_mpp:g} um/px)"


def encoder_mismatch(
    expected: EncoderSpec | Mapping[str, Any],
    actual: EncoderSpec | Mapping[str, Any],
    *,
    model: str | None = None,
) -> str | None:
    """The one compatibility check: None when features made as ``actual`` fit where
    ``expected`` is needed, else a message naming what differs and what to do (naming
    the ``model`` that expects them, when given).

    Used by model bundles (``ModelBundle.check_encoder``), the feature cache
    (``io.features.load_matching_features``) and prediction. The checks are those of
    :meth:`EncoderSpec.differences`.

    Examples
    --------
    >>> exp = {"name": "morphometric", "dim": 64}
    >>> encoder_mismatch(exp, {"name": "morphometric", "dim": 64}) is None
    True
    >>> print(encoder_mismatch(exp, {"name": "resnet50_trunc", "dim": 1024}))
    features from 'resnet50_trunc' (1024-d, 256 px at 0.5 um/px) do not fit 'morphometric' \
(64-d, 256 px at 0.5 um/px): encoder 'resnet50_trunc' instead of 'morphometric', feature \
dimension 1024 instead of 64. Re-embed the slide with the expected encoder.
    """
    exp, act = EncoderSpec.from_dict(expected), EncoderSpec.from_dict(actual)
    why = exp.differences(act)
    if not why:
        return None
    if model is not None:
        return (
            f"the model {model!r} expects features from {exp.describe()} but got "
            + ", ".join(why) + ". Re-embed the slide with the model's encoder."
        )
    return (
        f"features from {act.describe()} do not fit {exp.describe()}: "
        + ", ".join(why)
        + ". Re-embed the slide with the expected encoder."
    )
