"""The ``ghanet`` command line: ``embed``, ``predict``, ``encoders`` and ``demo``.

One module per command, each a thin layer over library functions; the options they
share and the error policy live in :mod:`._options`, the progress printer in
:mod:`._progress`. Headless: napari is imported only by ``ghanet demo`` with a window.
"""

from __future__ import annotations

import argparse
import logging
import sys

from napari_ghanet._version import __version__
from napari_ghanet.cli import demo, embed, encoders, predict

__all__ = ["build_parser", "main", "quiet_dask"]


def build_parser() -> argparse.ArgumentParser:
    """The ``ghanet`` argument parser with its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="ghanet",
        description="G-HANet prognosis from whole-slide images (research use only).",
    )
    parser.add_argument("--version", action="version", version=f"napari-ghanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    embed.add_parser(sub)
    predict.add_parser(sub)
    encoders.add_parser(sub)
    demo.add_parser(sub)
    return parser


def quiet_dask() -> None:
    """Keep Dask's INFO chatter (a local scheduler runs in this process) off the terminal;
    warnings and errors still show. Imports distributed first: it sets its levels then."""
    import distributed  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith(("distributed.", "bokeh", "tornado")):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run ``ghanet``; returns the exit code (see each command)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose and (getattr(args, "cluster", None) or getattr(args, "scheduler", None)):
        quiet_dask()
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
