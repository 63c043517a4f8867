"""Every run option, declared once: type, default, unit, range and help.

A run's settings come in small frozen groups: :class:`GridOptions` (which pixels become
patches), :class:`EncoderOptions` (which encoder ``ghanet embed`` runs),
:class:`EmbedOptions` (how patches become features), :class:`QCOptions` (artifact QC),
:class:`HeatmapOptions`, :class:`ReportOptions`, :class:`CacheOptions`,
:class:`RegionOptions` (include / exclude files), :class:`ExecutionOptions` (where a
cohort runs), :class:`ConsoleOptions` (``--quiet``) and the training groups
:class:`TrainOptions` and :class:`CVOptions` (``ghanet-train cv``).
:class:`PredictOptions` bundles what a prediction needs. Each field carries an
:class:`OptionInfo` (help, unit, range, choices, command-line flag, form label, persisted
or not); from that one declaration come

* the checks: a group validates (and normalises) its values when it is made, raising
  :class:`OptionError` naming the field and what is allowed;
* the ``ghanet embed`` / ``ghanet predict`` options (:func:`add_arguments`,
  :func:`from_args`);
* the ``ghanet-train cv`` options (``training/cli.py``);
* the dock's settings form (``_qt/settings.py`` builds its fields from
  :func:`form_fields`), the settings kept between sessions (``_settings_store.py`` checks
  them against :func:`persisted_fields`) and the ``configurations`` of ``napari.yaml``
  (:mod:`~napari_ghanet.options.surfaces`);
* the option tables of ``docs/options.md`` (:func:`markdown_tables`;
  ``python -m napari_ghanet.options`` regenerates the page and the manifest section,
  ``tests/test_options.py`` checks them against the declarations and the parsers);
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

from napari_ghanet.options import surfaces
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
    CPU_READERS,
    CacheOptions,
    ConsoleOptions,
    DicomWebOptions,
    DistributionOptions,
    EmbedOptions,
    EncoderOptions,
    ExecutionOptions,
    GridOptions,
    HeatmapOptions,
    QCOptions,
    RegionOptions,
    ReportOptions,
    parse_cluster,
)
from napari_ghanet.options.prediction import PREDICT_GROUPS, PredictOptions, apply
from napari_ghanet.options.surfaces import form_fields, persisted_fields
from napari_ghanet.options.training import (
    TRAINING_GROUPS,
    BundleOptions,
    CVOptions,
    TrainOptions,
)

__all__ = [
    "ALL_GROUPS",
    "BundleOptions",
    "CPU_READERS",
    "CVOptions",
    "CacheOptions",
    "ConsoleOptions",
    "DicomWebOptions",
    "DistributionOptions",
    "EmbedOptions",
    "EncoderOptions",
    "ExecutionOptions",
    "Field",
    "GridOptions",
    "HeatmapOptions",
    "OptionError",
    "OptionGroup",
    "OptionInfo",
    "PREDICT_GROUPS",
    "PredictOptions",
    "QCOptions",
    "RegionOptions",
    "ReportOptions",
    "TRAINING_GROUPS",
    "TrainOptions",
    "add_arguments",
    "apply",
    "argument",
    "fields_of",
    "form_fields",
    "from_args",
    "markdown_tables",
    "option",
    "parse_cluster",
    "persisted_fields",
    "surfaces",
]
