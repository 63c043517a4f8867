"""The direct JPEG-tile reader (io/backends/jpegtiles.py) against OpenSlide's pixels."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

from conftest import write_pyramid
from napari_ghanet.errors import SlideError
from napari_ghanet.io.slide import backend_names, open_slide

# Bound on the difference to OpenSlide at the same level: none. Both decode the same JPEG
# bytes with libjpeg-turbo (integer DCT, fancy upsampling) and the same colour transform.
MAX_ABS_DIFF = 0


def _regions(rng, width, height, n=40):
    for _ in range(n):
        x, y = int(rng.integers(-200, width + 50)), int(rng.integers(-200, height + 50))
        w, h = (int(v) for v in rng.integers(1, 700, 2))
        yield (x, y), (w, h)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_registered_first():
    assert backend_names()[0] == "jpegtiles"


def test_cmu_svs_equals_openslide(cmu_svs):
    rng = np.random.default_rng(1)
    with open_slide(cmu_svs) as fast, open_slide(cmu_svs, backend="openslide") as ref:
        assert fast.backend == "jpegtiles" and ref.backend == "openslide"
        # the metadata is OpenSlide's, so cached features keep their key
        assert fast.vendor == "aperio" and fast.mpp == ref.mpp == pytest.approx(0.499)
        assert fast.mpp_source == ref.mpp_source
        assert fast.level_dimensions == ref.level_dimensions
        assert fast.level_tile_sizes == ref.level_tile_sizes == [(240, 240)]
        assert fast.fingerprint() == ref.fingerprint()
        assert fast.properties["aperio.AppMag"] == "20"
        for loc, size in _regions(rng, *fast.dimensions):
            a, b = fast.read_region(loc, 0, size), ref.read_region(loc, 0, size)
            assert a.shape == b.shape == (size[1], size[0], 3)
            assert _max_diff(a, b) <= MAX_ABS_DIFF, (loc, size)
        # Aperio's RGB JPEG must not be taken for YCbCr: tissue is pink, not green
        patch = fast.read_patch(1000, 1500, 512, 256)
        np.testing.assert_array_equal(patch, ref.read_patch(1000, 1500, 512, 256))
        r, g, b = patch.reshape(-1, 3).mean(axis=0)
        assert r > g and b > g


def _rgb_jpeg_pyramid(path, rgb, levels=3):
    """Tiled pyramid in main IFDs whose JPEG tiles hold RGB, not YCbCr (photometric RGB,
    as Aperio writes them); tifffile's default (``write_pyramid``) is YCbCr 4:2:0."""
    pyramid = [rgb]
    for _ in range(levels - 1):
        p = pyramid[-1]
        h, w = p.shape[0] // 2, p.shape[1] // 2
        pyramid.append(p[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean((1, 3)).astype(np.uint8))
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(pyramid):
            tw.write(
                lv,
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": 85, "outcolorspace": "RGB"},
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                resolution=(1e4 / (0.5 * 2**i),) * 2,
                resolutionunit="CENTIMETER",
            )
    return path


@pytest.mark.parametrize("kind", ["rgb", "ycbcr"])
def test_generated_pyramid_equals_openslide(kind, tmp_path, he_slide):
    rgb = he_slide[0][:1500, :1900]  # edges not on tile boundaries
    path = tmp_path / f"{kind}.tif"
    if kind == "rgb":
        _rgb_jpeg_pyramid(path, rgb)
    else:
        write_pyramid(path, rgb)
    with tifffile.TiffFile(path) as tif:
        assert int(tif.pages[0].photometric) == (2 if kind == "rgb" else 6)
    rng = np.random.default_rng(2)
    with open_slide(path) as fast, open_slide(path, backend="openslide") as ref:
        assert fast.backend == "jpegtiles"
        assert fast.level_dimensions == ref.level_dimensions and fast.level_count == 3
        assert fast.level_downsamples == ref.level_downsamples
        for level in range(3):
            ds = int(fast.level_downsamples[level])
            lw, lh = fast.level_dimensions[level]
            for (x, y), size in _regions(rng, lw, lh, n=25):
                loc = (x * ds, y * ds)  # whole level pixels: no resampling in OpenSlide
                a = fast.read_region(loc, level, size)
                b = ref.read_region(loc, level, size)
                assert _max_diff(a, b) <= MAX_ABS_DIFF, (level, loc, size)
        # and it is the image that was written (JPEG q85 / q75 loss only)
        region = fast.read_region((700, 500), 0, (300, 200)).astype(np.int16)
        assert np.abs(region - rgb[500:700, 700:1000]).mean() < 4.0


def test_ome_and_subifd_levels_are_decoded_directly(ome_tiff, subifd_tiff, tiled_tiff):
    with open_slide(tiled_tiff, backend="openslide") as ref:
        for path in (ome_tiff, subifd_tiff):
            with open_slide(path) as s, open_slide(path, backend="tifffile") as slow:
                assert s.backend == "jpegtiles" and s.vendor == slow.vendor
                assert (
                    "levels [0, 1, 2] decoded directly; the rest via tifffile"
                    in (s.properties["ghanet.reader"])
                )
                for level in range(3):
                    a = s.read_region((512, 256), level, (300, 280))
                    np.testing.assert_array_equal(a, ref.read_region((512, 256), level, (300, 280)))
                    np.testing.assert_array_equal(
                        a, slow.read_region((512, 256), level, (300, 280))
                    )


def test_each_tile_decoded_once_and_cache_bounded(tiled_tiff):
    with open_slide(tiled_tiff) as s:
        dec = s._backend.decoder
        # 2048 x 1536 px at level 0 in 256 px tiles: 8 x 6 tiles; 200 px patches at a
        # 100 px stride overlap each tile many times
        for y in range(0, 1536 - 200, 100):
            for x in range(0, 2048 - 200, 100):
                s.read_region((x, y), 0, (200, 200))
        assert dec.decoded == 48
        assert dec._cached <= dec.cache_bytes
        dec.cache_bytes = 3 * 256 * 256 * 3  # room for three tiles
        s.read_region((0, 0), 1, (1024, 768))  # 4 x 3 tiles of level 1
        assert len(dec._cache) == 3 and dec._cached == 3 * 256 * 256 * 3
        before = dec.decoded
        s.read_region((0, 0), 1, (256, 256))  # evicted: decoded again
        assert dec.decoded == before + 1


def test_threads_share_decodes_and_agree(tiled_tiff):
    with open_slide(tiled_tiff) as s, open_slide(tiled_tiff, backend="openslide") as ref:
        want = ref.read_region((300, 200), 0, (700, 600))
        results, errors = [], []
        barrier = threading.Barrier(8)

        def work():
            try:
                barrier.wait()
                for _ in range(5):
                    results.append(s.read_region((300, 200), 0, (700, 600)))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 40
        for r in results:
            np.testing.assert_array_equal(r, want)
        assert s._backend.decoder.decoded == 12  # 4 x 3 tiles, each once


def test_non_jpeg_goes_elsewhere_and_corrupt_tile_is_a_slide_error(tmp_path, he_slide):
    rgb = he_slide[0][:512, :512]
    plain = write_pyramid(tmp_path / "zlib.tif", rgb, levels=1, compression="zlib")
    with open_slide(plain) as s:
        assert s.backend != "jpegtiles"
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (512, 512)), rgb)
    path = write_pyramid(tmp_path / "bad.tif", rgb, levels=1)
    with tifffile.TiffFile(path) as tif:
        off, cnt = int(tif.pages[0].dataoffsets[1]), int(tif.pages[0].databytecounts[1])
    data = bytearray(path.read_bytes())
    data[off : off + cnt] = b"\x00" * cnt  # tile 1 (x 256..511, y 0..255) destroyed
    path.write_bytes(bytes(data))
    with open_slide(path, backend="jpegtiles") as s:
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (256, 256)).shape, (256, 256, 3))
        with pytest.raises(SlideError, match="corrupt JPEG tile 1 at level 0"):
            s.read_region((200, 0), 0, (100, 100))
