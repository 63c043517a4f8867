"""The demo: the bundled model, `ghanet demo --headless`, and the recipe that builds it."""

from __future__ import annotations

import json

import pytest
import torch

from napari_ghanet.cli import main as ghanet_main
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_GHANET_CACHE", str(tmp_path / "cache"))


def test_bundled_demo_model_is_small_and_says_what_it_is():
    path = demo_bundle_path()
    assert path.is_file(), "the demo model must ship in the package (ghanet-train demo)"
    assert path.stat().st_size < 10 * 2**20
    bundle = load_bundle(path)
    use = bundle.intended_use.lower()
    assert "synthetic" in use and "not for clinical use" in use
    assert bundle.encoder.name == "morphometric"
    assert len(bundle.category_names) == 6
    assert bundle.model.config.input_dim == bundle.encoder.dim
    x = torch.randn(40, bundle.encoder.dim)
    with torch.no_grad():
        out = bundle.model.forward_bag(x)
    assert torch.isfinite(out.risk)


def test_demo_headless_prints_report_and_writes_exports(tmp_path, capsys, cmu_svs):
    out = tmp_path / "demo-out"
    code = ghanet_main(["demo", "--headless", "--out", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "G-HANet prognosis report" in printed
    assert "NOT FOR CLINICAL USE" in printed
    stem = cmu_svs.stem
    report = json.loads((out / f"{stem}.ghanet.json").read_text())
    assert report["prediction"]["risk"] == pytest.approx(
        -sum(report["prediction"]["survival"]), abs=1e-5
    )
    assert len(report["pathways"]) == 6
    assert any(p.suffix == ".geojson" for p in out.iterdir())
    assert any(p.suffix == ".csv" for p in out.iterdir())


def test_demo_recipe_runs_the_real_pipeline_end_to_end(tmp_path):
    from napari_ghanet.training.demo_recipe import DemoRecipe, run_demo_recipe

    recipe = DemoRecipe(patients=16, slide_shape=(1280, 1280), folds=2, epochs=2,
                        batch_size=8, accumulation=8)
    bundle_path = run_demo_recipe(tmp_path / "demo.safetensors", tmp_path / "work", recipe,
                                  device="cpu", workers=1)
    bundle = load_bundle(bundle_path)
    assert "NOT FOR CLINICAL USE" in bundle.intended_use
    # issue 26: the provenance names no folder of the machine that built it
    meta = json.dumps(bundle.metadata)
    assert str(tmp_path) not in meta and str(tmp_path.resolve()) not in meta
    assert bundle.provenance["run_dir"] == "run"
    assert bundle.provenance["cohort"]["table"] == "cohort/cohort.csv"
    assert bundle.encoder.name == "morphometric"
    # every stage left its product in the formats a real cohort uses
    work = tmp_path / "work"
    assert len(list((work / "cohort" / "features").glob("*.h5"))) == 16
    assert sorted(p.name for p in (work / "cohort" / "splits").iterdir()) == [
        "splits_0.csv", "splits_1.csv"]
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["model"] == "ghanet" and len(results["folds"]) == 2
