"""Options shared by the ``ghanet`` commands, declared once, and the one error policy.

Every command takes the same ``--device``, ``--mpp``, ``--batch-size``, ``--workers`` and
``--quiet``; :func:`command` wraps a command's ``run(args)`` so that any
:class:`~napari_ghanet.errors.GHANetError` ends it with ``error: <message>`` and exit code
1, a :class:`UsageError` with code 2, and a cancellation or Ctrl-C with code 130.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_shared_options(p, batch_size=64, workers=4)
>>> p.parse_args(["--device", "cpu"]).batch_size
64
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from napari_ghanet.errors import Cancelled, GHANetError
from napari_ghanet.io.atomic import check_writable_dir

__all__ = ["UsageError", "add_shared_options", "at_least", "command", "output_folder"]


class UsageError(Exception):
    """A command-line value that cannot work (exit code 2)."""


def add_shared_options(
    p: argparse.ArgumentParser,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
) -> None:
    """Add --device, --mpp, --batch-size, --workers and --quiet with these defaults
    (None: the embedding defaults, 64 patches per batch and 4 reader threads)."""
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
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"patches per encoder batch ({batch_size or 64})",
    )
    p.add_argument(
        "--workers", type=int, default=workers, help=f"patch reader threads ({workers or 4})"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def at_least(name: str, value: int | None, minimum: int) -> None:
    """Raise :class:`UsageError` when ``value`` (not None) is below ``minimum``."""
    if value is not None and value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")


def command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: errors become a message on stderr and an exit code."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(run(args) or 0)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Cancelled:
            print("cancelled: nothing written", file=sys.stderr)
            return 130
        except GHANetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: nothing written", file=sys.stderr)
            return 130

    return wrapper


@contextlib.contextmanager
def output_folder(out: Path):
    """Check ``out`` is a writable folder before any work (creating it); remove it again
    when the command then fails and it is still empty, so a failure leaves nothing."""
    created = not Path(out).exists()
    check_writable_dir(out)
    try:
        yield Path(out)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                Path(out).rmdir()  # only when empty
        raise
