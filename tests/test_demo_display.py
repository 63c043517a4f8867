"""`ghanet demo` without a display (issues 20, 26): before Qt starts (instead of Qt's "could
not load the Qt platform plugin" abort, exit 134), one line saying so, then the headless
report and exit code 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_ghanet.cli._options import UsageError
from napari_ghanet.cli.demo import DISPLAY_VARIABLES, NO_DISPLAY_FALLBACK, check_display

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
def test_demo_without_a_display_falls_back_to_the_headless_report_and_exits_0(tmp_path, cmu_svs):
    # issue 26: the README's first command on a server ends with the report and exit 0
    r = subprocess.run([sys.executable, "-c", _PROBE, "--device", "cpu", "--quiet"],
                       env=_without_display(tmp_path), capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    err = r.stderr.strip().splitlines()
    assert err[0] == NO_DISPLAY_FALLBACK
    assert "ghanet demo --headless" in err[0] and "desktop session" in err[0]
    assert "G-HANet prognosis report" in r.stdout and "qt-not-imported" in r.stdout
    assert len(list((tmp_path / "ghanet-demo").glob("*.ghanet.json"))) == 1


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
