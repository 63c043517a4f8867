"""How an option is declared, checked and listed: the machinery under the option groups.

:func:`option` makes a dataclass field that carries an :class:`OptionInfo` (help, unit,
inclusive range, choices, command-line flag, form label); :class:`OptionGroup` is the base
of the frozen groups in :mod:`napari_ghanet.options.groups`: a group checks and normalises
every field when it is made (:func:`check_value`), raising :class:`OptionError` naming the
field and what is allowed; :func:`fields_of` lists a group's declared :class:`Field`\\ s
in declaration order. Units are the declarations' own (µm/px, px, fraction, patches).
No torch, napari or Qt import here.

Examples
--------
>>> from napari_ghanet.options import EmbedOptions
>>> [f.name for f in fields_of(EmbedOptions)][:3]
['weights', 'device', 'backend']
>>> show_value(0.5), show_value(("pen", "fold"))
('0.5', 'pen,fold')
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from napari_ghanet.errors import GHANetError

__all__ = ["Field", "OptionError", "OptionGroup", "OptionInfo", "check_value", "fields_of",
           "option", "show_value"]

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


OptionError.__module__ = "napari_ghanet.options"  # its public home (tracebacks, pickles)


@dataclass(frozen=True)
class OptionInfo:
    """How one option is described and checked.

    ``low`` / ``high``: inclusive bounds (``low_open``: the lower bound is exclusive);
    ``choices``: the allowed values; ``flag``: the command-line flag (default
    ``--field-name``), ``negate``: a flag that sets a bool option to False instead;
    ``label``: the dock's settings-form label (None: not in the form); ``cli``: on the
    command line at all; ``none``: what None means, shown in the help (on the command line
    and in the form the word ``auto`` stands for it); ``persist``: kept between dock
    sessions (the settings store and the ``configurations`` of ``napari.yaml``);
    ``key``: the setting's name there and the form's attribute (default: the field name);
    ``notes``: one line per choice saying what it costs or means, shown in the help, the
    docs and beside the form's choice; ``negate_help``: the help of the ``negate`` flag
    (what it does, not what the option does); ``many``: a list option whose flag takes
    several values (``--model ghanet abmil``) instead of a comma-separated list;
    ``required``: the flag must be given; ``alone``: the value of a flag given without one
    (``--stow`` alone: the slide's own server).
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
    persist: bool = False
    key: str | None = None
    notes: tuple[str, ...] = ()
    negate_help: str = ""
    many: bool = False
    required: bool = False
    alone: Any = None

    def __post_init__(self) -> None:
        if self.notes and len(self.notes) != len(self.choices):
            raise TypeError("an option's notes must be one per choice")


def option(default: Any, help: str, **info: Any) -> Any:
    """A dataclass field with its :class:`OptionInfo` (see there for ``info``)."""
    return field(default=default, metadata={_KEY: OptionInfo(help=help, **info)})


@dataclass(frozen=True)
class Field:
    """One declared option: its group's field name, type, default and description."""

    name: str
    kind: str  # "bool", "int", "float", "str", "path", "strs", "paths", "ints", "floats"
    optional: bool
    default: Any
    info: OptionInfo
    group: str

    @property
    def flag(self) -> str:
        return self.info.flag or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """The setting's name in the settings store, ``napari.yaml`` and the form."""
        return self.info.key or self.name

    @property
    def surfaces(self) -> tuple[str, ...]:
        """Where the option shows: ``cli``, ``form`` (the dock's settings form),
        ``persisted`` (the settings store and ``napari.yaml``)."""
        return tuple(s for s, on in (("cli", self.info.cli), ("form", self.info.label),
                                     ("persisted", self.info.persist)) if on)

    def choice_note(self, value: Any) -> str:
        """The declared note of choice ``value`` ('' when there is none)."""
        for c, note in zip(self.info.choices, self.info.notes):
            if value == c or isinstance(c, float) and isinstance(value, int | float) and (
                    math.isclose(value, c)):
                return note
        return ""

    def show(self, v: Any) -> str:
        """A value of this option as the help, the docs and the form show it: None as its
        declared meaning, a bool as on/off, a float choice as the choice is written
        (``0.0`` among 0.0, 0.5, 0.75)."""
        if self.kind == "bool":
            return "on" if v else "off"
        if v is None or v == ():
            return self.info.none
        if self.info.choices and isinstance(v, float):
            return repr(v)
        return show_value(v)

    def describe_range(self) -> str:
        i = self.info
        if i.choices:
            return ", ".join(self.show(c) for c in i.choices)
        if i.low is None and i.high is None:
            return ""
        lo = "" if i.low is None else ("> " if i.low_open else ">= ") + show_value(i.low)
        hi = "" if i.high is None else "<= " + show_value(i.high)
        return " and ".join(p for p in (lo, hi) if p)


def show_value(v: Any) -> str:
    """A value as the help, the error messages and the docs show it (``0.5``, ``a,b``)."""
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
        return {Path: "paths", int: "ints", float: "floats"}.get(inner, "strs"), optional
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
            object.__setattr__(self, f.name, check_value(f, getattr(self, f.name)))
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


def check_value(f: Field, v: Any) -> Any:
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
            number = None if isinstance(v, bool) else float(v)
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise OptionError(f.name, f"must be a number ({i.help}), got {v!r}")
        v = number
        if not math.isfinite(v):
            raise OptionError(f.name, f"must be a finite number ({i.help}), got {v!r}")
    elif k == "str":
        if not isinstance(v, str):
            raise OptionError(f.name, f"must be text ({i.help}), got {v!r}")
    elif k == "path":
        if not isinstance(v, str | os.PathLike) or str(v).strip() in ("", "."):
            raise OptionError(f.name, f"must be a file or folder path ({i.help}), got {v!r}")
        v = Path(v)
    elif k in ("ints", "floats"):
        if isinstance(v, str):
            v = [x for x in v.replace(",", " ").split() if x]
        try:
            items = list(v)
        except TypeError:
            raise OptionError(f.name, f"must be a list ({i.help}), got {v!r}") from None
        one = Field(f.name, k[:-1], False, None, dataclasses.replace(i, choices=()), f.group)
        return tuple(check_value(one, x) for x in items)
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
            raise OptionError(f.name, f"must be one of {', '.join(show_value(c) for c in i.choices)} "
                              f"({i.help}), got {show_value(v)}")
    if k in ("int", "float"):
        unit = f" {i.unit}" if i.unit and i.unit not in ("fraction", "ratio") else ""
        if i.low is not None and (v <= i.low if i.low_open else v < i.low):
            op = ">" if i.low_open else ">="
            raise OptionError(f.name, f"must be {op} {show_value(i.low)}{unit} ({i.help}), got {show_value(v)}")
        if i.high is not None and v > i.high:
            raise OptionError(f.name, f"must be <= {show_value(i.high)}{unit} ({i.help}), got {show_value(v)}")
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
