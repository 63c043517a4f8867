"""Packaging rules: the npe2 manifest napari finds is the root manifest and valid; every
subpackage is installed; training installs as ``napari_ghanet.training`` only; one version."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import napari_ghanet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


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


def test_every_subpackage_is_listed_for_installation():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {
        ".".join(p.parent.relative_to(src).parts)
        for p in (src / "napari_ghanet").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    found.add("napari_ghanet.training")
    assert listed == found


def test_training_installs_under_the_package_and_not_at_top_level(tmp_path):
    # Run from a folder without the checkout on sys.path, as an installed package is used.
    code = (
        "import importlib.util, napari_ghanet.training.cli as c;"
        "print(importlib.util.find_spec('training') is None, c.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "napari_ghanet.training.cli"]
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["ghanet-train"] == "napari_ghanet.training.cli:main"


def test_one_version_source():
    from importlib.metadata import version

    from napari_ghanet._version import __version__

    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    assert napari_ghanet.__version__ == __version__ == version("napari-ghanet")


def test_package_root_is_light_and_exposes_the_public_api_lazily(tmp_path):
    code = (
        "import sys, napari_ghanet as g;"
        "light = 'torch' not in sys.modules;"
        "names = [g.open_slide, g.tissue_mask, g.patch_grid, g.create_encoder, g.embed_slide,"
        " g.load_bundle, g.predict_slide, g.Prediction];"
        "print(light, all(callable(n) for n in names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True"]


def test_what_the_command_line_parsers_read_imports_no_torch(tmp_path):
    # the option declarations, the cohort package and its input resolver: light, so that a
    # `ghanet --help` that reads only them can start without torch
    code = (
        "import sys, napari_ghanet.options, napari_ghanet.options.cli, napari_ghanet.cohort,"
        " napari_ghanet.cohort.inputs, napari_ghanet.device;"
        "light = not {'torch', 'napari', 'distributed'} & {m.split('.')[0] for m in sys.modules};"
        "from napari_ghanet.cohort import predict_cohort;"  # resolved when used
        "print(light, callable(predict_cohort), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True", "True"]


def _heavy_after(module: str, argv: list[str], cwd: Path) -> tuple[int, str, list[str]]:
    """Run ``main(argv)`` of ``module`` in a fresh interpreter: its exit code, what it
    printed, and which of torch / napari / distributed it left in ``sys.modules``."""
    code = "\n".join([
        "import contextlib, io, json, sys",
        f"from {module} import main",
        "out = io.StringIO()",
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):",
        "    try:",
        f"        rc = main({argv!r})",
        "    except SystemExit as e:",
        "        rc = e.code",
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'napari', "
        "'distributed'})",
        "print(json.dumps([rc, out.getvalue(), heavy]))",
    ])
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rc, text, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    return rc, text, heavy


def test_help_and_argument_errors_import_no_torch(tmp_path):
    # issue 21: `--help` and an argument error answer without importing torch (the
    # benchmark benchmarks/cli_startup.py times them)
    cases = [
        ("napari_ghanet.cli", ["--help"], 0, "usage: ghanet"),
        ("napari_ghanet.cli", ["predict", "--help"], 0, "--spatialdata"),
        ("napari_ghanet.cli", ["embed", "--help"], 0, "--encoder-weights"),
        ("napari_ghanet.cli", ["predict", "x.svs", "--out", str(tmp_path / "o"),
                               "--batch-size", "0"], 2, "--batch-size must be >= 1"),
        ("napari_ghanet.training.cli", ["demo", "--help"], 0, "--patients"),
    ]
    for module, argv, code, text in cases:
        rc, printed, heavy = _heavy_after(module, argv, tmp_path)
        assert (rc, heavy) == (code, []), (argv, rc, heavy, printed[-500:])
        assert text in printed, (argv, printed[-500:])
    assert not (tmp_path / "o").exists()  # the argument error came before any work
    # the check sees torch when a command needs it: listing the encoders imports them
    rc, printed, heavy = _heavy_after("napari_ghanet.cli", ["encoders"], tmp_path)
    assert rc == 0 and "morphometric" in printed and "torch" in heavy
