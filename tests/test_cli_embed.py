"""``ghanet embed``: outputs, reuse, failures named, exit codes."""

from __future__ import annotations

import numpy as np

from conftest import write_pyramid
from napari_ghanet.cli import main
from napari_ghanet.io.features import load_features
from napari_ghanet.io.slide import open_slide
from napari_ghanet.preprocessing.patches import patch_grid
from napari_ghanet.preprocessing.tissue import tissue_mask

# 64 px patches at 2 um/px: the CLAM field of view (128 um), 16x cheaper to embed
FAST = ["--encoder", "morphometric", "--patch-px", "64", "--target-mpp", "2.0", "--quiet"]


def test_embed_writes_features_and_names_failures(tmp_path, tiled_tiff, capsys):
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    out = tmp_path / "out"
    rc = main(["embed", str(tiled_tiff), str(bad), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.strip().splitlines()[-1] == "1 done, 0 skipped, 1 failed"
    assert "notes.svs: FAILED" in captured.err and str(bad) in captured.err
    assert "tiled.tif:" in captured.out and "patches" in captured.out
    feats = load_features(out / "tiled.h5")
    with open_slide(tiled_tiff) as s:
        grid = patch_grid(s, tissue_mask(s), patch_px=64, target_mpp=2.0)
        assert feats.attrs["slide_fingerprint"] == s.fingerprint()
    np.testing.assert_array_equal(feats.coords, grid.coords)
    assert feats.features.shape == (len(grid), 64)
    assert feats.attrs["patch_size"] == 64 and feats.attrs["patch_size_level0"] == 256
    assert feats.attrs["encoder_spec"]["target_mpp"] == 2.0
    assert not (out / "notes.h5").exists()
    # no temporaries
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "tiled.h5"]


def test_embed_reuses_matching_outputs(tmp_path, tiled_tiff, capsys):
    out = tmp_path / "out"
    assert main(["embed", str(tiled_tiff), "--out", str(out), *FAST]) == 0
    path = out / "tiled.h5"
    stamp = path.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["embed", str(tiled_tiff), "--out", str(out), *FAST]) == 0
    assert "already in" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == stamp
    # another grid: refused without --overwrite, recomputed with it
    rc = main(["embed", str(tiled_tiff), "--out", str(out), *FAST, "--min-tissue", "0.9"])
    assert rc == 1
    assert "--overwrite" in capsys.readouterr().err
    assert path.stat().st_mtime_ns == stamp
    rc = main(
        ["embed", str(tiled_tiff), "--out", str(out), *FAST, "--min-tissue", "0.9", "--overwrite"]
    )
    assert rc == 0
    assert load_features(path).attrs["min_tissue_fraction"] == 0.9


def test_embed_mpp_for_plain_images(tmp_path, plain_png, capsys):
    out = tmp_path / "out"
    assert main(["embed", str(plain_png), "--out", str(out), *FAST]) == 1
    assert "--mpp" in capsys.readouterr().err
    assert main(["embed", str(plain_png), "--out", str(out), *FAST, "--mpp", "0.5"]) == 0
    assert load_features(out / "plain.h5").attrs["slide_mpp"] == 0.5


def test_embed_no_tissue_is_a_named_failure(tmp_path, blank_tiff, capsys):
    rc = main(["embed", str(blank_tiff), "--out", str(tmp_path), *FAST])
    assert rc == 1
    err = capsys.readouterr().err
    assert "blank.tif: FAILED" in err and "no tissue" in err


def test_embed_resnet50_with_local_weights(tmp_path, resnet50_weights, he_slide):
    small = write_pyramid(tmp_path / "small.tif", he_slide[0][:768, :768], levels=2)
    out = tmp_path / "out"
    args = ["embed", str(small), "--out", str(out), "--weights", str(resnet50_weights)]
    rc = main([*args, "--patch-px", "64", "--target-mpp", "2.0", "--quiet", "--workers", "1"])
    assert rc == 0
    feats = load_features(out / "small.h5")
    assert feats.dim == 1024 and len(feats) >= 1
    assert feats.attrs["encoder"] == "resnet50_trunc"
    assert feats.attrs["encoder_spec"]["weights"].startswith("resnet50-test.pth")


def test_embed_usage_errors(tmp_path, tiled_tiff, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    fresh = tmp_path / "features"
    rc = main(["embed", str(tiled_tiff), "--out", str(fresh)])  # the default encoder
    err = capsys.readouterr().err
    assert rc == 2
    # one line: where to get the weights, the flag that gives them, the weight-free choice
    assert len(err.strip().splitlines()) == 1 and "ResNet50 ImageNet weights not found" in err
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in err
    assert "--encoder-weights FILE" in err and "--encoder morphometric" in err
    assert not fresh.exists()  # the folder it made for the run is gone again
    rc = main(["embed", str(tiled_tiff), "--out", str(tmp_path), "--encoder", "torchscript"])
    assert rc == 2 and "--dim" in capsys.readouterr().err
    rc = main(["embed", str(tiled_tiff), "--out", str(tmp_path), *FAST, "--batch-size", "0"])
    assert rc == 2 and "--batch-size" in capsys.readouterr().err
    rc = main(["embed", str(tiled_tiff), "--out", str(tmp_path), *FAST, "--resize", "224"])
    assert rc == 2 and "--resize does not apply" in capsys.readouterr().err
    other = tmp_path / "other" / "tiled.tif"
    other.parent.mkdir()
    other.write_bytes(tiled_tiff.read_bytes())
    rc = main(["embed", str(tiled_tiff), str(other), "--out", str(tmp_path), *FAST])
    assert rc == 2 and "would both write outputs named 'tiled'" in capsys.readouterr().err
    rc = main(["embed", str(tmp_path / "missing.svs"), "--out", str(tmp_path), *FAST])
    assert rc == 2 and "missing.svs: no such slide file" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.write_text("a file")
    rc = main(["embed", str(tiled_tiff), "--out", str(ro), *FAST])
    assert rc == 1 and "is a file, not a folder" in capsys.readouterr().err
    rc = main(["embed", "--out", str(tmp_path)])
    assert rc == 2 and "no slide given" in capsys.readouterr().err


def test_embed_backend_reaches_the_encoder(tmp_path, tiled_tiff, capsys):
    # the morphometric encoder stays in torch: insisting on ONNX Runtime fails that slide
    rc = main(["embed", str(tiled_tiff), "--out", str(tmp_path), *FAST, "--backend", "onnx"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "does not run in ONNX Runtime" in err and err.strip().endswith("0 done, 0 skipped, 1 failed")
    assert main(["embed", str(tiled_tiff), "--out", str(tmp_path), *FAST, "--backend", "torch"]) == 0
    assert load_features(tmp_path / "tiled.h5").attrs["backend"] == "torch"


def test_embed_help_says_which_encoders_need_weights_and_the_default(capsys):
    # the help's weight-free list is the registry's built-in encoders' (a fresh interpreter:
    # other tests register encoders of their own in this one)
    import json
    import subprocess
    import sys

    import pytest

    from napari_ghanet.cli import build_parser
    from napari_ghanet.cli.embed import DEFAULT_ENCODER, WEIGHT_FREE
    from napari_ghanet.encoders import list_encoders

    code = ("import json; from napari_ghanet.encoders import list_encoders, takes_weights; "
            "names = [n + 'vit_small_patch16_224' if n.endswith(':') else n "
            "for n in list_encoders()]; "
            "print(json.dumps(sorted(n for n in names if not takes_weights(n))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert sorted(WEIGHT_FREE) == json.loads(out.strip().splitlines()[-1])
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Every encoder but morphometric needs a weights file" in text
    assert "--encoder-weights FILE" in text and "morphometric is weight-free" in text
    # without --encoder: the encoder the documentation names as the default
    assert build_parser().parse_args(["embed", "--out", "x"]).encoder == DEFAULT_ENCODER
    assert DEFAULT_ENCODER == "resnet50_trunc" and DEFAULT_ENCODER in list_encoders()


def test_embed_dicomweb_flags_are_checked_before_any_work(tmp_path, tiled_tiff, monkeypatch,
                                                          capsys):
    for name in ("GHANET_DICOMWEB_TOKEN", "GHANET_DICOMWEB_TOKEN_FILE"):
        monkeypatch.setenv(name, "")  # restored (absent) after the test: the flag sets it
        monkeypatch.delenv(name)
    out = tmp_path / "never"
    missing = tmp_path / "no-token"
    rc = main(["embed", str(tiled_tiff), "--out", str(out), *FAST,
               "--dicomweb-token-file", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2 and "no-token" in err and not out.exists()
    monkeypatch.delenv("GHANET_DICOMWEB_TOKEN_FILE")  # handed on to the workers
    rc = main(["embed", str(tiled_tiff), "--out", str(out), *FAST,
               "--dicomweb-query", "PatientID=X"])
    assert rc == 2 and "--dicomweb-query needs" in capsys.readouterr().err
    assert not out.exists()
