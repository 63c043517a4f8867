"""SpatialData export of a real prediction: read back with spatialdata, the values equal
the JSON report and the per-patch CSV; atomic writing; a LazySlide-style reader opens it."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from _plugin_helpers import need

need("spatialdata")

sys.path.insert(0, str(Path(__file__).parent))
from _plugin_helpers import make_bundle  # noqa: E402
from napari_ghanet.errors import GHANetError  # noqa: E402
from napari_ghanet.inference.exports import write_patch_csv, write_report_json  # noqa: E402
from napari_ghanet.inference.spatialdata_export import (  # noqa: E402
    PATCHES_KEY,
    QC_KEY,
    TABLE_KEY,
    read_spatialdata_report,
    write_spatialdata,
)


@pytest.fixture(scope="module")
def prediction(tiled_tiff, tmp_path_factory):
    from napari_ghanet.inference.predict import predict_slide

    bundle = make_bundle(tmp_path_factory.mktemp("b") / "m.safetensors")
    p = predict_slide(tiled_tiff, bundle, device="cpu", use_cache=False)
    assert p.n_patches > 3
    return p


def test_round_trip_equals_the_json_and_csv_exports(prediction, tmp_path):
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    store = write_spatialdata(prediction, tmp_path / "slide.zarr")
    assert store.is_dir() and not [p for p in tmp_path.iterdir() if "ghanet-tmp" in p.name]
    back = sd.read_zarr(store)
    table = back.tables[TABLE_KEY]

    with open(write_patch_csv(prediction, tmp_path / "p.csv"), newline="") as fh:
        rows = list(csv.reader(fh))
    header, values = rows[0], np.array(rows[1:], dtype=np.float64)
    n_att = 1 + len(prediction.category_names)
    assert list(table.var_names) == header[4 : 4 + n_att]
    order = table.obs["patch"].to_numpy()
    np.testing.assert_allclose(np.asarray(table.X, np.float64), values[order, 4 : 4 + n_att],
                               rtol=1e-6, atol=1e-9)
    for j, col in enumerate(("x", "y", "width", "height")):
        np.testing.assert_array_equal(table.obs[col].to_numpy(), values[order, j].astype(np.int64))
    assert set(table.obs["qc_flag"]) == {"passed"}

    report = json.loads(write_report_json(prediction, tmp_path / "r.json").read_text())
    assert read_spatialdata_report(store) == report
    assert table.uns["risk"] == pytest.approx(report["prediction"]["risk"])

    shapes = back.shapes[PATCHES_KEY]
    assert len(shapes) == prediction.n_patches
    bounds = shapes.geometry.bounds.to_numpy()[table.obs["tile_id"].to_numpy()]
    np.testing.assert_array_equal(bounds[:, :2], values[order, :2])
    np.testing.assert_array_equal(bounds[:, 2] - bounds[:, 0], values[order, 2])
    scale = get_transformation(shapes, to_coordinate_system="micrometers")
    mpp = prediction.slide["mpp"]
    np.testing.assert_allclose(scale.to_affine_matrix(("x", "y"), ("x", "y"))[[0, 1], [0, 1]],
                               [mpp, mpp])
    if len(prediction.qc_reasons):
        qc = back.shapes[QC_KEY]
        assert sorted(qc["reason"]) == sorted(map(str, prediction.qc_reasons))


def test_existing_store_is_kept_unless_overwriting(prediction, tmp_path):
    path = tmp_path / "s.zarr"
    write_spatialdata(prediction, path)
    with pytest.raises(GHANetError, match="already exists"):
        write_spatialdata(prediction, path)
    write_spatialdata(prediction, path, overwrite=True)
    assert read_spatialdata_report(path)["prediction"]["risk"] == pytest.approx(prediction.risk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_a_lazyslide_style_reader_finds_the_tiles_and_table(prediction, tmp_path):
    from napari_ghanet.io.wsidata import read_wsidata_features

    path = write_spatialdata(prediction, tmp_path / "w.zarr")
    pf = read_wsidata_features(path, feature_key=TABLE_KEY)
    assert pf.attrs["tile_key"] == PATCHES_KEY
    np.testing.assert_array_equal(pf.coords, prediction.coords)
    np.testing.assert_allclose(pf.features[:, 0], prediction.morphology_attention, rtol=1e-6)


def test_qc_flagged_patches_are_their_own_shapes_with_reasons(prediction, tmp_path):
    import dataclasses

    import spatialdata as sd

    flagged = dataclasses.replace(
        prediction,
        qc_coords=np.array([[0, 0], [512, 256]], np.int64),
        qc_reasons=np.array(["pen", "blur"]),
        qc_slide_index=np.zeros(2, np.int64),
    )
    back = sd.read_zarr(write_spatialdata(flagged, tmp_path / "q.zarr"))
    qc = back.shapes[QC_KEY]
    assert list(qc["reason"]) == ["pen", "blur"]
    np.testing.assert_array_equal(qc.geometry.bounds.to_numpy()[:, :2], [[0, 0], [512, 256]])
    side = flagged.patch_size_level0
    np.testing.assert_array_equal(qc.geometry.bounds.to_numpy()[:, 2], [side, 512 + side])
