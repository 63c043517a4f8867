"""The "same patient" list of the dock: the other slide layers, ticked to be predicted as
one bag with the selected slide."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem

__all__ = ["PatientList"]


class PatientList:
    """A label and a checkable list of slide layers (hidden when there is no other slide).

    Attributes
    ----------
    label : QLabel
    list : QListWidget
    """

    def __init__(self) -> None:
        self.label = QLabel("Same patient (predicted as one bag with the slide above):")
        self.label.setWordWrap(True)
        self.list = QListWidget()
        self.list.setToolTip(
            "Tick the other slides of this patient: their patches form one bag, as in "
            "training; attention layers appear on every slide")
        self.list.setMaximumHeight(90)

    def ticked(self, first) -> list:
        """The ticked slide layers other than ``first``, in list order."""
        out = []
        for i in range(self.list.count()):
            item = self.list.item(i)
            layer = item.data(Qt.ItemDataRole.UserRole)
            if item.checkState() == Qt.CheckState.Checked and layer != first:
                out.append(layer)
        return out

    def set_ticked(self, layers) -> None:
        """Tick ``layers`` (other slide layers), untick the rest."""
        wanted = list(layers)
        for i in range(self.list.count()):
            item = self.list.item(i)
            on = item.data(Qt.ItemDataRole.UserRole) in wanted
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def refresh(self, layers: list, first, ticked: list) -> None:
        """List ``layers`` but ``first``, ``ticked`` ones ticked; hidden when empty."""
        self.list.clear()
        for layer in layers:
            if layer == first:
                continue
            item = QListWidgetItem(layer.name)
            item.setData(Qt.ItemDataRole.UserRole, layer)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if layer in ticked
                               else Qt.CheckState.Unchecked)
            self.list.addItem(item)
        several = self.list.count() > 0
        self.label.setVisible(several)
        self.list.setVisible(several)
