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
* the option tables of ``docs/options.md`` (:func:`markdown_tables`, checked by a test);
* the JSON recorded in the report and in the cohort resume marker (:meth:`to_dict`).

The groups are plain picklable dataclasses, so Dask workers receive them as they are.
No torch, napari or Qt import here.

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

import argparse
import dataclasses
import math
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from napari_ghanet.errors import GHANetError
from napari_ghanet.preprocessing.qc import REASONS, QCParams

__all__ = [
    "CacheOptions",
    "EmbedOptions",
    "ExecutionOptions",
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
]

_KEY = "napari_ghanet_option"


class OptionError(GHANetError, ValueError):
    """An option value outside what its declaration allows.

    ``name`` is the field (e.g. ``"batch_size"``), ``reason`` the message without it, so a
    command line can say it with its own flag name.
    """

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class OptionInfo:
    """How one option is described and checked.

    ``low`` / ``high``: inclusive bounds (``low_open``: the lower bound is exclusive);
    ``choices``: the allowed values; ``flag``: the command-line flag (default
    ``--field-name``), ``negate``: a flag that sets a bool option to False instead;
    ``label``: the settings-form label (None: not in the form); ``cli``: on the command
    line at all; ``none``: what None means, shown in the help.
    """

    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Any, ...] = ()
    flag: str | None = None
    negate: str | None = None
    label: str | None = None
    cli: bool = True
    none: str = ""
    metavar: str | None = None


def option(default: Any, help: str, **info: Any) -> Any:
    """A dataclass field with its :class:`OptionInfo` (see there for ``info``)."""
    return field(default=default, metadata={_KEY: OptionInfo(help=help, **info)})


@dataclass(frozen=True)
class Field:
    """One declared option: its group's field name, type, default and description."""

    name: str
    kind: str  # "bool", "int", "float", "str", "path", "strs", "paths"
    optional: bool
    default: Any
    info: OptionInfo
    group: str

    @property
    def flag(self) -> str:
        return self.info.flag or "--" + self.name.replace("_", "-")

    def describe_range(self) -> str:
        i = self.info
        if i.choices:
            return ", ".join(_show(c) for c in i.choices)
        if i.low is None and i.high is None:
            return ""
        lo = "" if i.low is None else ("> " if i.low_open else ">= ") + _show(i.low)
        hi = "" if i.high is None else "<= " + _show(i.high)
        return " and ".join(p for p in (lo, hi) if p)


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple | list):
        return ",".join(str(x) for x in v)
    return str(v)


_KINDS = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}


def _kind(tp: Any) -> tuple[str, bool]:
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else tp
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return ("paths" if inner is Path else "strs"), optional
    if tp in _KINDS:
        return _KINDS[tp], optional
    raise TypeError(f"option type {tp!r} is not supported")


class OptionGroup:
    """Base of the option groups: validation when made, JSON, the declared fields.

    Subclasses are frozen dataclasses whose fields are made with :func:`option`.
    """

    #: group name in JSON, docs and error messages
    group: ClassVar[str] = ""
    #: one line shown above the group's options
    title: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields_of(type(self)):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Checks between fields (subclasses); raise :class:`OptionError`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (paths as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields_of(type(self)):
            v = getattr(self, f.name)
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = [str(x) if isinstance(x, Path) else x for x in v]
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None):
        """The group from :meth:`to_dict` output; an unknown key is an OptionError."""
        values = dict(values or {})
        known = {f.name for f in fields_of(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(unknown[0], f"is not a {cls.group} option (known: "
                              f"{', '.join(sorted(known))})")
        return cls(**values)

    def replace(self, **changes: Any):
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)


def _check(f: Field, v: Any) -> Any:
    """``v`` checked and normalised against the declaration of ``f``."""
    i = f.info
    if v is None:
        if f.optional:
            return None
        raise OptionError(f.name, f"must be given ({i.help})")
    k = f.kind
    if k == "bool":
        if isinstance(v, bool) or type(v).__name__ == "bool_":
            return bool(v)
        raise OptionError(f.name, f"must be true or false ({i.help}), got {v!r}")
    if k == "int":
        if isinstance(v, bool) or not isinstance(v, int | float) or (
            isinstance(v, float) and not v.is_integer()
        ):
            try:
                import numpy as np

                if isinstance(v, np.integer):
                    v = int(v)
            except ImportError:  # pragma: no cover
                pass
            if not isinstance(v, int) or isinstance(v, bool):
                raise OptionError(f.name, f"must be a whole number ({i.help}), got {v!r}")
        v = int(v)
    elif k == "float":
        try:
            if isinstance(v, bool):
                raise TypeError
            v = float(v)
        except (TypeError, ValueError):
            raise OptionError(f.name, f"must be a number ({i.help}), got {v!r}") from None
        if not math.isfinite(v):
            raise OptionError(f.name, f"must be a finite number ({i.help}), got {v!r}")
    elif k == "str":
        if not isinstance(v, str):
            raise OptionError(f.name, f"must be text ({i.help}), got {v!r}")
    elif k == "path":
        if not isinstance(v, str | os.PathLike) or str(v).strip() in ("", "."):
            raise OptionError(f.name, f"must be a file or folder path ({i.help}), got {v!r}")
        v = Path(v)
    elif k in ("strs", "paths"):
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()] if k == "strs" else [v]
        try:
            items = list(v)
        except TypeError:
            raise OptionError(f.name, f"must be a list ({i.help}), got {v!r}") from None
        if k == "paths":
            return tuple(Path(x) for x in items)
        v = tuple(str(x) for x in items)
        bad = [x for x in v if i.choices and x not in i.choices]
        if bad:
            raise OptionError(f.name, f"must be among {', '.join(map(str, i.choices))} "
                              f"({i.help}), got {bad[0]!r}")
        return v
    if i.choices and k not in ("strs", "paths"):
        ok = any((v == c) if not isinstance(c, float) else math.isclose(v, c) for c in i.choices)
        if not ok:
            raise OptionError(f.name, f"must be one of {', '.join(_show(c) for c in i.choices)} "
                              f"({i.help}), got {_show(v)}")
    if k in ("int", "float"):
        unit = f" {i.unit}" if i.unit and i.unit not in ("fraction", "ratio") else ""
        if i.low is not None and (v <= i.low if i.low_open else v < i.low):
            op = ">" if i.low_open else ">="
            raise OptionError(f.name, f"must be {op} {_show(i.low)}{unit} ({i.help}), got {_show(v)}")
        if i.high is not None and v > i.high:
            raise OptionError(f.name, f"must be <= {_show(i.high)}{unit} ({i.help}), got {_show(v)}")
    return v


_FIELDS: dict[type, list[Field]] = {}


def fields_of(cls: type) -> list[Field]:
    """The declared options of a group class, in declaration order."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls, globalns={"Path": Path, **globals()})
        out = []
        for f in dataclasses.fields(cls):
            info = f.metadata.get(_KEY)
            if info is None:
                continue
            kind, optional = _kind(hints[f.name])
            out.append(Field(f.name, kind, optional, f.default, info, cls.group))
        _FIELDS[cls] = out
    return _FIELDS[cls]


# --------------------------------------------------------------------------- the groups


@dataclass(frozen=True)
class GridOptions(OptionGroup):
    """Which pixels become patches: level-0 resolution, patch geometry, tissue."""

    group: ClassVar[str] = "grid"
    title: ClassVar[str] = "patch grid"

    mpp: float | None = option(
        None, "microns per pixel of level 0, for slides whose file does not record it",
        unit="µm/px", low=0.01, high=100.0, none="read from the slide", metavar="UM",
    )
    patch_px: int | None = option(
        None, "patch side in pixels at the patch resolution", unit="px", low=16,
        high=4096, none="the encoder's (256 for resnet50_trunc)", label="Patch size (px)",
        metavar="PX",
    )
    target_mpp: float | None = option(
        None, "resolution the patches are read at (0.5 = 20x)", unit="µm/px", low=0.05,
        high=16.0, none="the encoder's", label="Patch resolution (µm/px)", metavar="UM",
    )
    min_tissue_fraction: float = option(
        0.5, "keep patches at least this fraction tissue", unit="fraction", low=0.0,
        high=1.0, flag="--min-tissue", metavar="F",
    )
    tissue_threshold: float | None = option(
        None, "HSV saturation (0-1) above which a pixel is tissue", unit="0-1", low=0.0,
        high=1.0, none="automatic (Otsu)", label="Tissue threshold", metavar="S",
    )

    def tissue_params(self):
        """The :class:`~napari_ghanet.preprocessing.tissue.TissueParams` of these options
        (None: the defaults)."""
        if self.tissue_threshold is None:
            return None
        from napari_ghanet.preprocessing.tissue import TissueParams

        return TissueParams(saturation_threshold=self.tissue_threshold)


@dataclass(frozen=True)
class EmbedOptions(OptionGroup):
    """How patches become features: encoder weights, device, engine, batches, readers."""

    group: ClassVar[str] = "embed"
    title: ClassVar[str] = "patch encoder"

    weights: Path | None = option(
        None, "weights file of the patch encoder, when it is not found on this machine "
        "(a ResNet50 .pth, a foundation model's checkpoint, a TorchScript file)",
        flag="--encoder-weights", none="look in the usual caches", label="Encoder weights",
        metavar="FILE",
    )
    device: str = option(
        "auto", "where the encoder and the model run: auto (CUDA when available), cpu, "
        "cuda or cuda:N", metavar="DEVICE",
    )
    backend: str = option(
        "auto", "CPU engine: auto (ONNX Runtime when the encoder supports it, else torch), "
        "onnx (insist), onnx-int8 (8-bit ONNX Runtime, only when asked), torch; no effect "
        "on CUDA", choices=("auto", "onnx", "onnx-int8", "torch"), label="CPU engine",
    )
    batch_size: int = option(
        64, "patches per encoder batch", unit="patches", low=1, high=65536,
        label="Batch size", metavar="N",
    )
    workers: int | None = option(
        None, "patch reader threads (0 reads on the calling thread)", unit="threads",
        low=0, high=256, none="4 on the CPU, one per core on CUDA", metavar="N",
    )
    compile: bool = option(
        False, "CUDA: run the encoder through torch.compile (slow first batch; pays off "
        "on whole cohorts with large ViTs)",
    )


@dataclass(frozen=True)
class QCOptions(OptionGroup):
    """Artifact QC: which detectors run and their main thresholds (the colour ranges of
    :class:`~napari_ghanet.preprocessing.qc.QCParams` keep their defaults)."""

    group: ClassVar[str] = "qc"
    title: ClassVar[str] = "artifact QC (flagged patches leave the bag; docs/regions-and-qc.md)"

    enabled: bool = option(
        True, "flag pen marks, dark folds and blurred patches and leave them out",
        flag="--qc", label="Artifact QC (pen, blur, folds)",
    )
    detect: tuple[str, ...] = option(
        QCParams.detect, "comma-separated detectors to run",
        choices=REASONS, flag="--qc-detectors", metavar="LIST",
    )
    pen_min_fraction: float = option(
        QCParams.pen_min_fraction, "pen: least fraction of a patch's pixels in saturated green/blue or black "
        "ink hues to flag it", unit="fraction", low=0.0, high=1.0,
        flag="--qc-pen-fraction", label="Pen ink (fraction)", metavar="F",
    )
    fold_od: float = option(
        QCParams.fold_od, "fold: optical density (mean of R, G, B; 1.0 = 10% transmission) above which "
        "a pixel is dark", unit="log10 OD", low=0.0, low_open=True, high=5.0,
        flag="--qc-fold-od", label="Fold OD (log10)", metavar="OD",
    )
    fold_min_fraction: float = option(
        QCParams.fold_min_fraction, "fold: least fraction of a patch's pixels darker than the fold OD to flag it",
        unit="fraction", low=0.0, high=1.0, flag="--qc-fold-fraction",
        label="Fold dark (fraction)", metavar="F",
    )
    blur_fraction: float = option(
        QCParams.blur_fraction, "blur: flag a patch whose Laplacian energy is below this ratio of the "
        "slide's median", unit="ratio", low=0.0, high=1.0, flag="--qc-blur-ratio",
        label="Blur (x median)", metavar="R",
    )

    def params(self):
        """The :class:`~napari_ghanet.preprocessing.qc.QCParams` (None when QC is off)."""
        if not self.enabled:
            return None
        return QCParams(detect=self.detect, pen_min_fraction=self.pen_min_fraction,
                        fold_od=self.fold_od, fold_min_fraction=self.fold_min_fraction,
                        blur_fraction=self.blur_fraction)

    @classmethod
    def from_params(cls, qc) -> QCOptions:
        """From a :class:`~napari_ghanet.preprocessing.qc.QCParams` (None: QC off)."""
        if qc is None:
            return cls(enabled=False)
        return cls(detect=tuple(qc.detect), pen_min_fraction=qc.pen_min_fraction,
                   fold_od=qc.fold_od, fold_min_fraction=qc.fold_min_fraction,
                   blur_fraction=qc.blur_fraction)


@dataclass(frozen=True)
class HeatmapOptions(OptionGroup):
    """Smooth attention maps from overlapping patches."""

    group: ClassVar[str] = "heatmap"
    title: ClassVar[str] = "heatmaps"

    overlap: float = option(
        0.0, "overlap of extra shifted patch grids for smooth attention maps; the "
        "prediction is unchanged but about 4x (0.5) or 16x (0.75) the patches are embedded",
        unit="fraction", choices=(0.0, 0.5, 0.75), flag="--heatmap-overlap",
        label="Heatmap overlap",
    )


@dataclass(frozen=True)
class ReportOptions(OptionGroup):
    """What the report lists."""

    group: ClassVar[str] = "report"
    title: ClassVar[str] = "report"

    top_k: int = option(10, "number of top-attention regions to report", unit="regions",
                        low=0, high=10000, metavar="K")
    top_genes: int = option(10, "genes listed per pathway category", unit="genes", low=0,
                            high=100000, metavar="N")


@dataclass(frozen=True)
class CacheOptions(OptionGroup):
    """The patch-feature cache."""

    group: ClassVar[str] = "cache"
    title: ClassVar[str] = "feature cache"

    cache_dir: Path | None = option(
        None, "patch-feature cache folder", none="the user cache folder", metavar="DIR",
    )
    use_cache: bool = option(
        True, "read and write cached patch features", negate="--no-cache",
    )


@dataclass(frozen=True)
class RegionOptions(OptionGroup):
    """Include / exclude regions from QuPath GeoJSON files (level-0 pixels)."""

    group: ClassVar[str] = "regions"
    title: ClassVar[str] = "regions of interest (level-0 pixels, QuPath GeoJSON export)"

    roi: tuple[Path, ...] = option(
        (), "include regions: keep only patches whose centre lies inside one of their "
        "polygons (repeatable)", none="all tissue", metavar="FILE.geojson",
    )
    exclude: tuple[Path, ...] = option(
        (), "exclude regions: drop patches whose centre lies inside (repeatable)",
        metavar="FILE.geojson",
    )

    @property
    def empty(self) -> bool:
        return not self.roi and not self.exclude

    def regions(self):
        """The :class:`~napari_ghanet.preprocessing.roi.Regions` read from the files (None
        when there are none)."""
        if self.empty:
            return None
        from napari_ghanet.preprocessing.roi import Regions

        return Regions.from_files(list(self.roi), list(self.exclude))


@dataclass(frozen=True)
class ExecutionOptions(OptionGroup):
    """Where a cohort runs, and whether finished outputs are kept."""

    group: ClassVar[str] = "execution"
    title: ClassVar[str] = "execution (default: in this process)"

    cluster: str | None = option(
        None, "run one task per slide on a Dask cluster on this machine: N worker "
        "processes (torch threads split so workers x threads <= cores), or one worker per "
        "GPU", none="in this process", metavar="local:N|local:gpus",
    )
    scheduler: str | None = option(
        None, "run on an existing Dask scheduler, e.g. tcp://node01:8786; GPU workers "
        "should offer the resource GPU=1", metavar="ADDRESS",
    )
    overwrite: bool = option(
        False, "recompute outputs that already exist (default: keep them and resume)",
    )

    def check(self) -> None:
        if self.cluster is not None and self.scheduler is not None:
            raise OptionError("scheduler", "cannot be combined with cluster: choose one")
        if self.cluster is not None:
            parse_cluster(self.cluster)


def parse_cluster(cluster: str | None) -> tuple[str, int | None]:
    """``None`` -> ("inprocess", None); ``"local:N"`` -> ("local", N);
    ``"local:gpus"`` -> ("gpus", None); anything else an :class:`OptionError`.

    Examples
    --------
    >>> parse_cluster("local:2"), parse_cluster("local:gpus"), parse_cluster(None)
    (('local', 2), ('gpus', None), ('inprocess', None))
    """
    if cluster is None or str(cluster).strip() in ("", "none"):
        return "inprocess", None
    text = str(cluster).strip().lower()
    kind, _, arg = text.partition(":")
    if kind == "local" and arg == "gpus":
        return "gpus", None
    if kind == "local" and arg.isdigit() and int(arg) >= 1:
        return "local", int(arg)
    raise OptionError(
        "cluster", f"{cluster!r} is not a cluster: use local:N (N worker processes on this "
        "machine, N >= 1) or local:gpus (one worker per GPU); for a running scheduler give "
        "its address as the scheduler instead"
    )


# --------------------------------------------------------------------------- predictions

#: the groups a prediction takes, by attribute name
_PREDICT_GROUPS: dict[str, type[OptionGroup]] = {
    "grid": GridOptions, "embed": EmbedOptions, "qc": QCOptions,
    "heatmap": HeatmapOptions, "report": ReportOptions, "cache": CacheOptions,
}


def _owner(groups: Mapping[str, type[OptionGroup]]) -> dict[str, str]:
    owner: dict[str, str] = {}
    for gname, cls in groups.items():
        for f in fields_of(cls):
            if f.name in owner:
                raise TypeError(f"option {f.name!r} is declared twice")
            owner[f.name] = gname
    return owner


_PREDICT_OWNER = _owner(_PREDICT_GROUPS)


@dataclass(frozen=True)
class PredictOptions:
    """Everything a prediction is told, as groups; made once and passed on unchanged.

    :meth:`create` takes the fields by name (``batch_size=16``, ``overlap=0.5``), plus the
    library's older spellings: ``qc`` (a QCParams, or None for QC off),
    ``heatmap_overlap``, ``encoder_kwargs`` (``{"weights": path}``) and ``tissue_params``
    (``{"saturation_threshold": s}``).
    """

    grid: GridOptions = field(default_factory=GridOptions)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    qc: QCOptions = field(default_factory=QCOptions)
    heatmap: HeatmapOptions = field(default_factory=HeatmapOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)

    @classmethod
    def create(cls, base: PredictOptions | None = None, **values: Any) -> PredictOptions:
        """Options from ``base`` (default: all defaults) with ``values`` by field name
        (or whole groups by group name)."""
        base = base if base is not None else cls()
        return dataclasses.replace(base, **apply(dict(base.groups()), **values))

    def __post_init__(self) -> None:
        for name, cls in _PREDICT_GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"PredictOptions.{name} must be a {cls.__name__}")

    def groups(self) -> Iterator[tuple[str, OptionGroup]]:
        for name in _PREDICT_GROUPS:
            yield name, getattr(self, name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{group: {field: value}}``, JSON-able (what the report records)."""
        return {name: g.to_dict() for name, g in self.groups()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Mapping[str, Any]]) -> PredictOptions:
        unknown = sorted(set(values) - set(_PREDICT_GROUPS))
        if unknown:
            raise OptionError(unknown[0], f"is not an option group (groups: "
                              f"{', '.join(_PREDICT_GROUPS)})")
        return cls(**{k: _PREDICT_GROUPS[k].from_dict(v) for k, v in values.items()})

    def outcome_settings(self) -> dict[str, Any]:
        """The options that change a prediction's numbers (not device, batch size,
        readers, engine or the cache), for the cohort's resume marker."""
        d = self.to_dict()
        d.pop("cache")
        emb = d["embed"]
        d["embed"] = {"weights": emb["weights"]}
        return d


def apply(groups: Mapping[str, OptionGroup], **values: Any) -> dict[str, OptionGroup]:
    """``groups`` (name -> group) with ``values`` applied: a group by its name, or a
    field by its name (validated by its group); the older spellings ``qc`` (QCParams or
    None), ``heatmap_overlap``, ``min_tissue``, ``encoder_kwargs`` and ``tissue_params``
    are understood. An unknown name is a TypeError listing the known ones.

    Examples
    --------
    >>> g = apply({"grid": GridOptions(), "embed": EmbedOptions()}, batch_size=8, mpp=0.25)
    >>> g["embed"].batch_size, g["grid"].mpp
    (8, 0.25)
    """
    out = dict(groups)
    owner = _owner({k: type(v) for k, v in out.items()})
    values = _legacy(values, "qc" in out)
    changes: dict[str, dict[str, Any]] = {}
    for k, v in values.items():
        if k in out:
            if not isinstance(v, type(out[k])):
                raise TypeError(f"{k} must be a {type(out[k]).__name__}, got {v!r}")
            out[k] = v
            continue
        g = owner.get(k)
        if g is None:
            raise TypeError(f"unknown option {k!r}; options: {', '.join(sorted(owner))}")
        changes.setdefault(g, {})[k] = v
    for g, kw in changes.items():
        out[g] = out[g].replace(**kw)
    return out


def _legacy(values: dict[str, Any], has_qc: bool = True) -> dict[str, Any]:
    """The library's older keyword spellings as option fields."""
    values = dict(values)
    if has_qc and "qc" in values and not isinstance(values["qc"], QCOptions):
        values["qc"] = QCOptions.from_params(values["qc"])
    if "heatmap_overlap" in values:
        values["overlap"] = values.pop("heatmap_overlap")
    if "min_tissue" in values:
        values["min_tissue_fraction"] = values.pop("min_tissue")
    ek = values.pop("encoder_kwargs", None)
    if ek:
        ek = dict(ek)
        w = ek.pop("weights", None) or ek.pop("path", None)
        if ek:
            raise TypeError(f"encoder_kwargs {sorted(ek)} are not prediction options; "
                            "only the encoder's weights file can be given")
        if w is not None:
            values["weights"] = w
    tp = values.pop("tissue_params", None)
    if tp is not None:
        thr = tp.get("saturation_threshold") if isinstance(tp, Mapping) else getattr(
            tp, "saturation_threshold", None)
        values["tissue_threshold"] = thr
    return values


# --------------------------------------------------------------------------- command line


def argument(f: Field, default: Any = dataclasses.MISSING) -> tuple[tuple[str, ...], dict]:
    """The ``add_argument`` flags and keywords of one declared option (``dest`` is the
    field name; help with unit, range and default)."""
    default = f.default if default is dataclasses.MISSING else default
    text = f.info.help
    if f.info.unit and f.info.unit not in ("fraction",):
        text += f" [{f.info.unit}]"
    rng = f.describe_range()
    if f.kind in ("int", "float") and rng and not f.info.choices:
        text += f" ({rng})"
    shown = f.info.none if default is None or default == () else _show(default)
    if f.kind == "bool":
        shown = "on" if default else "off"
    if shown:
        text += f"; default: {shown}"
    kw: dict[str, Any] = dict(dest=f.name, help=text.replace("%", "%%"), default=default)
    if f.kind == "bool":
        if f.info.negate:
            return (f.info.negate,), {**kw, "action": "store_false"}
        kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
        return (f.flag,), kw
    kw["type"] = {"int": int, "float": float, "str": str, "path": Path, "paths": Path,
                  "strs": str}[f.kind]
    if f.kind == "paths":
        kw.update(action="append", default=[])
    if f.kind == "strs":
        kw["default"] = ",".join(default)
    if f.info.choices and f.kind in ("str", "float", "int"):
        kw["choices"] = f.info.choices
    elif f.info.metavar:
        kw["metavar"] = f.info.metavar
    return (f.flag,), kw


def add_arguments(parser, cls: type[OptionGroup], *, only: tuple[str, ...] | None = None,
                  skip: tuple[str, ...] = (), group: bool = True,
                  defaults: Mapping[str, Any] | None = None,
                  aliases: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """Add the options of group ``cls`` to ``parser`` (in an argument group titled with
    the group's title when ``group``); ``only`` / ``skip`` choose fields, ``defaults``
    change shown defaults, ``aliases`` add flags. The parsed values keep the field names
    as ``dest``; read them back with :func:`from_args`.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p, EmbedOptions, only=("batch_size", "backend"))
    >>> from_args(EmbedOptions, p.parse_args(["--batch-size", "8"])).batch_size
    8
    """
    target = parser.add_argument_group(cls.title) if group else parser
    for f in fields_of(cls):
        if not f.info.cli or f.name in skip or (only is not None and f.name not in only):
            continue
        flags, kw = argument(f, (defaults or {}).get(f.name, f.default))
        target.add_argument(*flags, *(aliases or {}).get(f.name, ()), **kw)


def from_args(cls: type[OptionGroup], args: argparse.Namespace, **extra: Any):
    """The group ``cls`` from parsed command-line ``args`` (fields missing from ``args``
    keep their defaults; ``extra`` wins). A bad value raises :class:`OptionError` whose
    ``flag`` attribute names the flag."""
    values = {f.name: getattr(args, f.name) for f in fields_of(cls) if hasattr(args, f.name)}
    values.update(extra)
    try:
        return cls(**values)
    except OptionError as e:
        f = next((f for f in fields_of(cls) if f.name == e.name), None)
        e.flag = (f.info.negate or f.flag) if f is not None else None
        raise


# --------------------------------------------------------------------------- docs

ALL_GROUPS: tuple[type[OptionGroup], ...] = (
    GridOptions, EmbedOptions, QCOptions, HeatmapOptions, ReportOptions, CacheOptions,
    RegionOptions, ExecutionOptions,
)


def markdown_tables(groups: tuple[type[OptionGroup], ...] = ALL_GROUPS) -> str:
    """The option tables of ``docs/options.md``: one table per group (field, flag, type,
    default, unit, range, help)."""
    lines = [
        "# Options",
        "",
        "Generated from `napari_ghanet/options.py` (`python -m napari_ghanet.options`); a "
        "test keeps this page, the `ghanet` parsers and the declarations in step. The "
        "library takes the groups (`PredictOptions(grid=GridOptions(...), ...)`) or the "
        "fields by name (`predict_slide(..., batch_size=16)`); the settings form shows the "
        "fields with a label.",
        "",
    ]
    for cls in groups:
        lines += [f"## {cls.__name__} ({cls.title})", "",
                  "| field | flag | type | default | unit | allowed | help |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for f in fields_of(cls):
            typ = f.kind + (" or none" if f.optional else "")
            default = f.info.none if f.default is None or f.default == () else _show(f.default)
            if f.kind == "bool":
                default = "on" if f.default else "off"
            flag = f.info.negate or f.flag if f.info.cli else "(library only)"
            lines.append(
                f"| `{f.name}` | `{flag}` | {typ} | {default} | {f.info.unit} | "
                f"{f.describe_range()} | {f.info.help} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_tables())
