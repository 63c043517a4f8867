"""Advanced prediction settings as a magicgui form.

Fields: patch size (px at the patch resolution), patch resolution (um/px), tissue
threshold (HSV saturation, 0 = automatic Otsu) and encoder batch size. They start at the
model bundle's values; :meth:`AdvancedSettings.predict_kwargs` returns only what differs
from the model, as keyword arguments of ``predict_slide``.
"""

from __future__ import annotations

import math
from typing import Any

from magicgui.widgets import Container, FloatSpinBox, PushButton, SpinBox

__all__ = ["AdvancedSettings"]

DEFAULT_BATCH = 64


class AdvancedSettings(Container):
    """magicgui form of the advanced settings; ``.native`` is its Qt widget."""

    def __init__(self) -> None:
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
        self.reset_button = PushButton(text="Reset to the model's settings")
        super().__init__(
            widgets=[self.patch_px, self.target_mpp, self.tissue_threshold, self.batch_size,
                     self.reset_button],
            labels=True,
        )
        self.target_mpp.native.setDecimals(3)
        self.tissue_threshold.native.setDecimals(3)
        self.tissue_threshold.native.setSpecialValueText("auto (Otsu)")
        self.native.layout().setContentsMargins(4, 0, 4, 4)
        self._encoder = None
        self.reset_button.changed.connect(self.reset)

    def use_model(self, encoder) -> None:
        """Remember the bundle's encoder spec and reset the fields to it (None: keep)."""
        self._encoder = encoder
        self.reset()

    def reset(self, *_: Any) -> None:
        """Back to the model's patch size and resolution, automatic threshold, batch 64."""
        enc = self._encoder
        if enc is None:
            return
        self.patch_px.value = int(enc.patch_px)
        self.target_mpp.value = float(enc.target_mpp)
        self.tissue_threshold.value = 0.0
        self.batch_size.value = DEFAULT_BATCH

    def predict_kwargs(self) -> dict[str, Any]:
        """``predict_slide`` keyword arguments: batch size, and what differs from the model."""
        enc = self._encoder
        kw: dict[str, Any] = {"batch_size": int(self.batch_size.value)}
        if enc is None or int(self.patch_px.value) != enc.patch_px:
            kw["patch_px"] = int(self.patch_px.value)
        if enc is None or not math.isclose(self.target_mpp.value, enc.target_mpp, rel_tol=0.01):
            kw["target_mpp"] = float(self.target_mpp.value)
        threshold = float(self.tissue_threshold.value)
        if threshold > 0:
            kw["tissue_params"] = {"saturation_threshold": threshold}
        return kw
