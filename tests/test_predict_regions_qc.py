"""Regions of interest, artifact QC, overlapping heatmaps, patients and the report's risk
wording through predict_slide / predict_patient and ``ghanet predict`` (issue 13)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import he_image, write_pyramid
from napari_ghanet.cli import main
from napari_ghanet.errors import NoTissueError
from napari_ghanet.inference.heatmap import overlap_grid, overlap_heatmap
from napari_ghanet.inference.predict import predict_patient, predict_slide
from napari_ghanet.io.features import load_features, save_features
from napari_ghanet.io.slide import open_slide
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle
from napari_ghanet.models.risk import survival_horizon
from napari_ghanet.preprocessing.qc import QCParams
from napari_ghanet.preprocessing.roi import Regions, filter_grid, read_geojson

MPP_CMU = 0.499


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(demo_bundle_path())


@pytest.fixture(scope="module")
def plain(cmu_svs, bundle, tmp_path_factory):
    """The CMU slide without QC or regions: the reference grid and numbers."""
    return predict_slide(cmu_svs, bundle, device="cpu", qc=None,
                         cache_dir=tmp_path_factory.mktemp("plain-cache"))


def _geojson(path, *polygons):
    feats = [{"type": "Feature", "properties": {"name": f"r{i}"},
              "geometry": {"type": "Polygon", "coordinates": [ring]}}
             for i, ring in enumerate(polygons)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def _box(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.fixture(scope="module")
def pen_slide(tmp_path_factory):
    """A generated H&E slide with a thick green marker stroke across the tissue."""
    rgb, _ = he_image(1536, 2048, seed=3)
    rgb = rgb.copy()
    rgb[640:900, 600:1500] = (30, 150, 60)  # the stroke: 260 x 900 px of green ink
    return write_pyramid(tmp_path_factory.mktemp("pen") / "pen.tif", rgb, mpp=0.5)


# ------------------------------------------------------------------ regions


def test_include_and_exclude_regions_filter_the_grid_before_embedding(
        cmu_svs, bundle, plain, tmp_path):
    w, h = plain.slide["dimensions_level0"]
    inc = _geojson(tmp_path / "inc.geojson", _box(0, 0, w, h // 2))
    cx, cy = (int(v) + plain.patch_size_level0 // 2 for v in plain.coords[0])  # its centre
    exc = _geojson(tmp_path / "exc.geojson", _box(cx - 20, cy - 20, cx + 20, cy + 20))
    regions = Regions.from_files([inc], [exc])
    keep, rep = filter_grid(plain.coords, plain.patch_size_level0, regions, mpp=MPP_CMU)
    assert 0 < keep.sum() < plain.n_patches and rep.n_excluded > 0

    p = predict_slide(cmu_svs, bundle, device="cpu", qc=None, regions=regions,
                      cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(p.coords, plain.coords[keep])
    assert len(load_features(p.features_path)) == keep.sum()  # only kept patches embedded
    r = p.regions_report
    assert (r["n_patches"], r["n_kept"]) == (plain.n_patches, int(keep.sum()))
    assert r["n_excluded"] == rep.n_excluded and r["n_outside_include"] == rep.n_outside_include
    inc_area = read_geojson(inc)[0].geometry.area * (MPP_CMU * 1e-3) ** 2
    assert r["include_area_mm2"] == pytest.approx(inc_area, rel=1e-3)
    assert p.settings["regions"]["include"] == ["r0"]
    # the same through the CLI: the report and the CSV hold only the kept patches
    out = tmp_path / "out"
    code = main(["predict", str(cmu_svs), "--out", str(out), "--device", "cpu", "--quiet",
                 "--no-qc", "--roi", str(inc), "--exclude", str(exc),
                 "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    report = json.loads((out / "cmu_small_region.ghanet.json").read_text())
    assert report["regions"]["n_kept"] == keep.sum()
    assert report["patches"]["count"] == keep.sum()
    assert report["prediction"]["risk"] == pytest.approx(p.risk, abs=1e-6)
    with open(out / "cmu_small_region.patches.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == keep.sum()


def test_regions_that_leave_no_patch_say_so(cmu_svs, bundle, plain, tmp_path):
    far = _geojson(tmp_path / "far.geojson", _box(10, 10, 40, 40))
    with pytest.raises(NoTissueError, match=f"all {plain.n_patches} patches were outside"):
        predict_slide(cmu_svs, bundle, device="cpu", regions=Regions.from_files([far]),
                      use_cache=False)


# ------------------------------------------------------------------ QC


def test_qc_flags_a_pen_stroke_and_leaves_it_out(pen_slide, bundle, tmp_path):
    cache = tmp_path / "c"
    off = predict_slide(pen_slide, bundle, device="cpu", qc=None, cache_dir=cache)
    p = predict_slide(pen_slide, bundle, device="cpu", cache_dir=cache)
    assert p.slides[0]["qc_measures"] == "qc pass"  # the QC-off cache had no measures
    size = p.patch_size_level0
    xy = off.coords
    # ink fraction of each patch, from the drawn stroke's rectangle
    ox = np.clip(np.minimum(xy[:, 0] + size, 1500) - np.maximum(xy[:, 0], 600), 0, None)
    oy = np.clip(np.minimum(xy[:, 1] + size, 900) - np.maximum(xy[:, 1], 640), 0, None)
    ink = ox * oy / size**2
    assert (ink > 0.3).sum() >= 4
    assert set(p.qc_reasons.tolist()) == {"pen"}
    flagged = {tuple(c) for c in p.qc_coords.tolist()}
    assert {tuple(c) for c in xy[ink > 0.3].tolist()} <= flagged
    assert flagged <= {tuple(c) for c in xy[ink > 0.0].tolist()}
    assert p.n_patches == off.n_patches - len(flagged)
    assert not flagged & {tuple(c) for c in p.coords.tolist()}
    assert p.qc_report["flagged"]["pen"] == len(flagged) == p.qc_report["flagged"]["total"]
    assert p.qc_slide_index.tolist() == [0] * len(flagged)

    # a cached prediction reuses the measures: a new threshold needs no re-embedding
    strict = predict_slide(pen_slide, bundle, device="cpu", cache_dir=cache,
                           qc=QCParams(pen_min_fraction=0.45))
    assert strict.features_cached and strict.slides[0]["qc_measures"] == "cache"
    assert 0 < len(strict.qc_coords) < len(flagged)
    assert {tuple(c) for c in strict.qc_coords.tolist()} == {
        tuple(c) for c in xy[ink > 0.46].tolist()}
    assert strict.n_patches == off.n_patches - len(strict.qc_coords)
    assert strict.risk != p.risk


def test_cli_qc_thresholds_reach_qcparams(pen_slide, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", str(pen_slide), "--out", str(out), "--device", "cpu", "--quiet",
                 "--qc-pen-fraction", "0.45", "--qc-fold-fraction", "0.3", "--qc-fold-od", "1.1",
                 "--qc-blur-ratio", "0.1", "--qc-detectors", "pen,blur",
                 "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    qc = json.loads((out / "pen.ghanet.json").read_text())["qc"]
    prm = qc["params"]
    assert (prm["pen_min_fraction"], prm["fold_min_fraction"], prm["fold_od"],
            prm["blur_fraction"], prm["detect"]) == (0.45, 0.3, 1.1, 0.1, ["pen", "blur"])
    assert qc["flagged"]["pen"] == qc["flagged"]["total"] == 4  # ink over 45 % of a patch
    assert main(["predict", str(pen_slide), "--out", str(out), "--qc-pen-fraction", "2"]) == 2


def test_qc_flagging_every_patch_is_a_clear_error(pen_slide, bundle, tmp_path):
    with pytest.raises(NoTissueError, match="patches were flagged by QC"):
        predict_slide(pen_slide, bundle, device="cpu", cache_dir=tmp_path,
                      qc=QCParams(pen_min_fraction=0.0))


def test_qc_on_the_real_slide_flags_nothing(cmu_svs, bundle, plain, tmp_path, capsys):
    p = predict_slide(cmu_svs, bundle, device="cpu", cache_dir=tmp_path)
    assert p.qc_report["flagged"]["total"] == 0 and p.qc_report["n_patches"] == plain.n_patches
    assert p.qc_report["note"] == ""  # blur was judged
    assert p.risk == pytest.approx(plain.risk, abs=1e-6)
    np.testing.assert_array_equal(p.coords, plain.coords)
    # through the CLI, --qc (default) and --no-qc give the same numbers
    reports = []
    for flag in ("--qc", "--no-qc"):
        out = tmp_path / flag
        assert main(["predict", str(cmu_svs), "--out", str(out), "--device", "cpu",
                     "--quiet", flag, "--cache-dir", str(tmp_path)]) == 0
        reports.append(json.loads((out / "cmu_small_region.ghanet.json").read_text()))
    assert reports[0]["prediction"] == reports[1]["prediction"]
    assert reports[0]["qc"]["flagged"]["total"] == 0 and reports[1]["qc"] is None
    err = capsys.readouterr().err
    assert "QC: 0 of 30 patches flagged" in err and "QC: off" in err


def test_an_older_cache_without_measures_gets_them_once(cmu_svs, bundle, tmp_path):
    p = predict_slide(cmu_svs, bundle, device="cpu", cache_dir=tmp_path)
    assert p.slides[0]["qc_measures"] == "embedding"
    old = load_features(p.features_path)
    assert old.qc_measures is not None and old.qc_measures.shape == (p.n_patches, 3)
    old.qc_measures = None
    save_features(p.features_path, old)  # as written before QC measures existed
    again = predict_slide(cmu_svs, bundle, device="cpu", cache_dir=tmp_path)
    assert again.features_cached and again.slides[0]["qc_measures"] == "qc pass"
    assert again.risk == p.risk
    third = predict_slide(cmu_svs, bundle, device="cpu", cache_dir=tmp_path)
    assert third.slides[0]["qc_measures"] == "cache"


# ------------------------------------------------------------------ heatmaps


def test_overlap_heatmaps_are_finer_and_leave_the_prediction_alone(
        cmu_svs, bundle, plain, tmp_path):
    p = predict_slide(cmu_svs, bundle, device="cpu", qc=None, overlap=0.5,
                      cache_dir=tmp_path)
    assert p.risk == pytest.approx(plain.risk, abs=1e-6)
    np.testing.assert_allclose(p.morphology_attention, plain.morphology_attention, atol=1e-7)
    assert list(p.heatmaps) == ["morphology", *bundle.category_names]
    size = p.patch_size_level0
    with open_slide(cmu_svs) as s:
        from napari_ghanet.inference.stages import grid_stage
        mask, grid = grid_stage(s, patch_px=256, target_mpp=0.5)
    extra = overlap_grid(grid, 0.5, mask)
    assert p.settings["heatmap_extra_patches"] == len(extra) > p.n_patches
    for hm in p.heatmaps.values():
        assert hm.cell_level0 == size / 2
        assert len(hm.coords) == p.n_patches + len(extra)
        ref = overlap_heatmap(hm.coords, size, hm.scores, 0.5)
        np.testing.assert_array_equal(hm.image, ref.image)
        assert np.isfinite(hm.image[hm.count > 0]).all()
    # the bag's own patches score their morphology attention
    np.testing.assert_allclose(p.heatmaps["morphology"].scores[: p.n_patches],
                               p.morphology_attention, rtol=1e-4, atol=1e-7)
    # the extra patches were cached too: a second run embeds nothing
    again = predict_slide(cmu_svs, bundle, device="cpu", qc=None, overlap=0.5,
                          cache_dir=tmp_path)
    assert again.timings["heatmap"] < p.timings["heatmap"]
    np.testing.assert_array_equal(again.heatmaps["morphology"].image,
                                  p.heatmaps["morphology"].image)
    assert plain.heatmaps == {} and plain.settings["heatmap_extra_patches"] == 0


# ------------------------------------------------------------------ patients, report


def test_patient_of_two_slides_writes_one_report(cmu_svs, pen_slide, bundle, tmp_path,
                                                 capsys):
    out = tmp_path / "out"
    code = main(["predict", str(cmu_svs), str(pen_slide), "--patient", "P7", "--out",
                 str(out), "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "c")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "P7.ghanet.json", "P7.patches.csv", "P7.patches.geojson"]
    report = json.loads((out / "P7.ghanet.json").read_text())
    assert [s["name"] for s in report["slides"]] == ["cmu_small_region.svs", "pen.tif"]
    assert len(report["qc"]["slides"]) == 2 and report["qc"]["flagged"]["pen"] > 0
    with open(out / "P7.patches.csv", newline="") as fh:
        slides = [int(r["slide"]) for r in csv.DictReader(fh)]
    assert set(slides) == {0, 1} and len(slides) == report["patches"]["count"]
    geo = json.loads((out / "P7.patches.geojson").read_text())
    assert {f["properties"]["slideName"] for f in geo["features"]} == {
        "cmu_small_region.svs", "pen.tif"}
    lib = predict_patient([cmu_svs, pen_slide], bundle, patient="P7", device="cpu",
                          cache_dir=tmp_path / "c")
    assert lib.risk == pytest.approx(report["prediction"]["risk"], abs=1e-6)
    assert set(lib.qc_slide_index.tolist()) == {1} and set(lib.qc_reasons.tolist()) == {"pen"}
    # several slides without --patient are a cohort: one report per slide, QC on in each
    cohort = tmp_path / "cohort"
    assert main(["predict", str(cmu_svs), str(pen_slide), "--out", str(cohort), "--quiet",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) == 0
    pen_report = json.loads((cohort / "pen" / "pen.ghanet.json").read_text())
    assert pen_report["qc"]["flagged"]["pen"] > 0
    assert (cohort / "cmu_small_region" / "cmu_small_region.ghanet.json").is_file()
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().err


def test_report_has_horizon_and_tertile_group(cmu_svs, bundle, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(cmu_svs), "--out", str(out), "--device", "cpu", "--quiet",
                 "--cache-dir", str(tmp_path)]) == 0
    report = json.loads((out / "cmu_small_region.ghanet.json").read_text())
    horizon, note = survival_horizon(bundle.metadata)
    assert report["horizon_months"] == pytest.approx(65.295) == horizon
    assert report["horizon_note"] == note and "65.3 months" in note
    pred = report["prediction"]
    assert pred["risk_group"] == "intermediate"
    assert pred["percentile_in_training_cohort"] == pytest.approx(52.9, abs=0.1)
    assert pred["risk_group_text"] == (
        "Intermediate risk (53rd percentile of the training cohort)")


def test_slide_warnings_reach_the_report(cmu_svs, bundle, tmp_path):
    with open_slide(cmu_svs) as s:
        s.warnings.append("tile 3 could not be decoded and was read as background")
        p = predict_slide(s, bundle, device="cpu", cache_dir=tmp_path)
    assert "tile 3 could not be decoded and was read as background" in p.warnings
    assert "tile 3 could not" in json.dumps(p.to_dict()["warnings"])


def test_an_unwritable_output_folder_is_refused_before_any_work(cmu_svs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = tmp_path / "cache"
    code = main(["predict", str(cmu_svs), "--out", str(blocker), "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 1 and "is a file, not a folder" in err
    assert not cache.exists()  # nothing was embedded
    if os.geteuid() != 0:  # root writes anywhere: the read-only case needs a normal user
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code = main(["predict", str(cmu_svs), "--out", str(ro), "--cache-dir", str(cache)])
        ro.chmod(0o700)
        assert code == 1 and "cannot write into the output folder" in capsys.readouterr().err
        assert not cache.exists()
