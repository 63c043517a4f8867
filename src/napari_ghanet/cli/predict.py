"""``ghanet predict``: the headless prediction, with the same exports as the dock widget."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

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
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="microns per pixel of level 0, for slides whose file does not record it",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="patches per encoder batch (default: 64)"
    )
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
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)
    return p


class _StderrProgress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage = None
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        new_stage = stage != self.stage
        finished = total > 0 and done >= total
        if not (new_stage or finished or now - self.last > (0.1 if self.tty else 5.0)):
            return
        if new_stage and self.stage is not None and self.tty:
            self.stream.write("\n")
        self.stage, self.last = stage, now
        if total > 0:
            frac = min(done / total, 1.0)
            bar = "#" * int(30 * frac)
            line = f"{stage:<10} [{bar:<30}] {done}/{total}"
        else:
            line = f"{stage:<10} ..."
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.stage = None


def run(args: argparse.Namespace) -> int:
    """Run ``ghanet predict``; returns the exit code (0 ok, 1 failed, 130 interrupted)."""
    from napari_ghanet.inference.predict import PredictionCancelled, export_all, predict_slide
    from napari_ghanet.io.slide import SlideError
    from napari_ghanet.models.bundle import BundleError, demo_bundle_path, load_bundle

    model_path = args.model if args.model is not None else demo_bundle_path()
    if args.batch_size is not None and args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.top_k < 0:
        print(f"error: --top-k must be >= 0, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(model_path)
    except BundleError as e:
        hint = "" if args.model is not None else " (the bundled demo model is missing)"
        print(f"error: cannot load the model{hint}: {e}", file=sys.stderr)
        return 1

    progress = None if args.quiet else _StderrProgress()
    cancel = threading.Event()
    try:
        prediction = predict_slide(
            args.slide,
            bundle,
            device=args.device,
            mpp=args.mpp,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            top_k=args.top_k,
            progress=progress,
            cancel=cancel,
        )
    except KeyboardInterrupt:
        cancel.set()
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    except PredictionCancelled:
        print("cancelled: nothing written", file=sys.stderr)
        return 130
    except (SlideError, ValueError, OSError, RuntimeError) as e:
        if progress is not None:
            progress.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a command ends with a message, not a traceback
        if progress is not None:
            progress.close()
        logging.getLogger(__name__).debug("prediction failed", exc_info=True)
        print(f"error: {args.slide}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.close()

    try:
        written = export_all(prediction, args.out)
    except OSError as e:
        print(f"error: cannot write the results to {args.out}: {e}", file=sys.stderr)
        return 1

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
