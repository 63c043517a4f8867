"""The dock's DICOMweb actions against a real Orthanc: the dialog lists the server's slides,
the chosen one opens as a slide layer, the result is stored back in the slide's study."""

from __future__ import annotations

import pytest

from _orthanc import Orthanc, dicomize, need_orthanc, stow_files
from _plugin_helpers import FAST_ENCODER, make_bundle, need
from napari_ghanet.io.dicomweb import DicomWebClient, list_slides, parse_url, value
from napari_ghanet.io.slide import cmu_slide_path

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module", autouse=True)
def _orthanc_installed():
    need_orthanc()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need("wsidicomizer")
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as srv:
        url = stow_files(srv, dicomize(cmu_slide_path(), tmp_path_factory.mktemp("cmu")))
        yield srv, url


def test_list_slides_names_patient_study_and_series(server):
    srv, url = server
    rows = list_slides(srv.dicomweb)
    assert [r["url"] for r in rows] == [url]
    assert list_slides(srv.dicomweb, {"PatientID": "nobody-here"}) == []


def test_the_dialog_lists_and_the_panel_opens_and_stores(server, qtbot, make_napari_viewer,
                                                         tmp_path):
    need("highdicom")
    from napari_ghanet._qt.dicomweb import DicomWebDialog, DicomWebPanel
    from napari_ghanet.inference.predict import predict_slide

    srv, url = server
    dialog = DicomWebDialog(root=srv.dicomweb)
    qtbot.addWidget(dialog)
    dialog.search()
    assert dialog.table.rowCount() == 1 and "1 slide-microscopy series" in dialog.status.text()
    dialog.table.selectRow(0)
    assert dialog.selected_urls() == [url]
    dialog.root_edit.setText("http://127.0.0.1:9/dicom-web")  # nothing listens there
    dialog.search()
    assert dialog.table.rowCount() == 0 and "127.0.0.1:9" in dialog.status.text()

    viewer = make_napari_viewer()
    prediction = {}
    panel = DicomWebPanel(viewer, lambda: prediction.get("p"))
    qtbot.addWidget(panel)
    panel.open_urls([url])
    assert viewer.layers[-1].metadata["backend"] == "dicomweb"
    assert viewer.layers[-1].metadata["path"] == url

    panel.store()  # nothing predicted yet
    assert "needs a prediction" in panel.status.text()
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    prediction["p"] = predict_slide(url, bundle, device="cpu", cache_dir=tmp_path / "c")
    panel.store()
    qtbot.waitUntil(lambda: panel.stow_button.isEnabled(), timeout=60000)
    assert "stored 4 DICOM objects" in panel.status.text(), panel.status.text()
    ref = parse_url(url)
    series = DicomWebClient(srv.dicomweb).search_series(ref.study)
    assert sorted(str(value(s, "00080060")) for s in series) == ["ANN", "OT", "SEG", "SM", "SR"]
