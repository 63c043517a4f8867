"""A first answer in seconds: the visiting order and the preliminary risk."""

from __future__ import annotations

import numpy as np
import pytest

from _plugin_helpers import make_bundle, tissue_rgb, write_tiff_slide
from napari_ghanet.inference.embedding import embed_slide
from napari_ghanet.inference.predict import predict_patient, predict_slide
from napari_ghanet.inference.progressive import (
    PreliminaryRisk,
    ProgressiveEstimator,
    block_ids,
    visit_order,
)
from napari_ghanet.inference.stages import features_stage, grid_stage
from napari_ghanet.io.slide import open_slide
from napari_ghanet.models.bundle import load_bundle
from napari_ghanet.preprocessing.qc import QCAccumulator, QCParams, measure_params

# 32 px patches at 1 um/px: 64 level-0 px at 0.5 um/px, a few hundred patches per slide
ENCODER = {"name": "morphometric", "dim": 64, "patch_px": 32, "target_mpp": 1.0}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("m") / "b.safetensors",
                                   encoder=ENCODER))


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    return [write_tiff_slide(d / f"s{k}.tif", tissue_rgb(1536, 2048, seed=k), mpp=0.5)
            for k in range(2)]


def ellipse_grid(step=512, w=60_000, h=40_000):
    return np.array([(x, y) for y in range(0, h, step) for x in range(0, w, step)
                     if ((x - w / 2) / (w * 0.45)) ** 2 + ((y - h / 2) / (h * 0.45)) ** 2 < 1])


def coarse_cells(coords, side):
    return {tuple(c) for c in (coords // side).tolist()}


def test_visit_order_is_a_reproducible_block_permutation():
    coords = ellipse_grid()
    order = visit_order(coords, 512)
    assert np.array_equal(np.sort(order), np.arange(len(coords)))
    assert np.array_equal(order, visit_order(coords, 512))  # same grid, same order
    assert not np.array_equal(order, visit_order(coords, 512, seed=1))
    # blocks: the patches of a block are consecutive and keep their grid order
    order = visit_order(coords, 512, block=4)
    blocks = block_ids(coords, 512)[order]
    changes = np.flatnonzero(np.diff(blocks)) + 1
    runs = np.split(np.arange(len(order)), changes)
    assert len(runs) == len(np.unique(blocks))  # every block visited in one go
    assert all(np.all(np.diff(order[r]) > 0) for r in runs)
    assert all(len(r) <= 16 for r in runs)


def test_any_prefix_covers_the_tissue():
    coords = ellipse_grid()
    order = visit_order(coords, 512)
    side = 8192  # 16 x 16 patches
    cells = coarse_cells(coords, side)
    for fraction, least in ((0.05, 0.4), (0.10, 0.7), (0.25, 0.9)):
        k = int(fraction * len(coords))
        assert len(coarse_cells(coords[order[:k]], side)) >= least * len(cells)
        # grid (row-major) order reaches only the top of the slide
        assert len(coarse_cells(coords[:k], side)) < 0.5 * len(cells)
    # and each region gets its share: the first 10 % split between halves as the tissue
    first = coords[order[: len(coords) // 10]]
    for axis, middle in ((0, 30_000), (1, 20_000)):
        share = np.mean(first[:, axis] < middle)
        assert abs(share - np.mean(coords[:, axis] < middle)) < 0.1


def test_features_and_qc_measures_come_back_in_grid_order(slides, bundle):
    from napari_ghanet.encoders import create_encoder

    enc = create_encoder("morphometric")
    with open_slide(slides[0]) as slide:
        _, grid = grid_stage(slide, patch_px=32, target_mpp=1.0)
        assert len(grid) > 200
        got = features_stage(slide, grid, enc, qc=QCParams(), batch_size=8,
                             device="cpu").features
        assert np.array_equal(got.coords, grid.coords)
        # each row is its own patch's features and measures, read one by one
        pick = np.random.default_rng(0).choice(len(grid), 12, replace=False)
        patches = np.stack([grid.read(slide, int(i)) for i in pick])
        import torch

        with torch.inference_mode():
            direct = enc.encode(torch.from_numpy(patches)).numpy()
        np.testing.assert_allclose(got.features[pick], direct, rtol=1e-5, atol=1e-5)
        acc = QCAccumulator(measure_params(QCParams()))
        for i in pick:
            acc.update(grid.read(slide, int(i))[None])
        np.testing.assert_allclose(got.qc_measures[pick], acc.measures(), rtol=1e-6)
        # and embed_slide reports batches in visiting order, as grid indices
        seen = []
        spread = embed_slide(slide, grid, enc, device="cpu", batch_size=16, order="spread",
                             on_encoded=lambda index, f: seen.append(index))
        seen = np.concatenate(seen)
        assert np.array_equal(seen, visit_order(grid.coords, grid.step_level0))
        plain = embed_slide(slide, grid, enc, device="cpu", batch_size=16)
        assert np.array_equal(spread.features, plain.features)
        assert np.array_equal(spread.coords, plain.coords)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_cnn_gives_the_same_features_in_either_order(slides, tmp_path, backend):
    """A patch's ResNet50 features do not depend on which patches share its batch, so a
    run with preliminary answers (spread order) ends with exactly the plain run's."""
    import torch
    import torchvision

    from napari_ghanet.encoders import create_encoder

    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights)
    enc = create_encoder("resnet50_trunc", weights=weights)
    with open_slide(slides[1]) as slide:
        _, grid = grid_stage(slide, patch_px=256, target_mpp=0.5)
        grid = grid.select(np.arange(min(40, len(grid))))
        kw = dict(device="cpu", batch_size=16, backend=backend)
        a = embed_slide(slide, grid, enc, order="spread", **kw)
        b = embed_slide(slide, grid, enc, order="grid", **kw)
    assert len(grid) >= 20 and a.attrs["backend"] == {"torch": "torch", "onnx": "onnxruntime"}[backend]
    assert np.array_equal(a.features, b.features)


def test_preliminary_risks_then_the_exact_answer(slides, bundle):
    got: list[PreliminaryRisk] = []
    est = ProgressiveEstimator(bundle, got.append, device="cpu", budget=1.0,
                               min_interval=0.0, first_fraction=0.05, n_boot=8)
    p = predict_slide(slides[0], bundle, device="cpu", use_cache=False, batch_size=16,
                      preliminary=est)
    plain = predict_slide(slides[0], bundle, device="cpu", use_cache=False, batch_size=16)
    # the prediction is exactly the one made without preliminary answers
    assert p.risk == plain.risk and p.risk_group == plain.risk_group
    assert np.array_equal(p.morphology_attention, plain.morphology_attention)
    assert np.array_equal(p.genome_attention, plain.genome_attention)
    prelim, last = got[:-1], got[-1]
    assert len(prelim) >= 5
    fractions = [g.fraction for g in prelim]
    assert fractions == sorted(fractions) and fractions[0] >= 0.05 and fractions[-1] < 1
    for g in prelim:
        assert not g.final and np.isfinite([g.risk, g.low, g.high]).all()
        assert g.low <= g.high and 0 <= g.group_support <= 1
        assert g.group in ("low", "intermediate", "high")
        assert g.n_patches <= len(p.morphology_attention)
    assert last.final and last.risk == p.risk and last.group == p.risk_group
    assert last.n_patches == len(p.morphology_attention)
    assert "all patches" in last.describe() and "% of patches" in prelim[0].describe()
    # a preliminary from 90 % of the patches is close to the final risk
    late = [g for g in prelim if g.fraction >= 0.9]
    if late:
        assert abs(late[-1].risk - p.risk) < abs(prelim[0].risk - p.risk) + 0.05


def test_default_cadence_stays_within_its_budget(slides, bundle):
    got = []
    est = ProgressiveEstimator(bundle, got.append, device="cpu")
    predict_slide(slides[1], bundle, device="cpu", use_cache=False, batch_size=16,
                  preliminary=est)
    assert got[-1].final
    total = got[-1].seconds
    # the first update is always allowed; after it, at most ~budget of the elapsed time
    first_cost = est.overhead_seconds / max(est.n_updates, 1)
    assert est.overhead_seconds <= 0.1 * total + 2 * first_cost + 0.05


def test_patient_bags_grow_slide_by_slide(slides, bundle):
    got = []
    est = ProgressiveEstimator(bundle, got.append, device="cpu", budget=1.0,
                               min_interval=0.0, first_fraction=0.1, n_boot=4)
    p = predict_patient(slides, bundle, device="cpu", use_cache=False, batch_size=32,
                        preliminary=est)
    n_first = int((p.slide_index == 0).sum())
    later = [g for g in got[:-1] if g.n_patches > n_first]
    assert later, "estimates during the second slide include the first slide's patches"
    assert got[-1].final and got[-1].risk == p.risk


def test_cached_features_give_the_answer_at_once(slides, bundle, tmp_path):
    predict_slide(slides[0], bundle, device="cpu", cache_dir=tmp_path)
    got = []
    p = predict_slide(slides[0], bundle, device="cpu", cache_dir=tmp_path,
                      preliminary=got.append)
    assert [g.final for g in got] == [True] and got[0].risk == p.risk


def test_int8_and_full_precision_features_are_cached_apart(slides, bundle, tmp_path):
    """A prediction made with 8-bit features never reuses full-precision ones (and back)."""
    from napari_ghanet.inference.stages import BagRun
    from napari_ghanet.options import PredictOptions

    with open_slide(slides[0]) as slide:
        _, grid = grid_stage(slide, patch_px=32, target_mpp=1.0)
        spec = bundle.encoder.with_geometry(32, 1.0)
        paths = {}
        for backend in ("auto", "onnx-int8"):
            run = BagRun.create(bundle, PredictOptions.create(cache_dir=tmp_path,
                                                              backend=backend))
            paths[backend] = run.cache_path(slide, spec, grid)
    assert paths["onnx-int8"].name.endswith(".int8.h5")
    assert paths["onnx-int8"].with_name(paths["onnx-int8"].name.replace(".int8", "")) == \
        paths["auto"]
    off = BagRun.create(bundle, PredictOptions.create(use_cache=False))
    assert off.cache_path(None, spec, None) is None
