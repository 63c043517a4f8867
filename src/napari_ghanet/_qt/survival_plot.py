"""The results panel's survival plot: a matplotlib step plot of a Prediction's survival
curve in the viewer's theme colours, and the note on its time horizon."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QLabel

__all__ = ["SurvivalPlot"]


class SurvivalPlot:
    """The survival figure, its Qt canvas and the horizon note (the panel lays them out).

    Attributes
    ----------
    figure : matplotlib.figure.Figure
    canvas : FigureCanvasQTAgg
        Fixed at 200 px high.
    horizon_label : QLabel
        The prediction's note on its horizon (hidden when it has none).
    """

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 2.4), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        # a fixed height: the panel's layout passes after a result is shown change only
        # the heights of the views above, which would otherwise redraw the plot each time
        self.canvas.setMinimumWidth(120)
        self.canvas.setFixedHeight(200)
        self.horizon_label = QLabel("")
        self.horizon_label.setWordWrap(True)
        self.horizon_label.setStyleSheet("QLabel { font-size: 8pt; }")

    def plot(self, p, background: str, foreground: str) -> None:
        """Step plot of Prediction ``p``'s survival curve; colours are "#rrggbb" names."""
        fig = self.figure
        fig.clear()
        fig.set_facecolor(background)
        ax = fig.add_subplot(111)
        ax.set_facecolor(background)
        for spine in ax.spines.values():
            spine.set_color(foreground)
        ax.tick_params(colors=foreground, labelsize=7)
        ax.xaxis.label.set_color(foreground)
        ax.yaxis.label.set_color(foreground)
        months, surv = p.survival_curve()
        horizon = float(getattr(p, "horizon_months", 0.0) or 0.0)
        if not np.isfinite(horizon) or horizon <= 0:
            horizon = float(months[-1])
        # surv[k + 1] is the probability of surviving past the end of bin k.
        ax.step(months, surv, where="post", color="#ef5350", lw=1.8)
        ax.plot(months[1:], surv[1:], "o", color="#ef5350", ms=3)
        ax.set_ylim(0, 1.02)
        # a margin right of the horizon, so that the last step is drawn inside the axes
        # (not on their right border)
        ax.set_xlim(0, horizon * 1.06)
        ax.set_xlabel("months", fontsize=8)
        ax.set_ylabel("survival probability", fontsize=8)
        ax.grid(alpha=0.3)
        note = getattr(p, "horizon_note", "") or ""
        self.horizon_label.setText(note)
        self.horizon_label.setVisible(bool(note))
        self.canvas.draw_idle()
