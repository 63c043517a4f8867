"""The dock's DICOMweb actions: open a slide from a DICOMweb server, store a result there.

:class:`DicomWebPanel` holds two buttons: *Open from DICOMweb server...* shows a
:class:`DicomWebDialog` that lists a server's slide-microscopy series by patient, study
and series description (QIDO-RS, :func:`~napari_ghanet.io.dicomweb.list_slides`) and
opens the chosen ones as slide layers (the napari reader of a series URL); *Store result
on DICOMweb server* stores the current prediction as DICOM objects (SR, Parametric Map,
bulk annotations, Segmentation: :mod:`napari_ghanet.inference.dicom_export`) on the
server the slide came from, all or none, in a background thread. Writing them to a folder
is the export panel's *DICOM results* button (the ``dicom`` export kind). Credentials come
from ``GHANET_DICOMWEB_TOKEN`` / ``GHANET_DICOMWEB_TOKEN_FILE`` as on the command line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_ghanet.errors import GHANetError
from napari_ghanet.io.dicomweb import is_dicomweb_url, list_slides, parse_url

__all__ = ["DicomWebDialog", "DicomWebPanel"]

COLUMNS = ("patient", "study", "series")


class DicomWebDialog(QDialog):
    """List a DICOMweb server's slides and pick some (``selected_urls``)."""

    def __init__(self, parent: QWidget | None = None, root: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Open from DICOMweb server")
        self.rows: list[dict[str, str]] = []
        layout = QVBoxLayout(self)
        line = QHBoxLayout()
        self.root_edit = QLineEdit(root)
        self.root_edit.setPlaceholderText("https://host/dicom-web (the server's DICOMweb root)")
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        line.addWidget(self.root_edit, 1)
        line.addWidget(self.search_button)
        layout.addLayout(line)
        self.patient_edit = QLineEdit()
        self.patient_edit.setPlaceholderText("PatientID (optional, * wildcards)")
        layout.addWidget(self.patient_edit)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c.capitalize() for c in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        layout.addWidget(self.table, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def search(self) -> None:
        """Fill the table from the server (one line in ``status`` on failure)."""
        params = {"PatientID": self.patient_edit.text().strip()} if \
            self.patient_edit.text().strip() else None
        try:
            self.rows = list_slides(self.root_edit.text().strip(), params)
        except GHANetError as e:
            self.rows = []
            self.status.setText(str(e))
        else:
            self.status.setText(f"{len(self.rows)} slide-microscopy series")
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            for j, col in enumerate(COLUMNS):
                item = QTableWidgetItem(row[col])
                item.setToolTip(row["url"])
                self.table.setItem(i, j, item)

    def selected_urls(self) -> list[str]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [self.rows[r]["url"] for r in rows if r < len(self.rows)]


class DicomWebPanel(QGroupBox):
    """Open slides from a DICOMweb server; store the prediction back on it."""

    stored = Signal(str)  # a line for the status (from the storing thread)

    def __init__(self, viewer, get_prediction: Callable, parent: QWidget | None = None):
        super().__init__("DICOMweb archive", parent)
        self.viewer = viewer
        self.get_prediction = get_prediction
        layout = QVBoxLayout(self)
        self.open_button = QPushButton("Open from DICOMweb server...")
        self.open_button.clicked.connect(self.choose)
        self.stow_button = QPushButton("Store result on DICOMweb server")
        self.stow_button.setToolTip("Store the result as DICOM (SR, attention map, top "
                                    "regions, tissue/QC mask) in the slide's study, on the "
                                    "server the slide came from; research use only")
        self.stow_button.clicked.connect(self.store)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        for w in (self.open_button, self.stow_button, self.status):
            layout.addWidget(w)
        self.stored.connect(self._on_stored)
        self.thread: threading.Thread | None = None

    def choose(self) -> list[str]:
        dialog = DicomWebDialog(self)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return []
        urls = dialog.selected_urls()
        self.open_urls(urls)
        return urls

    def open_urls(self, urls: list[str]) -> None:
        for url in urls:
            self.viewer.open(url, plugin="napari-ghanet")

    def store(self) -> None:
        """Store the current prediction on its slide's server, in the background."""
        prediction = self.get_prediction()
        path = str((prediction.slide or {}).get("path", "")) if prediction is not None else ""
        if prediction is None or not is_dicomweb_url(path):
            self.status.setText("Store needs a prediction of a slide opened from a "
                                "DICOMweb server")
            return
        self.stow_button.setEnabled(False)
        self.status.setText("storing...")
        self.thread = threading.Thread(target=self._store, args=(prediction, path),
                                       daemon=True)
        self.thread.start()

    def _store(self, prediction, path: str) -> None:
        from napari_ghanet.inference.dicom_export import dicom_results, store_dicom

        try:
            results = dicom_results(prediction)
            store_dicom(results, parse_url(path).root)
        except GHANetError as e:
            self.stored.emit(str(e))
        except Exception as e:  # noqa: BLE001 - shown, never raised in the thread
            self.stored.emit(f"storing failed: {type(e).__name__}: {e}")
        else:
            self.stored.emit(f"stored {len(results)} DICOM objects in the slide's study "
                             f"on {parse_url(path).server}")

    def _on_stored(self, text: str) -> None:
        self.status.setText(text)
        self.stow_button.setEnabled(True)
