"""napari-ghanet: G-HANet survival prediction from whole-slide images.

The package follows the data flow, one subpackage per step::

    io.slide ──► preprocessing.tissue ──► preprocessing.patches ──► encoders
      ──► inference.embedding (io.features cache) ──► models (G-HANet, bundle)
      ──► inference.predict ──► Prediction ──► inference.exports / napari layers (_qt)

Only ``_reader``, ``_sample_data``, ``_widget`` and ``_qt`` import napari or Qt; everything
else (the ``ghanet`` and ``ghanet-train`` command lines included) runs headless. The
public API below is imported lazily, so napari's plugin discovery, which imports this
package, does not import torch.

Examples
--------
>>> import napari_ghanet
>>> napari_ghanet.__version__ == napari_ghanet._version.__version__
True
>>> callable(napari_ghanet.predict_slide)
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from napari_ghanet._version import __version__

#: public name -> module that defines it
_PUBLIC = {
    "open_slide": "napari_ghanet.io.slide",
    "Slide": "napari_ghanet.io.slide",
    "tissue_mask": "napari_ghanet.preprocessing.tissue",
    "patch_grid": "napari_ghanet.preprocessing.patches",
    "create_encoder": "napari_ghanet.encoders",
    "list_encoders": "napari_ghanet.encoders",
    "embed_slide": "napari_ghanet.inference.embedding",
    "load_bundle": "napari_ghanet.models.bundle",
    "predict_slide": "napari_ghanet.inference.predict",
    "Prediction": "napari_ghanet.inference.predict",
    "GHANetError": "napari_ghanet.errors",
}

__all__ = [
    "GHANetError",
    "Prediction",
    "Slide",
    "__version__",
    "create_encoder",
    "embed_slide",
    "list_encoders",
    "load_bundle",
    "open_slide",
    "patch_grid",
    "predict_slide",
    "tissue_mask",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_ghanet.encoders import create_encoder, list_encoders
    from napari_ghanet.errors import GHANetError
    from napari_ghanet.inference.embedding import embed_slide
    from napari_ghanet.inference.predict import Prediction, predict_slide
    from napari_ghanet.io.slide import Slide, open_slide
    from napari_ghanet.models.bundle import load_bundle
    from napari_ghanet.preprocessing.patches import patch_grid
    from napari_ghanet.preprocessing.tissue import tissue_mask


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_ghanet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
