"""The run controls of the dock: Predict / Cancel, the progress bar, the status line and
the preliminary risk shown while a slide is embedded."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

__all__ = ["STAGE_TEXT", "RunPanel"]

STAGE_TEXT = {
    "slide": "Opening the slide",
    "tissue": "Detecting tissue",
    "patches": "Laying out patches",
    "features": "Embedding patches",
    "model": "Running G-HANet",
    "done": "Done",
}


def _wrapped(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


class RunPanel(QWidget):
    """Predict / Cancel buttons, progress bar, status and preliminary risk."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        run_row = QHBoxLayout()
        self.predict_button = QPushButton("Predict prognosis")
        self.predict_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        run_row.addWidget(self.predict_button, 1)
        run_row.addWidget(self.cancel_button)
        layout.addLayout(run_row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = _wrapped()
        layout.addWidget(self.status_label)
        # a first answer while the slide is embedded (hidden otherwise)
        self.preliminary_label = _wrapped()
        self.preliminary_label.setVisible(False)
        layout.addWidget(self.preliminary_label)

    def set_running(self, on: bool) -> None:
        """Enable Cancel (and disable Predict) while a prediction runs."""
        self.predict_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)
        if on:
            self.progress_bar.setRange(0, 0)
            self.status_label.setText("Starting...")
        self.show_preliminary(None)

    def set_idle(self, done: bool) -> None:
        """Back to the ready state; a full progress bar when a result is shown."""
        self.set_running(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if done else 0)

    def show_preliminary(self, est) -> None:
        """A preliminary risk
        (:class:`~napari_ghanet.inference.progressive.PreliminaryRisk`) while the slide
        is embedded; None (or the final answer) hides it."""
        if est is None or est.final:
            self.preliminary_label.setVisible(False)
            self.preliminary_label.setText("")
            return
        from napari_ghanet.models.risk import risk_colour, risk_text

        colour = risk_colour(est.group)
        self.preliminary_label.setText(
            f"<b>Preliminary</b> ({100 * est.fraction:.0f} % of patches): "
            f"<span style='color:{colour}'><b>{risk_text(est.group)}</b></span>, "
            f"risk {est.risk:.2f} ({100 * est.level:.0f} % interval {est.low:.2f} to "
            f"{est.high:.2f}); {100 * est.group_support:.0f} % of resamples agree. "
            "Refined as embedding goes on; the final result replaces it."
        )
        self.preliminary_label.setToolTip(
            "Risk from the patches embedded so far (visited in a spatially spread order); "
            "interval from resampling the embedded blocks of patches")
        self.preliminary_label.setVisible(True)

    def show_progress(self, stage: str, done: int, total: int) -> str:
        """Progress bar and status for a ``predict_slide`` progress report; returns the
        stage's text."""
        text = STAGE_TEXT.get(stage, stage)
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
            self.status_label.setText(f"{text}: {done:,} / {total:,}")
        else:
            self.progress_bar.setRange(0, 0)
            self.status_label.setText(f"{text}...")
        return text
