"""Options shared by the ``ghanet`` commands, declared once, and the one error policy.

Every command takes the same ``--device``, ``--mpp``, ``--batch-size``, ``--workers`` and
``--quiet``; :func:`command` wraps a command's ``run(args)`` so that any
:class:`~napari_ghanet.errors.GHANetError` ends it with ``error: <message>`` and exit code
1, a :class:`UsageError` with code 2, and a cancellation or Ctrl-C with code 130.

Library messages say what to change without naming a flag ("give its path as the encoder
weights"); :func:`cli_wording` names the flag that does it, and :func:`backend_error` turns
the library's refusal of an asked CPU engine into a usage error naming ``--backend``.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_shared_options(p)
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
from napari_ghanet.options import (
    ConsoleOptions,
    EmbedOptions,
    GridOptions,
    OptionError,
    add_arguments,
    from_args,
)

__all__ = ["UsageError", "add_shared_options", "backend_error", "cli_wording", "command",
           "flag_error", "group_from_args", "output_folder"]

#: library wording -> the same with the command-line flag that does it
_FLAG_HINTS = {
    "allow overwriting": "pass --overwrite",
    "as the encoder weights": "as the encoder weights (--encoder-weights FILE)",
    "give its level-0 resolution explicitly": "give its level-0 resolution explicitly with "
                                              "--mpp UM",
    "use backend='torch' or 'auto'": "use --backend torch or --backend auto",
    "choose the torch or auto backend": "use --backend torch or --backend auto",
}
#: library wordings of a CPU engine that cannot run as asked (encoders.onnx_backend,
#: inference.embedding): the --backend choice is then the usage error
_BACKEND_REFUSALS = ("does not run in ONNX Runtime", "onnxruntime is not installed",
                     "runs on the CPU only")


class UsageError(Exception):
    """A command-line value that cannot work (exit code 2)."""


def add_shared_options(p: argparse.ArgumentParser) -> None:
    """Add --device, --mpp, --batch-size, --workers and --quiet (declared in
    :mod:`napari_ghanet.options`)."""
    add_arguments(p, GridOptions, only=("mpp",), group=False)
    add_arguments(p, EmbedOptions, only=("device", "batch_size", "workers"), group=False)
    add_arguments(p, ConsoleOptions, group=False)


def cli_wording(message: str) -> str:
    """A library message with the command-line flag named where it says what to change.

    Examples
    --------
    >>> cli_wording("x.h5 exists: allow overwriting to replace it")
    'x.h5 exists: pass --overwrite to replace it'
    >>> cli_wording("not found: give its path as the encoder weights")
    'not found: give its path as the encoder weights (--encoder-weights FILE)'
    >>> cli_wording(_) == _  # worded once
    True
    """
    for text, flag in _FLAG_HINTS.items():
        if flag not in message:
            message = message.replace(text, flag)
    return message


def backend_error(e: BaseException, backend: str | None) -> UsageError | None:
    """The library refusing the CPU engine ``backend`` that was asked for (ONNX Runtime for
    an encoder without an ONNX export, onnxruntime missing, ONNX on CUDA) as a usage error
    naming ``--backend``; None when ``e`` is no such refusal.

    Examples
    --------
    >>> e = ValueError("encoder morphometric does not run in ONNX Runtime; use torch")
    >>> print(backend_error(e, "onnx"))
    --backend onnx: encoder morphometric does not run in ONNX Runtime: use --backend torch or --backend auto
    >>> backend_error(e, "auto") is None, backend_error(ValueError("x"), "onnx") is None
    (True, True)
    """
    text = " ".join(str(e).split())
    if not backend or backend == "auto" or not any(t in text for t in _BACKEND_REFUSALS):
        return None
    reason = text.split(";")[0].rstrip(". ")
    fix = ("--device cpu or --backend auto" if "CPU only" in text
           else "--backend torch or --backend auto")
    return UsageError(f"--backend {backend}: {reason}: use {fix}")


def flag_error(e: OptionError) -> UsageError:
    """An option error as a usage error that names the command-line flag."""
    flag = getattr(e, "flag", None)
    return UsageError(f"{flag} {e.reason}" if flag else str(e))


def group_from_args(cls, args: argparse.Namespace, **extra):
    """:func:`napari_ghanet.options.from_args`, a bad value as a :class:`UsageError`
    naming its flag."""
    try:
        return from_args(cls, args, **extra)
    except OptionError as e:
        raise flag_error(e) from None


def command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: errors become a message on stderr and an exit code."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(run(args) or 0)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OptionError as e:
            print(f"error: {flag_error(e)}", file=sys.stderr)
            return 2
        except Cancelled:
            print("cancelled: nothing written", file=sys.stderr)
            return 130
        except GHANetError as e:
            usage = backend_error(e, getattr(args, "backend", None))
            if usage is not None:
                print(f"error: {usage}", file=sys.stderr)
                return 2
            print(f"error: {cli_wording(str(e))}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: nothing written", file=sys.stderr)
            return 130

    return wrapper


@contextlib.contextmanager
def output_folder(out: Path):
    """Check ``out`` is a writable folder before any work (creating it); remove it again
    when the command then fails and it is still empty, so a failure leaves nothing."""
    out = Path(out)
    created = []  # the folders this command makes, deepest first
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            break
        created.append(folder)
    check_writable_dir(out)
    try:
        yield out
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        raise
