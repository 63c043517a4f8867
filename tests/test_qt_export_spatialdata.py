"""The dock's "Export SpatialData..." button writes a store spatialdata reads back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from _plugin_helpers import need

need("spatialdata")
need("qtpy")

sys.path.insert(0, str(Path(__file__).parent))


def test_export_spatialdata_button_writes_a_store(qtbot, tiled_tiff, tmp_path):
    import spatialdata as sd

    from _plugin_helpers import make_bundle
    from napari_ghanet._qt.exports import ExportPanel
    from napari_ghanet.inference.predict import predict_slide
    from napari_ghanet.inference.spatialdata_export import TABLE_KEY

    p = predict_slide(tiled_tiff, make_bundle(tmp_path / "m.safetensors"), device="cpu",
                      use_cache=False, qc=None)
    panel = ExportPanel(None, lambda: p)
    qtbot.addWidget(panel)
    assert panel.buttons["spatialdata"].text() == "Export SpatialData..."
    out = panel.export("spatialdata", tmp_path / "result")
    assert out == tmp_path / "result.zarr"
    table = sd.read_zarr(out).tables[TABLE_KEY]
    assert table.n_obs == p.n_patches and table.uns["risk"] == pytest.approx(p.risk)
    # exporting again replaces the store (the save dialog asked already)
    assert panel.export("spatialdata", out) == out
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.safetensors", "result.zarr"]


def test_buttons_write_in_a_worker_and_report(qtbot, tiled_tiff, tmp_path):
    import json

    from _plugin_helpers import make_bundle
    from napari_ghanet._qt.exports import ExportPanel
    from napari_ghanet.inference.predict import predict_slide

    p = predict_slide(tiled_tiff, make_bundle(tmp_path / "m.safetensors"), device="cpu",
                      use_cache=False, qc=None)
    panel = ExportPanel(None, lambda: p)
    qtbot.addWidget(panel)
    done = []
    panel.exported.connect(lambda kind, out: done.append((kind, out)))
    panel.export_in_background("geojson", tmp_path / "p.geojson")
    assert not panel.buttons["geojson"].isEnabled()  # until its file is written
    qtbot.waitUntil(lambda: bool(done), timeout=30_000)
    assert done == [("geojson", tmp_path / "p.geojson")]
    assert panel.buttons["geojson"].isEnabled()
    doc = json.loads((tmp_path / "p.geojson").read_text())
    assert len(doc["features"]) == p.n_patches
    # a failure is reported (no file, the button back)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    panel.export_in_background("csv", blocker / "p.csv")
    qtbot.waitUntil(lambda: len(done) == 2, timeout=30_000)
    assert done[1] == ("csv", None) and panel.buttons["csv"].isEnabled()
    assert blocker.read_text() == "not a folder"
