"""Cohort options shared by ``ghanet embed`` and ``ghanet predict`` (and ``ghanet-train
cv``): ``--manifest``, ``--cluster``, ``--scheduler`` and, for predict, ``--survival``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_ghanet.options import ExecutionOptions, argument, fields_of

__all__ = ["add_cohort_options", "add_execution_options"]


def add_execution_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--cluster local:N|local:gpus`` and ``--scheduler ADDRESS`` (mutually exclusive)
    and ``--overwrite``, as :class:`~napari_ghanet.options.ExecutionOptions` declares them.

    The text of ``--cluster`` is parsed once, when the command makes its
    :class:`~napari_ghanet.options.ExecutionOptions` (``group_from_args``: a bad value is
    a usage error naming the flag); the cohort engine runs on that parse."""
    g = parser.add_argument_group(ExecutionOptions.title)
    m = g.add_mutually_exclusive_group()
    for f in fields_of(ExecutionOptions):
        flags, kw = argument(f)
        (m if f.name in ("cluster", "scheduler") else g).add_argument(*flags, **kw)
    return parser


def add_cohort_options(
    parser: argparse.ArgumentParser, *, predict: bool = False
) -> argparse.ArgumentParser:
    """Add ``--manifest``, ``--cluster``, ``--scheduler`` (and ``--survival`` when
    ``predict``) to a ``ghanet embed`` / ``ghanet predict`` parser.

    The command then resolves its inputs with
    ``napari_ghanet.cohort.resolve_inputs(args.slides, args.manifest)`` and calls
    ``embed_cohort`` / ``predict_cohort`` with ``cluster=args.cluster,
    scheduler=args.scheduler`` (and ``survival=args.survival``).
    """
    parser.add_argument(
        "--manifest", type=Path, default=None, metavar="CSV",
        help="CSV with a 'slide' column (paths, relative to the CSV's folder allowed) and "
             "optional 'mpp' and 'case_id' columns (slides sharing a case_id are one patient)",
    )
    add_execution_options(parser)
    if predict:
        parser.add_argument(
            "--survival", type=Path, default=None, metavar="CSV",
            help="observed survival (columns case_id or slide, survival_months, censorship "
                 "with 1 = censored): also write the external-validation report (Harrell and "
                 "Uno c-index, Kaplan-Meier curves of the predicted risk groups, log-rank p)",
        )
    return parser
