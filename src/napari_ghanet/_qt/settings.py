"""Advanced prediction settings as a magicgui form, built from the option declarations.

Every field is made by :func:`option_widget` from its declaration in
:mod:`napari_ghanet.options` (label, help as tooltip with unit and range, bounds,
choices), so the form, ``ghanet predict`` and ``docs/options.md`` describe an option the
same way: patch size and resolution (the model's until changed), tissue threshold (0 =
automatic), the encoder's weights file, CPU engine, batch size, artifact QC (on/off and
its main thresholds) and the heatmap overlap (with what it costs).
:meth:`AdvancedSettings.predict_kwargs` returns option values by field name for
``predict_slide``. With a settings store (:mod:`napari_ghanet._settings_store`) the
fields start at the stored values and every change is saved; "Reset to defaults" goes
back to the declared defaults (and the model's patch geometry) and clears the store.
"""

from __future__ import annotations

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

from napari_ghanet.options import (
    EmbedOptions,
    Field,
    GridOptions,
    HeatmapOptions,
    QCOptions,
    fields_of,
)

__all__ = ["OVERLAP_COST", "AdvancedSettings", "option_widget"]

#: heatmap overlap -> what it costs, shown beside the choice
OVERLAP_COST = {
    0.0: "patch grid only (no extra cost)",
    0.5: "smooth map: about 4x the patches to embed",
    0.75: "smoother map: about 16x the patches to embed",
}

#: form attribute -> (option group, field); also the keys of the settings store
_FORM = {
    "patch_px": (GridOptions, "patch_px"),
    "target_mpp": (GridOptions, "target_mpp"),
    "tissue_threshold": (GridOptions, "tissue_threshold"),
    "encoder_weights": (EmbedOptions, "weights"),
    "backend": (EmbedOptions, "backend"),
    "batch_size": (EmbedOptions, "batch_size"),
    "qc_on": (QCOptions, "enabled"),
    "pen_min_fraction": (QCOptions, "pen_min_fraction"),
    "fold_od": (QCOptions, "fold_od"),
    "fold_min_fraction": (QCOptions, "fold_min_fraction"),
    "blur_fraction": (QCOptions, "blur_fraction"),
    "heatmap_overlap": (HeatmapOptions, "overlap"),
}
#: fields kept between sessions (the patch geometry follows the model instead)
_PERSISTED = ("encoder_weights", "backend", "batch_size", "qc_on", "pen_min_fraction",
              "fold_od", "fold_min_fraction", "blur_fraction", "heatmap_overlap")
#: form values of options whose declared default is None
_NONE_VALUE = {"patch_px": 256, "target_mpp": 0.5, "tissue_threshold": 0.0}


def _field(cls, name: str) -> Field:
    return next(f for f in fields_of(cls) if f.name == name)


def option_widget(f: Field, value: Any = None):
    """The magicgui widget of one declared option: its label, a tooltip with help, unit
    and range, its bounds or choices; ``value`` (default: the declared default)."""
    i = f.info
    tip = i.help[0].upper() + i.help[1:]
    if i.unit and i.unit not in ("fraction",):
        tip += f" [{i.unit}]"
    if f.describe_range() and not i.choices:
        tip += f"; allowed {f.describe_range()}"
    if i.none:
        tip += f"; empty or auto: {i.none}"
    label = i.label or f.name
    value = f.default if value is None else value
    if f.kind == "bool":
        return CheckBox(text=label, value=bool(value), tooltip=tip)
    if i.choices:
        choices = [(f"{c * 100:g} %" if f.kind == "float" else str(c), c) for c in i.choices]
        return ComboBox(label=label, choices=choices, value=value, tooltip=tip)
    if f.kind == "path":
        return FileEdit(label=label, mode="r", value="" if value is None else str(value),
                        tooltip=tip)
    lo = i.low if i.low is not None else 0
    hi = i.high if i.high is not None else 1e9
    if f.kind == "int":
        return SpinBox(label=label, min=int(lo), max=int(hi), value=int(value), tooltip=tip)
    step = 0.01 if hi <= 1 else 0.05
    return FloatSpinBox(label=label, min=float(lo), max=float(hi), step=step,
                        value=float(value), tooltip=tip)


class AdvancedSettings(Container):
    """magicgui form of the advanced settings; ``.native`` is its Qt widget.

    Parameters
    ----------
    store : SettingsStore, optional
        Where the settings persist between sessions (None: not kept).
    """

    def __init__(self, store=None) -> None:
        self._store = None
        for attr, (cls, name) in _FORM.items():
            f = _field(cls, name)
            setattr(self, attr, option_widget(f, _NONE_VALUE.get(attr)))
        self.overlap_cost = Label(value=OVERLAP_COST[0.0])
        self.reset_button = PushButton(text="Reset to defaults")
        super().__init__(widgets=[*(getattr(self, a) for a in _FORM), self.overlap_cost,
                                  self.reset_button], labels=True)
        self.target_mpp.native.setDecimals(3)
        self.tissue_threshold.native.setDecimals(3)
        self.tissue_threshold.native.setSpecialValueText("auto (Otsu)")
        self.overlap_cost.native.setWordWrap(True)
        self.native.layout().setContentsMargins(4, 0, 4, 4)
        self._encoder = None
        self.reset_button.changed.connect(self.reset_to_defaults)
        self.qc_on.changed.connect(self._on_qc_toggled)
        self.heatmap_overlap.changed.connect(self._on_overlap)
        if store is not None:
            self._apply(store.load())
            self._store = store
        for attr in _PERSISTED:
            getattr(self, attr).changed.connect(self._save)

    # ------------------------------------------------------------------ persistence

    def stored_values(self) -> dict[str, Any]:
        """The persisted fields as the settings store keeps them."""
        out: dict[str, Any] = {}
        for attr in _PERSISTED:
            v = getattr(self, attr).value
            out[attr] = str(v) if attr == "encoder_weights" and self.weights_file() else (
                "" if attr == "encoder_weights" else v)
        return out

    def _apply(self, values: dict[str, Any]) -> None:
        for attr in _PERSISTED:
            if attr in values:
                getattr(self, attr).value = values[attr]
        self._on_qc_toggled()
        self._on_overlap()

    def _save(self, *_: Any) -> None:
        if self._store is not None:
            self._store.save(self.stored_values())

    # ------------------------------------------------------------------ reactions

    def _qc_fields(self) -> list:
        return [self.pen_min_fraction, self.fold_od, self.fold_min_fraction, self.blur_fraction]

    def _on_qc_toggled(self, *_: Any) -> None:
        for w in self._qc_fields():
            w.enabled = bool(self.qc_on.value)

    def _on_overlap(self, *_: Any) -> None:
        self.overlap_cost.value = OVERLAP_COST.get(float(self.heatmap_overlap.value), "")

    def use_model(self, encoder) -> None:
        """Remember the bundle's encoder spec and take its patch geometry (None: keep)."""
        self._encoder = encoder
        if encoder is not None:
            self.patch_px.value = int(encoder.patch_px)
            self.target_mpp.value = float(encoder.target_mpp)
        self.tissue_threshold.value = 0.0

    def reset(self, *_: Any) -> None:
        """Every field back to its declared default (the model's patch geometry)."""
        store, self._store = self._store, None  # one save at the end, not one per field
        try:
            for attr, (cls, name) in _FORM.items():
                if attr in _NONE_VALUE:
                    continue
                default = _field(cls, name).default
                getattr(self, attr).value = "" if default is None else default
            self.use_model(self._encoder)
        finally:
            self._store = store

    def reset_to_defaults(self, *_: Any) -> None:
        """:meth:`reset`, and forget the stored settings."""
        self.reset()
        if self._store is not None:
            self._store.reset()

    # ------------------------------------------------------------------ values

    def weights_file(self) -> Path | None:
        """The encoder weights file chosen in the form, or None (left empty; magicgui
        shows an emptied file field as the current folder, which is no weights file)."""
        text = str(self.encoder_weights.value or "").strip()
        if text in ("", "."):
            return None
        path = Path(text)
        return None if path.is_dir() else path

    def predict_kwargs(self) -> dict[str, Any]:
        """Option values by field name for ``predict_slide``: batch size, CPU engine, QC
        (a :class:`~napari_ghanet.options.QCOptions`), heatmap overlap, the encoder
        weights file when one is chosen, and the patch geometry / tissue threshold where
        they differ from the model."""
        enc = self._encoder
        qc = QCOptions(enabled=bool(self.qc_on.value),
                       pen_min_fraction=float(self.pen_min_fraction.value),
                       fold_od=float(self.fold_od.value),
                       fold_min_fraction=float(self.fold_min_fraction.value),
                       blur_fraction=float(self.blur_fraction.value))
        kw: dict[str, Any] = {"batch_size": int(self.batch_size.value),
                              "backend": str(self.backend.value), "qc": qc,
                              "overlap": float(self.heatmap_overlap.value)}
        if enc is None or int(self.patch_px.value) != enc.patch_px:
            kw["patch_px"] = int(self.patch_px.value)
        if enc is None or not math.isclose(self.target_mpp.value, enc.target_mpp, rel_tol=0.01):
            kw["target_mpp"] = float(self.target_mpp.value)
        weights = self.weights_file()
        if weights is not None:
            kw["weights"] = weights
        threshold = float(self.tissue_threshold.value)
        if threshold > 0:
            kw["tissue_threshold"] = threshold
        return kw
