"""The encoder registry: a name -> constructor map, building from a name or a spec.

A constructor is a :class:`~napari_ghanet.encoders.base.PatchEncoder` subclass (or a
function returning one). Classes carry the metadata :func:`describe_encoders` lists
without building anything: ``name``, ``dim``, ``input_size``, ``patch_px`` (px),
``target_mpp`` (um/px) and optionally a classmethod ``find_weights() -> Path | None``.

A name ending with ``':'`` registers a family: ``register_encoder("timm:")`` serves every
``timm:<arch>`` name, and the constructor receives ``arch="<arch>"`` as a keyword.

:func:`from_spec` is the one way to rebuild the encoder a stored
:class:`~napari_ghanet.encoders.base.EncoderSpec` (a bundle's or a feature file's)
describes; the CLI and prediction call it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from napari_ghanet.encoders.base import EncoderSpec, PatchEncoder
from napari_ghanet.errors import EncoderError

__all__ = [
    "create_encoder",
    "describe_encoders",
    "from_spec",
    "list_encoders",
    "register_encoder",
]

_REGISTRY: dict[str, Callable[..., PatchEncoder]] = {}


def register_encoder(name: str) -> Callable:
    """Decorator registering a constructor (class or function returning a
    :class:`PatchEncoder`) under ``name``; a name ending with ``':'`` registers a family
    whose members ``<name><arch>`` are built with ``arch=<arch>``.

    Examples
    --------
    >>> @register_encoder("doc:")
    ... class DocFamily(PatchEncoder):
    ...     name, dim = "doc:", 2
    ...     def __init__(self, arch, **kw):
    ...         super().__init__(**kw)
    ...         self.name = f"doc:{arch}"
    ...     def forward(self, x):
    ...         return x.mean((2, 3))[:, :2]
    >>> create_encoder("doc:tiny").name
    'doc:tiny'
    >>> _ = _REGISTRY.pop("doc:")
    """

    def deco(fn: Callable[..., PatchEncoder]) -> Callable[..., PatchEncoder]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise EncoderError(f"an encoder named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_encoders() -> list[str]:
    """Names of the registered encoders (families end with ``':'``), sorted.

    Examples
    --------
    >>> {"morphometric", "resnet50_trunc", "torchscript"} <= set(list_encoders())
    True
    """
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[Callable[..., PatchEncoder], dict[str, Any]]:
    """Constructor for ``name`` and the keywords the name itself implies (``arch``)."""
    if name in _REGISTRY and not name.endswith(":"):
        return _REGISTRY[name], {}
    families = [k for k in _REGISTRY if k.endswith(":") and name.startswith(k)]
    if families:
        family = max(families, key=len)
        arch = name[len(family) :]
        if not arch:
            raise EncoderError(
                f"encoder family {family!r} needs an architecture: {family}<arch>"
            )
        return _REGISTRY[family], {"arch": arch}
    raise EncoderError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")


def create_encoder(name: str, /, **kwargs: Any) -> PatchEncoder:
    """Build the encoder registered as ``name`` (in eval mode, on the CPU).

    Examples
    --------
    >>> enc = create_encoder("morphometric")
    >>> enc.dim, enc.training
    (64, False)
    """
    ctor, implied = _lookup(name)
    enc = ctor(**implied, **kwargs)
    enc.eval()
    return enc


def _spec_constructor(name: str) -> tuple[str, Callable[..., PatchEncoder], dict[str, Any]]:
    """Registry name, constructor and implied keywords for a spec's encoder name.

    Besides registered names and families, a class may claim spec names by prefix with a
    ``spec_prefix`` attribute (TorchScript records ``torchscript:<file stem>``)."""
    try:
        ctor, implied = _lookup(name)
        return name, ctor, implied
    except EncoderError:
        pass
    for reg, ctor in _REGISTRY.items():
        prefix = getattr(ctor, "spec_prefix", None)
        if prefix and name.startswith(prefix):
            return reg, ctor, {}
    raise EncoderError(
        f"no registered encoder builds features named {name!r} (available: "
        f"{', '.join(list_encoders())}); if it is a user's TorchScript encoder, give that "
        "encoder's file as the encoder weights"
    )


def _accepted(ctor: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the keys ``ctor`` does not take (unless it takes ``**kw``)."""
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def takes_weights(name: str) -> bool:
    """Whether the encoder a spec name stands for is built from a weights file (accepts
    ``weights=`` or, for TorchScript, ``path=``); False for weight-free encoders.

    Examples
    --------
    >>> takes_weights("resnet50_trunc"), takes_weights("morphometric")
    (True, False)
    """
    _, ctor, _ = _spec_constructor(name)
    return bool({"weights", "path"} & set(_accepted(ctor, {"weights": 1, "path": 1})))


def from_spec(
    spec: EncoderSpec | Mapping[str, Any], /, *, using: str | None = None, **overrides: Any
) -> PatchEncoder:
    """Rebuild the encoder ``spec`` describes (in eval mode, on the CPU).

    The constructor's classmethod ``spec_kwargs(spec)`` turns the spec into arguments
    (ResNet50: ``resize_to``; TorchScript: ``dim``, ``mean``, ``std``, ``input_size``,
    ``name``; morphometric: ``standardize``; all: ``patch_px``, ``target_mpp``);
    ``overrides`` are added last (e.g. ``weights=PATH`` for ResNet50, ``path=FILE`` for a
    TorchScript encoder, whose file a spec only names). ``using`` picks the registered
    constructor when the spec's name is not one (a user encoder with its own name).

    The result is not checked against ``spec``: compare ``enc.spec()`` with
    :func:`~napari_ghanet.io.encoder_spec.encoder_mismatch` where that matters.

    Raises EncoderError for an unknown name or a missing file.

    Examples
    --------
    >>> enc = from_spec({"name": "morphometric", "dim": 64, "standardize": False})
    >>> enc.standardize, enc.spec().to_dict()["standardize"]
    (False, False)
    >>> from_spec(enc.spec(), target_mpp=0.25).target_mpp
    0.25
    """
    spec = EncoderSpec.from_dict(spec)
    if using is not None:
        ctor, implied = _lookup(using)
        reg = using
    else:
        reg, ctor, implied = _spec_constructor(spec.name)
    to_kwargs = getattr(ctor, "spec_kwargs", None)
    kw = dict(to_kwargs(spec)) if callable(to_kwargs) else {
        "patch_px": spec.patch_px,
        "target_mpp": spec.target_mpp,
    }
    kw = _accepted(ctor, kw)
    kw.update(overrides)
    for k in implied:
        kw.pop(k, None)
    try:
        enc = ctor(**implied, **kw)
    except TypeError as exc:
        raise EncoderError(f"cannot rebuild encoder {spec.name!r} ({reg}): {exc}") from exc
    enc.eval()
    return enc


def _weights_status(ctor: Any) -> str:
    hint = getattr(ctor, "weights_hint", None)
    if hint:
        return str(hint)
    find = getattr(ctor, "find_weights", None)
    if not callable(find):
        return "none needed"
    path = find()
    return f"found: {Path(path)}" if path is not None else "missing"


def describe_encoders() -> list[dict[str, Any]]:
    """One row per registered name (sorted) for listings, without building encoders.

    Keys: ``name``, ``dim`` (None when declared per instance), ``input_size`` (px or
    None), ``patch_px`` (px), ``target_mpp`` (um/px) and ``weights``: ``'none needed'``,
    ``'found: PATH'``, ``'missing'`` (from the class's ``find_weights()``) or the class's
    ``weights_hint`` (e.g. TorchScript's user file).

    Examples
    --------
    >>> row = {r["name"]: r for r in describe_encoders()}["morphometric"]
    >>> row["dim"], row["patch_px"], row["target_mpp"], row["weights"]
    (64, 256, 0.5, 'none needed')
    """
    rows = []
    for reg in list_encoders():
        ctor = _REGISTRY[reg]
        dim = getattr(ctor, "dim", None)
        rows.append(
            {
                "name": f"{reg}<arch>" if reg.endswith(":") else reg,
                "dim": int(dim) if isinstance(dim, int) and dim > 0 else None,
                "input_size": getattr(ctor, "input_size", None),
                "patch_px": getattr(ctor, "patch_px", None),
                "target_mpp": getattr(ctor, "target_mpp", None),
                "weights": _weights_status(ctor),
            }
        )
    return rows
