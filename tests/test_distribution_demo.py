"""The demo model tells the truth: its own kind of synthetic slides are "in distribution";
the real CMU slide, a heavily re-stained copy of it, an IHC-like slide and a slide read at
the wrong resolution are not, each with the right reason (issue 27's acceptance)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import E_OD, GLASS, H_OD, write_pyramid
from napari_ghanet.inference.distribution import IN, OUT, UNUSUAL
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

DAB_OD = np.array([0.268, 0.570, 0.776], np.float32)
SIDE = 3072  # the demo recipe's slides (DemoRecipe.slide_shape)


@pytest.fixture(scope="module")
def demo():
    bundle = load_bundle(demo_bundle_path())
    assert bundle.distribution is not None, "the shipped demo model carries no summary"
    return bundle


def _predict(path, bundle, **kw):
    return predict_slide(path, bundle, device="cpu", use_cache=False, **kw).distribution


def _restain(rgb: np.ndarray, h_gain=1.0, e_gain=1.0, e_vector=E_OD) -> np.ndarray:
    """``rgb`` unmixed into haematoxylin and eosin and mixed again with other amounts, or
    eosin's place taken by another stain (rows at a time: bounded memory)."""
    out = np.empty_like(rgb)
    pinv = np.linalg.pinv(np.stack([H_OD, E_OD]))
    for r0 in range(0, rgb.shape[0], 512):
        band = rgb[r0:r0 + 512].astype(np.float32)
        od = -np.log10(np.clip(band, 1, 255) / GLASS)
        conc = np.clip(od.reshape(-1, 3) @ pinv, 0, None)
        new = conc[:, :1] * h_gain * H_OD + conc[:, 1:] * e_gain * e_vector
        out[r0:r0 + 512] = np.clip(GLASS * 10.0 ** -new.reshape(od.shape) + 0.5, 0, 255)
    return out


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Ten new slides generated like the demo cohort (other patients, other seed)."""
    from napari_ghanet.training.demo_recipe import _activities

    from napari_ghanet.datasets.synthetic import write_synthetic_cohort_slides

    out = tmp_path_factory.mktemp("held_out")
    act = _activities(np.random.default_rng(99), 10)
    write_synthetic_cohort_slides(out, {f"NEW-{i:02d}": tuple(a) for i, a in enumerate(act)},
                                  shape_hw=(SIDE, SIDE), seed=4242)
    return sorted(out.glob("*.tiff"))


def test_new_slides_like_the_training_cohort_are_in_distribution(demo, held_out):
    verdicts = [_predict(p, demo) for p in held_out]
    ok = [v.verdict == IN for v in verdicts]
    assert sum(ok) >= 9, [(v.verdict, v.reasons) for v in verdicts]
    assert all(v.verdict != OUT for v in verdicts)


def test_the_real_cmu_slide_is_out_of_distribution(demo, cmu_svs):
    v = _predict(cmu_svs, demo)
    assert v.verdict == OUT
    assert any("unlike any training" in r for r in v.reasons), v.reasons


def test_a_heavily_restained_copy_is_flagged_for_its_stain(demo, cmu_svs, tmp_path):
    rgb = tifffile.imread(cmu_svs, level=0)
    blue = write_pyramid(tmp_path / "blue.tif", _restain(rgb, h_gain=3.0, e_gain=0.4),
                         mpp=0.499, levels=2)
    v = _predict(blue, demo)
    assert v.verdict in (UNUSUAL, OUT)
    assert any("bluer" in r for r in v.reasons), v.reasons


def test_an_ihc_like_slide_is_flagged_for_its_colours(demo, held_out, tmp_path):
    rgb = tifffile.imread(held_out[0], level=0)
    ihc = write_pyramid(tmp_path / "ihc.tif", _restain(rgb, e_vector=DAB_OD), mpp=0.5, levels=3)
    v = _predict(ihc, demo)
    assert v.verdict == OUT
    assert any("unlike H&E" in r for r in v.reasons), v.reasons


@pytest.mark.parametrize("mpp, words", [
    (1.0, "resolution 1.00 µm/px, model trained at 0.50 µm/px"),
    (0.25, "resolution 0.25 µm/px, training slides 0.50 µm/px"),
])
def test_a_slide_read_at_the_wrong_resolution_names_it(demo, held_out, mpp, words):
    v = _predict(held_out[1], demo, mpp=mpp)
    assert v.verdict in (UNUSUAL, OUT)
    assert any(words in r for r in v.reasons), v.reasons
