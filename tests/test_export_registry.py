"""The export registry: one registration per kind, read by ``ghanet predict``, the cohort
runs and the dock's buttons; a throwaway format registered here shows up in all of them."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle, need
from napari_ghanet.cli import predict as cli_predict
from napari_ghanet.errors import GHANetError, UnsafeNameError
from napari_ghanet.inference import export_registry as reg
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.atomic import atomic_write


def _write_risk_txt(prediction, path):
    """A throwaway format: the risk as one line of text."""
    return atomic_write(path, f"{prediction.risk!r}\n")


@pytest.fixture
def throwaway():
    fmt = reg.register_export(reg.ExportFormat(
        "risktxt", "Risk text", ".risk.txt", _write_risk_txt, "Text (*.txt)"))
    yield fmt
    reg.unregister_export("risktxt")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


@pytest.fixture(scope="module")
def prediction(tiled_tiff, bundle):
    return predict_slide(tiled_tiff, bundle, device="cpu", use_cache=False, qc=None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ghanet")
    cli_predict.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_builtin_kinds_and_their_default_names(prediction, tmp_path):
    keys = [f.key for f in reg.export_formats()]
    assert keys[:5] == ["report", "csv", "geojson", "spatialdata", "png"]
    assert [f.key for f in reg.export_formats(default=True)] == ["report", "csv", "geojson"]
    assert reg.get_export("JSON") is reg.get_export("report")
    assert reg.get_export("spatialdata").folder and not reg.get_export("csv").folder
    assert "png" not in [f.key for f in reg.export_formats(source="prediction")]
    written = reg.export_all(prediction, tmp_path)
    assert written == reg.export_paths(prediction, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tiled.ghanet.json", "tiled.patches.csv", "tiled.patches.geojson"]
    report = json.loads(written["report"].read_text())
    assert report["prediction"]["risk"] == pytest.approx(prediction.risk)


def test_refusals_name_the_problem(prediction, tmp_path, throwaway):
    with pytest.raises(reg.UnknownExport, match="unknown export 'nope'.*risktxt"):
        reg.export_all(prediction, tmp_path, ["nope"])
    with pytest.raises(ValueError, match="already registered"):
        reg.register_export(throwaway)
    with pytest.raises(reg.UnknownExport, match="canvas"):
        reg.export_all(prediction, tmp_path, ["png"])
    missing = reg.register_export(reg.ExportFormat(
        "ghost", "Ghost", ".ghost", _write_risk_txt, "*", requires="no_such_package_xyz",
        extra="ghost"))
    try:
        assert not missing.available
        with pytest.raises(GHANetError, match=r"pip install 'napari-ghanet\[ghost\]'"):
            reg.export_all(prediction, tmp_path, ["report", "ghost"])
        assert list(tmp_path.iterdir()) == []  # refused before anything was written
    finally:
        reg.unregister_export("ghost")
    forged = type(prediction).__new__(type(prediction))
    forged.__dict__.update(prediction.__dict__)
    forged.slide = {**prediction.slide, "patient": "../escape"}
    with pytest.raises(UnsafeNameError):
        reg.export_paths(forged, tmp_path, ["risktxt"])


def test_a_registered_format_reaches_the_command_line(bundle, tiled_tiff, tmp_path,
                                                      throwaway, capsys):
    help_text = _parser().format_help() + _subparser_help()
    assert "risktxt: Risk text (<name>.risk.txt)" in " ".join(help_text.split())
    out = tmp_path / "out"
    args = _parser().parse_args(["predict", str(tiled_tiff), "--model", str(bundle),
                                 "--out", str(out), "--device", "cpu", "--no-cache",
                                 "--export", "risktxt", "--export", "report"])
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiled.ghanet.json", "tiled.risk.txt"]
    risk = json.loads((out / "tiled.ghanet.json").read_text())["prediction"]["risk"]
    assert float((out / "tiled.risk.txt").read_text()) == pytest.approx(risk)
    assert capsys.readouterr().out.split() == [str(out / "tiled.risk.txt"),
                                               str(out / "tiled.ghanet.json")]


def _subparser_help() -> str:
    parser = argparse.ArgumentParser(prog="ghanet")
    sub = parser.add_subparsers(dest="command", required=True)
    return cli_predict.add_parser(sub).format_help()


def test_png_writer_writes_a_png(tmp_path):
    image = np.zeros((5, 7, 4), np.uint8)
    image[..., 0] = 200
    image[..., 3] = 255
    out = reg.write_export("png", image, tmp_path / "snap")
    assert out == tmp_path / "snap.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    back = imread(out)
    assert back.shape[:2] == (5, 7) and back[0, 0, 0] == pytest.approx(200 / 255, abs=1e-2)
    assert [p.name for p in tmp_path.iterdir()] == ["snap.png"]


def test_a_registered_format_gets_a_dock_button(qtbot, prediction, tmp_path, throwaway):
    need("qtpy")
    from napari_ghanet._qt.exports import ExportPanel

    panel = ExportPanel(None, lambda: prediction)
    qtbot.addWidget(panel)
    assert list(panel.buttons)[:5] == ["report", "csv", "geojson", "spatialdata", "png"]
    assert panel.buttons["risktxt"].text() == "Risk text"
    out = panel.export("risktxt", tmp_path / "r.risk.txt")
    assert out == tmp_path / "r.risk.txt"
    assert float(out.read_text()) == pytest.approx(prediction.risk)
    assert os.listdir(tmp_path) == ["r.risk.txt"]
