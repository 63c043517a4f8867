"""`ghanet demo` without a display (issue 20): one line and exit code 2 before Qt starts,
instead of Qt's "could not load the Qt platform plugin" abort (exit 134)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_ghanet.cli._options import UsageError
from napari_ghanet.cli.demo import DISPLAY_VARIABLES, NO_DISPLAY, check_display

_PROBE = """
import sys
from napari_ghanet.cli import main
code = main(["demo"] + sys.argv[1:])
print("qt-imported" if {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6"}
      & set(sys.modules) else "qt-not-imported")
raise SystemExit(code)
"""


def _without_display(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DISPLAY_VARIABLES}
    env["NAPARI_GHANET_CACHE"] = str(tmp_path / "cache")
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="display variables: X11/Wayland")
def test_demo_without_a_display_says_so_in_one_line_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-c", _PROBE], env=_without_display(tmp_path),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert err == [f"error: {NO_DISPLAY}"]
    assert "ghanet demo --headless" in err[0] and "desktop session" in err[0]
    assert r.stdout.strip() == "qt-not-imported"
    assert not (tmp_path / "cache").exists()  # nothing was prepared for a window never shown


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="display variables: X11/Wayland")
def test_headless_demo_needs_no_display(tmp_path, cmu_svs):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", _PROBE, "--headless", "--out", str(out),
                        "--device", "cpu", "--quiet"], env=_without_display(tmp_path),
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "G-HANet prognosis report" in r.stdout and "qt-not-imported" in r.stdout
    assert len(list(out.glob("*.ghanet.json"))) == 1


@pytest.mark.parametrize(("env", "platform", "ok"), [
    ({}, "linux", False),
    ({"DISPLAY": ""}, "linux", False),
    ({"DISPLAY": ":99"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({"QT_QPA_PLATFORM": "offscreen"}, "linux", True),
    ({}, "freebsd14", False),
    ({}, "darwin", True),
    ({}, "win32", True),
])
def test_check_display(env, platform, ok):
    if ok:
        check_display(env, platform)
    else:
        with pytest.raises(UsageError, match="no display found"):
            check_display(env, platform)
