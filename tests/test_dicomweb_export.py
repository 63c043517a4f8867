"""Results back as DICOM: ``ghanet predict SERIES_URL --stow`` against a real Orthanc, the
objects read back with QIDO-RS / WADO-RS and highdicom, every number checked against the
JSON report; the server stopped: one line, no traceback, no output files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from _orthanc import Orthanc, dicomize, need_orthanc, stow_files
from _plugin_helpers import FAST_ENCODER, make_bundle, need, run_predict_cli
from napari_ghanet.inference.dicom_export import grid_image
from napari_ghanet.io.dicomweb import DicomWebClient, parse_url, value
from napari_ghanet.io.slide import cmu_slide_path, open_slide


@pytest.fixture(scope="module", autouse=True)
def _orthanc_installed():
    need_orthanc()


run_cli = run_predict_cli


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need("highdicom")
    need("wsidicomizer")
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as srv:
        yield srv


@pytest.fixture(scope="module")
def cmu_url(server, tmp_path_factory):
    return stow_files(server, dicomize(cmu_slide_path(), tmp_path_factory.mktemp("cmu")))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


@pytest.fixture(scope="module")
def stored(server, cmu_url, bundle, tmp_path_factory):
    """One ``--stow`` run: its exit code, report, stdout and the objects read back."""
    import pydicom

    tmp = tmp_path_factory.mktemp("run")
    out, dcm = tmp / "out", tmp / "dcm"
    import contextlib
    import sys

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = run_cli([cmu_url, "--model", str(bundle), "--out", str(out), "--device", "cpu",
                        "--top-k", "5", "--cache-dir", str(tmp / "c"), "--stow",
                        "--dicom-out", str(dcm), "--quiet"])
    print(buf_err.getvalue(), file=sys.stderr)
    ref = parse_url(cmu_url)
    client = DicomWebClient(server.dicomweb)
    objects = {}
    for row in client.search_series(ref.study):
        series = value(row, "0020000E")
        if series == ref.series:
            continue
        for inst in client.search_instances(ref.study, series):
            data = client.instance(ref.study, series, value(inst, "00080018"))
            ds = pydicom.dcmread(io.BytesIO(data))
            objects[ds.Modality] = ds
    report = json.loads(next(out.glob("*.ghanet.json")).read_text())
    return code, report, objects, dcm, buf_out.getvalue()


def test_stow_stores_sr_map_annotations_and_segmentation_in_the_slides_study(stored, cmu_url):
    code, report, objects, dcm, stdout = stored
    assert code == 0
    assert sorted(objects) == ["ANN", "OT", "SEG", "SR"]  # OT: the Parametric Map
    ref = parse_url(cmu_url)
    series = {ds.SeriesInstanceUID for ds in objects.values()}
    assert len(series) == len(objects) and ref.series not in series  # new series each
    for ds in objects.values():
        assert ds.StudyInstanceUID == ref.study
        assert "research use only" in ds.SeriesDescription
        assert report["model"]["name"] in ds.SeriesDescription
    # the same objects were written to --dicom-out
    assert len(list(dcm.glob("*.dcm"))) == len(objects)
    assert "stow" not in stdout or ref.study in stdout


def test_the_sr_holds_every_number_of_the_report(stored):
    import highdicom as hd

    _, report, objects, _, _ = stored
    sr = hd.sr.ComprehensiveSR.from_dataset(objects["SR"])
    nums, texts = {}, {}

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning
            if it.ValueType == "NUM":
                nums[name] = float(it.MeasuredValueSequence[0].NumericValue)
            elif it.ValueType == "TEXT":
                texts[name] = it.TextValue
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(sr.ContentSequence)
    p = report["prediction"]
    assert nums["Risk score"] == pytest.approx(p["risk"], abs=1e-6)
    assert nums["Percentile in training cohort"] == pytest.approx(
        p["percentile_in_training_cohort"], abs=1e-6)
    assert texts["Risk group"] == p["risk_group"]
    edges = p["survival_bins_months"]
    for k, s in enumerate(p["survival"]):
        edge = edges[k + 1]
        key = (f"Survival probability at {float(edge):g} months" if edge is not None
               else "Survival probability at the end of the last bin")
        assert nums[key] == pytest.approx(s, abs=1e-6)
    assert nums["Patches scored"] == report["patches"]["count"]
    assert nums["Patches flagged by QC (total)"] == report["qc"]["flagged"]["total"]
    assert "research use only" in texts["Intended use"]
    assert len(texts["Model bundle SHA-256"]) == 64
    assert texts["Model name"] == report["model"]["name"]
    assert texts["Training-distribution verdict"] == report["distribution"]["verdict"]
    # the evidence: the slide's level-0 instance
    refd = objects["SR"].CurrentRequestedProcedureEvidenceSequence[0]
    assert refd.ReferencedSeriesSequence[0].SeriesInstanceUID == report["slide"]["path"].rsplit(
        "/", 1)[1]


def test_the_attention_map_is_the_patch_grid_in_the_slides_frame(stored, cmu_url):
    _, report, objects, _, _ = stored
    pm = next(ds for m, ds in objects.items() if m not in ("SR", "SEG", "ANN"))
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    import highdicom as hd

    hd.pm.ParametricMap.from_dataset(pm)  # highdicom reads it back
    step = report["patches"]["step_level0"]
    mpp = report["slide"]["mpp"]
    spacing = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert float(spacing[0]) == pytest.approx(step * mpp / 1000.0)
    frames = np.frombuffer(pm.FloatPixelData, np.float32).reshape(
        int(pm.NumberOfFrames), pm.Rows, pm.Columns)  # one frame per channel
    assert len(frames) == 1 + len(report["pathways"])
    top = report["top_regions"]
    assert top
    coords = np.array([[r["x"], r["y"]] for r in top])
    _, origin = grid_image(coords, step, np.zeros(len(top)))
    for r in top:
        i, j = (r["y"] - origin[1]) // step, (r["x"] - origin[0]) // step
        assert frames[0, i, j] == pytest.approx(r["morphology_attention"], rel=1e-6)
    # the map's origin is the grid's origin in the slide's frame of reference
    with open_slide(cmu_url) as slide:
        meta = slide._backend._level0_dataset()
    assert pm.FrameOfReferenceUID == value(meta, "00200052")
    import highdicom as hd

    src_origin = value(meta, "00480008")  # TotalPixelMatrixOriginSequence
    src_spacing = [float(v) for v in value(value(meta, "52009229"), "00289110")["00280030"][
        "Value"]]
    to_slide = hd.spatial.PixelToReferenceTransformer(
        image_position=(float(value(src_origin, "0040072A")),
                        float(value(src_origin, "0040073A")), 0.0),
        image_orientation=[float(v) for v in meta["00480102"]["Value"]],
        pixel_spacing=src_spacing)
    # the centre of the map's first pixel: level-0 pixel origin + (step - 1) / 2
    p00, p10, p01 = to_slide(np.array([[0, 0], [1, 0], [0, 1]]))
    cx, cy = origin[0] + (step - 1) / 2, origin[1] + (step - 1) / 2
    expected = p00 + cx * (p10 - p00) + cy * (p01 - p00)
    pos = pm.get("PerFrameFunctionalGroupsSequence", pm.get(
        "SharedFunctionalGroupsSequence"))[0].PlanePositionSlideSequence[0]
    assert float(pos.XOffsetInSlideCoordinateSystem) == pytest.approx(expected[0], abs=1e-6)
    assert float(pos.YOffsetInSlideCoordinateSystem) == pytest.approx(expected[1], abs=1e-6)
    assert [float(v) for v in pm.ImageOrientationSlide] == [
        float(v) for v in meta["00480102"]["Value"]]


def test_the_top_regions_are_bulk_annotations_with_their_measurements(stored):
    import highdicom as hd

    _, report, objects, _, _ = stored
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(objects["ANN"])
    group = ann.get_annotation_groups()[0]
    graphics = group.get_graphic_data(coordinate_type="2D")
    top = report["top_regions"]
    assert len(graphics) == len(top)
    for g, r in zip(graphics, top):
        assert g[0].tolist() == [r["x"], r["y"]]
        assert g[2].tolist() == [r["x"] + r["width"], r["y"] + r["height"]]
    names, values_, _ = group.get_measurements()
    by_name = {n.meaning: values_[:, k] for k, n in enumerate(names)}
    np.testing.assert_allclose(by_name["Morphology attention"],
                               [r["morphology_attention"] for r in top], rtol=1e-6)
    cats = [c["category"] for c in report["pathways"]]
    assert [cats[int(v) - 1] for v in by_name["Strongest category index"]] == [
        r["strongest_category"] for r in top]


def test_the_tissue_segmentation_reads_back(stored):
    import highdicom as hd

    _, report, objects, _, _ = stored
    seg = hd.seg.Segmentation.from_dataset(objects["SEG"])
    assert seg.SegmentSequence[0].SegmentLabel == "tissue"
    mask = seg.get_total_pixel_matrix(segment_numbers=[1])
    fraction = float(np.asarray(mask, bool).mean())
    assert fraction == pytest.approx(report["tissue"]["fraction"], abs=0.02)


def test_with_the_server_stopped_one_line_and_no_output(tmp_path, bundle, capsys):
    srv = Orthanc(tmp_path / "o").start()
    url = f"{srv.dicomweb}/studies/1.2.3/series/1.2.3.4"
    srv.stop()
    out = tmp_path / "out"
    code = run_cli([url, "--model", str(bundle), "--out", str(out), "--device", "cpu",
                    "--stow", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert f"127.0.0.1:{srv.port}" in lines[0] and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_stow_url_stores_a_local_dicom_slides_result_on_another_server(
        tmp_path, bundle, cmu_url, capsys):
    import pydicom

    files = dicomize(cmu_slide_path(), tmp_path / "local")
    with Orthanc(tmp_path / "other") as other:
        code = run_cli([str(files[0]), "--model", str(bundle), "--out", str(tmp_path / "o"),
                        "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "c"),
                        "--stow", other.dicomweb])
        assert code == 0, capsys.readouterr().err
        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        rows = DicomWebClient(other.dicomweb).search_series(study)
        assert sorted(str(value(r, "00080060")) for r in rows) == ["ANN", "OT", "SEG", "SR"]
    # a file slide without a server to store on is a usage error before any work
    code = run_cli([str(files[0]), "--model", str(bundle), "--out", str(tmp_path / "o2"),
                    "--device", "cpu", "--quiet", "--stow"])
    assert code == 2 and "give the server, --stow URL" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_the_dicom_export_kind_writes_the_validated_objects(cmu_url, bundle, tmp_path):
    import highdicom as hd
    import pydicom

    from napari_ghanet.inference.export_registry import export_all
    from napari_ghanet.inference.predict import predict_slide

    pred = predict_slide(cmu_url, bundle, device="cpu", cache_dir=tmp_path / "c")
    written = export_all(pred, tmp_path / "out", ["dicom"])
    folder = written["dicom"]
    series = parse_url(cmu_url).series
    assert folder == tmp_path / "out" / f"{series}.dicom"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{series}.{k}.dcm" for k in ("attention", "report", "tissue_qc",
                                                    "top_regions")]
    sr = hd.sr.srread(folder / f"{series}.report.dcm")
    assert sr.StudyInstanceUID == parse_url(cmu_url).study
    assert pydicom.dcmread(folder / f"{series}.attention.dcm").Modality == "OT"
