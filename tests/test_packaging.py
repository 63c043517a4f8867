"""The npe2 manifest napari finds is the one at the repository root, and it is valid."""

from __future__ import annotations

from pathlib import Path

import napari_ghanet

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_manifest_is_the_root_manifest():
    shipped = Path(napari_ghanet.__file__).parent / "napari.yaml"
    assert shipped.read_text() == (ROOT / "napari.yaml").read_text()


def test_manifest_is_valid_and_points_at_real_code():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-ghanet")
    assert manifest.name == "napari-ghanet"
    assert {w.display_name for w in manifest.contributions.widgets} == {"G-HANet prognosis"}
    assert [s.display_name for s in manifest.contributions.sample_data] == ["G-HANet demo slide"]
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert hasattr(__import__(module, fromlist=[attr]), attr), command.python_name
