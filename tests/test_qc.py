"""Artifact QC: each detector catches its artifact drawn on H&E-like and real tissue, and
leaves clean tissue (the real CMU slide included) alone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import he_image
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.qc import QCAccumulator, QCParams, qc_patches
from napari_ghanet.preprocessing.tissue import tissue_mask

INKS = {"green": (40, 140, 80), "blue": (40, 70, 170), "black": (35, 35, 40)}


@pytest.fixture(scope="module")
def he_patches() -> np.ndarray:
    """16 tissue patches (256 px) of an H&E-like image at 0.5 um/px."""
    rgb, tissue = he_image(1280, 1280, seed=5)
    out = [
        rgb[y : y + 256, x : x + 256]
        for y in range(0, 1280 - 255, 256)
        for x in range(0, 1280 - 255, 256)
        if tissue[y : y + 256, x : x + 256].mean() > 0.95
    ]
    assert len(out) >= 9
    return np.stack(out)


@pytest.fixture(scope="module")
def cmu_patches(cmu_svs) -> np.ndarray:
    """The real slide's tissue patches at the default settings (256 px at 0.5 um/px)."""
    with open_slide(cmu_svs) as slide:
        grid = patch_grid(slide, tissue_mask(slide))
        return np.stack([grid.read(slide, i) for i in range(len(grid))])


def pen_stroke(patch: np.ndarray, ink, width: int = 40, seed: int = 0) -> np.ndarray:
    """A marker stroke across the patch: the ink's transmission multiplies the tissue's."""
    rng = np.random.default_rng(seed)
    h, w = patch.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    y0, y1 = rng.uniform(0, h, 2)
    d = np.abs((y1 - y0) * xx - w * (yy - y0)) / np.hypot(y1 - y0, w)  # distance to the line
    on = d < width / 2
    out = patch.astype(np.float32)
    trans = np.asarray(ink, np.float32) / 245.0
    out[on] = out[on] * trans
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def blurred(patch: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return np.clip(ndi.gaussian_filter(patch.astype(np.float32), (sigma, sigma, 0)) + 0.5, 0, 255
                   ).astype(np.uint8)


def fold_band(patch: np.ndarray, fraction: float = 0.45, darker: float = 4.0) -> np.ndarray:
    """A horizontal band where the tissue lies folded over itself (``darker`` x its OD)."""
    od = -np.log10(np.maximum(patch.astype(np.float32), 1.0) / 245.0)
    out = patch.copy()
    h = patch.shape[0]
    a = int(h * (0.5 - fraction / 2))
    b = a + int(h * fraction)
    out[a:b] = np.clip(245.0 * 10.0 ** (-darker * np.maximum(od[a:b], 0.08)), 0, 255).astype(
        np.uint8
    )
    return out


def test_clean_he_tissue_is_not_flagged(he_patches):
    res = qc_patches(he_patches)
    assert res.counts["total"] == 0, res.counts
    assert res.keep.all() and res.note == ""
    assert np.nanmin(res.blur_ratio) > 2 * QCParams().blur_fraction


@pytest.mark.parametrize("ink", sorted(INKS))
def test_pen_strokes_are_flagged_as_pen(he_patches, ink):
    patches = he_patches.copy()
    patches[[1, 4]] = [pen_stroke(patches[i], INKS[ink], seed=i) for i in (1, 4)]
    res = qc_patches(patches)
    assert np.flatnonzero(res.flagged).tolist() == [1, 4]
    assert res.reason[1] == res.reason[4] == "pen"
    assert res.counts == {"pen": 2, "fold": 0, "blur": 0, "total": 2}


def test_thin_ink_speck_below_the_fraction_is_not_pen(he_patches):
    patches = he_patches.copy()
    patches[0] = pen_stroke(patches[0], INKS["green"], width=4)  # ~1.5 % of the patch
    assert qc_patches(patches).counts["total"] == 0


@pytest.mark.parametrize("sigma", [1.5, 2.0, 4.0])
def test_gaussian_blur_is_flagged_relative_to_the_slide(he_patches, sigma):
    patches = he_patches.copy()
    patches[2] = blurred(patches[2], sigma)
    res = qc_patches(patches)
    assert np.flatnonzero(res.flagged).tolist() == [2]
    assert res.reason[2] == "blur" and res.blur_ratio[2] < 0.1


def test_whole_slide_out_of_focus_is_not_judged_patch_by_patch(he_patches):
    """Blur is relative: a uniformly soft slide has no outlier (and is not all removed)."""
    res = qc_patches(np.stack([blurred(p, 2.0) for p in he_patches]))
    assert res.counts["blur"] == 0


def test_dark_fold_band_is_flagged_as_fold(he_patches):
    patches = he_patches.copy()
    patches[3] = fold_band(patches[3])
    res = qc_patches(patches)
    assert np.flatnonzero(res.flagged).tolist() == [3]
    assert res.reason[3] == "fold" and res.dark_fraction[3] > 0.3
    # a fold as dark as the tissue is thick twice over is not "over-stained"
    patches[3] = fold_band(he_patches[3], darker=2.0)
    assert qc_patches(patches).counts["fold"] == 0


def test_streaming_matches_one_shot_and_decides_blur_at_the_end(he_patches):
    patches = he_patches.copy()
    patches[0] = blurred(patches[0], 3.0)
    patches[5] = pen_stroke(patches[5], INKS["blue"])
    whole = qc_patches(patches)
    acc = QCAccumulator()
    for a in range(0, len(patches), 3):
        acc.update(patches[a : a + 3])
    assert len(acc) == len(patches)
    part = acc.result()
    assert part.reason.tolist() == whole.reason.tolist()
    np.testing.assert_allclose(part.blur_ratio, whole.blur_ratio, rtol=1e-6)
    assert part.reason[0] == "blur" and part.reason[5] == "pen"


def test_detectors_can_be_switched_off_and_params_are_checked(he_patches):
    patches = he_patches.copy()
    patches[1] = pen_stroke(patches[1], INKS["black"])
    res = qc_patches(patches, QCParams(detect=("fold", "blur")))
    assert res.counts["pen"] == 0 and not res.flags["pen"].any()
    with pytest.raises(ValueError, match="pen_min_fraction"):
        QCParams(pen_min_fraction=1.5).validate()
    with pytest.raises(ValueError, match="unknown QC detectors"):
        qc_patches(patches, QCParams(detect=("ink",)))
    with pytest.raises(ValueError, match="uint8"):
        qc_patches(patches.astype(np.float32))
    summary = res.to_dict()
    assert summary["n_patches"] == len(patches) and summary["params"]["detect"] == ["fold", "blur"]


def test_cmu_slide_loses_no_tissue_patch_and_artifacts_on_it_are_caught(cmu_patches):
    res = qc_patches(cmu_patches)
    assert len(cmu_patches) == 30
    assert res.counts["total"] == 0, (res.counts, res.pen_fraction.max(), res.dark_fraction.max())
    # the same real tissue with one artifact of each kind drawn on it
    # (the fold on the most densely stained patch: a fold of pale stroma is not dark)
    dense = int(np.argmax((255.0 - cmu_patches.mean(axis=-1)).mean(axis=(1, 2))))
    patches = cmu_patches.copy()
    patches[3] = pen_stroke(patches[3], INKS["green"])
    patches[10] = blurred(patches[10], 1.5)
    patches[dense] = fold_band(patches[dense])
    res = qc_patches(patches)
    assert dense not in (3, 10)
    assert {int(i): str(res.reason[i]) for i in np.flatnonzero(res.flagged)} == {
        3: "pen", 10: "blur", dense: "fold"}
