"""Advanced prediction settings as a magicgui form, made from the option declarations.

Which fields the form has, their order, widgets, labels, bounds, choices, tooltips (help,
unit, range), the note beside a choice (what a heatmap overlap costs) and which values
are kept between sessions all come from :mod:`napari_ghanet.options`: every option of a
prediction's groups with a form ``label`` is a field (:func:`~napari_ghanet.options.
form_fields`), made by :func:`option_widget`; one declared ``persist=True`` is saved to the
settings store (:mod:`napari_ghanet._settings_store`) on every change and read back when
the form is made. An optional number (patch size and resolution: the model's; tissue
threshold: Otsu) shows ``auto`` and its declared meaning of None as the spin box's lowest
entry ("auto (Otsu)"), one step below the declared range. The QC thresholds are enabled only
while QC is on. :meth:`AdvancedSettings.predict_options` gives the typed
:class:`~napari_ghanet.options.PredictOptions`; "Reset to defaults" goes back to the
declared defaults (and the model's patch geometry) and clears the store.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from napari_ghanet.options import PREDICT_GROUPS, Field, PredictOptions, form_fields

__all__ = ["AdvancedSettings", "option_widget"]

#: decimals of the form's number fields
_DECIMALS = 3


def _tooltip(f: Field) -> str:
    i = f.info
    tip = i.help[0].upper() + i.help[1:]
    if i.unit and i.unit not in ("fraction",):
        tip += f" [{i.unit}]"
    if f.describe_range() and not i.choices:
        tip += f"; allowed {f.describe_range()}"
    if i.none:
        tip += f"; lowest entry or empty: {i.none}"
    return tip


def _bounds(f: Field) -> tuple[float, float, float]:
    """(lowest, highest, step) of a number field; an optional one has one more entry
    below its range, which stands for None."""
    i = f.info
    lo = i.low if i.low is not None else 0.0
    hi = i.high if i.high is not None else 1e9
    if f.kind == "int":
        step = 1
    else:
        step = 0.01 if hi <= 1 else 0.05
    if f.optional and not i.low_open:
        lo = lo - step
    elif not f.optional and i.low_open:
        lo = lo + 10.0 ** -_DECIMALS
    return lo, hi, step


def option_widget(f: Field, value: Any = None):
    """The magicgui widget of one declared option: its label, a tooltip with help, unit
    and range, its bounds or choices; ``value`` (default: the declared default; None: the
    declared meaning of None)."""
    i = f.info
    tip = _tooltip(f)
    label = i.label or f.name
    value = f.default if value is None and not f.optional else value
    if f.kind == "bool":
        return CheckBox(text=label, value=bool(value), tooltip=tip)
    if i.choices:
        choices = [(f"{c * 100:g} %" if f.kind == "float" else str(c), c) for c in i.choices]
        return ComboBox(label=label, choices=choices, value=value, tooltip=tip)
    if f.kind == "path":
        return FileEdit(label=label, mode="r", value="" if value is None else str(value),
                        tooltip=tip)
    lo, hi, step = _bounds(f)
    if f.kind == "int":
        w = SpinBox(label=label, min=int(lo), max=int(hi), tooltip=tip)
    else:
        w = FloatSpinBox(label=label, min=float(lo), max=float(hi), step=step, tooltip=tip)
        w.native.setDecimals(_DECIMALS)
    if f.optional:
        w.native.setSpecialValueText(f"auto ({i.none})")
    w.value = lo if value is None else value
    return w


class AdvancedSettings(Container):
    """magicgui form of the advanced settings; ``.native`` is its Qt widget. Each field is
    an attribute named by its setting key (``batch_size``, ``qc_on``, ...); a field with
    choice notes has a ``<key>_note`` label beside it (``overlap_cost`` for the heatmap).

    Parameters
    ----------
    store : SettingsStore, optional
        Where the settings persist between sessions (None: not kept).
    """

    def __init__(self, store=None) -> None:
        self._store = None
        self._encoder = None
        self._fields = form_fields()
        widgets = []
        for key, f in self._fields.items():
            setattr(self, key, option_widget(f))
            widgets.append(getattr(self, key))
            if f.info.notes:
                note = Label(value=f.choice_note(f.default))
                note.native.setWordWrap(True)
                setattr(self, f"{key}_note", note)
                widgets.append(note)
        self.overlap_cost = self.heatmap_overlap_note
        self.reset_button = PushButton(text="Reset to defaults")
        super().__init__(widgets=[*widgets, self.reset_button], labels=True)
        self.native.layout().setContentsMargins(4, 0, 4, 4)
        self.reset_button.changed.connect(self.reset_to_defaults)
        for key, f in self._fields.items():
            if f.info.notes:
                getattr(self, key).changed.connect(self._on_choice)
            if f.kind == "bool" and f.name == "enabled":
                getattr(self, key).changed.connect(self._on_switch)
        if store is not None:
            self._apply(store.load())
            self._store = store
        for key in self._persisted():
            getattr(self, key).changed.connect(self._save)

    def _persisted(self) -> list[str]:
        return [k for k, f in self._fields.items() if f.info.persist]

    # ------------------------------------------------------------------ values

    def value_of(self, key: str) -> Any:
        """The typed option value of field ``key`` (None: its declared meaning of None, an
        empty file field)."""
        f, w = self._fields[key], getattr(self, key)
        if f.kind == "path":
            return self.weights_file() if key == "encoder_weights" else _path(w.value)
        if f.optional and f.kind in ("int", "float") and w.value <= w.min:
            return None
        return {"int": int, "float": float, "bool": bool}.get(f.kind, str)(w.value)

    def set_value(self, key: str, value: Any) -> None:
        """Show ``value`` in field ``key`` (None: the declared meaning of None)."""
        f, w = self._fields[key], getattr(self, key)
        if value is None and f.kind in ("int", "float"):
            value = w.min if f.optional else f.default
        w.value = "" if value is None else value

    def weights_file(self) -> Path | None:
        """The encoder weights file chosen in the form, or None (left empty; magicgui
        shows an emptied file field as the current folder, which is no weights file)."""
        path = _path(self.encoder_weights.value)
        return None if path is None or path.is_dir() else path

    def option_groups(self) -> dict[str, Any]:
        """The form's values as typed option groups (group name -> group) over the
        declared defaults: the patch geometry None (the model's) where it is the model's."""
        opts = self.predict_options()
        return {name: getattr(opts, name) for name in PREDICT_GROUPS}

    def predict_options(self, base: PredictOptions | None = None) -> PredictOptions:
        """``base`` (default: the declared defaults) with the form's fields: the typed
        options a prediction takes. The patch size and resolution are None (the model's)
        while they equal the loaded model's."""
        base = base if base is not None else PredictOptions()
        changes: dict[str, dict[str, Any]] = {}
        enc = self._encoder
        for key, f in self._fields.items():
            v = self.value_of(key)
            if enc is not None and f.name == "patch_px" and v == enc.patch_px:
                v = None
            if enc is not None and f.name == "target_mpp" and v is not None and math.isclose(
                    v, enc.target_mpp, rel_tol=0.01):
                v = None
            changes.setdefault(f.group, {})[f.name] = v
        groups = {name: getattr(base, name) for name in PREDICT_GROUPS}
        attr = {cls.group: name for name, cls in PREDICT_GROUPS.items()}
        for group, kw in changes.items():
            groups[attr[group]] = groups[attr[group]].replace(**kw)
        return dataclasses.replace(base, **groups)

    def predict_kwargs(self) -> dict[str, Any]:
        """The form's option values by field name for ``predict_slide`` (the QC group
        whole as ``qc``; options left at None omitted)."""
        opts = self.predict_options()
        kw: dict[str, Any] = {"qc": opts.qc}
        for f in self._fields.values():
            if f.group == "qc":
                continue
            attr = next(n for n, c in PREDICT_GROUPS.items() if c.group == f.group)
            v = getattr(getattr(opts, attr), f.name)
            if v is not None:
                kw[f.name] = v
        return kw

    # ------------------------------------------------------------------ persistence

    def stored_values(self) -> dict[str, Any]:
        """The persisted fields as the settings store keeps them (paths as text)."""
        out: dict[str, Any] = {}
        for key in self._persisted():
            v = self.value_of(key)
            out[key] = "" if v is None else (str(v) if isinstance(v, Path) else v)
        return out

    def _apply(self, values: dict[str, Any]) -> None:
        for key in self._persisted():
            if key in values:
                self.set_value(key, values[key] if values[key] != "" else None)
        self._on_switch()
        self._on_choice()

    def _save(self, *_: Any) -> None:
        if self._store is not None:
            self._store.save(self.stored_values())

    # ------------------------------------------------------------------ reactions

    def _on_switch(self, *_: Any) -> None:
        """A group's fields are enabled only while its ``enabled`` switch is on."""
        for key, f in self._fields.items():
            if f.kind == "bool" and f.name == "enabled":
                on = bool(getattr(self, key).value)
                for k2, f2 in self._fields.items():
                    if f2.group == f.group and k2 != key:
                        getattr(self, k2).enabled = on

    def _on_choice(self, *_: Any) -> None:
        for key, f in self._fields.items():
            if f.info.notes:
                getattr(self, f"{key}_note").value = f.choice_note(getattr(self, key).value)

    def use_model(self, encoder) -> None:
        """Remember the bundle's encoder spec and take its patch geometry (None: keep);
        the tissue threshold goes back to its default (auto)."""
        self._encoder = encoder
        for key, f in self._fields.items():
            if encoder is not None and f.name in ("patch_px", "target_mpp"):
                self.set_value(key, getattr(encoder, f.name))
            elif f.name == "tissue_threshold":
                self.set_value(key, f.default)

    def reset(self, *_: Any) -> None:
        """Every field back to its declared default (the model's patch geometry)."""
        store, self._store = self._store, None  # one save at the end, not one per field
        try:
            for key, f in self._fields.items():
                self.set_value(key, f.default)
            self.use_model(self._encoder)
        finally:
            self._store = store

    def reset_to_defaults(self, *_: Any) -> None:
        """:meth:`reset`, and forget the stored settings."""
        self.reset()
        if self._store is not None:
            self._store.reset()


def _path(value: Any) -> Path | None:
    text = str(value or "").strip()
    return None if text in ("", ".") else Path(text)
