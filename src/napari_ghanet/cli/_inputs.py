"""The slide inputs every cohort-capable command shares: positional slides, folders, glob
patterns and ``--manifest``, resolved to the cohort's slide items."""

from __future__ import annotations

import argparse

from napari_ghanet.cli._options import UsageError
from napari_ghanet.errors import CohortError

__all__ = ["resolve_slides"]


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
