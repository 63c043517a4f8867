"""``ghanet predict``: the headless prediction, with the same exports as the dock widget.

A thin layer over :func:`~napari_ghanet.inference.predict.predict_slide` and
:func:`~napari_ghanet.inference.exports.export_all`.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from napari_ghanet.cli._options import add_shared_options, at_least, command
from napari_ghanet.cli._progress import TerminalProgress
from napari_ghanet.errors import BundleError, PredictionError
from napari_ghanet.inference.exports import export_all
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet predict`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "predict",
        help="predict prognosis for one whole-slide image (research use only)",
        description=(
            "Predict the risk, survival curve and reconstructed pathway profile of a slide "
            "with a G-HANet model bundle, and write the JSON report, per-patch CSV and "
            "GeoJSON (QuPath measurement map) into OUT."
        ),
    )
    p.add_argument("slide", type=Path, help="whole-slide image (.svs, .ndpi, .tif, ...)")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model bundle (.safetensors); default: the bundled demonstration model",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--top-k", type=int, default=10, help="number of top-attention regions to report"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="patch-feature cache folder (default: the user cache folder)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="neither read nor write cached features"
    )
    add_shared_options(p)
    p.set_defaults(func=run)
    return p


def load_model(path: Path | None):
    """The bundle at ``path``, or the bundled demo model; a BundleError names which."""
    try:
        return load_bundle(path if path is not None else demo_bundle_path())
    except BundleError as e:
        hint = "" if path is not None else " (the bundled demo model is missing)"
        raise BundleError(f"cannot load the model{hint}: {e}") from e


def write_exports(prediction, out: Path) -> dict[str, Path]:
    """:func:`export_all`, with an unwritable folder as a PredictionError."""
    try:
        return export_all(prediction, out)
    except OSError as e:
        raise PredictionError(f"cannot write the results to {out}: {e}") from e


@command
def run(args: argparse.Namespace) -> int:
    """Run ``ghanet predict``; returns the exit code (0 ok, 1 failed, 2 bad option,
    130 interrupted)."""
    at_least("--batch-size", args.batch_size, 1)
    at_least("--workers", args.workers, 0)
    at_least("--top-k", args.top_k, 0)
    bundle = load_model(args.model)
    cancel = threading.Event()
    try:
        with TerminalProgress(quiet=args.quiet) as progress:
            prediction = predict_slide(
                args.slide,
                bundle,
                device=args.device,
                mpp=args.mpp,
                batch_size=args.batch_size,
                workers=args.workers,
                cache_dir=args.cache_dir,
                use_cache=not args.no_cache,
                top_k=args.top_k,
                progress=progress,
                cancel=cancel,
            )
    except KeyboardInterrupt:
        cancel.set()
        raise
    written = write_exports(prediction, args.out)

    p = prediction
    cached = "cached features" if p.features_cached else "features computed"
    print(
        f"{Path(args.slide).name}: risk {p.risk:.4f}, percentile {p.percentile:.0f} in the "
        f"training cohort, {p.risk_group} risk; {p.n_patches} patches ({cached}) in "
        f"{p.timings.get('total', 0.0):.1f} s",
        file=sys.stderr,
    )
    for path in written.values():
        print(path)
    print(f"note: {p.intended_use}", file=sys.stderr)
    return 0
