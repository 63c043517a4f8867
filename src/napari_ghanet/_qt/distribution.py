"""The dock's training-distribution badge and the "unlike training" patch layer.

:class:`DistributionBadge` shows a prediction's verdict
(:class:`~napari_ghanet.inference.distribution.DistributionReport`) next to the risk: a
coloured box saying "In distribution", "Unusual" or "Out of distribution" with the
reasons, or "Training distribution: not available" for a model without a summary.
:func:`unlike_layer` makes the per-patch map (1 = the 99th percentile of the training
patches' distance) as a hidden image layer.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np
from qtpy.QtWidgets import QLabel, QSizePolicy

from napari_ghanet.inference import overlays
from napari_ghanet.inference.distribution import IN, OUT, UNUSUAL

__all__ = ["BADGE_COLOURS", "DistributionBadge", "unlike_layer"]

#: (background, text) colour of each verdict; grey when not available
BADGE_COLOURS = {
    IN: ("#1b7837", "#ffffff"),
    UNUSUAL: ("#e08214", "#000000"),
    OUT: ("#b2182b", "#ffffff"),
}
_GREY = ("#6e6e6e", "#ffffff")


class DistributionBadge(QLabel):
    """Is the slide like the model's training slides? One coloured box."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextFormat(self.textFormat().RichText)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.verdict: str | None = None
        self.setVisible(False)

    def show_report(self, report: Any) -> None:
        """Show ``report`` (a DistributionReport; None hides the badge)."""
        if report is None:
            self.clear()
            return
        self.verdict = report.verdict
        bg, fg = BADGE_COLOURS.get(report.verdict, _GREY)
        title = (report.verdict[0].upper() + report.verdict[1:]) if report.available else (
            "Training distribution: not available")
        lines = [f"<b>{escape(title)}</b>"]
        if report.available and report.verdict == IN:
            lines.append("this slide is like the model's training slides")
        lines += [f"&bull; {escape(r)}" for r in report.reasons]
        if report.verdict in (UNUSUAL, OUT):
            lines.append("<i>the model extrapolates here: treat the risk with caution</i>")
        if not report.available and report.note:
            lines.append(escape(report.note))
        self.setText("<br>".join(lines))
        self.setStyleSheet(f"QLabel {{ background: {bg}; color: {fg}; border-radius: 4px; "
                           "padding: 4px; }")
        self.setToolTip("Whether this slide is like the slides the model was trained on "
                        "(appearance, stain, resolution, tissue). It never changes the risk."
                        + (f"\n{report.note}" if report.note else ""))
        self.setVisible(True)

    def clear(self) -> None:
        self.verdict = None
        self.setText("")
        self.setVisible(False)


def unlike_layer(p: Any, k: int, lattice: Any, layer_kw: dict[str, Any]):
    """The hidden "unlike training" image layer of slide ``k`` of prediction ``p``, or None
    without per-patch values. Cell value: the patch's distance to the training patches
    over twice the 99th percentile of theirs, clipped to [0.02, 1] (0.5 = as far as the
    farthest 1 % of training patches)."""
    from napari.layers import Image

    unlike = getattr(getattr(p, "distribution", None), "patch_unlike", None)
    if unlike is None or len(unlike) != p.n_patches:
        return None
    values = np.clip(np.asarray(unlike, np.float32)[p.slide_patches(k)] / 2.0, 0.02, 1.0)
    return Image(overlays.grid_image(values, lattice, fill=0.0), visible=False, **layer_kw)
