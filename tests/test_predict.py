"""predict_slide on the real CMU slide and on tifffile slides; exports; overlay geometry."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from _plugin_helpers import FAST_ENCODER, make_bundle, tissue_rgb, write_tiff_slide
from napari_ghanet.inference import overlays
from napari_ghanet.inference.predict import (
    NoTissueError,
    PredictionCancelled,
    export_all,
    geojson_dict,
    predict_slide,
    write_geojson,
    write_patch_csv,
    write_report_json,
)
from napari_ghanet.io.features import load_features
from napari_ghanet.io.slide import SlideError, cmu_slide_path, open_slide
from napari_ghanet.models.bundle import EncoderMismatchError, load_bundle

# 64 px patches at 2 um/px cover the same 128 um as CLAM's 256 px at 0.5 um/px, and are
# 16x cheaper to embed: the same pipeline, sized for tests.


@pytest.fixture(scope="module")
def fast_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "fast.safetensors"
    return load_bundle(make_bundle(path, encoder=FAST_ENCODER))


@pytest.fixture(scope="module")
def cmu_run(fast_bundle, tmp_path_factory):
    """One prediction on the real slide, with the stages it reported."""
    cache = tmp_path_factory.mktemp("cache")
    stages = []
    pred = predict_slide(
        cmu_slide_path(), fast_bundle, device="cpu", cache_dir=cache,
        progress=lambda stage, done, total: stages.append((stage, done, total)),
    )
    return pred, cache, stages


def test_prediction_on_the_real_slide_is_the_model_on_its_features(cmu_run, fast_bundle):
    pred, cache, stages = cmu_run
    slide = open_slide(cmu_slide_path())
    n = pred.n_patches
    assert n > 10
    # patches lie inside the slide on the 256 level-0 px grid (64 px at 2 um on 0.499 um/px)
    assert pred.patch_size_level0 == 256
    w0, h0 = slide.dimensions
    assert pred.coords.dtype == np.int64 and pred.coords.shape == (n, 2)
    assert (pred.coords >= 0).all()
    assert (pred.coords[:, 0] + 256 <= w0).all() and (pred.coords[:, 1] + 256 <= h0).all()
    assert not np.any(pred.coords % 256)
    # the cached features are what the model saw: re-running the model gives the same numbers
    feats = load_features(pred.features_path)
    np.testing.assert_array_equal(feats.coords, pred.coords)
    with torch.inference_mode():
        out = fast_bundle.model.forward_bag(torch.from_numpy(feats.features))
    assert pred.risk == pytest.approx(float(out.risk), abs=1e-6)
    np.testing.assert_allclose(pred.survival, out.survival.numpy(), atol=1e-6)
    np.testing.assert_allclose(pred.morphology_attention, out.morphology_attention.numpy(),
                               atol=1e-7)
    np.testing.assert_allclose(pred.genome_attention, out.genome_attention.numpy(), atol=1e-7)
    for cat, rec in zip(pred.categories, out.reconstructed):
        np.testing.assert_allclose(cat.values, rec.numpy(), atol=1e-6)
        assert cat.score == pytest.approx(float(rec.mean()), abs=1e-6)
        # top genes: largest |z| first, names from the bundle
        zs = [abs(z) for _, z in cat.top_genes]
        assert zs == sorted(zs, reverse=True)
        assert len(cat.top_genes) == len(cat.genes)  # fewer genes than the top-10 limit
    # survival, risk, percentile and group follow their definitions
    assert pred.risk == pytest.approx(-float(pred.survival.sum()), abs=1e-6)
    assert np.all(np.diff(pred.survival) <= 1e-7)
    assert pred.percentile == pytest.approx(fast_bundle.percentile(pred.risk))
    expected_group = "low" if pred.risk < -2.6667 else "intermediate" if pred.risk < -1.3333 \
        else "high"
    assert pred.risk_group == expected_group
    np.testing.assert_array_equal(pred.bin_edges_months, [0, 12, 24, 48, 120])
    # attentions are distributions over the patches
    assert pred.morphology_attention.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(pred.genome_attention.sum(axis=1), 1.0, atol=1e-5)
    assert pred.genome_attention.shape == (6, n)
    # tissue mask and stages
    assert pred.tissue_mask.dtype == bool and pred.tissue_mask.any()
    assert pred.tissue_downsample > 1
    assert [s for s, _, _ in stages][:3] == ["slide", "tissue", "patches"]
    assert ("features", n, n) in stages and stages[-1][0] == "done"
    assert not pred.features_cached
    assert pred.intended_use == fast_bundle.intended_use
    assert pred.model["provenance"] == {"data": "random weights for tests"}


def test_top_regions_are_the_highest_attention_patches(cmu_run):
    pred = cmu_run[0]
    assert len(pred.top_regions) == 10
    order = np.argsort(-pred.morphology_attention, kind="stable")[:10]
    assert [r.index for r in pred.top_regions] == order.tolist()
    assert [r.rank for r in pred.top_regions] == list(range(1, 11))
    assert pred.top_regions[0].percentile == pytest.approx(100.0)
    for r in pred.top_regions:
        assert (r.x, r.y) == tuple(pred.coords[r.index])
        assert r.width == r.height == 256
        assert r.category == pred.category_names[r.category_index]
        g = pred.genome_attention[:, r.index]
        if g.max() > 0:
            assert r.category_index == int(np.argmax(g))


def test_second_prediction_reuses_the_cached_features(cmu_run, fast_bundle):
    pred, cache, _ = cmu_run
    stages = []
    again = predict_slide(cmu_slide_path(), fast_bundle, device="cpu", cache_dir=cache,
                          progress=lambda s, d, t: stages.append(s))
    assert again.features_cached
    assert again.risk == pred.risk
    np.testing.assert_array_equal(again.morphology_attention, pred.morphology_attention)
    assert len(list(Path(cache).rglob("*.h5"))) == 1


def test_exports_hold_the_same_numbers(cmu_run, tmp_path):
    pred = cmu_run[0]
    paths = export_all(pred, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in paths.values()
    )  # nothing else (no temporary files) left behind

    report = json.loads(paths["report"].read_text())
    assert report["prediction"]["risk"] == pytest.approx(pred.risk)
    assert report["prediction"]["risk_group"] == pred.risk_group
    assert report["prediction"]["survival"] == pytest.approx(pred.survival.tolist())
    assert report["intended_use"] == pred.intended_use
    assert report["model"]["encoder"]["name"] == "morphometric"
    assert [c["category"] for c in report["pathways"]] == pred.category_names
    assert report["top_regions"][0]["x"] == pred.top_regions[0].x
    assert report["patches"]["count"] == pred.n_patches

    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == pred.n_patches
    assert list(rows[0])[:5] == ["x", "y", "width", "height", "morphology_attention"]
    assert len(rows[0]) == 5 + 6
    xs = np.array([int(r["x"]) for r in rows])
    np.testing.assert_array_equal(xs, pred.coords[:, 0])
    att = np.array([float(r["morphology_attention"]) for r in rows])
    np.testing.assert_allclose(att, pred.morphology_attention, rtol=1e-6)
    g2 = np.array([float(r["genome_attention_Protein_Kinases"]) for r in rows])
    np.testing.assert_allclose(g2, pred.genome_attention[2], rtol=1e-6, atol=1e-12)

    gj = json.loads(paths["geojson"].read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == pred.n_patches
    f0 = gj["features"][0]
    assert f0["geometry"]["type"] == "Polygon"
    ring = f0["geometry"]["coordinates"][0]
    x, y = pred.coords[0]
    assert ring[0] == ring[-1] == [x, y] and ring[2] == [x + 256, y + 256]
    props = f0["properties"]
    assert props["objectType"] == "tile"
    assert props["measurements"]["Morphology attention"] == pytest.approx(
        float(pred.morphology_attention[0]))
    assert props["measurements"]["Genome attention: Oncogenesis"] == pytest.approx(
        float(pred.genome_attention[1, 0]))
    assert geojson_dict(pred, "detection")["features"][0]["properties"]["objectType"] == \
        "detection"


def test_exports_replace_files_atomically(cmu_run, tmp_path):
    pred = cmu_run[0]
    for writer, name in ((write_report_json, "r.json"), (write_patch_csv, "p.csv"),
                         (write_geojson, "g.geojson")):
        target = tmp_path / name
        target.write_text("old")
        writer(pred, target)
        assert target.read_text() != "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.geojson", "p.csv", "r.json"]


def test_encoder_mismatch_is_a_clear_error(tmp_path):
    bundle = make_bundle(tmp_path / "m32.safetensors", input_dim=32,
                         encoder={"name": "morphometric", "dim": 32, "patch_px": 64,
                                  "target_mpp": 2.0})
    with pytest.raises(EncoderMismatchError, match="feature dimension 64 instead of 32"):
        predict_slide(cmu_slide_path(), bundle, device="cpu", cache_dir=tmp_path / "c")
    assert not list((tmp_path).rglob("*.h5"))


def test_unknown_encoder_is_a_clear_error(tmp_path):
    # refused when the bundle is written (and read: tests/test_spec_security.py)
    with pytest.raises(ValueError, match="no_such_encoder.*not a registered encoder"):
        make_bundle(tmp_path / "m.safetensors", encoder={"name": "no_such_encoder", "dim": 64})
    assert not (tmp_path / "m.safetensors").exists()


def test_blank_slide_has_no_tissue(tmp_path, fast_bundle):
    blank = write_tiff_slide(tmp_path / "blank.tif", np.full((768, 1024, 3), 243, np.uint8))
    with pytest.raises(NoTissueError, match="no tissue"):
        predict_slide(blank, fast_bundle, device="cpu", cache_dir=tmp_path / "c")


def test_slide_without_mpp_needs_one(tmp_path, fast_bundle):
    path = write_tiff_slide(tmp_path / "nompp.tif", tissue_rgb(512, 768), mpp=None, levels=2)
    with pytest.raises(SlideError, match="microns per pixel"):
        predict_slide(path, fast_bundle, device="cpu", cache_dir=tmp_path / "c")
    pred = predict_slide(path, fast_bundle, device="cpu", mpp=1.0, cache_dir=tmp_path / "c")
    assert pred.slide["mpp"] == 1.0 and pred.patch_size_level0 == 128
    assert pred.n_patches > 0


def test_unreadable_slide_is_a_clear_error(tmp_path, fast_bundle):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.raises(SlideError, match="broken.svs"):
        predict_slide(bad, fast_bundle, device="cpu", cache_dir=tmp_path / "c")


def test_cancel_during_embedding_leaves_no_cache_file(tmp_path, fast_bundle):
    cancel = threading.Event()
    seen = []

    def progress(stage, done, total):
        seen.append((stage, done))
        if stage == "features" and done > 0:
            cancel.set()

    with pytest.raises(PredictionCancelled):
        predict_slide(cmu_slide_path(), fast_bundle, device="cpu", cache_dir=tmp_path / "c",
                      batch_size=2, progress=progress, cancel=cancel)
    assert any(s == "features" and d > 0 for s, d in seen)
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]


def test_cancel_before_start(tmp_path, fast_bundle):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PredictionCancelled):
        predict_slide(cmu_slide_path(), fast_bundle, device="cpu", cache_dir=tmp_path / "c",
                      cancel=cancel)


def test_settings_other_than_the_models_are_noted(tmp_path, fast_bundle):
    path = write_tiff_slide(tmp_path / "s.tif", tissue_rgb(512, 768), mpp=1.0, levels=2)
    pred = predict_slide(path, fast_bundle, device="cpu", patch_px=32, cache_dir=tmp_path / "c",
                         use_cache=False)
    assert pred.settings["patch_px"] == 32 and pred.patch_size_level0 == 64
    assert any("32 px" in w for w in pred.warnings)
    assert not (tmp_path / "c").exists()  # use_cache=False writes nothing


# --------------------------------------------------------------------------- overlays


def test_patch_lattice_places_each_patch_in_its_cell():
    coords = np.array([[512, 256], [768, 256], [512, 768], [1024, 512]])
    lat = overlays.patch_lattice(coords, 256)
    assert lat.origin == (512, 256) and lat.step == 256 and lat.shape == (3, 3)
    img = overlays.grid_image(np.array([1.0, 2.0, 3.0, 4.0]), lat)
    assert img[0, 0] == 1 and img[0, 1] == 2 and img[2, 0] == 3 and img[1, 2] == 4
    assert np.isnan(img[1, 1])
    # overlapping grids (stride 128) get one cell per stride
    assert overlays.patch_lattice(np.array([[0, 0], [128, 0]]), 256).step == 128


def test_lattice_transform_centres_cells_on_their_patches():
    coords = np.array([[512, 256], [768, 512]])
    lat = overlays.patch_lattice(coords, 256)
    mpp = 0.499
    scale, translate = overlays.lattice_transform(lat, (mpp, mpp), (10.0, 20.0))
    for (x, y), r, c in zip(coords, lat.rows, lat.cols):
        # world centre of the cell == world centre of the patch's level-0 pixels
        cell_centre = np.array(translate) + np.array(scale) * (r, c)
        patch_centre = np.array([10.0, 20.0]) + mpp * np.array([y + 127.5, x + 127.5])
        np.testing.assert_allclose(cell_centre, patch_centre)
    # the mask's first pixel spans level-0 pixels [0, 16): centre 7.5
    ms, mt = overlays.mask_transform(16.0, (mpp, mpp))
    assert mt == pytest.approx((7.5 * mpp, 7.5 * mpp)) and ms == pytest.approx((16 * mpp,) * 2)
    rect = overlays.region_rectangles(np.array([[512, 256, 256, 256]]))[0]
    np.testing.assert_allclose(rect[0], [255.5, 511.5])
    np.testing.assert_allclose(rect[2], [511.5, 767.5])


def test_percentile_normalisation():
    ranks = overlays.percentile_normalise(np.array([0.5, 0.1, 0.1, 0.9]))
    np.testing.assert_allclose(ranks, [0.75, 0.375, 0.375, 1.0])
    lat = overlays.patch_lattice(np.array([[0, 0], [256, 0], [512, 0]]), 256)
    img = overlays.attention_image(np.array([0.0, 0.2, 0.8]), lat)
    assert img.shape == (1, 3)
    assert img[0, 0] == pytest.approx(0.02)  # in tissue, zero attention: lowest colour
    assert img[0, 2] == pytest.approx(1.0) and 0.02 < img[0, 1] < 1.0


def test_mask_outline_keeps_the_edge_of_each_region():
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True
    mask[5:7, 5:7] = False  # a hole
    out = overlays.mask_outline(mask, width=1)
    assert out.dtype == np.uint8
    assert out[2, 2:10].all() and out[9, 2:10].all()  # outer edge
    assert out[4, 5] and out[7, 6]  # around the hole
    assert not out[3, 3] and not out[~mask].any()


def test_predict_slide_takes_the_keywords_of_predict_patient():
    # predict_slide forwards its keywords to predict_patient: the two must stay in step
    import inspect

    from napari_ghanet.inference.predict import predict_patient

    one = inspect.signature(predict_slide).parameters
    many = inspect.signature(predict_patient).parameters
    keywords = {k: p.default for k, p in one.items() if k != "slide_or_path"}
    assert keywords.keys() <= many.keys()
    assert all(many[k].default == d for k, d in keywords.items())
