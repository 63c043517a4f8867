"""The one terminal progress printer of the ``ghanet`` commands.

:class:`TerminalProgress` is a progress callback ``(stage, done, total)`` as the library
stages call it: a tqdm bar per counted stage on a terminal, a plain line per stage (and
every few seconds) when stderr is a file or a pipe.

Examples
--------
>>> import io
>>> out = io.StringIO()
>>> with TerminalProgress("s.svs", stream=out) as progress:
...     progress("tissue", 0, 0)
...     progress("features", 4, 4)
>>> print(out.getvalue().strip())
s.svs tissue ...
s.svs features 4/4
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """Progress of a run on stderr; ``quiet`` prints nothing. Use as a context manager
    (or call :meth:`close`) so that a bar does not stay open."""

    def __init__(
        self,
        label: str = "",
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        interval_s: float = 5.0,
    ):
        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self.stage: str | None = None
        self.bar = None
        self.last = 0.0

    def _name(self, stage: str) -> str:
        return f"{self.label} {stage}" if self.label else stage

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        new_stage = stage != self.stage
        if new_stage:
            self._close_bar()
            self.stage = stage
        if self.tty:
            if total > 0:
                if self.bar is None:
                    self.bar = tqdm(
                        total=total, desc=self._name(stage), unit="patch", leave=False,
                        file=self.stream,
                    )
                self.bar.update(done - self.bar.n)
            elif new_stage:
                tqdm.write(f"{self._name(stage)} ...", file=self.stream)
            return
        now = time.monotonic()
        finished = total > 0 and done >= total
        if new_stage or finished or now - self.last > self.interval_s:
            self.last = now
            count = f"{done}/{total}" if total > 0 else "..."
            print(f"{self._name(stage)} {count}", file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._close_bar()
        self.stage = None

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
