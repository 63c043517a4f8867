"""What a prediction is told: :class:`PredictOptions` (the groups of one run) and
:func:`apply` (fields by name, and the library's older keyword spellings, onto groups).

No torch, napari or Qt import here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from napari_ghanet.errors import ArgumentError
from napari_ghanet.options.declare import OptionError, OptionGroup, fields_of
from napari_ghanet.options.groups import (
    CacheOptions,
    DistributionOptions,
    EmbedOptions,
    GridOptions,
    HeatmapOptions,
    QCOptions,
    ReportOptions,
)

__all__ = ["PREDICT_GROUPS", "PredictOptions", "apply"]

#: the groups a prediction takes, by attribute name
PREDICT_GROUPS: dict[str, type[OptionGroup]] = {
    "grid": GridOptions, "embed": EmbedOptions, "qc": QCOptions,
    "heatmap": HeatmapOptions, "report": ReportOptions, "cache": CacheOptions,
    "distribution": DistributionOptions,
}


def _owner(groups: Mapping[str, type[OptionGroup]]) -> dict[str, str]:
    owner: dict[str, str] = {}
    for gname, cls in groups.items():
        for f in fields_of(cls):
            if f.name in owner:
                raise TypeError(f"option {f.name!r} is declared twice")
            owner[f.name] = gname
    return owner


_PREDICT_OWNER = _owner(PREDICT_GROUPS)


@dataclass(frozen=True)
class PredictOptions:
    """Everything a prediction is told, as groups; made once and passed on unchanged.

    :meth:`create` takes the fields by name (``batch_size=16``, ``overlap=0.5``), plus the
    library's shortcuts ``qc`` (a QCParams, or None for QC off) and ``encoder_kwargs``
    (``{"weights": path}``).
    """

    grid: GridOptions = field(default_factory=GridOptions)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    qc: QCOptions = field(default_factory=QCOptions)
    heatmap: HeatmapOptions = field(default_factory=HeatmapOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)
    distribution: DistributionOptions = field(default_factory=DistributionOptions)

    @classmethod
    def create(cls, base: PredictOptions | None = None, **values: Any) -> PredictOptions:
        """Options from ``base`` (default: all defaults) with ``values`` by field name
        (or whole groups by group name)."""
        base = base if base is not None else cls()
        return dataclasses.replace(base, **apply(dict(base.groups()), **values))

    def __post_init__(self) -> None:
        for name, cls in PREDICT_GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise ArgumentError(f"PredictOptions.{name} must be a {cls.__name__}")

    def groups(self) -> Iterator[tuple[str, OptionGroup]]:
        for name in PREDICT_GROUPS:
            yield name, getattr(self, name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{group: {field: value}}``, JSON-able (what the report records)."""
        return {name: g.to_dict() for name, g in self.groups()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Mapping[str, Any]]) -> PredictOptions:
        unknown = sorted(set(values) - set(PREDICT_GROUPS))
        if unknown:
            raise OptionError(unknown[0], f"is not an option group (groups: "
                              f"{', '.join(PREDICT_GROUPS)})")
        return cls(**{k: PREDICT_GROUPS[k].from_dict(v) for k, v in values.items()})

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
    field by its name (validated by its group); the shortcuts ``qc`` (QCParams or None)
    and ``encoder_kwargs`` (``{"weights": path}``) are understood. An unknown name is a TypeError listing the known ones.

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
                raise ArgumentError(f"{k} must be a {type(out[k]).__name__}, got {v!r}")
            out[k] = v
            continue
        g = owner.get(k)
        if g is None:
            raise ArgumentError(f"unknown option {k!r}; options: {', '.join(sorted(owner))}")
        changes.setdefault(g, {})[k] = v
    for g, kw in changes.items():
        out[g] = out[g].replace(**kw)
    return out


def _legacy(values: dict[str, Any], has_qc: bool = True) -> dict[str, Any]:
    """The library's two shortcuts as option fields (the older spellings
    ``heatmap_overlap``, ``min_tissue`` and ``tissue_params`` are gone: an unknown option
    now)."""
    values = dict(values)
    if has_qc and "qc" in values and not isinstance(values["qc"], QCOptions):
        values["qc"] = QCOptions.from_params(values["qc"])
    ek = values.pop("encoder_kwargs", None)
    if ek:
        ek = dict(ek)
        w = ek.pop("weights", None) or ek.pop("path", None)
        if ek:
            raise ArgumentError(f"encoder_kwargs {sorted(ek)} are not prediction options; "
                                "only the encoder's weights file can be given")
        if w is not None:
            values["weights"] = w
    return values
