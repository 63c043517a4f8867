"""Slides read from a real DICOMweb server (Orthanc on loopback): the same pixels, patch
grid and risk as the same DICOM files read locally, and (the CMU slide) as the SVS itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _orthanc import Orthanc, dicomize, need_orthanc, stow_files
from _plugin_helpers import FAST_ENCODER, make_bundle, need
from conftest import he_image, write_pyramid
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.backends.dicomweb import SlideURL
from napari_ghanet.io.dicomweb import DicomWebClient, DicomWebError, parse_url
from napari_ghanet.io.slide import SlideError, cmu_slide_path, open_slide


@pytest.fixture(scope="module", autouse=True)
def _orthanc_installed():
    need_orthanc()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need("wsidicomizer")
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as srv:
        yield srv


@pytest.fixture(scope="module")
def cmu_dicom(tmp_path_factory):
    need("wsidicomizer")
    return dicomize(cmu_slide_path(), tmp_path_factory.mktemp("cmu-dcm"))


@pytest.fixture(scope="module")
def cmu_url(server, cmu_dicom):
    return stow_files(server, cmu_dicom)


@pytest.fixture(scope="module")
def pyramid_dicom(tmp_path_factory):
    need("wsidicomizer")
    d = tmp_path_factory.mktemp("pyr")
    rgb, _ = he_image(1024, 1536, seed=5)
    tif = write_pyramid(d / "gen.tif", rgb, levels=3, tile=256)
    return dicomize(tif, d / "dcm", tile_size=256)


@pytest.fixture(scope="module")
def pyramid_url(server, pyramid_dicom):
    return stow_files(server, pyramid_dicom)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


def test_the_cmu_slide_over_dicomweb_is_the_svs_pixel_for_pixel(cmu_url):
    with open_slide(cmu_url) as web, open_slide(cmu_slide_path()) as svs:
        assert web.backend == "dicomweb"
        assert str(web.path) == cmu_url and web.path.stem == parse_url(cmu_url).series
        assert web.dimensions == svs.dimensions == (2220, 2967)
        assert web.mpp == pytest.approx(svs.mpp) and web.mpp_source == "DICOM PixelSpacing"
        assert web.level_tile_sizes[0] == (240, 240)
        assert web.properties["dicom.icc_profile"] == "present"
        assert web.properties["dicom.series_instance_uid"] == parse_url(cmu_url).series
        for loc, size in [((0, 0), (2220, 2967)), ((1117, 503), (333, 257)), ((2100, 2900),
                                                                              (300, 300))]:
            np.testing.assert_array_equal(web.read_region(loc, 0, size),
                                          svs.read_region(loc, 0, size))
        # outside the slide is white, as for files
        assert (web.read_region((2200, 2960), 0, (64, 64))[20:, 40:] == 255).all()


def test_a_generated_pyramid_equals_its_dicom_files_read_locally(pyramid_url, pyramid_dicom):
    with open_slide(pyramid_url) as web, open_slide(pyramid_dicom[0]) as local:
        assert local.backend == "openslide"
        assert web.level_dimensions == local.level_dimensions == [(1536, 1024), (768, 512),
                                                                  (384, 256)]
        assert web.level_downsamples == pytest.approx(local.level_downsamples)
        assert web.mpp == pytest.approx(0.5)
        for level in range(3):
            w, h = web.level_dimensions[level]
            np.testing.assert_array_equal(web.read_region((0, 0), level, (w, h)),
                                          local.read_region((0, 0), level, (w, h)))
        np.testing.assert_array_equal(web.read_downsampled(3.0), local.read_downsampled(3.0))


def test_frames_are_fetched_in_batches_and_once(server, cmu_url):
    client = DicomWebClient(server.dicomweb)
    with open_slide(SlideURL.from_url(cmu_url)) as web:
        web._backend.client = client
        web.read_region((0, 0), 0, (2220, 2967))
        n_tiles = 10 * 13  # ceil(2220 / 240) x ceil(2967 / 240)
        assert web._backend.fetched == n_tiles
        assert client.requests <= n_tiles // 8  # many frames per request
        before = client.requests
        web.read_region((500, 500), 0, (256, 256))  # cached: nothing fetched again
        assert client.requests == before and web._backend.fetched == n_tiles


def test_prediction_from_the_server_equals_the_local_files_and_the_svs(
        cmu_url, cmu_dicom, bundle, tmp_path):
    web = predict_slide(cmu_url, bundle, device="cpu", cache_dir=tmp_path / "c1")
    local = predict_slide(cmu_dicom[0], bundle, device="cpu", cache_dir=tmp_path / "c2")
    svs = predict_slide(cmu_slide_path(), bundle, device="cpu", cache_dir=tmp_path / "c3")
    for other in (local, svs):
        np.testing.assert_array_equal(web.coords, other.coords)
        assert web.risk == pytest.approx(other.risk, abs=1e-6)
        np.testing.assert_allclose(web.morphology_attention, other.morphology_attention,
                                   atol=1e-6)
    report = json.loads(json.dumps(web.to_dict(), default=str))
    assert report["slide"]["path"] == cmu_url


def test_prediction_of_a_generated_pyramid_equals_its_local_dicom(
        pyramid_url, pyramid_dicom, bundle, tmp_path):
    web = predict_slide(pyramid_url, bundle, device="cpu", cache_dir=tmp_path / "c1")
    local = predict_slide(pyramid_dicom[0], bundle, device="cpu", cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(web.coords, local.coords)
    assert web.risk == pytest.approx(local.risk, abs=1e-6)


def test_bad_urls_are_one_line_errors(server, cmu_url):
    study = parse_url(cmu_url).study
    with pytest.raises(DicomWebError, match="HTTP 404"):
        open_slide(f"{server.dicomweb}/studies/{study}/series/1.2.3.999")
    with pytest.raises(DicomWebError, match="a study URL names several series"):
        open_slide(f"{server.dicomweb}/studies/{study}")
    with pytest.raises(DicomWebError, match="carries credentials"):
        open_slide(cmu_url.replace("http://", "http://user:secret@"))
    with pytest.raises(SlideError, match="not a DICOMweb study or series URL"):
        open_slide(f"{server.dicomweb}/nothing/here")


def test_slide_url_names_a_file_safe_output(cmu_url):
    p = SlideURL.from_url(cmu_url)
    assert str(p) == cmu_url
    assert Path(p).name == f"{parse_url(cmu_url).series}.dicomweb"
    assert "/" not in p.stem and ":" not in p.stem


def test_the_napari_reader_opens_a_series_url(cmu_url):
    from napari_ghanet._reader import napari_get_reader

    reader = napari_get_reader(cmu_url)
    assert reader is not None
    data, kwargs, kind = reader(cmu_url)[0]
    assert kind == "image" and kwargs["metadata"]["backend"] == "dicomweb"
    assert kwargs["metadata"]["path"] == cmu_url
    assert data.shape == (2967, 2220, 3)
    with open_slide(cmu_slide_path()) as svs:
        np.testing.assert_array_equal(np.asarray(data[1000:1100, 500:700]),
                                      svs.read_region((500, 1000), 0, (200, 100)))
    assert napari_get_reader(cmu_url.replace("/series/", "/nothing/")) is None


@pytest.mark.parametrize("codec", ["jpeg2000", "jpegls", "jpeg-lossless", "uncompressed"])
def test_archive_transfer_syntaxes_decode_to_the_source_pixels(server, tmp_path, codec):
    """JPEG 2000, JPEG-LS, lossless JPEG and uncompressed frames (lossless re-encodings of
    a JPEG-tiled TIFF) read over DICOMweb equal the TIFF's pixels."""
    need("wsidicomizer")
    import pydicom
    from wsidicom.codec import (
        Jpeg2kSettings,
        JpegLosslessSettings,
        JpegLsSettings,
        NumpySettings,
    )

    enc = {"jpeg2000": Jpeg2kSettings(levels=[0]), "jpegls": JpegLsSettings(level=0),
           "jpeg-lossless": JpegLosslessSettings(), "uncompressed": NumpySettings()}[codec]
    rgb, _ = he_image(512, 768, seed=2)
    tif = write_pyramid(tmp_path / "g.tif", rgb, levels=2, tile=256)
    files = dicomize(tif, tmp_path / "dcm", tile_size=256, encoding=enc,
                     force_transcoding=True)
    ts = str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert ts != "1.2.840.10008.1.2.4.50"  # really re-encoded
    with open_slide(stow_files(server, files)) as web, open_slide(tif) as local:
        for level in range(2):
            w, h = web.level_dimensions[level]
            np.testing.assert_array_equal(web.read_region((0, 0), level, (w, h)),
                                          local.read_region((0, 0), level, (w, h)))
