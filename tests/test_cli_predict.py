"""``ghanet predict``: same files and numbers as predict_slide, clear failures."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle, need, run_predict_cli, write_tiff_slide
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.io.slide import cmu_slide_path

run_cli = run_predict_cli


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("m") / "fast.safetensors", encoder=FAST_ENCODER)


def test_predict_writes_the_reports_of_predict_slide(bundle_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli([str(cmu_slide_path()), "--model", str(bundle_path), "--out", str(out),
                    "--device", "cpu", "--top-k", "5", "--cache-dir", str(tmp_path / "c")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cmu_small_region.ghanet.json", "cmu_small_region.patches.csv",
                     "cmu_small_region.patches.geojson"]
    # progress and the summary go to stderr, the written paths to stdout
    assert "features" in captured.err and "percentile" in captured.err
    assert captured.out.split() == [str(out / n) for n in
                                    ("cmu_small_region.ghanet.json",
                                     "cmu_small_region.patches.csv",
                                     "cmu_small_region.patches.geojson")]

    direct = predict_slide(cmu_slide_path(), bundle_path, device="cpu", top_k=5,
                           cache_dir=tmp_path / "other-cache")
    report = json.loads((out / "cmu_small_region.ghanet.json").read_text())
    assert report["prediction"]["risk"] == pytest.approx(direct.risk, abs=1e-6)
    assert report["prediction"]["percentile_in_training_cohort"] == pytest.approx(
        direct.percentile, abs=1e-4)
    assert len(report["top_regions"]) == 5
    assert [r["x"] for r in report["top_regions"]] == [r.x for r in direct.top_regions]
    with open(out / "cmu_small_region.patches.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    np.testing.assert_allclose([float(r["morphology_attention"]) for r in rows],
                               direct.morphology_attention, rtol=1e-6)
    geo = json.loads((out / "cmu_small_region.patches.geojson").read_text())
    assert len(geo["features"]) == direct.n_patches


def test_missing_slide_fails_with_a_message(bundle_path, tmp_path, capsys):
    code = run_cli([str(tmp_path / "nope.svs"), "--model", str(bundle_path),
                    "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "nope.svs" in err and "no such file" in err
    assert not (tmp_path / "out").exists()


def test_bad_model_fails_with_a_message(tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a bundle")
    code = run_cli([str(cmu_slide_path()), "--model", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "cannot load the model" in err and "model.safetensors" in err


def test_slide_without_mpp_needs_the_option(bundle_path, tmp_path, capsys):
    from _plugin_helpers import tissue_rgb

    slide = write_tiff_slide(tmp_path / "nompp.tif", tissue_rgb(512, 768), mpp=None, levels=2)
    args = [str(slide), "--model", str(bundle_path), "--out", str(tmp_path / "o"),
            "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert run_cli(args) == 1
    assert "microns per pixel" in capsys.readouterr().err
    assert run_cli(args + ["--mpp", "1.0"]) == 0
    report = json.loads((tmp_path / "o" / "nompp.ghanet.json").read_text())
    assert report["slide"]["mpp"] == 1.0


def test_invalid_options_are_refused(bundle_path, tmp_path, capsys):
    base = [str(cmu_slide_path()), "--model", str(bundle_path), "--out", str(tmp_path / "o")]
    assert run_cli(base + ["--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert run_cli(base + ["--top-k", "-1"]) == 2
    assert run_cli(base + ["--device", "tpu", "--quiet"]) == 1
    assert "tpu" in capsys.readouterr().err


def test_weights_for_a_weight_free_encoder_are_ignored_with_a_warning(
    bundle_path, cmu_svs, tmp_path, capsys
):
    out = tmp_path / "out"
    rc = run_cli([str(cmu_svs), "--model", str(bundle_path), "--out", str(out), "--quiet",
                  "--device", "cpu", "--no-cache", "--encoder-weights", str(tmp_path / "w.bin")])
    assert rc == 0
    assert "needs no weights file: the one given was not used" in capsys.readouterr().err
    report = json.loads(next(out.glob("*.ghanet.json")).read_text())
    assert any("needs no weights" in w for w in report["warnings"])


def test_progressive_prints_preliminary_risks_then_the_same_result(tmp_path, capsys):
    from _plugin_helpers import tissue_rgb

    small = {"name": "morphometric", "dim": 64, "patch_px": 32, "target_mpp": 1.0}
    bundle = make_bundle(tmp_path / "b.safetensors", encoder=small)
    slide = write_tiff_slide(tmp_path / "s.tif", tissue_rgb(1536, 2048, seed=5), mpp=0.5)
    reports = []
    for flag, out in ((["--progressive"], tmp_path / "p"), ([], tmp_path / "plain")):
        code = run_cli([str(slide), "--model", str(bundle), "--out", str(out), "--device",
                        "cpu", "--batch-size", "16", "--no-cache", *flag])
        err = capsys.readouterr().err
        assert code == 0, err
        reports.append(json.loads((out / "s.ghanet.json").read_text()))
        if flag:
            lines = [ln for ln in err.splitlines() if ln.startswith(("preliminary:", "final:"))]
            assert lines[0].startswith("preliminary:") and "% of patches: risk" in lines[0]
            assert "interval" in lines[0]
            assert lines[-1].startswith("final: all patches: risk")
    assert reports[0]["prediction"]["risk"] == reports[1]["prediction"]["risk"]
    # a cohort has no single preliminary answer
    code = run_cli([str(slide), str(slide.with_name("t.tif")), "--model", str(bundle),
                    "--out", str(tmp_path / "c"), "--progressive"])
    assert code == 2 and "--progressive" in capsys.readouterr().err


def test_library_messages_name_no_flag_and_the_cli_adds_it(bundle_path, tmp_path, capsys):
    from _plugin_helpers import tissue_rgb
    from napari_ghanet.errors import SlideError
    from napari_ghanet.io.slide import open_slide

    slide = write_tiff_slide(tmp_path / "nompp.tif", tissue_rgb(256, 256), mpp=None, levels=1)
    with pytest.raises(SlideError) as e:
        open_slide(slide, require_mpp=True)
    assert "microns per pixel" in str(e.value)
    assert "--" not in str(e.value) and "mpp=" not in str(e.value)
    rc = run_cli([str(slide), "--model", str(bundle_path), "--out", str(tmp_path / "o"),
                  "--quiet", "--no-cache"])
    err = capsys.readouterr().err
    assert rc == 1 and "with --mpp UM" in err and "mpp=" not in err


@pytest.mark.slow
def test_backend_reaches_the_engine(tmp_path, resnet50_weights, capsys, monkeypatch):
    from _plugin_helpers import tissue_rgb

    monkeypatch.setenv("NAPARI_GHANET_ONNX_CACHE", str(tmp_path / "onnx"))
    resnet = {"name": "resnet50_trunc", "dim": 1024, "patch_px": 64, "target_mpp": 2.0}
    bundle = make_bundle(tmp_path / "r.safetensors", input_dim=1024, encoder=resnet)
    slide = write_tiff_slide(tmp_path / "s.tif", tissue_rgb(512, 768), mpp=0.5, levels=2)
    reports = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        rc = run_cli([str(slide), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                      "--backend", backend, "--encoder-weights", str(resnet50_weights),
                      "--no-cache", "--quiet"])
        assert rc == 0, capsys.readouterr().err
        reports[backend] = json.loads((out / "s.ghanet.json").read_text())
    # the engine that computed the features is recorded: the choice reached embed_slide
    assert reports["torch"]["settings"]["backend"] == "torch"
    assert reports["onnx"]["settings"]["backend"] == "onnxruntime"
    assert reports["onnx"]["settings"]["options"]["embed"]["backend"] == "onnx"
    assert reports["onnx"]["prediction"]["risk"] == pytest.approx(
        reports["torch"]["prediction"]["risk"], abs=1e-4)
    assert list((tmp_path / "onnx").iterdir())  # the ONNX export was made (and cached)


def test_a_refused_backend_is_a_usage_error_naming_the_flag(bundle_path, tmp_path, capsys):
    # the morphometric encoder has no ONNX export: insisting on ONNX Runtime is refused by
    # the engine, and the command line names its flag
    out = tmp_path / "o"
    rc = run_cli([str(cmu_slide_path()), "--model", str(bundle_path), "--out", str(out),
                  "--device", "cpu", "--backend", "onnx", "--no-cache", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--backend onnx" in err and "--backend torch" in err and "backend='" not in err
    assert not out.exists()
    from napari_ghanet.encoders import EncoderError, create_encoder
    from napari_ghanet.encoders.onnx_backend import wrap_for_cpu

    with pytest.raises(EncoderError) as e:  # the library's own message names no flag
        wrap_for_cpu(create_encoder("morphometric"), "onnx")
    assert "does not run in ONNX Runtime" in str(e.value) and "--" not in str(e.value)
    rc = run_cli([str(cmu_slide_path()), "--model", str(bundle_path), "--out", str(out),
                  "--device", "cpu", "--backend", "torch", "--cache-dir", str(tmp_path / "c"),
                  "--quiet"])
    assert rc == 0
    report = json.loads(next(out.glob("*.ghanet.json")).read_text())
    assert report["settings"]["backend"] == "torch"
    assert report["settings"]["options"]["embed"]["backend"] == "torch"


def test_spatialdata_store_of_one_slide(bundle_path, tmp_path, capsys, monkeypatch):
    need("spatialdata")
    from _plugin_helpers import tissue_rgb
    from napari_ghanet.inference.spatialdata_export import TABLE_KEY, read_spatialdata_report

    slide = write_tiff_slide(tmp_path / "s.tif", tissue_rgb(512, 768), mpp=0.5, levels=2)
    store = tmp_path / "s.zarr"
    base = [str(slide), "--model", str(bundle_path), "--device", "cpu", "--quiet",
            "--cache-dir", str(tmp_path / "c")]
    rc = run_cli([*base, "--out", str(tmp_path / "o"), "--spatialdata", str(store)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert str(store) in captured.out.split()  # listed with the other exports
    report = json.loads((tmp_path / "o" / "s.ghanet.json").read_text())
    stored = read_spatialdata_report(store)
    assert stored["prediction"]["risk"] == report["prediction"]["risk"]
    import spatialdata as sd

    table = sd.read_zarr(store).tables[TABLE_KEY]
    with open(tmp_path / "o" / "s.patches.csv", newline="") as fh:
        assert table.n_obs == len(list(csv.DictReader(fh))) > 0
    # an existing store is kept unless --overwrite, refused before any work
    stamp = store.stat().st_mtime_ns
    rc = run_cli([*base, "--out", str(tmp_path / "o2"), "--spatialdata", str(store)])
    err = capsys.readouterr().err
    assert rc == 2 and "--spatialdata" in err and "--overwrite" in err
    assert not (tmp_path / "o2").exists() and store.stat().st_mtime_ns == stamp
    assert run_cli([*base, "--out", str(tmp_path / "o2"), "--spatialdata", str(store),
                    "--overwrite"]) == 0
    # one slide or one patient: a cohort has no single store
    rc = run_cli([str(slide), str(slide), "--model", str(bundle_path), "--out",
                  str(tmp_path / "c2"), "--spatialdata", str(tmp_path / "x.zarr")])
    assert rc == 2 and "--spatialdata" in capsys.readouterr().err
    # without the spatial extra: a clear error naming the flag and the install, no work
    monkeypatch.setitem(sys.modules, "spatialdata", None)
    rc = run_cli([*base, "--out", str(tmp_path / "o3"), "--spatialdata",
                  str(tmp_path / "y.zarr")])
    err = capsys.readouterr().err
    assert rc == 2 and "--spatialdata" in err and "napari-ghanet[spatial]" in err
    assert not (tmp_path / "o3").exists()
