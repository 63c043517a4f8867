"""``ghanet encoders``: the registered patch encoders, and whether their weights are here."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "describe", "run"]


def describe() -> list[dict[str, Any]]:
    """One dict per registered encoder: the registry's listing (name, dim, input_size,
    patch_px, target_mpp, weights) plus ``weights_found``: True / False, or None when the
    encoder needs no weights or takes a file the user names.

    >>> rows = describe()
    >>> {"name": "uni", "dim": 1024} in [{k: r[k] for k in ("name", "dim")} for r in rows]
    True
    """
    from napari_ghanet.encoders import describe_encoders  # torch: only when listing

    rows = []
    for row in describe_encoders():
        status = str(row.get("weights", ""))
        found = True if status.startswith("found") else False if status == "missing" else None
        rows.append({**row, "weights_found": found})
    return rows


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ghanet encoders`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "encoders",
        help="list the patch encoders and whether their weights are on this machine",
        description=(
            "List every registered patch encoder with its feature width, network input "
            "size, patch resolution and whether its weights were found (torch's hub cache or "
            "the Hugging Face hub cache; a file can also be given with --encoder-weights "
            "FILE). Nothing is downloaded."
        ),
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")
    p.set_defaults(func=run)
    return p


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return str(v)


def run(args: argparse.Namespace) -> int:
    rows = describe()
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2, default=str))
        return 0
    cols = [
        ("name", "encoder"),
        ("dim", "dim"),
        ("input_size", "input"),
        ("patch_px", "patch px"),
        ("target_mpp", "um/px"),
        ("weights_found", "weights"),
    ]
    table = [[h for _, h in cols]] + [[_cell(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for j, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print("weights: '-' = none needed, or a file you name (--encoder-weights FILE)")
    return 0
