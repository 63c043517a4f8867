"""Cohort processing: embed, predict and validate hundreds to thousands of slides, in one
process or on Dask distributed (a local cluster of worker processes, one worker per GPU,
or an existing scheduler such as one started by dask-jobqueue on Slurm).

Modules: ``inputs`` (slide files, folders, patterns, manifest -> slide items),
``engine`` (one task per slide, failures isolated, dead workers retried once),
``tasks`` (the per-slide embed and predict tasks, with resume), ``summary``
(``summary.csv``), ``report`` (``cohort.csv`` and the external-validation report) and
``api`` (:func:`embed_cohort`, :func:`predict_cohort`).
"""

from __future__ import annotations

from napari_ghanet.cohort.api import embed_cohort, predict_cohort, print_summary
from napari_ghanet.cohort.engine import TaskResult, run_tasks
from napari_ghanet.cohort.inputs import SlideItem, resolve_inputs
from napari_ghanet.cohort.summary import CohortSummary

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
