"""Overlapping-stride heatmaps and scoring extra patches in the bag's context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ghanet.inference.heatmap import overlap_factor, overlap_grid, overlap_heatmap
from napari_ghanet.inference.overlays import grid_image, lattice_transform, patch_lattice
from napari_ghanet.io.slide import open_slide
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle
from napari_ghanet.models.ghanet import GHANet
from napari_ghanet.preprocessing.patches import _mask_fraction, patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask


@pytest.fixture(scope="module")
def grid_and_mask(tiled_tiff):
    with open_slide(tiled_tiff) as slide:
        mask = tissue_mask(slide)
        return patch_grid(slide, mask, patch_px=128), mask


@pytest.mark.parametrize("overlap", [0.5, 0.75])
def test_overlap_grid_adds_shifted_tissue_patches(grid_and_mask, overlap):
    grid, mask = grid_and_mask
    k = overlap_factor(overlap)
    extra = overlap_grid(grid, overlap, mask)
    size = grid.patch_size_level0
    assert extra.patch_size_level0 == size and extra.step_level0 == size // k
    assert extra.extra["overlap"] == overlap
    # on the finer lattice, not on the grid, inside the slide, with enough tissue
    assert not np.any((extra.coords - grid.coords.min(0)) % (size // k))
    grid_set = {tuple(c) for c in grid.coords}
    assert not any(tuple(c) in grid_set for c in extra.coords)
    assert len({tuple(c) for c in extra.coords}) == len(extra)
    w, h = grid.slide_dimensions
    assert (extra.coords >= 0).all() and (extra.coords + size <= [w, h]).all()
    frac = _mask_fraction(mask, extra.coords, size)
    assert (frac >= grid.min_tissue_fraction - 1e-6).all()
    np.testing.assert_allclose(extra.tissue_fraction, frac, rtol=1e-6)
    # about (k^2 - 1) x the grid: the stated embedding cost
    ratio = len(extra) / len(grid)
    assert 0.7 * (k * k - 1) < ratio < 1.3 * (k * k - 1), ratio
    # without a mask: extra patches whose centre is on a grid patch
    nomask = overlap_grid(grid, overlap)
    centres = nomask.coords + size / 2
    on_grid = ((centres[:, None, :] >= grid.coords[None]) &
               (centres[:, None, :] < grid.coords[None] + size)).all(-1).any(1)
    assert on_grid.all() and len(nomask) > 0.7 * (k * k - 1) * len(grid)


def test_overlap_zero_needs_no_extra_patch_and_bad_overlaps_are_refused(grid_and_mask):
    grid, mask = grid_and_mask
    assert len(overlap_grid(grid, 0.0, mask)) == 0
    for bad in (0.3, 1.0, -0.5):
        with pytest.raises(ValueError, match="overlap"):
            overlap_grid(grid, bad, mask)


def test_heatmap_without_overlap_is_the_patch_grid_image(grid_and_mask):
    grid, _ = grid_and_mask
    scores = np.random.default_rng(0).random(len(grid))
    hm = overlap_heatmap(grid.coords, grid.patch_size_level0, scores, 0.0,
                         level0_scale=(0.5, 0.5), level0_translate=(3.0, 4.0))
    lattice = patch_lattice(grid.coords, grid.patch_size_level0)
    np.testing.assert_allclose(hm.image, grid_image(scores, lattice), rtol=1e-6)
    scale, translate = lattice_transform(lattice, (0.5, 0.5), (3.0, 4.0))
    assert hm.scale == pytest.approx(scale) and hm.translate == pytest.approx(translate)


@pytest.mark.parametrize("overlap", [0.5, 0.75])
def test_each_cell_averages_the_patches_covering_it(grid_and_mask, overlap):
    grid, mask = grid_and_mask
    extra = overlap_grid(grid, overlap, mask)
    coords = np.concatenate([grid.coords, extra.coords])
    size = grid.patch_size_level0
    rng = np.random.default_rng(1)
    scores = rng.normal(size=len(coords))
    hm = overlap_heatmap(coords, size, scores, overlap)
    k = overlap_factor(overlap)
    assert hm.cell_level0 == size / k and hm.count.max() == k * k
    ox, oy = hm.origin
    rows, cols = np.nonzero(hm.count >= 0)
    for r, c in zip(rows[::7], cols[::7]):
        # the cell's centre, level-0 px, and the patches whose square holds it
        cx, cy = ox + (c + 0.5) * hm.cell_level0, oy + (r + 0.5) * hm.cell_level0
        cover = ((coords[:, 0] <= cx) & (cx < coords[:, 0] + size) &
                 (coords[:, 1] <= cy) & (cy < coords[:, 1] + size))
        assert hm.count[r, c] == cover.sum()
        if cover.any():
            assert hm.image[r, c] == pytest.approx(scores[cover].mean(), rel=1e-5)
        else:
            assert np.isnan(hm.image[r, c])
        # the transform centres the cell on that point (pixel-centre convention)
        assert hm.translate[0] + r * hm.scale[0] == pytest.approx(cy - 0.5)
        assert hm.translate[1] + c * hm.scale[1] == pytest.approx(cx - 0.5)


def test_constant_scores_give_a_flat_map_and_smoothing_reduces_steps(grid_and_mask):
    grid, mask = grid_and_mask
    extra = overlap_grid(grid, 0.5, mask)
    coords = np.concatenate([grid.coords, extra.coords])
    flat = overlap_heatmap(coords, grid.patch_size_level0, np.full(len(coords), 0.7), 0.5)
    assert np.nanmax(np.abs(flat.image - 0.7)) < 1e-6
    # a score that grows with x: the overlapping map steps by half as much per cell
    x = coords[:, 0] / grid.patch_size_level0
    hm = overlap_heatmap(coords, grid.patch_size_level0, x, 0.5)
    coarse = overlap_heatmap(grid.coords, grid.patch_size_level0, x[: len(grid)], 0.0).image
    full = (hm.count[:, 1:] == 4) & (hm.count[:, :-1] == 4)  # cells inside the tissue
    steps = np.diff(hm.image, axis=1)[full]
    assert full.sum() > 20 and np.allclose(steps, 0.5, atol=1e-5)
    assert np.nanmax(np.abs(np.diff(coarse, axis=1))) == pytest.approx(1.0)


def test_heatmap_input_checks():
    with pytest.raises(ValueError, match="scores for"):
        overlap_heatmap(np.zeros((2, 2)), 256, np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        overlap_heatmap(np.zeros((1, 2)), 256, [np.nan])
    with pytest.raises(ValueError, match="lattice"):
        overlap_heatmap(np.array([[0, 0], [100, 0]]), 256, [0.0, 1.0], 0.5)
    assert overlap_heatmap(np.zeros((0, 2)), 256, [], 0.5).image.shape == (0, 0)


def small_model(**kw) -> GHANet:
    torch.manual_seed(0)
    return GHANet(omic_sizes=(3, 4, 5), num_tokens=3, input_dim=16, width=32, heads=2,
                  dim_head=16, gate_dim=8, compress_dim=8, ffn_mult=2, **kw).eval()


@pytest.mark.parametrize("official_compat", [False, True])
def test_score_patches_reproduces_the_bags_own_scores(official_compat):
    model = small_model(official_compat=official_compat)
    bag = torch.randn(57, 16)
    with torch.no_grad():
        out = model.forward_bag(bag)
        logits, sim = model.score_patches(bag, bag)
    assert logits.shape == (57,) and sim.shape == (3, 57)
    torch.testing.assert_close(logits.softmax(-1), out.morphology_attention, atol=1e-5, rtol=0)
    torch.testing.assert_close(sim, out.similarity, atol=1e-5, rtol=0)


def test_score_patches_on_the_demo_model_and_extra_patches_are_independent():
    bundle = load_bundle(demo_bundle_path())
    model = bundle.model.eval()
    d = model.config.input_dim
    g = torch.Generator().manual_seed(3)
    bag, extra = torch.randn(80, d, generator=g), torch.randn(40, d, generator=g)
    with torch.no_grad():
        out = model.forward_bag(bag)
        own_logits, own_sim = model.score_patches(bag, bag)
        logits, sim = model.score_patches(bag, torch.cat([bag[:5], extra]), chunk=7)
        alone_logits, alone_sim = model.score_patches(bag, extra[10:12])
        other_bag = model.score_patches(bag[:40], extra[10:12])[1]
    torch.testing.assert_close(own_logits.softmax(-1), out.morphology_attention, atol=1e-5, rtol=0)
    torch.testing.assert_close(own_sim, out.similarity, atol=1e-5, rtol=0)
    # chunking and the other extra patches change nothing; the bag's context does
    torch.testing.assert_close(logits[:5], own_logits[:5], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[15:17], alone_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(sim[:, 15:17], alone_sim, atol=1e-5, rtol=0)
    assert not torch.allclose(other_bag, alone_sim, atol=1e-4)
    with pytest.raises(ValueError, match="extra must be patch features"):
        model.score_patches(bag, torch.randn(3, d + 1))
