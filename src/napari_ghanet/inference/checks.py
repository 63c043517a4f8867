"""Finite results or an error: no report is made of NaN or infinite numbers.

A model whose weights are damaged, or features far outside what it was trained on, can
give NaN or infinite risks, survival curves or attentions. :func:`check_prediction_finite`
turns that into a :class:`~napari_ghanet.errors.PredictionError` naming the likely cause
(the model file) before a report is assembled or any export is written, so no
``"risk": null`` report with a confident risk group, and no half-written export set.

Examples
--------
>>> import numpy as np
>>> require_finite("risk", np.array([0.5, 1.0]))
>>> try:
...     require_finite("risk", np.array([0.5, np.nan]))
... except PredictionError as e:
...     print(str(e)[:54])
the prediction's risk holds 1 NaN or infinite value(s)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_ghanet.errors import PredictionError

__all__ = ["check_prediction_finite", "require_finite"]

_CAUSE = (
    "the model file{} is the likely cause (damaged weights, or a model that does not fit "
    "these features): use another model bundle or re-embed the slide with the model's "
    "encoder"
)


def require_finite(name: str, array: Any, cause: str = _CAUSE.format("")) -> None:
    """Raise PredictionError when ``array`` (any shape, or a number) holds NaN or inf.

    ``name`` says which result it is (e.g. ``"risk"``); ``cause`` what to do about it.
    """
    a = np.asarray(array, dtype=np.float64) if array is not None else np.zeros(0)
    bad = ~np.isfinite(a)
    if bad.any():
        raise PredictionError(
            f"the prediction's {name} holds {int(bad.sum())} NaN or infinite value(s); {cause}"
        )


def check_prediction_finite(prediction: Any) -> None:
    """Check every number a :class:`~napari_ghanet.inference.predict.Prediction` reports.

    Risk, percentile, hazards, survival, both attentions, each category's score and
    reconstructed values, the top regions' attention and the heatmaps' scores must be
    finite (the bin edges may end with inf: an open last bin). Heatmap cells that no
    patch covers are NaN by design ("no data") and are not checked; every other cell
    must be finite.

    Raises
    ------
    PredictionError
        Naming the first non-finite result and the likely cause.
    """
    p = prediction
    model = getattr(p, "model", None) or {}
    where = model.get("path") or model.get("name")
    cause = _CAUSE.format(f" ({where})" if where else "")
    require_finite("risk", p.risk, cause)
    require_finite("risk percentile", p.percentile, cause)
    require_finite("hazards", p.hazards, cause)
    require_finite("survival curve", p.survival, cause)
    require_finite("morphology attention", p.morphology_attention, cause)
    require_finite("genome-informed attention", p.genome_attention, cause)
    for c in p.categories:
        require_finite(f"{c.name!r} score", c.score, cause)
        require_finite(f"{c.name!r} reconstructed values", c.values, cause)
    require_finite("top-region attention", [r.attention for r in p.top_regions], cause)
    for k, maps in enumerate(getattr(p, "heatmaps_by_slide", None) or []):
        for name, hm in maps.items():
            image = np.asarray(hm.image, dtype=np.float64)
            covered = np.asarray(hm.count) > 0
            label = f"{name!r} heatmap" + (f" of slide {k}" if k else "")
            require_finite(label, image[covered], cause)
            if getattr(hm, "scores", None) is not None:
                require_finite(f"{label} scores", hm.scores, cause)
