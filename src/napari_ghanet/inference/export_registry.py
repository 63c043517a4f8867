"""The export registry: every file (or folder) a prediction can be written as, declared
once.

Each export kind is an :class:`ExportFormat`: its key, the writer, the default file name
suffix, the file-dialog filter, whether it is a folder (a store), whether it is written by
default, which optional package it needs and what it is written from (the
:class:`~napari_ghanet.inference.result.Prediction`, or the viewer's canvas image). The
command line (``ghanet predict --export``, :func:`export_all`), the cohort runs
(:mod:`napari_ghanet.cohort.tasks`) and the dock's export buttons
(:mod:`napari_ghanet._qt.exports`) list and write the kinds from here, so a format added
with :func:`register_export` shows up in all of them.

The built-in kinds, in this order:

========== ===================== ====================== =========================
key        what                  default name            written by
========== ===================== ====================== =========================
report     JSON report           ``<stem>.ghanet.json``  :func:`~.exports.write_report_json`
csv        per-patch CSV         ``<stem>.patches.csv``  :func:`~.exports.write_patch_csv`
geojson    QuPath GeoJSON        ``<stem>.patches.geojson`` :func:`~.exports.write_geojson`
spatialdata SpatialData store    ``<stem>.ghanet.zarr``  :func:`~.spatialdata_export.write_spatialdata`
png        canvas snapshot (dock) ``<stem>.ghanet.png``  :func:`~.snapshot.write_png`
dicom      DICOM SR/PM/ANN/SEG   ``<stem>.dicom/``       :func:`~.dicom_export.write_dicom_folder`
========== ===================== ====================== =========================

Adding a format: write its writer in a module of its own (``writer(prediction, path) ->
Path``, writing through :mod:`napari_ghanet.io.atomic`), then register it once, either in
:func:`_register_builtins` below (a format of the package) or by calling
:func:`register_export` when your module is imported (a plugin of the package). Paths are
made with :func:`napari_ghanet.io.names.child_path` (:func:`export_paths`), never joined by
hand. See docs/architecture.md, "Adding an export format".

Examples
--------
>>> [f.key for f in export_formats()][:3]
['report', 'csv', 'geojson']
>>> get_export("json").key  # an alias
'report'
>>> get_export("spatialdata").requires
'spatialdata'
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_ghanet.errors import ArgumentError, GHANetError
from napari_ghanet.inference.checks import check_prediction_finite
from napari_ghanet.inference.dicom_export import write_dicom_folder
from napari_ghanet.inference.exports import write_geojson, write_patch_csv, write_report_json
from napari_ghanet.inference.result import Prediction
from napari_ghanet.inference.snapshot import write_png
from napari_ghanet.inference.spatialdata_export import write_spatialdata
from napari_ghanet.io.names import child_path

__all__ = [
    "ExportFormat",
    "UnknownExport",
    "check_kinds",
    "export_all",
    "export_formats",
    "export_paths",
    "export_stem",
    "get_export",
    "register_export",
    "unregister_export",
    "write_export",
]

#: what a format is written from
SOURCES = ("prediction", "canvas")


class UnknownExport(GHANetError):
    """An export kind that is not registered."""


@dataclass(frozen=True)
class ExportFormat:
    """One export kind.

    Parameters
    ----------
    key : str
        The kind's name (``--export KEY``, the dock's button key), lower-case.
    label : str
        Button text and help wording ("JSON report").
    suffix : str
        Appended to the slide stem (or patient name) for the default file name
        (``".ghanet.json"``); a folder format's suffix ends in its extension (``".zarr"``).
    writer : callable
        ``writer(source, path) -> Path``: writes atomically (:mod:`napari_ghanet.io.atomic`)
        and returns the path written (which may add the suffix's extension). ``source`` is
        the :class:`~napari_ghanet.inference.result.Prediction`, or the canvas image
        (uint8 (H, W, 3 or 4) array) for ``source="canvas"``.
    file_filter : str
        The save dialog's filter ("JSON report (*.json)").
    folder : bool
        The export is a folder (a store), replaced as a whole.
    default : bool
        Written by :func:`export_all` without a list of kinds (``ghanet predict`` without
        ``--export``, every cohort unit).
    requires : str or None
        Import name of an optional package the writer needs; the kind is listed as
        unavailable (and refused before any work) when it is missing.
    extra : str or None
        The pip extra that installs ``requires`` (``pip install 'napari-ghanet[EXTRA]'``).
    source : {"prediction", "canvas"}
        What the writer is given; a canvas export exists only where there is a viewer.
    aliases : tuple of str
        Other names accepted for ``key`` (the dock's older "json").
    """

    key: str
    label: str
    suffix: str
    writer: Callable[[Any, Path], Path]
    file_filter: str
    folder: bool = False
    default: bool = False
    requires: str | None = None
    extra: str | None = None
    source: str = "prediction"
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key or self.key != self.key.lower() or not self.key.isidentifier():
            raise ArgumentError(f"export key must be a lower-case identifier, got {self.key!r}")
        if self.source not in SOURCES:
            raise ArgumentError(f"export source must be one of {SOURCES}, got {self.source!r}")
        if not self.suffix.startswith(".") or "/" in self.suffix or "\\" in self.suffix:
            raise ArgumentError(f"export suffix must start with '.', got {self.suffix!r}")

    @property
    def available(self) -> bool:
        """The optional package the writer needs is installed (always True without one)."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def missing_message(self) -> str:
        """One line naming the missing package and how to install it."""
        how = (f"pip install 'napari-ghanet[{self.extra}]'" if self.extra
               else f"pip install {self.requires}")
        return f"the {self.label} export needs the {self.requires} package, which is not " \
               f"installed: {how}"

    def fix_path(self, path: str | os.PathLike) -> Path:
        """``path`` with the suffix's last extension added when missing (``p`` -> ``p.zarr``
        for a store, ``snap`` -> ``snap.png``)."""
        path = Path(path)
        ext = "." + self.suffix.rsplit(".", 1)[-1]
        return path if path.suffix.lower() == ext.lower() else path.with_name(path.name + ext)


_REGISTRY: dict[str, ExportFormat] = {}


def register_export(fmt: ExportFormat, *, replace: bool = False) -> ExportFormat:
    """Add ``fmt`` to the registry (listed after the kinds registered before it).

    Raises
    ------
    ValueError
        ``fmt.key`` or one of its aliases is already registered (and ``replace`` is False).
    """
    names = (fmt.key, *fmt.aliases)
    if not replace:
        taken = [n for n in names if _find(n) is not None]
        if taken:
            raise ArgumentError(f"export kind {taken[0]!r} is already registered; "
                                "pass replace=True to replace it")
    _REGISTRY.pop(fmt.key, None)
    _REGISTRY[fmt.key] = fmt
    return fmt


def unregister_export(key: str) -> None:
    """Take the kind ``key`` out of the registry (a no-op when it is not there)."""
    _REGISTRY.pop(key, None)


def _find(name: str) -> ExportFormat | None:
    name = name.lower()
    for fmt in _REGISTRY.values():
        if name == fmt.key or name in fmt.aliases:
            return fmt
    return None


def get_export(name: str) -> ExportFormat:
    """The registered kind called ``name`` (its key or an alias).

    Raises
    ------
    UnknownExport
        No kind of that name.
    """
    fmt = _find(str(name))
    if fmt is None:
        known = ", ".join(_REGISTRY)
        raise UnknownExport(f"unknown export {name!r}: choose one of {known}")
    return fmt


def export_formats(source: str | None = None, default: bool | None = None
                   ) -> list[ExportFormat]:
    """The registered kinds in registration order, optionally only those written from
    ``source`` ("prediction": what a command line can write) or with ``default``."""
    return [f for f in _REGISTRY.values()
            if (source is None or f.source == source)
            and (default is None or f.default == default)]


def export_stem(prediction: Prediction) -> tuple[str, str]:
    """(stem, what): the patient name of a patient prediction that was given one, else
    the slide file's stem; ``what`` names it for a refusal."""
    patient = prediction.slide.get("patient")
    if patient:
        return str(patient), "patient name"
    return Path(str(prediction.slide.get("name") or "slide")).stem, "slide name"


def _kinds(kinds: Iterable[str] | None) -> list[ExportFormat]:
    if kinds is None:
        return export_formats(source="prediction", default=True)
    return [get_export(k) for k in kinds]


def export_paths(prediction: Prediction, out_dir: str | os.PathLike,
                 kinds: Iterable[str] | None = None) -> dict[str, Path]:
    """Where :func:`export_all` writes each kind (default: the default kinds), by key:
    ``<slide stem><suffix>`` in ``out_dir`` (the patient name instead of the slide stem
    for a patient prediction that was given one), made by
    :func:`~napari_ghanet.io.names.child_path` (a name that would leave ``out_dir`` is
    refused).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_ghanet.inference.result import Prediction
    >>> p = Prediction(0.0, 50.0, "low", np.zeros(1), np.zeros(1), np.zeros(2), [],
    ...                np.zeros((0, 2), np.int64), 256, 256, np.zeros(0), np.zeros((0, 0)),
    ...                np.zeros((1, 1), bool), 16.0, [], {"name": "case.svs"}, {}, "", {},
    ...                {}, False)
    >>> sorted(v.name for v in export_paths(p, "out").values())
    ['case.ghanet.json', 'case.patches.csv', 'case.patches.geojson']
    >>> export_paths(p, "out", ["spatialdata"])["spatialdata"].name
    'case.ghanet.zarr'
    """
    stem, what = export_stem(prediction)
    return {f.key: child_path(out_dir, stem, f.suffix, what) for f in _kinds(kinds)}


def check_kinds(kinds: Iterable[str] | None, source: str = "prediction") -> list[ExportFormat]:
    """The kinds of ``kinds`` (default: the default ones), checked before any work: each
    registered, written from ``source`` and its optional package installed.

    Raises
    ------
    UnknownExport
        A kind is not registered or not written from ``source``.
    GHANetError
        A kind's optional package is missing (the message says how to install it).
    """
    formats = _kinds(kinds)
    for f in formats:
        if f.source != source:
            raise UnknownExport(f"the {f.label} export is written from the {f.source}, "
                                f"not from a {source}: choose another kind")
        if not f.available:
            raise GHANetError(f.missing_message())
    return formats


def write_export(kind: str, source: Any, path: str | os.PathLike) -> Path:
    """Write ``source`` (a Prediction, or the canvas image of a canvas kind) as ``kind``
    to ``path`` (its extension added when missing); returns the path written."""
    fmt = get_export(kind)
    if not fmt.available:
        raise GHANetError(fmt.missing_message())
    return fmt.writer(source, fmt.fix_path(path))


def export_all(prediction: Prediction, out_dir: str | os.PathLike,
               kinds: Iterable[str] | None = None) -> dict[str, Path]:
    """Write ``prediction`` as each kind of ``kinds`` (default: the default kinds: JSON
    report, per-patch CSV and GeoJSON) into ``out_dir``; returns the paths by key."""
    check_prediction_finite(prediction)  # refuse non-finite numbers before writing
    formats = check_kinds(kinds)
    paths = export_paths(prediction, out_dir, [f.key for f in formats])
    return {f.key: f.writer(prediction, paths[f.key]) for f in formats}


def _write_store(prediction: Prediction, path: Path) -> Path:
    """The SpatialData store at ``path``, replacing a store of that name."""
    return write_spatialdata(prediction, path, overwrite=True)


def _register_builtins() -> None:
    """The package's own kinds (one registration each)."""
    register_export(ExportFormat(
        "report", "JSON report", ".ghanet.json", write_report_json, "JSON report (*.json)",
        default=True, aliases=("json",)))
    register_export(ExportFormat(
        "csv", "Patch CSV", ".patches.csv", write_patch_csv, "CSV (*.csv)", default=True))
    register_export(ExportFormat(
        "geojson", "GeoJSON (QuPath)", ".patches.geojson", write_geojson,
        "GeoJSON (*.geojson *.json)", default=True))
    register_export(ExportFormat(
        "spatialdata", "SpatialData", ".ghanet.zarr", _write_store,
        "SpatialData store (*.zarr)", folder=True, requires="spatialdata", extra="spatial"))
    register_export(ExportFormat(
        "png", "PNG snapshot", ".ghanet.png", write_png, "PNG image (*.png)",
        source="canvas"))
    register_export(ExportFormat(
        "dicom", "DICOM results", ".dicom", write_dicom_folder,
        "DICOM results folder (*.dicom)", folder=True, requires="highdicom", extra="dicom"))


_register_builtins()
