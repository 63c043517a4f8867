"""Every run option, declared once: type, default, unit, range and help.

A run's settings come in small frozen groups: :class:`GridOptions` (which pixels become
patches), :class:`EmbedOptions` (how patches become features), :class:`QCOptions`
(artifact QC), :class:`HeatmapOptions`, :class:`ReportOptions`, :class:`CacheOptions`,
:class:`RegionOptions` (include / exclude files) and :class:`ExecutionOptions` (where a
cohort runs). :class:`PredictOptions` bundles what a prediction needs. Each field carries
an :class:`OptionInfo` (help, unit, range, choices, command-line flag, form label); from
that one declaration come

* the checks: a group validates (and normalises) its values when it is made, raising
  :class:`OptionError` naming the field and what is allowed;
* the ``ghanet embed`` / ``ghanet predict`` options (:func:`add_arguments`,
  :func:`from_args`);
* the widget's settings form (``_qt/settings.py`` builds its fields from
  :func:`fields_of`);
* the option tables of ``docs/options.md`` (:func:`markdown_tables`;
  ``python -m napari_ghanet.options`` regenerates the page, ``tests/test_options.py``
  checks it against the declarations and the ``ghanet`` parsers);
* the JSON recorded in the report and in the cohort resume marker (:meth:`to_dict`).

The groups are plain picklable dataclasses, so Dask workers receive them as they are.
The package's modules, bottom up: :mod:`~napari_ghanet.options.declare` (how an option is
declared and checked), :mod:`~napari_ghanet.options.groups` (the groups),
:mod:`~napari_ghanet.options.prediction` (:class:`PredictOptions`, :func:`apply`) and
:mod:`~napari_ghanet.options.cli` (command line and docs); this module re-exports their
public names. No torch, napari or Qt import here.

Examples
--------
>>> from napari_ghanet.options import EmbedOptions, PredictOptions
>>> EmbedOptions(batch_size=32).batch_size
32
>>> EmbedOptions(batch_size=0)
Traceback (most recent call last):
...
napari_ghanet.options.OptionError: batch_size must be >= 1 patches (patches per encoder batch), got 0
>>> o = PredictOptions.create(batch_size=16, qc=None, overlap=0.5)
>>> o.embed.batch_size, o.qc.enabled, o.heatmap.overlap
(16, False, 0.5)
"""

from __future__ import annotations

from napari_ghanet.options.cli import add_arguments, argument, from_args, markdown_tables
from napari_ghanet.options.declare import (
    Field,
    OptionError,
    OptionGroup,
    OptionInfo,
    fields_of,
    option,
)
from napari_ghanet.options.groups import (
    ALL_GROUPS,
    CacheOptions,
    EmbedOptions,
    ExecutionOptions,
    GridOptions,
    HeatmapOptions,
    QCOptions,
    RegionOptions,
    ReportOptions,
    parse_cluster,
)
from napari_ghanet.options.prediction import PredictOptions, apply

__all__ = [
    "ALL_GROUPS",
    "CacheOptions",
    "EmbedOptions",
    "ExecutionOptions",
    "Field",
    "GridOptions",
    "HeatmapOptions",
    "OptionError",
    "OptionGroup",
    "OptionInfo",
    "PredictOptions",
    "QCOptions",
    "RegionOptions",
    "ReportOptions",
    "add_arguments",
    "apply",
    "argument",
    "fields_of",
    "from_args",
    "markdown_tables",
    "option",
    "parse_cluster",
]
