"""Cohort options shared by ``ghanet embed`` and ``ghanet predict`` (and ``ghanet-train
cv``): ``--manifest``, ``--cluster``, ``--scheduler`` and, for predict, ``--survival``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_ghanet.cohort.engine import parse_cluster
from napari_ghanet.errors import CohortError

__all__ = ["add_cohort_options", "add_execution_options"]


def _cluster(text: str) -> str:
    try:
        parse_cluster(text)
    except CohortError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_execution_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--cluster local:N|local:gpus`` and ``--scheduler ADDRESS`` (mutually exclusive)."""
    g = parser.add_argument_group("execution (default: in this process)")
    m = g.add_mutually_exclusive_group()
    m.add_argument(
        "--cluster", type=_cluster, default=None, metavar="local:N|local:gpus",
        help="run one task per slide on a Dask cluster on this machine: N worker processes "
             "(torch threads split so workers x threads <= cores), or one worker per GPU",
    )
    m.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="run on an existing Dask scheduler, e.g. tcp://node01:8786 (dask scheduler / "
             "dask worker, or dask-jobqueue on Slurm/PBS); GPU workers should offer the "
             "resource GPU=1 (dask worker --resources GPU=1)",
    )
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
