"""The terminal progress printers of the ``ghanet`` commands.

:class:`TerminalProgress` is a progress callback ``(stage, done, total)`` as the library
stages call it: a tqdm bar per counted stage on a terminal, a plain line per stage (and
every few seconds) when stderr is a file or a pipe. :class:`CohortProgress` is the
callback ``(done, total, TaskResult)`` of a cohort run: slides done / total with the
overall patches per second, and one line per slide.

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
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from napari_ghanet.cli._options import cli_wording

__all__ = ["CohortProgress", "TerminalProgress", "cli_wording"]


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

    def say(self, text: str) -> None:
        """A line on the stream (above the bar when one is shown)."""
        if self.quiet:
            return
        if self.bar is not None:
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

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


class CohortProgress:
    """Progress of a cohort run (``cohort.embed_cohort`` / ``predict_cohort``'s
    ``progress`` callable).

    On a terminal: a tqdm bar of slides (or patients) done / total with the overall
    patches per second (patches computed now, over the wall time so far) and the failures;
    otherwise a line ``[done/total] name: status (X patches/s overall)`` per slide. Each
    slide's outcome line (its ``message``, or ``name: FAILED: why``) goes to ``out``
    (stdout) when it succeeded and to ``stream`` (stderr) when it failed, quiet or not.

    Examples
    --------
    >>> import io, re
    >>> from napari_ghanet.cohort import TaskResult
    >>> err, out = io.StringIO(), io.StringIO()
    >>> p = CohortProgress(2, stream=err, out=out)
    >>> p(1, 2, TaskResult(0, {"slide": "/d/a.svs", "status": "done", "n_patches": 8}))
    >>> p(2, 2, TaskResult(1, {"slide": "/d/b.svs", "status": "failed", "error": "bad"}))
    >>> p.close()
    >>> print(re.sub(r"[0-9.]+ patches/s", "R patches/s", err.getvalue()).strip())
    [1/2] a.svs: done (R patches/s overall)
    b.svs: FAILED: bad
    [2/2] b.svs: failed (R patches/s overall)
    >>> print(out.getvalue().strip())
    a.svs: done, 8 patches -> None
    """

    def __init__(
        self,
        total: int,
        *,
        unit: str = "slide",
        quiet: bool = False,
        stream: TextIO | None = None,
        out: TextIO | None = None,
    ):
        self.total = int(total)
        self.unit = unit
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.out = out or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.patches = 0
        self.failed = 0
        self.bar = None
        if self.tty and not quiet:
            self.bar = tqdm(total=self.total, unit=unit, file=self.stream, dynamic_ncols=True,
                            desc=f"{unit}s", mininterval=0.5)

    def rate_text(self) -> str:
        rate = self.patches / max(time.perf_counter() - self.t0, 1e-9)
        return f"{rate:.1f} patches/s overall"

    @staticmethod
    def _name(row: dict) -> str:
        if row.get("unit"):
            return str(row["unit"])
        return Path(str(row.get("slide", "?")).split(";")[0]).name

    def _write(self, text: str, stream: TextIO) -> None:
        if self.bar is not None:
            tqdm.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def say(self, text: str) -> None:
        """Print a line on stderr without breaking the bar (e.g. the Dask dashboard)."""
        self._write(text, self.stream)

    def __call__(self, done: int, total: int, result) -> None:
        row = result.row
        name = self._name(row)
        status = str(row.get("status", "failed"))
        if status == "done":
            self.patches += int(row.get("n_patches") or 0)
        if status == "failed":
            self.failed += 1
            why = cli_wording(row.get("error") or "unknown error")
            self._write(f"{name}: FAILED: {why}", self.stream)
        else:
            msg = row.get("message") or (
                f"{name}: {status}, {row.get('n_patches')} patches -> {row.get('output')}")
            self._write(str(msg), self.out)
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.rate_text()}, {self.failed} failed",
                                     refresh=False)
            self.bar.update(done - self.bar.n)
        else:
            print(f"[{done}/{total}] {name}: {status} ({self.rate_text()})", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> CohortProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
