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
from napari_ghanet.cli._dicomweb import add_dicomweb_arguments, setup_dicomweb
from napari_ghanet.cli._inputs import resolve_slides
from napari_ghanet.cli._options import (
    UsageError,
    cli_wording,
    command,
    group_from_args,
    output_folder,
)
from napari_ghanet.cli._progress import CohortProgress
from napari_ghanet.errors import EncoderError
from napari_ghanet.options import (
    CPU_READERS,
    ConsoleOptions,
    EmbedOptions,
    EncoderOptions,
    ExecutionOptions,
    GridOptions,
    add_arguments,
)

__all__ = ["DEFAULT_ENCODER", "WEIGHT_FREE", "add_parser", "encoder_arguments", "run"]

#: the encoder ``ghanet embed`` uses without ``--encoder`` (declared in
#: :class:`~napari_ghanet.options.EncoderOptions`)
DEFAULT_ENCODER = EncoderOptions().encoder
#: the registered encoders that need no weights file (the registry's ``takes_weights`` is
#: False for them; a test checks this against the registry, which imports torch, so that
#: ``--help`` does not have to)
WEIGHT_FREE = ("morphometric",)
#: the one line added when the encoder's weights are missing
NO_WEIGHTS_HINT = (
    f"without a weights file: --encoder {WEIGHT_FREE[0]} (weight-free, works offline)"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet embed`` on an ``argparse`` sub-parser collection."""
    from pathlib import Path

    p = subparsers.add_parser(
        "embed",
        help="extract patch features from whole-slide images (a slide or a cohort)",
        description=(
            "Detect tissue, tile it into patches (default: the encoder's patch size and "
            "resolution) and embed every patch with an encoder. Writes "
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
    add_arguments(p, EncoderOptions, group=False)
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resnet50_trunc, timm:<arch>: resize patches to this side first, in px (224 "
             "as CLAM)",
    )
    p.add_argument("--dim", type=int, default=None,
                   help="torchscript: feature dimension (numbers per patch)")
    p.add_argument(
        "--input-size", type=int, default=None,
        help="torchscript, timm:<arch>: network input side (px)",
    )
    p.add_argument(
        "--mean", type=float, nargs=3, default=None,
        help="torchscript, timm:<arch>: RGB normalisation mean (three numbers, 0-1 "
             "scale)",
    )
    p.add_argument(
        "--std", type=float, nargs=3, default=None,
        help="torchscript, timm:<arch>: RGB normalisation standard deviation (three "
             "numbers, 0-1 scale)",
    )
    add_arguments(p, ConsoleOptions, group=False)
    add_arguments(p, GridOptions)
    add_arguments(p, EmbedOptions, aliases={"weights": ("--weights",)},
                  defaults={"workers": CPU_READERS})
    add_cohort_options(p)
    add_dicomweb_arguments(p, predict=False)  # the token file and the QIDO-RS query
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
            flag = "--encoder-weights" if opt == "weights" else f"--{opt.replace('_', '-')}"
            raise UsageError(f"{flag} does not apply to encoder {name}")
    kw: dict[str, Any] = {}
    if args.patch_px is not None:
        kw["patch_px"] = args.patch_px
    if args.target_mpp is not None:
        kw["target_mpp"] = args.target_mpp
    if name == "torchscript":
        if args.weights is None or args.dim is None:
            raise UsageError("--encoder torchscript needs --encoder-weights MODEL_FILE and --dim D")
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


@command
def run(args: argparse.Namespace) -> int:
    """Run ``ghanet embed``; returns 0 when every slide succeeded (done or skipped), 1 when
    any failed, 2 on a usage error, 130 when interrupted."""
    from napari_ghanet.cohort import embed_cohort

    setup_dicomweb(args)  # credentials checked, study URLs / server queries -> series URLs
    items = resolve_slides(args)
    grid = group_from_args(GridOptions, args)
    embed = group_from_args(EmbedOptions, args, weights=None)  # the encoder's own argument
    execution = group_from_args(ExecutionOptions, args)
    name, kw = encoder_arguments(args)
    with output_folder(args.out), CohortProgress(len(items), quiet=args.quiet) as progress:
        try:
            summary = embed_cohort(
                items, args.out, name, encoder_kwargs=kw, grid=grid, embed=embed,
                execution=execution, progress=progress, say=progress.say,
            )
        except EncoderError as exc:
            message = cli_wording(" ".join(str(exc).split()))
            if args.weights is None and name not in WEIGHT_FREE and "weights" in message:
                message = f"{message}; {NO_WEIGHTS_HINT}"
            raise UsageError(message) from exc
    print(f"summary: {summary.summary_path}", file=sys.stderr)
    print(summary.line, file=sys.stderr, flush=True)
    return summary.exit_code
