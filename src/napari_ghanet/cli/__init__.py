"""The ``ghanet`` command line: ``embed``, ``predict`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys

from napari_ghanet._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghanet",
        description="G-HANet prognosis from whole-slide images (research use only).",
    )
    parser.add_argument("--version", action="version", version=f"napari-ghanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from napari_ghanet.cli import demo as _cli_demo
    from napari_ghanet.cli import embed as _cli_embed
    from napari_ghanet.cli import predict as _cli_predict

    _cli_embed.add_parser(sub)
    _cli_predict.add_parser(sub)
    _cli_demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
