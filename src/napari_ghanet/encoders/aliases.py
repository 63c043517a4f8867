"""Encoder names other tools write, mapped to this package's registered encoders.

A feature folder made by TRIDENT, CLAM, slide2vec or LazySlide names its encoder in that
tool's own words: TRIDENT's folder ``features_uni_v2`` (and, in recent versions, an
``encoder`` attribute on the h5 ``features`` dataset), CLAM's ``--model_name``
(``resnet50_trunc``) usually kept in the features folder's name, slide2vec's
``encoder_name`` in ``tile_embeddings/<slide>.meta.json``, LazySlide/wsidata's feature
table key ``<model>_<tile key>`` (``uni_tiles``). :func:`detect_foreign_encoder` finds that
name for a feature file and :func:`resolve_encoder` turns it into the registered encoder
(checking the feature width when one name covers several output variants), or raises
:class:`UnknownEncoderName` naming what was found.

The module itself imports no torch: plain tables for the feature readers and training.

Examples
--------
>>> resolve_encoder(ForeignEncoder("trident", "uni_v2", "folder features_uni_v2"), 1536)
'uni2-h'
>>> resolve_encoder(ForeignEncoder("slide2vec", "h0-mini", "meta.json"), 1536)
'h0-mini-cls-mean'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_ghanet.errors import FeaturesError

__all__ = [
    "ALIASES",
    "REGISTERED_DIMS",
    "ForeignEncoder",
    "UnknownEncoderName",
    "detect_foreign_encoder",
    "resolve_encoder",
]

#: feature width of each registered encoder an alias can point to (checked against the
#: registry by tests/test_foreign_features.py)
REGISTERED_DIMS: dict[str, int] = {
    "resnet50_trunc": 1024,
    "uni": 1024,
    "uni2-h": 1536,
    "virchow": 2560,
    "virchow2": 2560,
    "h-optimus-0": 1536,
    "h-optimus-1": 1536,
    "h0-mini": 768,
    "h0-mini-cls-mean": 1536,
    "gigapath": 1536,
    "phikon-v2": 1024,
    "hibou-l": 1024,
    "kaiko-vits8": 384,
    "kaiko-vits16": 384,
    "kaiko-vitb8": 768,
    "kaiko-vitb16": 768,
    "kaiko-vitl14": 1024,
    "lunit-vits8": 384,
    "midnight-12k": 1536,
}

_KAIKO = {f"kaiko-{v}": (f"kaiko-{v}",) for v in ("vits8", "vits16", "vitb8", "vitb16", "vitl14")}

#: {tool: {the tool's encoder name (lower case): registered candidates}}; when several
#: candidates exist the feature width picks one
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    # TRIDENT trident/patch_encoder_models/load.py encoder_registry keys (enc_name)
    "trident": {
        "resnet50": ("resnet50_trunc",),
        "uni_v1": ("uni",),
        "uni_v2": ("uni2-h",),
        "virchow": ("virchow",),
        "virchow2": ("virchow2",),
        "gigapath": ("gigapath",),
        "hoptimus0": ("h-optimus-0",),
        "hoptimus1": ("h-optimus-1",),
        "h0-mini": ("h0-mini", "h0-mini-cls-mean"),
        "phikon_v2": ("phikon-v2",),
        "hibou_l": ("hibou-l",),
        "lunit-vits8": ("lunit-vits8",),
        "midnight12k": ("midnight-12k",),
        **_KAIKO,
    },
    # CLAM extract_features_fp.py --model_name choices
    "clam": {"resnet50_trunc": ("resnet50_trunc",), "uni_v1": ("uni",)},
    # slide2vec encoders/registry names (meta.json "encoder_name")
    "slide2vec": {
        "uni": ("uni",),
        "uni2": ("uni2-h",),
        "uni2-h": ("uni2-h",),
        "virchow": ("virchow",),
        "virchow2": ("virchow2",),
        "prov-gigapath": ("gigapath",),
        "gigapath": ("gigapath",),
        "h-optimus-0": ("h-optimus-0",),
        "h-optimus-1": ("h-optimus-1",),
        "h0-mini": ("h0-mini-cls-mean", "h0-mini"),
        "phikon-v2": ("phikon-v2",),
        "hibou-l": ("hibou-l",),
        "midnight": ("midnight-12k",),
        "lunit": ("lunit-vits8",),
    },
    # LazySlide models/model_registry keys (feature key "<model>_<tile key>")
    "lazyslide": {
        "resnet50": ("resnet50_trunc",),
        "uni": ("uni",),
        "uni2": ("uni2-h",),
        "virchow": ("virchow",),
        "virchow2": ("virchow2",),
        "gigapath": ("gigapath",),
        "h-optimus-0": ("h-optimus-0",),
        "h-optimus-1": ("h-optimus-1",),
        "h0-mini": ("h0-mini", "h0-mini-cls-mean"),
        "phikonv2": ("phikon-v2",),
        "hibou-l": ("hibou-l",),
        "midnight": ("midnight-12k",),
    },
}

#: names known to the other tools that no registered encoder reproduces (why)
_KNOWN_UNAVAILABLE = {
    "conch_v15": "CONCH v1.5 is not buildable without its authors' code",
    "conch_v1.5": "CONCH v1.5 is not buildable without its authors' code",
    "conch_v1": "CONCH needs its authors' open_clip fork",
    "conch": "CONCH needs its authors' open_clip fork",
    "ctranspath": "CTransPath needs the unmaintained timm-ctp fork",
    "musk": "MUSK needs its authors' package",
}


@dataclass(frozen=True)
class ForeignEncoder:
    """An encoder name as another tool wrote it: ``tool`` (``trident``, ``clam``,
    ``slide2vec``, ``lazyslide`` or ``file``), the ``name`` and ``where`` it was found."""

    tool: str
    name: str
    where: str


class UnknownEncoderName(FeaturesError):
    """A feature file names an encoder that no registered encoder matches."""


def _registered(name: str) -> bool:
    return name in REGISTERED_DIMS or name.startswith("timm:")


def resolve_encoder(found: ForeignEncoder, dim: int | None = None) -> str:
    """The registered encoder a foreign name stands for.

    Parameters
    ----------
    found : ForeignEncoder
    dim : int, optional
        Feature width of the files; picks between output variants (H0-mini's class token
        or class + mean token) and is checked against the encoder's width.

    Raises
    ------
    UnknownEncoderName
        Unknown name, a known one that cannot be built here, or a width that fits none.
    """
    key = found.name.strip().lower()
    table = ALIASES.get(found.tool, {})
    candidates: tuple[str, ...] = table.get(key, ())
    if not candidates:  # a name in another tool's words, or already a registered name
        for other in ALIASES.values():
            if key in other:
                candidates = other[key]
                break
    if not candidates and _registered(found.name):
        candidates = (found.name,)
    where = f"{found.tool} encoder {found.name!r} ({found.where})"
    if not candidates:
        why = _KNOWN_UNAVAILABLE.get(key)
        raise UnknownEncoderName(
            f"the features were made by {where}, "
            + (f"which napari-ghanet cannot rebuild ({why})" if why else
               "which napari-ghanet does not know")
            + "; name the registered encoder that made them"
        )
    if dim is None:
        return candidates[0]
    fitting = [c for c in candidates if REGISTERED_DIMS.get(c, dim) == dim]
    if not fitting:
        widths = ", ".join(f"{c} {REGISTERED_DIMS[c]}-d" for c in candidates)
        raise UnknownEncoderName(
            f"the features were made by {where} but hold {dim}-d features, which fits no "
            f"registered variant ({widths}); name the registered encoder that made them"
        )
    return fitting[0]


_TRIDENT_FOLDER = re.compile(r"^features_(.+)$")


def detect_foreign_encoder(path: str | Path, attrs: dict[str, Any]) -> ForeignEncoder | None:
    """The encoder name another tool recorded for feature file ``path``, or None.

    Looks, in order, at the file's attributes (``source_encoder`` from TRIDENT's h5
    ``features`` dataset, slide2vec's ``encoder_name``, LazySlide's ``feature_key``, a
    plain ``encoder`` attribute without this package's ``encoder_spec``), then at the
    folder names: TRIDENT's ``features_<encoder>``, and for CLAM's ``h5_files`` /
    ``pt_files`` layout a folder name containing one of CLAM's model names. Files this
    package wrote (``encoder_spec`` attribute) return None.

    Examples
    --------
    >>> detect_foreign_encoder("job/20x_256px_0px_overlap/features_conch_v15/s1.h5", {})
    ForeignEncoder(tool='trident', name='conch_v15', where='folder features_conch_v15')
    """
    if attrs.get("encoder_spec"):
        return None
    path = Path(path)
    if attrs.get("source_encoder"):
        return ForeignEncoder("trident", str(attrs["source_encoder"]), "h5 'encoder' attribute")
    if attrs.get("encoder_name"):
        return ForeignEncoder("slide2vec", str(attrs["encoder_name"]), "meta.json encoder_name")
    if attrs.get("feature_key"):
        key = str(attrs["feature_key"])
        tile_key = str(attrs.get("tile_key") or "tiles")
        model = key[: -len(tile_key) - 1] if key.endswith("_" + tile_key) else key
        return ForeignEncoder("lazyslide", model, f"feature table {key!r}")
    parents = [p.name for p in path.parents if p.name]
    for folder in parents:
        m = _TRIDENT_FOLDER.match(folder)
        if m:
            return ForeignEncoder("trident", m.group(1), f"folder {folder}")
    if attrs.get("encoder"):
        return ForeignEncoder("file", str(attrs["encoder"]), "'encoder' attribute")
    if parents and parents[0] in ("h5_files", "pt_files"):
        names = sorted(ALIASES["clam"], key=len, reverse=True)
        for folder in parents[1:]:
            low = folder.lower()
            for name in names:
                if name in low:
                    return ForeignEncoder("clam", name, f"folder {folder}")
    return None
