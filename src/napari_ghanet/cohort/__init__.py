"""Cohort processing: embed, predict and validate hundreds to thousands of slides, in one
process or on Dask distributed (a local cluster of worker processes, one worker per GPU,
or an existing scheduler such as one started by dask-jobqueue on Slurm).

Modules: ``inputs`` (slide files, folders, patterns, manifest -> slide items),
``engine`` (one task per slide, failures isolated, dead workers retried once),
``tasks`` (the per-slide embed and predict tasks, with resume), ``summary``
(``summary.csv``), ``report`` (``cohort.csv`` and the external-validation report) and
``api`` (:func:`embed_cohort`, :func:`predict_cohort`).

The public names below are imported when first used, so ``import napari_ghanet.cohort``
(and ``napari_ghanet.cohort.inputs``, which the ``ghanet`` parsers read) does not import
the prediction pipeline, torch or Dask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_PUBLIC = {
    "CohortSummary": "napari_ghanet.cohort.summary",
    "SlideItem": "napari_ghanet.cohort.inputs",
    "TaskResult": "napari_ghanet.cohort.engine",
    "embed_cohort": "napari_ghanet.cohort.api",
    "predict_cohort": "napari_ghanet.cohort.api",
    "print_summary": "napari_ghanet.cohort.api",
    "resolve_inputs": "napari_ghanet.cohort.inputs",
    "run_tasks": "napari_ghanet.cohort.engine",
}
_SUBMODULES = ("api", "engine", "inputs", "report", "summary", "tasks")

__all__ = [
    "CohortSummary",
    "SlideItem",
    "TaskResult",
    "embed_cohort",
    "predict_cohort",
    "print_summary",
    "resolve_inputs",
    "run_tasks",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_ghanet.cohort.api import embed_cohort, predict_cohort, print_summary
    from napari_ghanet.cohort.engine import TaskResult, run_tasks
    from napari_ghanet.cohort.inputs import SlideItem, resolve_inputs
    from napari_ghanet.cohort.summary import CohortSummary


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | set(_SUBMODULES))
