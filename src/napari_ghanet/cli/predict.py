"""``ghanet predict``: the headless prediction, with the same exports as the dock widget.

One slide file (and no cohort option): a thin layer over
:func:`~napari_ghanet.inference.predict.predict_slide` and
:func:`~napari_ghanet.inference.exports.export_all`, the exports flat in OUT. Several
slides, folders, glob patterns, ``--manifest`` or any cohort option (``--cluster``,
``--scheduler``, ``--survival``): :func:`~napari_ghanet.cohort.predict_cohort`, each
slide's (or patient's) exports in ``OUT/<name>/`` plus ``OUT/summary.csv``,
``OUT/cohort.csv`` and, with ``--survival``, the external-validation report.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from napari_ghanet.cli._cohort import add_cohort_options
from napari_ghanet.cli._options import add_shared_options, at_least, command
from napari_ghanet.cli._progress import CohortProgress, TerminalProgress
from napari_ghanet.errors import BundleError, PredictionError
from napari_ghanet.inference.exports import export_all
from napari_ghanet.inference.predict import predict_slide
from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet predict`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "predict",
        help="predict prognosis for a whole-slide image or a cohort (research use only)",
        description=(
            "Predict the risk, survival curve and reconstructed pathway profile of a slide "
            "with a G-HANet model bundle, and write the JSON report, per-patch CSV and "
            "GeoJSON (QuPath measurement map) into OUT. Several slides, folders, patterns "
            "or --manifest: each slide's (or patient's: slides sharing a manifest case_id) "
            "files in OUT/<name>/, plus OUT/summary.csv and OUT/cohort.csv; exit code 0 "
            "only when no slide failed."
        ),
    )
    p.add_argument(
        "slides", nargs="*", metavar="SLIDE",
        help="whole-slide image(s) (.svs, .ndpi, .tif, ...), folders (searched "
             "recursively) or glob patterns",
    )
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
    add_cohort_options(p, predict=True)
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


def is_cohort(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a cohort run: several inputs, a folder or glob
    pattern, ``--manifest``, ``--cluster``, ``--scheduler`` or ``--survival``."""
    from napari_ghanet.cohort.inputs import _GLOB_CHARS

    if any(getattr(args, k, None) is not None
           for k in ("manifest", "cluster", "scheduler", "survival")):
        return True
    if len(args.slides) != 1:
        return True
    one = Path(args.slides[0])
    return one.is_dir() or (not one.exists() and bool(_GLOB_CHARS.search(args.slides[0])))


def predict_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``predict_slide`` / ``predict_patient`` beyond the ones both
    paths pass explicitly (regions, QC, heatmap overlap... from their options), for the
    cohort path's ``predict_cohort(**predict_options)``."""
    return {}


def run_cohort(args: argparse.Namespace) -> int:
    """The cohort path of ``ghanet predict`` (see the module docstring)."""
    from napari_ghanet.cli.embed import resolve_slides
    from napari_ghanet.cohort import predict_cohort
    from napari_ghanet.device import resolve_device

    items = resolve_slides(args)
    resolve_device(args.device)
    if args.model is None:
        load_model(None)  # names the missing demo model
    with CohortProgress(len(items), quiet=args.quiet) as progress:
        try:
            summary = predict_cohort(
                items, args.out, args.model, survival=args.survival, mpp=args.mpp,
                device=args.device, batch_size=args.batch_size, workers=args.workers,
                cache_dir=args.cache_dir, use_cache=not args.no_cache, top_k=args.top_k,
                cluster=args.cluster, scheduler=args.scheduler, progress=progress, say=progress.say,
                **predict_options(args),
            )
        except BundleError as e:
            raise BundleError(f"cannot load the model: {e}") from e
    for key in ("cohort", "validation_json", "validation_png"):
        if key in summary.extra:
            print(summary.extra[key])
    print(f"summary: {summary.summary_path}", file=sys.stderr)
    print(summary.line, file=sys.stderr, flush=True)
    return summary.exit_code


@command
def run(args: argparse.Namespace) -> int:
    """Run ``ghanet predict``; returns the exit code (0 ok, 1 failed, 2 bad option,
    130 interrupted)."""
    at_least("--batch-size", args.batch_size, 1)
    at_least("--workers", args.workers, 0)
    at_least("--top-k", args.top_k, 0)
    if is_cohort(args):
        return run_cohort(args)
    args.slide = Path(args.slides[0])
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
