"""The real-size benchmark slide builder (benchmarks/whole_slide.py), at a small size: the
file opens through the project's reader with the right geometry and resolution, and its
level-0 pixels are the CMU H&E they were cut from."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_ghanet.io.slide import open_slide

SIDE = 4096


@pytest.fixture(scope="module")
def ws():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "whole_slide.py"
    spec = importlib.util.spec_from_file_location("whole_slide_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(ws, cmu_svs, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "ws.tif"
    return ws.build_whole_slide(path, SIDE, seed=3)


def _cmu(cmu_svs) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(cmu_svs)) as osr:
        return np.asarray(osr.read_region((0, 0), 0, osr.dimensions))[:, :, :3]


def _upsampled(cmu: np.ndarray) -> np.ndarray:
    """The CMU region at 0.25 um/px: 2x bilinear, as a scanner's 40x of the same tissue."""
    from PIL import Image

    h, w = cmu.shape[:2]
    return np.asarray(Image.fromarray(cmu).resize((2 * w, 2 * h), Image.Resampling.BILINEAR))


def test_opens_with_geometry_and_mpp(built):
    with open_slide(built) as s:
        assert s.backend == "jpegtiles" and s.warnings == []
        assert s.mpp == pytest.approx(0.25)
        assert s.level_dimensions == [(SIDE, SIDE), (1024, 1024), (256, 256), (64, 64)]
        assert s.level_downsamples == [1.0, 4.0, 16.0, 64.0]
        assert s.level_tile_sizes[0] == (256, 256)
        # a coarse level is the area average of level 0, within JPEG error (quality 80 on
        # 16x-reduced H&E: ~5 levels mean); mirrored, it is far off
        lv2 = s.read_region((0, 0), 2, (256, 256)).astype(np.float32)
        lv0 = s.read_region((0, 0), 0, (SIDE, SIDE)).astype(np.float32)
        down = lv0.reshape(256, 16, 256, 16, 3).mean((1, 3))
        err = np.abs(lv2 - down).mean()
        assert err < 7.0
        assert np.abs(lv2 - down[:, ::-1]).mean() > 3 * err
        # tissue and glass both present: half the slide is tissue by construction
        sat = (lv0.max(2) - lv0.min(2)) / np.maximum(lv0.max(2), 1)
        assert 0.25 < float((sat > 0.1).mean()) < 0.75


def test_level0_pixels_are_the_cmu_blocks(ws, built, cmu_svs):
    cmu = _cmu(cmu_svs)
    up = _upsampled(cmu).astype(float)
    layout = ws.make_layout(SIDE, 3, ws._candidates(ws.source_levels(cmu)[0]))
    checked = 0
    with open_slide(built) as s:
        for by in range(1, layout.src_xy.shape[0]):
            for bx in range(1, layout.src_xy.shape[1]):
                x0 = layout.phase[0] + (bx - 1) * ws.BLOCK
                y0 = layout.phase[1] + (by - 1) * ws.BLOCK
                if x0 + ws.BLOCK > SIDE or y0 + ws.BLOCK > SIDE:
                    continue
                if ws._tissue_kind(layout, x0, y0, ws.BLOCK) != 1:
                    continue  # not all tissue
                got = s.read_region((x0, y0), 0, (ws.BLOCK, ws.BLOCK)).astype(float)
                sx, sy = (int(v) for v in layout.src_xy[by, bx])
                src = up[sy : sy + ws.BLOCK, sx : sx + ws.BLOCK]
                t = int(layout.transform[by, bx])
                want = np.rot90(src, t % 4)
                want = want[:, ::-1] if t >= 4 else want
                err = np.abs(got - want).mean()
                assert err < 6.0, (by, bx, err)  # JPEG quality 80, YCbCr 4:2:0
                # the wrong orientation of the same crop is far off: the test can fail
                other = np.rot90(src, (t + 1) % 4)
                assert np.abs(got - other).mean() > 5 * err
                checked += 1
    assert checked >= 5


def test_cached_file_is_reused(ws, built):
    meta = json.loads(built.with_suffix(".json").read_text())
    assert meta["side_px"] == SIDE and meta["seed"] == 3
    assert meta["file_bytes"] == built.stat().st_size
    mtime = built.stat().st_mtime_ns
    assert ws.build_whole_slide(built, SIDE, seed=3) == built
    assert built.stat().st_mtime_ns == mtime  # not rebuilt
