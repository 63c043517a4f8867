"""open_slide on the real Aperio slide, tifffile pyramids, OME-TIFF, plain images and bad files."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import he_image, write_pyramid
from napari_ghanet.io.slide import MAX_MPP, SlideError, cmu_slide_path, open_slide


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ----------------------------------------------------------------------------- real SVS


def test_cmu_svs_metadata(cmu_svs):
    assert cmu_slide_path() == cmu_svs
    with open_slide(cmu_svs) as s:
        assert s.backend == "jpegtiles"  # tiles decoded directly, metadata from OpenSlide
        assert s.vendor == "aperio"
        assert s.dimensions == (2220, 2967)
        assert s.level_count == 1
        assert s.level_downsamples == [1.0]
        assert s.mpp == pytest.approx(0.499)
        assert s.mpp_source == "openslide.mpp-x"
        assert s.objective_power == 20
        assert s.level_tile_sizes == [(240, 240)]
        assert s.properties["aperio.AppMag"] == "20"


def test_cmu_svs_reads(cmu_svs):
    with open_slide(cmu_svs) as s:
        region = s.read_region((1000, 1500), 0, (300, 200))
        assert region.shape == (200, 300, 3) and region.dtype == np.uint8
        # the region holds stained tissue: darker and more coloured than glass
        assert region.mean() < 220
        # straddling the right edge: the outside part is white
        edge = s.read_region((2100, 100), 0, (240, 50))
        assert (edge[:, 120:] == 255).all()
        assert not (edge[:, :120] == 255).all()
        thumb, ds = s.get_thumbnail(512)
        assert max(thumb.shape[:2]) == 512
        assert ds == pytest.approx(2967 / 512)
        assert thumb.shape[:2] == (512, math.ceil(2220 / ds))
        patch = s.read_patch(1000, 1500, 512, 256)
        assert patch.shape == (256, 256, 3)
        ref = np.asarray(Image.fromarray(s.read_region((1000, 1500), 0, (512, 512))).reduce(2))
        assert _mad(patch, ref) < 1.0


def test_fingerprint_is_stable_and_content_based(cmu_svs, tmp_path, tiled_tiff):
    with open_slide(cmu_svs) as a, open_slide(cmu_svs) as b:
        assert a.fingerprint() == b.fingerprint()
    copy = tmp_path / "copy.svs"
    copy.write_bytes(cmu_svs.read_bytes())
    with open_slide(copy) as c, open_slide(cmu_svs) as a, open_slide(tiled_tiff) as t:
        assert c.fingerprint() == a.fingerprint()  # a copy keeps its cached features
        assert t.fingerprint() != a.fingerprint()


# ----------------------------------------------------------------------------- TIFF pyramids


def test_generic_tiled_tiff_goes_to_openslide(tiled_tiff, he_slide):
    rgb = he_slide[0]
    with open_slide(tiled_tiff) as s:
        assert s.backend == "jpegtiles" and "via openslide" in s.properties["ghanet.reader"]
        assert s.dimensions == (2048, 1536)
        assert s.level_dimensions == [(2048, 1536), (1024, 768), (512, 384)]
        assert s.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert s.level_tile_sizes == [(256, 256)] * 3
        assert s.mpp == pytest.approx(0.5)
        region = s.read_region((700, 500), 0, (300, 200))
        assert _mad(region, rgb[500:700, 700:1000]) < 4.0  # JPEG
        assert s.best_level_for_downsample(1.99) == 0
        assert s.best_level_for_downsample(2.0) == 1
        assert s.best_level_for_downsample(100) == 2


@pytest.mark.parametrize("fixture", ["subifd_tiff", "ome_tiff"])
def test_tifffile_pyramids_match_openslide(fixture, request, tiled_tiff):
    path = request.getfixturevalue(fixture)
    with open_slide(path) as s, open_slide(tiled_tiff) as ref:
        assert s.backend == "jpegtiles" and "via tifffile" in s.properties["ghanet.reader"]
        assert s.level_dimensions == ref.level_dimensions
        assert s.level_downsamples == pytest.approx(ref.level_downsamples)
        assert s.level_tile_sizes == [(256, 256)] * 3
        assert s.mpp == pytest.approx(0.5)
        for level, loc, size in [(0, (700, 500), (300, 200)), (1, (130, 260), (400, 300))]:
            a = s.read_region(loc, level, size)
            b = ref.read_region(loc, level, size)
            assert a.shape == b.shape == (size[1], size[0], 3)
            assert _mad(a, b) < 1.0  # the same JPEG tiles, two decoders
        out = s.read_region((-100, -50), 0, (200, 100))
        assert (out[:50] == 255).all() and (out[:, :100] == 255).all()
        t1, ds1 = s.get_thumbnail(300)
        t2, ds2 = ref.get_thumbnail(300)
        assert ds1 == ds2 and t1.shape == t2.shape
        assert _mad(t1, t2) < 2.0


def test_ome_units_and_vendor(ome_tiff):
    with open_slide(ome_tiff) as s:
        assert s.vendor == "ome-tiff"
        assert s.mpp_source == "OME PhysicalSizeX"
        assert s.mpp == pytest.approx(0.5)  # 500 nm


def test_uncompressed_and_deflate_striped_tiffs_read_exactly(tmp_path, he_slide):
    rgb = he_slide[0][:700, :900]
    for compression in (None, "zlib"):
        path = tmp_path / f"striped-{compression}.tif"
        tifffile.imwrite(
            path,
            rgb,
            rowsperstrip=64,
            compression=compression,
            photometric="rgb",
            resolution=(1e4 / 0.25, 1e4 / 0.25),
            resolutionunit="CENTIMETER",
        )
        with open_slide(path) as s:
            assert s.backend == "tifffile" and s.level_count == 1
            assert s.mpp == pytest.approx(0.25)
            assert s.level_tile_sizes == [None]
            np.testing.assert_array_equal(
                s.read_region((33, 61), 0, (400, 300)), rgb[61:361, 33:433]
            )
            full = s.read_region((0, 0), 0, (950, 720))
            np.testing.assert_array_equal(full[:700, :900], rgb)
            assert (full[700:] == 255).all() and (full[:, 900:] == 255).all()


def test_grayscale_tiff_becomes_rgb(tmp_path):
    gray = np.tile(np.arange(256, dtype=np.uint8), (64, 2))
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, gray, tile=(64, 64))
    with open_slide(path, mpp=1.0) as s:
        out = s.read_region((0, 0), 0, (512, 64))
        np.testing.assert_array_equal(out[..., 0], gray)
        np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_concurrent_reads_equal_sequential_reads(subifd_tiff, tiled_tiff):
    rng = np.random.default_rng(0)
    jobs = [
        (int(rng.integers(0, 1800)), int(rng.integers(0, 1300)), int(rng.integers(0, 2)))
        for _ in range(48)
    ]
    for path in (subifd_tiff, tiled_tiff):
        with open_slide(path) as s:
            expected = [s.read_region((x, y), lv, (200, 150)) for x, y, lv in jobs]
            results: dict[int, np.ndarray] = {}
            errors: list[BaseException] = []

            def work(idx: list[int], s=s, results=results, errors=errors) -> None:
                try:
                    for i in idx:
                        x, y, lv = jobs[i]
                        results[i] = s.read_region((x, y), lv, (200, 150))
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            threads = [
                threading.Thread(target=work, args=(list(range(k, 48, 6)),)) for k in range(6)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors
            for i, exp in enumerate(expected):
                np.testing.assert_array_equal(results[i], exp)


# ----------------------------------------------------------------------------- plain images


def test_png_needs_mpp_and_alpha_is_white(plain_png, he_slide, tmp_path):
    with pytest.raises(SlideError, match=r"plain\.png.*records no microns per pixel.*level-0"):
        open_slide(plain_png)
    with open_slide(plain_png, mpp=0.5) as s:
        assert s.backend == "pillow" and s.vendor == "png"
        assert s.mpp_source == "explicit"
        np.testing.assert_array_equal(
            s.read_region((10, 20), 0, (30, 40)), he_slide[0][20:60, 10:40]
        )
    with open_slide(plain_png, require_mpp=False) as s:
        assert s.mpp is None
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 30:, 3] = 255  # left half transparent, right half opaque red
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    with open_slide(path, mpp=1.0) as s:
        out = s.read_region((0, 0), 0, (60, 40))
        assert (out[:, :30] == 255).all()
        assert (out[:, 30:] == [200, 0, 0]).all()


def test_screen_resolution_is_refused_with_its_value(tmp_path, he_slide):
    path = tmp_path / "screen.png"
    Image.fromarray(he_slide[0][:100, :100]).save(path, dpi=(72, 72))
    with pytest.raises(SlideError, match=r"screen\.png.*352\.7.*coarser than.*mpp="):
        open_slide(path)
    with open_slide(path, mpp=0.5) as s:  # an explicit value wins
        assert s.mpp == 0.5
    with pytest.raises(SlideError, match=r"35 um/px.*coarser"):
        open_slide(path, mpp=35)
    assert MAX_MPP == 20.0
    with pytest.raises(SlideError, match="must be > 0"):
        open_slide(path, mpp=-1)


def test_tiff_without_resolution_needs_mpp(tmp_path):
    rgb, _ = he_image(512, 512, seed=3)
    path = write_pyramid(tmp_path / "nores.tif", rgb, mpp=None, levels=2)
    with pytest.raises(SlideError, match="records no microns per pixel"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as s:
        assert s.mpp == 0.25


# ----------------------------------------------------------------------------- bad files


def test_missing_directory_and_empty(tmp_path):
    with pytest.raises(SlideError, match=r"nope\.svs: no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match="is a folder, not a file"):
        open_slide(tmp_path)
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty\.svs: file is empty"):
        open_slide(tmp_path / "empty.svs")


def test_text_file_renamed_svs(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("patient notes, not a slide\n" * 20)
    with pytest.raises(SlideError, match=r"notes\.svs: not a slide or image in a known format"):
        open_slide(path)


def test_truncated_files(tmp_path, cmu_svs, tiled_tiff, subifd_tiff, plain_png):
    for src in (cmu_svs, tiled_tiff, subifd_tiff):
        data = src.read_bytes()
        path = tmp_path / f"truncated-{src.name}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(SlideError, match=rf"{path.name}: file is truncated or corrupt"):
            open_slide(path)
    data = plain_png.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=r"truncated\.png: truncated or corrupt png"):
        open_slide(path, mpp=0.5)


def _corrupt_tile(path, level_page, tile_index):
    """Overwrite one JPEG tile of ``path`` with garbage bytes of the same length."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level_page]
        off, n = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00garbage" * (n // 8) + b"\x00" * (n % 8))


def test_corrupt_tile_raises_slide_error_and_reader_recovers(tmp_path, he_slide):
    for layout in ("ifd", "subifd"):
        path = write_pyramid(tmp_path / f"corrupt-{layout}.tif", he_slide[0], layout=layout)
        _corrupt_tile(path, 0, 9)  # tile (x=1, y=1) of level 0 (8 tiles per row)
        with open_slide(path) as s:
            with pytest.raises(SlideError, match=rf"corrupt-{layout}\.tif"):
                s.read_region((256 + 10, 256 + 10), 0, (100, 100))
            # other tiles still read after the failure (OpenSlide handle reopened)
            ok = s.read_region((1024, 768), 0, (200, 200))
            assert _mad(ok, he_slide[0][768:968, 1024:1224]) < 4.0
