"""Regenerate the user guide's screenshots (docs/images/) from the real plugin.

Run from the repository root, with a display or under Xvfb with a large screen:

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/images/make_screenshots.py

It opens the "G-HANet demo slide" sample (the real CMU slide) and the "G-HANet prognosis"
widget through napari's plugin menus (npe2), predicts with the bundled demo model
(``--model`` to use another bundle) and saves:

* ``dock-1280x800-{before,after}.jpg``, ``dock-1920x1080-{before,after}.jpg``: the whole
  window at both sizes with the dock 360 px wide, before and after a prediction;
* ``widget-result.png``: the dock's full content after the prediction;
* ``genome-attention.jpg``, ``tissue-mask.jpg``, ``top-region.jpg``: views of the layers;
* ``roi.jpg``, ``roi-dock.jpg``: include regions imported from a QuPath GeoJSON file and
  an exclude region drawn as a Shapes layer, with the 50 %-overlap attention heatmap;
* ``qc.jpg``, ``qc-dock.jpg``: the "G-HANet · QC" layer on a copy of the CMU slide with
  a green pen stroke and a dark fold drawn on it.

JPEG quality keeps every file under ~300 KB.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def artifact_slide(path: Path) -> Path:
    """The CMU slide with a green pen stroke and a dark fold band, as a tiled TIFF."""
    import tifffile

    from napari_ghanet.io.slide import cmu_slide_path, open_slide

    with open_slide(cmu_slide_path()) as slide:
        w, h = slide.dimensions
        rgb = np.array(slide.read_region((0, 0), 0, (w, h)))[..., :3]
        mpp = slide.mpp
    yy, xx = np.mgrid[0:h, 0:w]
    stroke = np.abs(yy - (0.25 * h + 0.35 * xx)) < 90  # a slanted marker line
    stroke &= (xx > 0.15 * w) & (xx < 0.85 * w)
    rgb[stroke] = (30, 150, 70)
    fold = (np.abs(yy - 0.72 * h - 0.08 * (xx - w / 2)) < 110) & (xx > 0.1 * w) & (xx < 0.9 * w)
    rgb[fold] = (rgb[fold] * (0.22, 0.04, 0.2)).astype(np.uint8)  # folded: dark purple
    with tifffile.TiffWriter(path) as tif:  # a pyramid, as scanners write them
        for i in range(3):
            f = 2**i
            tif.write(rgb[::f, ::f], tile=(256, 256), photometric="rgb", compression="zlib",
                      subifds=2 if i == 0 else None, subfiletype=1 if i else 0,
                      resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)),
                      resolutionunit="CENTIMETER")
    return path


def qupath_geojson(path: Path, w: int, h: int) -> Path:
    """A QuPath-style export: two tumour annotations (level-0 pixels)."""
    def ring(cx, cy, rx, ry, n=40):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t) * (1 + 0.15 * np.sin(3 * t))], 1)
        return np.vstack([pts, pts[:1]]).round(1).tolist()

    feats = [
        {"type": "Feature", "id": f"a{i}",
         "properties": {"objectType": "annotation", "name": name,
                        "classification": {"name": "Tumor", "color": [200, 0, 0]}},
         "geometry": {"type": "Polygon", "coordinates": [ring(*shape)]}}
        for i, (name, shape) in enumerate([("tumour 1", (0.45 * w, 0.33 * h, 0.3 * w, 0.2 * h)),
                                           ("tumour 2", (0.55 * w, 0.7 * h, 0.3 * w, 0.18 * h))])
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--category", type=int, default=1, help="genome attention to show")
    parser.add_argument("--part", choices=["all", "main", "qc"], default="all")
    args = parser.parse_args()
    if args.part == "qc":
        return qc_screenshots(args)
    if args.part == "all":  # each part in its own process (see qc_screenshots)
        import subprocess
        import sys

        for part in ("main", "qc"):
            cmd = [sys.executable, __file__, "--part", part, "--out", str(args.out),
                   "--category", str(args.category)]
            subprocess.run(cmd + (["--model", str(args.model)] if args.model else []),
                           check=True)
        return

    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_ghanet.models.bundle import demo_bundle_path

    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp())

    def settle(seconds: float = 0.5) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    def save_view(name: str) -> None:
        """The canvas as a JPEG (photographic content: a tenth of the PNG size)."""
        from imageio.v3 import imwrite

        imwrite(args.out / name, viewer.screenshot(canvas_only=True, flash=False)[..., :3],
                quality=85)

    def window_size(w: int, h: int) -> None:
        qt_window.resize(w, h)
        settle(0.3)
        qt_window.resizeDocks([dock], [360], Qt.Orientation.Horizontal)
        settle(0.7)

    def save_window(name: str, quality: int = 82) -> None:
        qt_window.grab().save(str(args.out / name), "JPG", quality)

    def predict() -> None:
        widget.predict()
        while widget.running:
            settle(0.1)
        if widget.prediction is None:
            raise SystemExit("the prediction failed")

    def show_results() -> None:
        widget.scroll.ensureWidgetVisible(widget.results.risk_label, 0, 10)
        widget.scroll.verticalScrollBar().setValue(widget.results.y())
        settle(0.5)

    model = args.model or demo_bundle_path()
    viewer = napari.Viewer(show=True, title="napari: G-HANet prognosis")
    qt_window = viewer.window._qt_window
    [slide] = viewer.open_sample("napari-ghanet", "ghanet_demo")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-ghanet", "G-HANet prognosis")
    widget.cache_dir = tmp / "cache"
    if Path(model) != demo_bundle_path() or widget.bundle is None:
        widget.load_model(model, quiet=True)
    widget.inputs.device_combo.setCurrentText("cpu")

    # -- the dock at both window sizes, before and after a prediction
    window_size(1280, 800)
    save_window("dock-1280x800-before.jpg")
    window_size(1920, 1080)
    widget.inputs.advanced.expand(animate=False)
    settle(0.3)
    save_window("dock-1920x1080-before.jpg")
    widget.inputs.advanced.collapse(animate=False)
    predict()
    widget.results.pathway_tree.topLevelItem(0).setExpanded(True)
    show_results()
    save_window("dock-1920x1080-after.jpg")
    window_size(1280, 800)
    show_results()
    save_window("dock-1280x800-after.jpg")
    widget.scroll.widget().grab().save(str(args.out / "widget-result.png"))

    # -- views of the result layers
    layers = widget.result_layers
    layers["morphology"].visible = False
    layers["regions"].visible = False
    widget.results.category_combo.setCurrentIndex(args.category + 1)
    settle(0.8)
    save_view("genome-attention.jpg")
    widget.results.category_combo.setCurrentIndex(0)
    layers["tissue"].visible = True
    settle(0.8)
    save_view("tissue-mask.jpg")
    layers["tissue"].visible = False
    layers["morphology"].visible = True
    layers["morphology"].opacity = 0.35
    layers["regions"].visible = True
    widget.go_to_region(0)
    settle(0.8)
    save_view("top-region.jpg")

    # -- regions of interest (QuPath GeoJSON + a drawn exclude region), 50 % heatmap
    w0, h0 = slide.metadata["level_dimensions"][0]
    mpp = float(slide.scale[-1])
    widget.import_geojson(qupath_geojson(tmp / "tumour.geojson", w0, h0))
    band = np.array([[0.62, 0.45], [0.62, 0.62], [0.78, 0.62], [0.78, 0.45]]) * (h0, w0) * mpp
    exclude = viewer.add_shapes([band], shape_type="rectangle", edge_color="#ff1744",
                                face_color="transparent", edge_width=12, name="necrosis",
                                units=slide.units)
    widget.inputs.set_region_layer("exclude", exclude)
    widget.settings.heatmap_overlap.value = 0.5
    predict()
    viewer.reset_view()
    settle(0.8)
    save_view("roi.jpg")
    show_results()
    widget.scroll.ensureWidgetVisible(widget.results.regions_label, 0, 60)
    settle(0.3)
    save_window("roi-dock.jpg")

    print(f"screenshots written to {args.out} (model: {Path(model).name}, "
          f"risk {widget.prediction.risk:.3f}, {widget.prediction.n_patches} patches)")
    viewer.close()


def qc_screenshots(args) -> None:
    """The QC layer, in a fresh viewer (a second slide opened in the same viewer after the
    ROI run crashed Xvfb's software OpenGL in glDrawArrays)."""
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication


    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp())

    def settle(seconds: float = 0.5) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    viewer = napari.Viewer(show=True, title="napari: G-HANet prognosis")
    qt_window = viewer.window._qt_window
    viewer.open(str(artifact_slide(tmp / "cmu_pen_fold.tif")), plugin="napari-ghanet")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-ghanet", "G-HANet prognosis")
    widget.cache_dir = tmp / "cache"
    if args.model is not None:
        widget.load_model(args.model, quiet=True)
    widget.inputs.device_combo.setCurrentText("cpu")
    qt_window.resize(1280, 800)
    settle(0.3)
    qt_window.resizeDocks([dock], [360], Qt.Orientation.Horizontal)
    widget.predict()
    while widget.running:
        settle(0.1)
    if widget.prediction is None:
        raise SystemExit("the prediction failed")
    for key, layer in widget.result_layers.items():
        layer.visible = key in ("qc", "morphology")
    widget.result_layers["morphology"].opacity = 0.3
    viewer.reset_view()
    settle(0.8)
    from imageio.v3 import imwrite

    imwrite(args.out / "qc.jpg", viewer.screenshot(canvas_only=True, flash=False)[..., :3],
            quality=85)
    widget.scroll.verticalScrollBar().setValue(widget.results.y())
    widget.scroll.ensureWidgetVisible(widget.results.qc_label, 0, 60)
    settle(0.5)
    qt_window.grab().save(str(args.out / "qc-dock.jpg"), "JPG", 82)
    p = widget.prediction
    print(f"QC screenshots written ({Path(widget.bundle.path).name}, QC "
          f"{p.qc_report['flagged']})")
    viewer.close()


if __name__ == "__main__":
    main()
