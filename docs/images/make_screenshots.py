"""Regenerate the user guide's screenshots (docs/images/*.png) from the real plugin.

Run from the repository root, with a display or under Xvfb with a large screen:

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/images/make_screenshots.py

It opens the "G-HANet demo slide" sample and the "G-HANet prognosis" widget through
napari's plugin menus (npe2), predicts with the bundled demo model (``--model`` to use
another bundle) and saves the window, the widget (PNG) and a few views of the layers (JPEG).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--category", type=int, default=1, help="genome attention to show")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_ghanet.models.bundle import demo_bundle_path

    app = QApplication.instance() or QApplication([])

    def save_view(name: str) -> None:
        """The canvas as a JPEG (photographic content: a tenth of the PNG size)."""
        from imageio.v3 import imwrite

        imwrite(args.out / name, viewer.screenshot(canvas_only=True, flash=False)[..., :3],
                quality=88)

    def settle(seconds: float = 0.5) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    model = args.model or demo_bundle_path()
    viewer = napari.Viewer(show=True, title="napari: G-HANet prognosis")
    viewer.window.resize(1680, 1050)
    viewer.open_sample("napari-ghanet", "ghanet_demo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-ghanet", "G-HANet prognosis")
    widget.cache_dir = Path(tempfile.mkdtemp())
    if Path(model) != demo_bundle_path() or widget.bundle is None:
        widget.load_model(model, quiet=True)
    widget.inputs.device_combo.setCurrentText("cpu")
    settle(1.0)
    viewer.window._qt_window.grab().save(str(args.out / "widget-before.jpg"), "JPG", 90)

    widget.predict()
    while widget.running:
        settle(0.1)
    if widget.prediction is None:
        raise SystemExit("the prediction failed")
    tree = widget.results.pathway_tree
    tree.topLevelItem(0).setExpanded(True)
    settle(1.0)
    viewer.window._qt_window.grab().save(str(args.out / "overview.jpg"), "JPG", 90)
    body = widget.findChild(QScrollArea).widget()
    body.grab().save(str(args.out / "widget-result.png"))

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
    print(f"screenshots written to {args.out} (model: {Path(model).name}, "
          f"risk {widget.prediction.risk:.3f}, {widget.prediction.n_patches} patches)")
    viewer.close()


if __name__ == "__main__":
    main()
