"""DICOMweb slides in cohorts: series URLs, a study URL (like a folder), a server query and
manifest rows; summary.csv lists the URLs, outputs are named by the series UID, a
``--cluster local:2`` run reads its frames in the workers and gives the same risks."""

from __future__ import annotations

import csv
import json

import pytest

from _orthanc import Orthanc, dicomize, need_orthanc, stow_files
from _plugin_helpers import FAST_ENCODER, make_bundle, need, run_predict_cli
from conftest import he_image, write_pyramid
from napari_ghanet.cohort.inputs import resolve_inputs
from napari_ghanet.io.dicomweb import expand_url, parse_url
from napari_ghanet.io.slide import cmu_slide_path


@pytest.fixture(scope="module", autouse=True)
def _orthanc_installed():
    need_orthanc()


run_cli = run_predict_cli


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need("wsidicomizer")
    d = tmp_path_factory.mktemp("slides")
    rgb, _ = he_image(1024, 1536, seed=9)
    tif = write_pyramid(d / "gen.tif", rgb, levels=2, tile=256)
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as srv:
        cmu = stow_files(srv, dicomize(cmu_slide_path(), d / "cmu"))
        gen = stow_files(srv, dicomize(tif, d / "gen", tile_size=256))
        yield srv, cmu, gen


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


def test_a_study_url_and_a_query_expand_to_their_series(server):
    srv, cmu, gen = server
    study = parse_url(cmu).study
    assert expand_url(f"{srv.dicomweb}/studies/{study}") == [cmu]
    assert sorted(expand_url(srv.dicomweb, "ModalitiesInStudy=SM")) == sorted([cmu, gen])
    items = resolve_inputs([f"{srv.dicomweb}/studies/{study}", gen], notify=lambda s: None)
    assert [i.path for i in items] == [cmu, gen]
    assert [i.stem for i in items] == [parse_url(cmu).series, parse_url(gen).series]


def test_manifest_rows_take_urls(server, tmp_path):
    srv, cmu, gen = server
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,case_id\n{cmu},P1\n{gen},P1\n")
    items = resolve_inputs([], manifest, notify=lambda s: None)
    assert [(i.path, i.case_id) for i in items] == [(cmu, "P1"), (gen, "P1")]


def _risks(out):
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    risks = {}
    for r in rows:
        stem = r["slide"].rsplit("/", 1)[1]
        report = json.loads(next((out / stem).glob("*.ghanet.json")).read_text())
        risks[r["slide"]] = report["prediction"]["risk"]
    return rows, risks


def test_a_cohort_of_urls_in_process_and_on_a_local_cluster(server, bundle, tmp_path):
    srv, cmu, gen = server
    common = ["--model", str(bundle), "--device", "cpu", "--quiet",
              "--cache-dir", str(tmp_path / "c")]
    assert run_cli([cmu, gen, "--out", str(tmp_path / "a"), *common]) == 0
    rows, risks = _risks(tmp_path / "a")
    assert sorted(r["slide"] for r in rows) == sorted([cmu, gen])
    assert all(r["status"] == "done" for r in rows)
    # resume: a second run keeps both (keyed on the series UID)
    assert run_cli([cmu, gen, "--out", str(tmp_path / "a"), *common]) == 0
    again, _ = _risks(tmp_path / "a")
    assert all(r["status"] == "skipped" for r in again)
    # the query form on a local Dask cluster: each worker reads its own frames
    assert run_cli([srv.dicomweb, "--dicomweb-query", "ModalitiesInStudy=SM",
                    "--out", str(tmp_path / "b"), "--cluster", "local:2",
                    "--model", str(bundle), "--device", "cpu", "--quiet",
                    "--cache-dir", str(tmp_path / "c2")]) == 0
    _, cluster_risks = _risks(tmp_path / "b")
    assert cluster_risks.keys() == risks.keys()
    for k in risks:
        assert cluster_risks[k] == pytest.approx(risks[k], abs=1e-6)


def test_a_study_url_is_a_patient_bag(server, bundle, tmp_path):
    srv, cmu, _ = server
    study = parse_url(cmu).study
    out = tmp_path / "p"
    assert run_cli([f"{srv.dicomweb}/studies/{study}", "--patient", "P1", "--model",
                    str(bundle), "--device", "cpu", "--quiet", "--out", str(out),
                    "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads((out / "P1.ghanet.json").read_text())
    assert report["prediction"]["risk"] == report["prediction"]["risk"]  # finite


def test_ghanet_embed_reads_a_study_url(server, tmp_path):
    from napari_ghanet.cli import main

    srv, cmu, _ = server
    study = parse_url(cmu).study
    out = tmp_path / "feat"
    assert main(["embed", f"{srv.dicomweb}/studies/{study}", "--out", str(out),
                 "--encoder", "morphometric", "--patch-px", "64", "--target-mpp", "2",
                 "--quiet"]) == 0
    assert (out / f"{parse_url(cmu).series}.h5").is_file()
    with open(out / "summary.csv", newline="") as fh:
        assert [r["slide"] for r in csv.DictReader(fh)] == [cmu]


def test_a_cohort_keeps_going_past_a_failed_series(server, bundle, tmp_path):
    srv, cmu, _ = server
    missing = cmu.rsplit("/", 1)[0] + "/1.2.3.404"
    out = tmp_path / "f"
    code = run_cli([cmu, missing, "--out", str(out), "--model", str(bundle), "--device", "cpu",
                    "--quiet", "--cache-dir", str(tmp_path / "c")])
    assert code == 1
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh)}
    assert rows[cmu]["status"] == "done"
    assert rows[missing]["status"] == "failed"
    assert "HTTP 404" in rows[missing]["error"] and "1.2.3.404" in rows[missing]["error"]
