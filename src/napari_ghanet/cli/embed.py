"""``ghanet embed``: slides to patch-feature files (``OUT/<slide stem>.h5``).

A thin layer over :func:`~napari_ghanet.inference.stages.embed_to_file`, one call per
slide with one encoder.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from napari_ghanet.cli._options import UsageError, add_shared_options, at_least, command
from napari_ghanet.cli._progress import TerminalProgress
from napari_ghanet.device import resolve_device
from napari_ghanet.encoders import EncoderError, create_encoder
from napari_ghanet.errors import Cancelled
from napari_ghanet.inference.stages import embed_to_file

__all__ = ["add_parser", "encoder_arguments", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet embed`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "embed",
        help="extract patch features from whole-slide images",
        description=(
            "Detect tissue, tile it into patches (default 256 px at 0.5 um/px) and embed "
            "every patch with an encoder. Writes OUT/<slide stem>.h5 (datasets 'features' "
            "and 'coords', the CLAM layout). A file made from the same slide with the same "
            "encoder and grid is reused."
        ),
    )
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="slide files")
    p.add_argument(
        "--encoder",
        default="resnet50_trunc",
        help="encoder name: resnet50_trunc (default), morphometric or torchscript",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="resnet50_trunc: ResNet50 ImageNet state dict (.pth); torchscript: the model file",
    )
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resnet50_trunc: resize patches to this side first (224 as today's CLAM)",
    )
    p.add_argument("--dim", type=int, default=None, help="torchscript: feature dimension")
    p.add_argument(
        "--input-size", type=int, default=None, help="torchscript: network input side (px)"
    )
    p.add_argument(
        "--mean", type=float, nargs=3, default=None, help="torchscript: RGB normalisation mean"
    )
    p.add_argument(
        "--std", type=float, nargs=3, default=None, help="torchscript: RGB normalisation std"
    )
    p.add_argument("--patch-px", type=int, default=256, help="patch side in pixels (256)")
    p.add_argument(
        "--target-mpp", type=float, default=0.5, help="patch resolution in um/px (0.5 = 20x)"
    )
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        help="keep patches at least this fraction tissue (0.5)",
    )
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    add_shared_options(p, batch_size=64, workers=4)
    p.set_defaults(func=run)
    return p


_APPLIES = {
    "resnet50_trunc": ("weights", "resize"),
    "torchscript": ("weights", "dim", "input_size", "mean", "std"),
}


def encoder_arguments(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Registry name and keyword arguments of the encoder the options describe."""
    name = args.encoder
    for opt in ("weights", "resize", "dim", "input_size", "mean", "std"):
        if getattr(args, opt) is not None and opt not in _APPLIES.get(name, ()):
            raise UsageError(f"--{opt.replace('_', '-')} does not apply to encoder {name}")
    kw: dict[str, Any] = {}
    if name in ("resnet50_trunc", "torchscript", "morphometric"):
        kw.update(patch_px=args.patch_px, target_mpp=args.target_mpp)
    if name == "resnet50_trunc":
        if args.weights is not None:
            kw["weights"] = args.weights
        if args.resize is not None:
            kw["resize_to"] = args.resize
    elif name == "torchscript":
        if args.weights is None or args.dim is None:
            raise UsageError("--encoder torchscript needs --weights MODEL_FILE and --dim D")
        kw.update(path=args.weights, dim=args.dim, input_size=args.input_size)
        if args.mean is not None:
            kw["mean"] = args.mean
        if args.std is not None:
            kw["std"] = args.std
    return name, kw


@command
def run(args: argparse.Namespace) -> int:
    """Run ``ghanet embed``; returns 0 when every slide succeeded, 1 when any failed,
    2 on a usage error, 130 when interrupted."""
    at_least("--batch-size", args.batch_size, 1)
    at_least("--patch-px", args.patch_px, 1)
    at_least("--workers", args.workers, 0)
    stems: dict[str, Path] = {}
    for s in args.slides:
        if s.stem in stems and stems[s.stem] != s:
            raise UsageError(
                f"{stems[s.stem]} and {s} would both write {s.stem}.h5; "
                "embed them into different --out folders"
            )
        stems[s.stem] = s
    name, kw = encoder_arguments(args)
    try:
        encoder = create_encoder(name, **kw)
    except EncoderError as exc:
        raise UsageError(str(exc)) from exc
    resolve_device(args.device)  # a wrong device fails once, not once per slide
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {args.out}: {exc}") from exc

    cancel = threading.Event()
    failed: list[str] = []
    for path in args.slides:
        try:
            with TerminalProgress(path.name, quiet=args.quiet) as progress:
                outcome = embed_to_file(
                    path,
                    args.out,
                    encoder,
                    mpp=args.mpp,
                    patch_px=args.patch_px,
                    target_mpp=args.target_mpp,
                    min_tissue_fraction=args.min_tissue,
                    device=args.device,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    overwrite=args.overwrite,
                    progress=progress,
                    cancel=cancel,
                )
        except (KeyboardInterrupt, Cancelled):
            cancel.set()
            print(f"\ninterrupted: {path.name} not written", file=sys.stderr)
            return 130
        print(outcome.summary(), file=sys.stdout if outcome.ok else sys.stderr, flush=True)
        if not outcome.ok:
            failed.append(str(path))
    n = len(args.slides)
    if failed:
        print(f"{len(failed)} of {n} slide(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"{n} slide(s) embedded into {args.out}", file=sys.stderr)
    return 0
