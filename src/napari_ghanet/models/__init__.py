"""The models: G-HANet, its baselines, their losses, model bundles and what a risk means.

``load_official_baseline`` (:mod:`napari_ghanet.models.official`) and
``phenotype_clusters`` (:mod:`napari_ghanet.models.clusters`) are importable from here; they load on first use, so
importing a torch-free submodule (``bundle_schema``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["load_official_baseline", "phenotype_clusters"]

_PUBLIC = {"load_official_baseline": "napari_ghanet.models.official",
           "phenotype_clusters": "napari_ghanet.models.clusters"}

if TYPE_CHECKING:  # pragma: no cover
    from napari_ghanet.models.clusters import phenotype_clusters
    from napari_ghanet.models.official import load_official_baseline


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
