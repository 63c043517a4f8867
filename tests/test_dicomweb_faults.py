"""DICOMweb credentials and faults: basic credentials against a real Orthanc that wants them
(never printed, logged or written), 401/404 as one line, and (through a fault-injecting
proxy in front of the real server) 503 storms, truncated multipart bodies, slow answers and
a store that fails after the server kept the objects."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import logging

import numpy as np
import pytest

from _orthanc import FaultProxy, Orthanc, dicomize, need_orthanc, stow_files
from _plugin_helpers import FAST_ENCODER, make_bundle, need
from napari_ghanet.cli import predict as _cli_predict
from napari_ghanet.io.backends.dicomweb import DicomWebBackend, SlideURL
from napari_ghanet.io.dicomweb import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    DicomWebClient,
    DicomWebError,
    credentials_from_env,
    parse_url,
)
from napari_ghanet.io.slide import cmu_slide_path, open_slide


@pytest.fixture(scope="module", autouse=True)
def _orthanc_installed():
    need_orthanc()

USER, SECRET = "ghanet-reader", "s3cret-Pa55-do-not-print"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ghanet")
    sub = parser.add_subparsers(dest="command", required=True)
    _cli_predict.add_parser(sub)
    args = parser.parse_args(["predict", *argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cmu_files(tmp_path_factory):
    need("wsidicomizer")
    return dicomize(cmu_slide_path(), tmp_path_factory.mktemp("cmu"))


@pytest.fixture(scope="module")
def locked(tmp_path_factory, cmu_files):
    """An Orthanc that wants basic credentials, holding the CMU slide."""
    with Orthanc(tmp_path_factory.mktemp("locked"), user=USER, password=SECRET) as srv:
        yield srv, stow_files(srv, cmu_files)


@pytest.fixture(scope="module")
def server(tmp_path_factory, cmu_files):
    with Orthanc(tmp_path_factory.mktemp("open")) as srv:
        yield srv, stow_files(srv, cmu_files)


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch):
    # set then deleted: monkeypatch restores the variables (absent) after the test, also
    # when the command under test set them (--dicomweb-token-file does, for its workers)
    for name in (TOKEN_ENV, TOKEN_FILE_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_without_credentials_a_locked_server_is_one_line_naming_the_flag(locked):
    srv, url = locked
    with pytest.raises(DicomWebError) as e:
        open_slide(url)
    msg = str(e.value)
    assert "\n" not in msg and "HTTP 401" in msg and "--dicomweb-token-file" in msg
    assert f"127.0.0.1:{srv.port}" in msg


def test_a_wrong_token_is_refused_and_not_repeated(locked, monkeypatch):
    srv, url = locked
    monkeypatch.setenv(TOKEN_ENV, "not-the-token-1234")
    with pytest.raises(DicomWebError, match="HTTP 401") as e:
        open_slide(url)
    assert "not-the-token-1234" not in str(e.value)


def test_basic_credentials_from_a_token_file_never_reach_outputs_or_logs(
        locked, tmp_path, caplog):
    srv, url = locked
    secret_file = tmp_path / "token"
    secret_file.write_text(f"basic {USER}:{SECRET}\n")
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    out, dcm = tmp_path / "out", tmp_path / "dcm"
    caplog.set_level(logging.DEBUG)
    code, stdout, stderr = run_cli([
        url, "--model", str(bundle), "--out", str(out), "--device", "cpu",
        "--cache-dir", str(tmp_path / "c"), "--dicomweb-token-file", str(secret_file),
        "--dicom-out", str(dcm), "--stow"])
    assert code == 0, stderr
    encoded = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    texts = [stdout, stderr, caplog.text, srv.log_tail(10**7)]
    texts += [p.read_bytes().decode("latin-1") for p in list(out.rglob("*")) +
              list(dcm.rglob("*")) if p.is_file()]
    for text in texts:
        assert SECRET not in text and encoded not in text
    assert len(list(dcm.glob("*.dcm"))) == 4
    # and the client's repr does not show the header
    assert SECRET not in repr(DicomWebClient(srv.dicomweb)) + repr(credentials_from_env())


def test_a_missing_series_is_404_naming_server_and_series(server):
    srv, url = server
    study = parse_url(url).study
    with pytest.raises(DicomWebError, match=r"127\.0\.0\.1:\d+: metadata of series 1\.2\.9: "
                                            r"HTTP 404"):
        open_slide(f"{srv.dicomweb}/studies/{study}/series/1.2.9")


def _backend(url: str, root: str, **kw) -> DicomWebBackend:
    client = DicomWebClient(root, backoff=0.01, **kw)
    ref = parse_url(url)
    return DicomWebBackend(SlideURL.from_url(f"{root}/studies/{ref.study}/series/{ref.series}"),
                           client=client, readahead=0)


def test_a_503_storm_is_retried_then_reads_the_same_pixels(server):
    srv, url = server

    def fault(method, path, n):  # every other request is refused as busy
        return ("status", 503) if n % 2 == 1 else None

    with FaultProxy(srv.url, fault) as proxy:
        b = _backend(url, proxy.url + "/dicom-web")
        got = b.read(0, 100, 100, 500, 400)
    with open_slide(url) as direct:
        np.testing.assert_array_equal(got, direct.read_region((100, 100), 0, (500, 400)))
    assert b.client.requests >= 2 * 2  # metadata and frames each tried twice


def test_a_503_that_does_not_end_is_one_line_after_bounded_tries(server):
    srv, url = server
    with FaultProxy(srv.url, lambda m, p, n: ("status", 503)) as proxy:
        client = DicomWebClient(proxy.url + "/dicom-web", backoff=0.01, retries=3)
        ref = parse_url(url)
        with pytest.raises(DicomWebError) as e:
            client.series_metadata(ref.study, ref.series)
    assert "failed after 4 tries: HTTP 503" in str(e.value)
    assert ref.series in str(e.value) and "\n" not in str(e.value)
    assert proxy.count == 4


def test_a_truncated_multipart_body_is_fetched_again(server):
    srv, url = server

    def fault(method, path, n):
        return ("truncate",) if "/frames/" in path and n == 2 else None

    with FaultProxy(srv.url, fault) as proxy:
        b = _backend(url, proxy.url + "/dicom-web")
        got = b.read(0, 0, 0, 480, 480)
    with open_slide(url) as direct:
        np.testing.assert_array_equal(got, direct.read_region((0, 0), 0, (480, 480)))


def test_always_truncated_frames_fail_with_one_line(server):
    srv, url = server
    def fault(m, p, n):
        return (("truncate",) if "/frames/" in p else None)
    with FaultProxy(srv.url, fault) as proxy:
        b = _backend(url, proxy.url + "/dicom-web", retries=2)
        with pytest.raises(DicomWebError, match="failed after 3 tries: the answer was cut short"):
            b.read(0, 0, 0, 240, 240)


def test_a_slow_server_times_out_with_bounded_retries(server):
    srv, url = server
    def fault(m, p, n):
        return (("delay", 1.0) if "/frames/" in p else None)
    with FaultProxy(srv.url, fault) as proxy:
        b = _backend(url, proxy.url + "/dicom-web", retries=1, timeout=(2.0, 0.3))
        with pytest.raises(DicomWebError, match="failed after 2 tries: no answer within 0.3 s"):
            b.read(0, 0, 0, 240, 240)


def test_connection_refused_is_one_line_naming_the_server(tmp_path):
    srv = Orthanc(tmp_path / "o")  # never started: nothing listens on its port
    client = DicomWebClient(srv.dicomweb, retries=1, backoff=0.01)
    with pytest.raises(DicomWebError, match=rf"127\.0\.0\.1:{srv.port}: .*connection refused"):
        client.series_metadata("1.2", "1.2.3")


def test_a_store_that_fails_after_the_server_kept_the_objects_lists_them(server, tmp_path):
    from napari_ghanet.inference.dicom_export import dicom_results, store_dicom
    from napari_ghanet.inference.predict import predict_slide

    srv, url = server
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    pred = predict_slide(url, bundle, device="cpu", cache_dir=tmp_path / "c")
    results = dicom_results(pred)
    def fault(m, p, n):
        return (("after", 500) if m == "POST" else None)
    with FaultProxy(srv.url, fault) as proxy:
        client = DicomWebClient(proxy.url + "/dicom-web", retries=0)
        with pytest.raises(DicomWebError) as e:
            store_dicom(results, proxy.url + "/dicom-web", client=client)
    msg = str(e.value)
    # Orthanc's DICOMweb plugin does not delete: the message lists what is there
    assert "does not allow deleting" in msg
    for _, ds, _ in results:
        assert ds.SOPInstanceUID in msg


def test_a_failed_store_is_deleted_where_the_server_allows_it(server, tmp_path):
    """A server with DICOMweb DELETE (Orthanc's REST API behind the proxy): the objects the
    server kept although the store was reported failed are deleted: none is left."""
    from _orthanc import orthanc_delete_series
    from napari_ghanet.inference.dicom_export import dicom_results, store_dicom
    from napari_ghanet.inference.predict import predict_slide

    srv, url = server
    bundle = make_bundle(tmp_path / "m.safetensors", encoder=FAST_ENCODER)
    results = dicom_results(predict_slide(url, bundle, device="cpu",
                                          cache_dir=tmp_path / "c"))
    deleted = []

    def delete(method, path):
        series = path.rstrip("/").rsplit("/", 1)[1]
        deleted.append(series)
        return orthanc_delete_series(srv, series), b""

    def fault(method, path, n):
        if method == "POST":
            return ("after", 500)
        return ("call", delete) if method == "DELETE" else None

    with FaultProxy(srv.url, fault) as proxy:
        client = DicomWebClient(proxy.url + "/dicom-web", retries=0)
        with pytest.raises(DicomWebError, match="nothing of them is left on the server"):
            store_dicom(results, proxy.url + "/dicom-web", client=client)
    assert sorted(deleted) == sorted(str(ds.SeriesInstanceUID) for _, ds, _ in results)
    study = parse_url(url).study
    left = {str(r["0020000E"]["Value"][0])
            for r in DicomWebClient(srv.dicomweb).search_series(study)}
    assert parse_url(url).series in left  # the slide is untouched
    assert not left & {str(ds.SeriesInstanceUID) for _, ds, _ in results}


def test_embed_reads_a_locked_server_with_a_token_file_and_never_prints_it(
        locked, tmp_path, caplog):
    from napari_ghanet.cli import embed as _cli_embed
    from napari_ghanet.io.features import load_features

    srv, url = locked
    secret_file = tmp_path / "token"
    secret_file.write_text(f"basic {USER}:{SECRET}\n")
    parser = argparse.ArgumentParser(prog="ghanet")
    _cli_embed.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "embed", url, "--out", str(tmp_path / "out"), "--encoder", "morphometric",
        "--patch-px", "64", "--target-mpp", "2.0", "--workers", "0",
        "--dicomweb-token-file", str(secret_file)])
    assert args.dicomweb_token_file == secret_file
    caplog.set_level(logging.DEBUG)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    assert code == 0, err.getvalue()
    h5 = list((tmp_path / "out").glob("*.h5"))
    assert len(h5) == 1 and load_features(h5[0]).features.shape[0] > 0
    encoded = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    texts = [out.getvalue(), err.getvalue(), caplog.text, srv.log_tail(10**7)]
    texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "out").rglob("*")
              if p.is_file()]
    for text in texts:
        assert SECRET not in text and encoded not in text
