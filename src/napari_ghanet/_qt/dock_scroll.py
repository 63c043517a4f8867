"""The dock's scroll area: its panels stacked in one vertically scrolling column that is
never wider than the dock (360 px fits), and scrolling a panel to the top."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

__all__ = ["DockScroll"]


class DockScroll(QScrollArea):
    """A frameless vertical scroll area over ``parts`` (top to bottom, then a stretch).

    Parameters
    ----------
    parts : list of QWidget
    """

    def __init__(self, parts, parent=None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        layout = QVBoxLayout(body)
        for part in parts:
            layout.addWidget(part)
        layout.addStretch(1)
        self.setWidget(body)

    def scroll_to(self, part: QWidget) -> None:
        """Scroll so that ``part`` (one of the parts) starts at the top, as far as the
        scroll bar goes."""
        self.widget().layout().activate()  # its size decides how far it scrolls
        bar = self.verticalScrollBar()
        bar.setValue(min(part.y(), bar.maximum()))
