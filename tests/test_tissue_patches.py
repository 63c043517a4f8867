"""Tissue masks in physical units and the CLAM patch grid."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from conftest import GLASS, he_image, write_pyramid
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid, patch_size_level0
from napari_ghanet.preprocessing.tissue import (
    TissueMask,
    TissueParams,
    tissue_mask,
    tissue_mask_from_rgb,
)


def _upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)
    return np.asarray(img) > 127


def test_mask_matches_the_true_tissue(tiled_tiff, he_slide):
    truth = he_slide[1]
    with open_slide(tiled_tiff) as s:
        m = tissue_mask(s)
    assert isinstance(m, TissueMask)
    assert m.downsample == pytest.approx(8.0)  # 4 um/px thumbnail of a 0.5 um/px slide
    assert m.mpp == pytest.approx(4.0)
    assert m.mask.shape == (192, 256)
    up = _upsample(m.mask, truth.shape)
    iou = (up & truth).sum() / (up | truth).sum()
    assert iou > 0.95
    assert m.tissue_fraction == pytest.approx(truth.mean(), abs=0.03)
    assert m.area_um2 == pytest.approx(truth.sum() * 0.25, rel=0.05)
    assert 0.05 <= m.threshold <= 0.25


def test_mask_is_the_same_at_every_thumbnail_resolution(tiled_tiff):
    with open_slide(tiled_tiff) as s:
        fine = tissue_mask(s, thumbnail_mpp=2.0)
        coarse = tissue_mask(s, TissueParams(thumbnail_mpp=8.0))
    assert fine.mask.shape == (4 * coarse.mask.shape[0], 4 * coarse.mask.shape[1])
    agree = (_upsample(coarse.mask, fine.mask.shape) == fine.mask).mean()
    assert agree > 0.97
    assert coarse.area_um2 == pytest.approx(fine.area_um2, rel=0.03)


def _scene(mpp: float) -> np.ndarray:
    """Glass with a 400 x 400 um tissue square holding a 40 x 40 um hole (1600 um^2), and a
    separate 30 x 30 um speck (900 um^2)."""
    n = int(round(800 / mpp))
    rgb = np.broadcast_to(GLASS.astype(np.uint8), (n, n, 3)).copy()
    px = lambda um: int(round(um / mpp))  # noqa: E731
    rgb[px(100) : px(500), px(100) : px(500)] = (200, 120, 170)
    rgb[px(280) : px(320), px(280) : px(320)] = GLASS.astype(np.uint8)
    rgb[px(650) : px(680), px(650) : px(680)] = (200, 120, 170)
    return rgb


@pytest.mark.parametrize("mpp", [2.0, 4.0])
def test_object_and_hole_sizes_are_physical(mpp):
    rgb = _scene(mpp)
    px = lambda um: int(round(um / mpp))  # noqa: E731
    base = dict(smoothing_um=0.0, closing_um=0.0)
    keep_all, _ = tissue_mask_from_rgb(
        rgb, mpp, TissueParams(min_object_um2=100, max_hole_um2=100, **base)
    )
    assert keep_all[px(665), px(665)]  # speck kept
    assert not keep_all[px(300), px(300)]  # hole kept open
    cleaned, _ = tissue_mask_from_rgb(
        rgb, mpp, TissueParams(min_object_um2=2000, max_hole_um2=2500, **base)
    )
    assert not cleaned[px(665), px(665)]  # 900 um^2 speck removed
    assert cleaned[px(300), px(300)]  # 1600 um^2 hole filled
    assert cleaned[px(200), px(200)]


def test_explicit_threshold_and_validation(tiled_tiff):
    with open_slide(tiled_tiff) as s:
        m = tissue_mask(s, saturation_threshold=0.9)
        assert m.threshold == 0.9 and m.empty
        with pytest.raises(ValueError, match="saturation_threshold"):
            tissue_mask(s, saturation_threshold=2)
        with pytest.raises(ValueError, match="thumbnail_mpp"):
            tissue_mask(s, thumbnail_mpp=0)


def test_blank_slide_gives_an_empty_grid_and_a_message(blank_tiff, caplog):
    with open_slide(blank_tiff) as s, caplog.at_level(logging.WARNING):
        m = tissue_mask(s)
        assert m.empty
        g = patch_grid(s, m)
    assert g.empty and len(g) == 0
    assert g.coords.shape == (0, 2) and g.coords.dtype == np.int64
    assert "no tissue" in g.message
    assert "no tissue" in caplog.text


def test_grid_on_the_real_slide(cmu_svs):
    with open_slide(cmu_svs) as s:
        m = tissue_mask(s)
        g = patch_grid(s, m)
    assert 0.2 < m.tissue_fraction < 0.5
    # 0.499 um/px is 20x: 256 px patches at level 0, no resampling
    assert g.patch_size_level0 == 256 and g.patch_px == 256 and g.target_mpp == 0.5
    assert g.level == 0 and g.level_patch_size == 256
    assert 20 <= len(g) <= 60
    assert g.coords.dtype == np.int64
    assert (g.coords % 256 == 0).all()
    assert (g.coords[:, 0] + 256 <= 2220).all() and (g.coords[:, 1] + 256 <= 2967).all()
    assert (g.tissue_fraction >= 0.5).all()
    order = np.lexsort((g.coords[:, 0], g.coords[:, 1]))  # row-major
    np.testing.assert_array_equal(order, np.arange(len(g)))
    assert g.patch_um == pytest.approx(127.7, abs=0.1)


def test_patch_size_follows_the_resolution():
    assert patch_size_level0(0.25) == 512
    assert patch_size_level0(0.2527) == 512  # within 2.5% of 40x: snapped
    assert patch_size_level0(0.499) == 256
    assert patch_size_level0(0.3) == 427  # not a multiple: exact size, resampled
    assert patch_size_level0(1.0) == 128  # coarser than the target: upsampled
    assert patch_size_level0(0.5, patch_px=224, target_mpp=1.0) == 448


def test_grid_on_a_40x_pyramid_reads_the_2x_level(tmp_path):
    rgb, truth = he_image(2048, 2048, mpp=0.25, seed=5)
    path = write_pyramid(tmp_path / "x40.tif", rgb, mpp=0.25, levels=3)
    with open_slide(path) as s:
        m = tissue_mask(s)
        g = patch_grid(s, m)
        assert g.patch_size_level0 == 512
        assert g.level == 1 and g.level_patch_size == 256
        assert (g.coords % 512 == 0).all()
        patch = g.read(s, 0)
        assert patch.shape == (256, 256, 3)
        x, y = g.coords[0]
        level1 = s.read_region((int(x), int(y)), 1, (256, 256))
        np.testing.assert_array_equal(patch, level1)
        # the kept patches are the ones the true tissue covers
        for (x, y), frac in zip(g.coords, g.tissue_fraction, strict=True):
            true_frac = truth[y : y + 512, x : x + 512].mean()
            assert abs(frac - true_frac) < 0.1
        half = patch_grid(s, m, step_px=128)
        assert len(half) > 3 * len(g)
        by_um = patch_grid(s, m, patch_um=128.0)
        np.testing.assert_array_equal(by_um.coords, g.coords)
        assert by_um.target_mpp == 0.5
        everything = patch_grid(s, None)
        assert len(everything) == 16
        sub = g.select([2, 0])
        np.testing.assert_array_equal(sub.coords, g.coords[[2, 0]])


def test_grid_argument_errors(tiled_tiff):
    with open_slide(tiled_tiff) as s:
        m = tissue_mask(s)
        with pytest.raises(ValueError, match="min_tissue_fraction"):
            patch_grid(s, m, min_tissue_fraction=1.5)
        with pytest.raises(ValueError, match="target_mpp"):
            patch_grid(s, m, target_mpp=0)
        with pytest.raises(ValueError, match="step_px"):
            patch_grid(s, m, step_px=0)
        tiny = patch_grid(s, m, patch_px=256, target_mpp=10.0)
        assert tiny.empty and "smaller than one patch" in tiny.message
