"""``OUT/summary.csv``: one row per slide (or patient) of a cohort run, and its last line.

Columns: ``slide, status, n_patches, seconds, error, case_id, attempts, output``;
``status`` is ``done`` (made now), ``skipped`` (a valid output already existed) or
``failed`` (``error`` says why). The file is written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_ghanet.io.atomic import atomic_write

__all__ = ["SUMMARY_COLUMNS", "CohortSummary", "read_summary", "write_summary"]

SUMMARY_COLUMNS = ("slide", "status", "n_patches", "seconds", "error", "case_id", "attempts",
                   "output")
SUMMARY_FILE = "summary.csv"


@dataclass
class CohortSummary:
    """Result of a cohort run.

    Attributes
    ----------
    rows : list of dict
        One per slide (or patient), with the :data:`SUMMARY_COLUMNS` keys.
    out_dir : Path
    summary_path : Path
        ``OUT/summary.csv``.
    extra : dict
        Other files written (``cohort``: cohort.csv, ``validation``: the report JSON...).
    """

    rows: list[dict[str, Any]]
    out_dir: Path
    summary_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.get("status") == status)

    @property
    def n_done(self) -> int:
        return self.count("done")

    @property
    def n_skipped(self) -> int:
        return self.count("skipped")

    @property
    def n_failed(self) -> int:
        return self.count("failed")

    @property
    def line(self) -> str:
        """The last line a command prints: ``"N done, N skipped, N failed"``."""
        return f"{self.n_done} done, {self.n_skipped} skipped, {self.n_failed} failed"

    @property
    def exit_code(self) -> int:
        """0 when no slide failed, else 1."""
        return 1 if self.n_failed else 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return " ".join(str(value).split())  # one line per row


def write_summary(out_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write ``OUT/summary.csv`` atomically; returns its path.

    Examples
    --------
    >>> import tempfile
    >>> p = write_summary(tempfile.mkdtemp(), [
    ...     {"slide": "a.svs", "status": "done", "n_patches": 12, "seconds": 1.5},
    ...     {"slide": "b.svs", "status": "failed", "error": "b.svs: file is empty"}])
    >>> print(p.read_text().splitlines()[2])
    b.svs,failed,,,b.svs: file is empty,,,
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in SUMMARY_COLUMNS])
    return atomic_write(Path(out_dir) / SUMMARY_FILE, buf.getvalue())


def read_summary(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a ``summary.csv`` (all values as text)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
