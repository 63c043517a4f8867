"""``ghanet embed``: slides to patch-feature files (``OUT/<slide stem>.h5``).

A thin layer over :func:`~napari_ghanet.cohort.embed_cohort`: any mix of slide files,
folders, glob patterns and ``--manifest``, one task per slide (in this process, on a
local Dask cluster or on a running scheduler), each through the pipeline's
:func:`~napari_ghanet.inference.stages.embed_to_file`. Writes ``OUT/summary.csv``; the
last line says how many slides were done, skipped and failed; the exit code is 0 only
when none failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from napari_ghanet.cli._cohort import add_cohort_options
from napari_ghanet.cli._options import (
    UsageError,
    add_shared_options,
    at_least,
    command,
    output_folder,
)
from napari_ghanet.cli._progress import CohortProgress
from napari_ghanet.device import resolve_device
from napari_ghanet.errors import CohortError, EncoderError

__all__ = ["add_parser", "encoder_arguments", "run"]

_CLASSIC = ("resnet50_trunc", "torchscript", "morphometric")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet embed`` on an ``argparse`` sub-parser collection."""
    from pathlib import Path

    p = subparsers.add_parser(
        "embed",
        help="extract patch features from whole-slide images (a slide or a cohort)",
        description=(
            "Detect tissue, tile it into patches (default: the encoder's, 256 px at 0.5 um/px "
            "for resnet50_trunc) and embed every patch with an encoder. Writes "
            "OUT/<slide stem>.h5 (datasets 'features' and 'coords', the CLAM layout) and "
            "OUT/summary.csv (one row per slide: slide, status done|skipped|failed, "
            "n_patches, seconds, error). A file made from the same slide with the same "
            "encoder and grid is kept (skipped), so an interrupted run resumes. Exit code 0 "
            "only when no slide failed."
        ),
    )
    p.add_argument(
        "slides", nargs="*", metavar="SLIDE",
        help="slide files, folders (searched recursively for slide files) and glob "
             "patterns (quote them: 'data/**/*.svs')",
    )
    p.add_argument(
        "--encoder",
        default="resnet50_trunc",
        help="encoder name (default resnet50_trunc); `ghanet encoders` lists them all "
             "(morphometric, torchscript, uni, virchow2, ..., timm:<arch>)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights file: resnet50_trunc ImageNet state dict (.pth), a foundation model's "
             "or timm:<arch> checkpoint, or the torchscript model file",
    )
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resnet50_trunc, timm:<arch>: resize patches to this side first (224 as CLAM)",
    )
    p.add_argument("--dim", type=int, default=None, help="torchscript: feature dimension")
    p.add_argument(
        "--input-size", type=int, default=None,
        help="torchscript, timm:<arch>: network input side (px)",
    )
    p.add_argument(
        "--mean", type=float, nargs=3, default=None,
        help="torchscript, timm:<arch>: RGB normalisation mean",
    )
    p.add_argument(
        "--std", type=float, nargs=3, default=None,
        help="torchscript, timm:<arch>: RGB normalisation std",
    )
    p.add_argument(
        "--patch-px", type=int, default=None,
        help="patch side in pixels (default: the encoder's, 256 for resnet50_trunc)",
    )
    p.add_argument(
        "--target-mpp", type=float, default=None,
        help="patch resolution in um/px (default: the encoder's, 0.5 = 20x)",
    )
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        help="keep patches at least this fraction tissue (0.5)",
    )
    p.add_argument(
        "--backend", choices=("auto", "onnx", "torch"), default="auto",
        help="CPU engine: auto (ONNX Runtime when the encoder supports it, else torch), "
             "onnx (insist), torch; no effect on CUDA",
    )
    p.add_argument(
        "--compile", action="store_true",
        help="CUDA: run the encoder through torch.compile (slow first batch; pays off on "
             "whole cohorts with large ViTs)",
    )
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    add_shared_options(p, batch_size=64, workers=4)
    add_cohort_options(p)
    p.set_defaults(func=run)
    return p


_APPLIES = {
    "resnet50_trunc": ("weights", "resize"),
    "torchscript": ("weights", "dim", "input_size", "mean", "std"),
    "morphometric": (),
}
_TIMM = ("weights", "resize", "input_size", "mean", "std")


def encoder_arguments(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Registry name and keyword arguments of the encoder the options describe.

    Examples
    --------
    >>> ns = argparse.Namespace(encoder="morphometric", weights=None, resize=None, dim=None,
    ...                         input_size=None, mean=None, std=None, patch_px=64,
    ...                         target_mpp=2.0)
    >>> encoder_arguments(ns)
    ('morphometric', {'patch_px': 64, 'target_mpp': 2.0})
    """
    name = args.encoder
    applies = _APPLIES.get(name, _TIMM if name.startswith("timm:") else ("weights",))
    for opt in ("weights", "resize", "dim", "input_size", "mean", "std"):
        if getattr(args, opt) is not None and opt not in applies:
            raise UsageError(f"--{opt.replace('_', '-')} does not apply to encoder {name}")
    kw: dict[str, Any] = {}
    if args.patch_px is not None:
        kw["patch_px"] = args.patch_px
    if args.target_mpp is not None:
        kw["target_mpp"] = args.target_mpp
    if name == "torchscript":
        if args.weights is None or args.dim is None:
            raise UsageError("--encoder torchscript needs --weights MODEL_FILE and --dim D")
        kw.update(path=args.weights, dim=args.dim, input_size=args.input_size)
    elif args.weights is not None:
        kw["weights"] = args.weights
    if args.resize is not None:
        kw["resize_to"] = args.resize
    if name != "torchscript" and args.input_size is not None:
        kw["input_size"] = args.input_size
    for opt in ("mean", "std"):
        if getattr(args, opt) is not None:
            kw[opt] = getattr(args, opt)
    return name, kw


def resolve_slides(args: argparse.Namespace):
    """The cohort's slide items from the positional inputs and ``--manifest``; a name
    that matches nothing is a usage error."""
    from napari_ghanet.cohort import resolve_inputs

    if not args.slides and args.manifest is None:
        raise UsageError("no slide given: name slide files, folders, patterns or --manifest")
    try:
        return resolve_inputs(args.slides, args.manifest)
    except CohortError as exc:
        raise UsageError(str(exc)) from exc


@command
def run(args: argparse.Namespace) -> int:
    """Run ``ghanet embed``; returns 0 when every slide succeeded (done or skipped), 1 when
    any failed, 2 on a usage error, 130 when interrupted."""
    from napari_ghanet.cohort import embed_cohort

    at_least("--batch-size", args.batch_size, 1)
    at_least("--patch-px", args.patch_px, 1)
    at_least("--workers", args.workers, 0)
    items = resolve_slides(args)
    name, kw = encoder_arguments(args)
    resolve_device(args.device)  # a wrong device fails once, not once per slide
    with output_folder(args.out), CohortProgress(len(items), quiet=args.quiet) as progress:
        try:
            summary = embed_cohort(
                items, args.out, name, encoder_kwargs=kw, mpp=args.mpp,
                patch_px=args.patch_px, target_mpp=args.target_mpp,
                min_tissue=args.min_tissue, device=args.device, batch_size=args.batch_size,
                workers=args.workers, overwrite=args.overwrite, backend=args.backend,
                compile=args.compile, cluster=args.cluster, scheduler=args.scheduler,
                progress=progress, say=progress.say,
            )
        except EncoderError as exc:
            raise UsageError(str(exc)) from exc
    print(f"summary: {summary.summary_path}", file=sys.stderr)
    print(summary.line, file=sys.stderr, flush=True)
    return summary.exit_code
