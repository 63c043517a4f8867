"""The prediction stages on their own, predict_patient (several slides, one bag) and
embed_to_file (what `ghanet embed` and cohort runners call per slide)."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
import torch

from _plugin_helpers import FAST_ENCODER, make_bundle, tissue_rgb, write_tiff_slide
from napari_ghanet.errors import Cancelled, NoTissueError, SlideError
from napari_ghanet.inference.export_registry import export_all, export_paths
from napari_ghanet.inference.predict import predict_patient, predict_slide
from napari_ghanet.inference.stages import (
    EmbedOutcome,
    build_encoder,
    embed_to_file,
    features_stage,
    grid_stage,
    model_stage,
    open_stage,
)
from napari_ghanet.io.features import load_features
from napari_ghanet.models.bundle import load_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "fast.safetensors"
    return load_bundle(make_bundle(path, encoder=FAST_ENCODER))


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    """Two different generated slides of one patient (1 um/px: 128 level-0 px patches)."""
    d = tmp_path_factory.mktemp("slides")
    a = write_tiff_slide(d / "case-A.tif", tissue_rgb(640, 896, seed=1), mpp=1.0, levels=2)
    b = write_tiff_slide(d / "case-B.tif", tissue_rgb(512, 768, seed=2), mpp=1.0, levels=2)
    return a, b


@pytest.fixture(scope="module")
def patient_run(bundle, two_slides, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    stages = []
    pred = predict_patient(two_slides, bundle, patient="CASE-1", device="cpu", cache_dir=cache,
                           progress=lambda s, d, t: stages.append(s))
    return pred, cache, stages


def test_patient_bag_is_the_model_on_the_concatenated_slides(patient_run, bundle, two_slides):
    pred, cache, stages = patient_run
    singles = [predict_slide(s, bundle, device="cpu", cache_dir=cache) for s in two_slides]
    assert all(p.features_cached for p in singles)  # the patient run cached each slide
    n = [p.n_patches for p in singles]
    assert min(n) > 3 and pred.n_patches == sum(n)
    np.testing.assert_array_equal(pred.slide_index, np.repeat([0, 1], n))
    np.testing.assert_array_equal(pred.coords, np.concatenate([p.coords for p in singles]))
    # the union bag, built by hand from each slide's features file
    bag = np.concatenate([load_features(p.features_path).features for p in singles])
    with torch.inference_mode():
        out = bundle.model.forward_bag(torch.from_numpy(bag))
    assert pred.risk == pytest.approx(float(out.risk), abs=1e-6)
    np.testing.assert_allclose(pred.morphology_attention, out.morphology_attention.numpy(),
                               atol=1e-7)
    np.testing.assert_allclose(pred.genome_attention, out.genome_attention.numpy(), atol=1e-7)
    for cat, rec in zip(pred.categories, out.reconstructed):
        np.testing.assert_allclose(cat.values, rec.numpy(), atol=1e-6)
    # one bag, not two: attention is one distribution over both slides' patches
    assert pred.morphology_attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert pred.risk != pytest.approx(singles[0].risk, abs=1e-9)
    # per-slide attention, slide descriptions and regions
    shares = []
    for k, single in enumerate(singles):
        coords, morph, genome = pred.slide_attention(k)
        np.testing.assert_array_equal(coords, single.coords)
        assert genome.shape == (6, n[k])
        shares.append(morph.sum())
        assert pred.slides[k]["name"] == two_slides[k].name
        assert pred.slides[k]["n_patches"] == n[k] and pred.slides[k]["features_cached"] is False
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    for r in pred.top_regions:
        assert r.slide == pred.slide_index[r.index]
        assert (r.x, r.y) == tuple(pred.coords[r.index])
    assert pred.n_slides == 2 and len(pred.tissue_masks) == 2
    assert stages.count("slide") == 2 and stages.count("model") == 2 and stages[-1] == "done"
    report = pred.to_dict()
    assert [s["n_patches"] for s in report["slides"]] == n
    assert sum(s["morphology_attention_share"] for s in report["slides"]) == pytest.approx(1.0)


def test_patient_exports_name_the_patient_and_each_patchs_slide(patient_run, tmp_path):
    pred = patient_run[0]
    paths = export_all(pred, tmp_path)
    assert paths == export_paths(pred, tmp_path)
    assert paths["report"].name == "CASE-1.ghanet.json"
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["slide"]) for r in rows] == pred.slide_index.tolist()
    assert {int(r["width"]) for r in rows} == {128}


def test_one_slide_patient_is_predict_slide(bundle, two_slides, tmp_path):
    a = predict_slide(two_slides[0], bundle, device="cpu", use_cache=False)
    b = predict_patient([two_slides[0]], bundle, device="cpu", use_cache=False)
    for name in ("coords", "morphology_attention", "genome_attention", "survival", "hazards",
                 "tissue_mask", "slide_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.risk == b.risk and a.top_regions == b.top_regions
    ta, tb = a.to_dict(), b.to_dict()
    ta.pop("timings_s"), tb.pop("timings_s")
    assert ta == tb and "slides" not in ta


def test_patient_needs_slides_and_one_mpp_per_slide(bundle, two_slides):
    with pytest.raises(ValueError, match="at least one slide"):
        predict_patient([], bundle, device="cpu")
    with pytest.raises(ValueError, match="3 mpp values for 2 slides"):
        predict_patient(two_slides, bundle, device="cpu", mpp=[1.0, 1.0, 1.0])


def test_stages_run_one_by_one(bundle, two_slides, tmp_path):
    slide, opened = open_stage(two_slides[0])
    assert opened
    try:
        timings = {}
        mask, grid = grid_stage(slide, patch_px=64, target_mpp=2.0, timings=timings)
        assert grid.patch_size_level0 == 128 and len(grid) > 3
        encoder, spec, notes = build_encoder(bundle, patch_px=64, target_mpp=2.0)
        assert spec.name == "morphometric" and spec.patch_px == 64 and notes == []
        first = features_stage(slide, grid, encoder, cache_path=tmp_path / "f.h5",
                               device="cpu", timings=timings)
        again = features_stage(slide, grid, encoder, cache_path=tmp_path / "f.h5",
                               device="cpu")
        assert not first.cached and again.cached
        np.testing.assert_array_equal(first.features.features, again.features.features)
        out = model_stage(bundle, first.features.features, device="cpu", timings=timings)
        assert set(timings) == {"tissue", "patches", "features", "model"}
        with torch.inference_mode():
            ref = bundle.model.forward_bag(torch.from_numpy(first.features.features))
        assert out.risk == pytest.approx(float(ref.risk), abs=1e-6)
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            grid_stage(slide, patch_px=64, target_mpp=2.0, cancel=cancel)
    finally:
        slide.close()
    nompp = write_tiff_slide(tmp_path / "nompp.tif", tissue_rgb(256, 256), mpp=None, levels=1)
    with pytest.raises(SlideError, match="microns per pixel"):
        open_stage(nompp)


def _dask_round_trip(obj):
    from distributed.protocol import deserialize, serialize

    return deserialize(*serialize(obj))


def test_embed_to_file_done_skipped_failed(two_slides, tmp_path):
    kw = dict(encoder_kwargs={"patch_px": 64, "target_mpp": 2.0}, device="cpu", workers=0)
    out = tmp_path / "feats"
    # plain, serialisable arguments and results: what Dask sends to and from a worker
    assert _dask_round_trip(embed_to_file) is embed_to_file
    done = embed_to_file(two_slides[0], out, "morphometric", **kw)
    assert isinstance(_dask_round_trip(done), EmbedOutcome)
    assert done.status == "done" and done.error is None and done.dim == 64
    feats = load_features(out / "case-A.h5")
    with open_stage(two_slides[0])[0] as s:
        _, grid = grid_stage(s, patch_px=64, target_mpp=2.0)
    np.testing.assert_array_equal(feats.coords, grid.coords)
    assert done.n_patches == len(grid) and done.path == str(out / "case-A.h5")
    stamp = (out / "case-A.h5").stat().st_mtime_ns
    again = embed_to_file(two_slides[0], out, "morphometric", **kw)
    assert again.status == "skipped" and again.n_patches == len(grid)
    assert (out / "case-A.h5").stat().st_mtime_ns == stamp
    # another grid: refused without overwrite, recomputed with it
    other = embed_to_file(two_slides[0], out, "morphometric", min_tissue_fraction=0.9, **kw)
    assert other.status == "failed" and "allow overwriting" in other.error
    assert (out / "case-A.h5").stat().st_mtime_ns == stamp
    redo = embed_to_file(two_slides[0], out, "morphometric", min_tissue_fraction=0.9,
                         overwrite=True, **kw)
    assert redo.status == "done" and redo.n_patches <= len(grid)
    blank = write_tiff_slide(tmp_path / "blank.tif", np.full((512, 512, 3), 243, np.uint8))
    failed = embed_to_file(blank, out, "morphometric", **kw)
    assert failed.status == "failed" and "no tissue" in failed.error
    assert "blank.tif: FAILED" in failed.summary()
    assert not (out / "blank.h5").exists()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        embed_to_file(two_slides[1], out, "morphometric", cancel=cancel, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["case-A.h5"]


def test_blank_slide_in_a_patient_names_it(bundle, two_slides, tmp_path):
    blank = write_tiff_slide(tmp_path / "blank.tif", np.full((512, 512, 3), 243, np.uint8))
    with pytest.raises(NoTissueError, match="blank.tif"):
        predict_patient([two_slides[0], blank], bundle, device="cpu", use_cache=False)
