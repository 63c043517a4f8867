"""Advanced prediction settings as a magicgui form.

Fields: patch size (px at the patch resolution), patch resolution (um/px), tissue
threshold (HSV saturation, 0 = automatic Otsu), encoder batch size, the encoder's weights
file (when the caches do not hold it), artifact QC (on/off and
its main thresholds, units in the labels and tooltips) and the heatmap overlap (with what
it costs). They start at the model bundle's values and the QC defaults
(:class:`~napari_ghanet.preprocessing.qc.QCParams`);
:meth:`AdvancedSettings.predict_kwargs` returns ``predict_slide`` keyword arguments.
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

from napari_ghanet.preprocessing.qc import QCParams

__all__ = ["AdvancedSettings", "OVERLAP_COST"]

DEFAULT_BATCH = 64

#: heatmap overlap -> what it costs, shown beside the choice
OVERLAP_COST = {
    0.0: "patch grid only (no extra cost)",
    0.5: "smooth map: about 4x the patches to embed",
    0.75: "smoother map: about 16x the patches to embed",
}


class AdvancedSettings(Container):
    """magicgui form of the advanced settings; ``.native`` is its Qt widget."""

    def __init__(self) -> None:
        qc = QCParams()
        self.patch_px = SpinBox(
            label="Patch size (px)", min=32, max=4096, value=256,
            tooltip="Patch side in pixels at the patch resolution",
        )
        self.target_mpp = FloatSpinBox(
            label="Patch resolution (um/px)", min=0.05, max=4.0, step=0.05, value=0.5,
            tooltip="Resolution the patches are read at, um/px (0.5 = 20x)",
        )
        self.tissue_threshold = FloatSpinBox(
            label="Tissue threshold", min=0.0, max=1.0, step=0.01, value=0.0,
            tooltip="HSV saturation (0-1) above which a pixel is tissue; "
                    "auto picks Otsu's threshold",
        )
        self.batch_size = SpinBox(
            label="Batch size", min=1, max=4096, value=DEFAULT_BATCH,
            tooltip="Patches per encoder batch (lower it if memory runs out)",
        )
        self.encoder_weights = FileEdit(
            label="Encoder weights", mode="r", value="",
            tooltip="The weights file of the patch encoder the model was trained with, when "
                    "it is not found on this machine (e.g. UNI's pytorch_model.bin, a "
                    "ResNet50 .pth, a TorchScript file); empty: look in the usual caches",
        )
        self.qc_on = CheckBox(
            text="Artifact QC (pen, blur, folds)", value=True,
            tooltip="Leave out patches with pen marks, blur or dark folds (flagged patches "
                    "are shown in the 'G-HANet · QC' layer)",
        )
        self.pen_min_fraction = FloatSpinBox(
            label="Pen ink (fraction)", min=0.0, max=1.0, step=0.01,
            value=qc.pen_min_fraction,
            tooltip="Pen: a patch is flagged when at least this fraction (0-1) of its pixels "
                    "are green, blue or black ink",
        )
        self.fold_od = FloatSpinBox(
            label="Fold OD (log10)", min=0.05, max=3.0, step=0.05, value=qc.fold_od,
            tooltip="Fold: optical density (log10 units, mean over R, G, B; 1.0 = 10 % of "
                    "the light passes) above which a pixel counts as dark",
        )
        self.fold_min_fraction = FloatSpinBox(
            label="Fold dark (fraction)", min=0.0, max=1.0, step=0.01,
            value=qc.fold_min_fraction,
            tooltip="Fold: a patch is flagged when at least this fraction (0-1) of its "
                    "pixels are dark",
        )
        self.blur_fraction = FloatSpinBox(
            label="Blur (x median)", min=0.0, max=1.0, step=0.01, value=qc.blur_fraction,
            tooltip="Blur: a patch is flagged when its Laplacian energy is below this "
                    "fraction of the median over the slide's patches (unitless ratio)",
        )
        self.heatmap_overlap = ComboBox(
            label="Heatmap overlap",
            choices=[("0 %", 0.0), ("50 %", 0.5), ("75 %", 0.75)], value=0.0,
            tooltip="Overlapping patches for smooth attention maps (as CLAM's heatmaps); "
                    "the prediction itself still uses the model's own patch grid. "
                    "50 % embeds about 4x the patches, 75 % about 16x",
        )
        self.overlap_cost = Label(value=OVERLAP_COST[0.0])
        self.reset_button = PushButton(text="Reset to the model's settings")
        super().__init__(
            widgets=[self.patch_px, self.target_mpp, self.tissue_threshold, self.batch_size,
                     self.encoder_weights, self.qc_on, self.pen_min_fraction, self.fold_od, self.fold_min_fraction,
                     self.blur_fraction, self.heatmap_overlap, self.overlap_cost,
                     self.reset_button],
            labels=True,
        )
        self.target_mpp.native.setDecimals(3)
        self.tissue_threshold.native.setDecimals(3)
        self.tissue_threshold.native.setSpecialValueText("auto (Otsu)")
        self.overlap_cost.native.setWordWrap(True)
        self.native.layout().setContentsMargins(4, 0, 4, 4)
        self._encoder = None
        self.reset_button.changed.connect(self.reset)
        self.qc_on.changed.connect(self._on_qc_toggled)
        self.heatmap_overlap.changed.connect(self._on_overlap)

    def _qc_fields(self) -> list:
        return [self.pen_min_fraction, self.fold_od, self.fold_min_fraction, self.blur_fraction]

    def _on_qc_toggled(self, *_: Any) -> None:
        for w in self._qc_fields():
            w.enabled = bool(self.qc_on.value)

    def _on_overlap(self, *_: Any) -> None:
        self.overlap_cost.value = OVERLAP_COST.get(float(self.heatmap_overlap.value), "")

    def use_model(self, encoder) -> None:
        """Remember the bundle's encoder spec and reset the fields to it (None: keep)."""
        self._encoder = encoder
        self.reset()

    def reset(self, *_: Any) -> None:
        """Back to the model's patch size and resolution, automatic threshold, batch 64,
        QC on with its default thresholds, no heatmap overlap."""
        enc = self._encoder
        if enc is not None:
            self.patch_px.value = int(enc.patch_px)
            self.target_mpp.value = float(enc.target_mpp)
        self.tissue_threshold.value = 0.0
        self.batch_size.value = DEFAULT_BATCH
        qc = QCParams()
        self.qc_on.value = True
        self.pen_min_fraction.value = qc.pen_min_fraction
        self.fold_od.value = qc.fold_od
        self.fold_min_fraction.value = qc.fold_min_fraction
        self.blur_fraction.value = qc.blur_fraction
        self.heatmap_overlap.value = 0.0

    def qc_params(self) -> QCParams | None:
        """The QC thresholds of the form (None when QC is off)."""
        if not self.qc_on.value:
            return None
        return QCParams(
            pen_min_fraction=float(self.pen_min_fraction.value),
            fold_od=float(self.fold_od.value),
            fold_min_fraction=float(self.fold_min_fraction.value),
            blur_fraction=float(self.blur_fraction.value),
        )

    def weights_file(self) -> Path | None:
        """The encoder weights file chosen in the form, or None (left empty)."""
        text = str(self.encoder_weights.value or "").strip()
        return None if text in ("", ".") else Path(text)

    def predict_kwargs(self) -> dict[str, Any]:
        """``predict_slide`` keyword arguments: batch size, QC, heatmap overlap, the
        encoder weights file when one is chosen, and the patch geometry / tissue threshold
        where they differ from the model."""
        enc = self._encoder
        kw: dict[str, Any] = {"batch_size": int(self.batch_size.value),
                              "qc": self.qc_params(),
                              "heatmap_overlap": float(self.heatmap_overlap.value)}
        if enc is None or int(self.patch_px.value) != enc.patch_px:
            kw["patch_px"] = int(self.patch_px.value)
        if enc is None or not math.isclose(self.target_mpp.value, enc.target_mpp, rel_tol=0.01):
            kw["target_mpp"] = float(self.target_mpp.value)
        weights = self.weights_file()
        if weights is not None:
            kw["encoder_kwargs"] = {"weights": weights}
        threshold = float(self.tissue_threshold.value)
        if threshold > 0:
            kw["tissue_params"] = {"saturation_threshold": threshold}
        return kw
