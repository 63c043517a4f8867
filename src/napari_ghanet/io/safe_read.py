"""Reading a file the user named, safely: a regular file of bounded size, or one clear line.

Every small input file the package reads whole (a manifest, a survival table, a region
GeoJSON, the settings file, a JSON sidecar) goes through :func:`read_regular_file` (bytes)
or :func:`read_text_file` (UTF-8 text). They refuse, naming ``what`` and the path:

* a path that does not exist ("not found"), a folder ("is a folder"), a FIFO, socket or
  device such as ``/dev/zero`` ("is not a regular file"): a FIFO is never opened, so a
  crafted name cannot hang the reader;
* a file larger than ``max_bytes`` (checked on the open file's size, and again while
  reading, so a file that grows after the check cannot exhaust memory);
* text that is not UTF-8 (a byte-order mark is dropped).

:func:`read_csv_rows` reads a small CSV table (a manifest, a survival table) on top of
:func:`read_text_file`: a header and its rows, each with its line number; a field longer
than :data:`MAX_CSV_FIELD` characters, a NUL byte, a broken quote or a row with more cells
than the header has names are refused naming the line, an empty file or a header without
rows as such.

Errors are :class:`~napari_ghanet.errors.InputFileError` (a ``GHANetError`` and a
``ValueError``).

Examples
--------
>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
>>> _ = p.write_text("slide\\na.svs\\n")
>>> read_text_file(p, "manifest")
'slide\\na.svs\\n'
>>> read_text_file(p.parent, "manifest")
Traceback (most recent call last):
...
napari_ghanet.errors.InputFileError: manifest ...: is a folder, not a file; give the file's path
"""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path

from napari_ghanet.errors import InputFileError

__all__ = ["DEFAULT_MAX_BYTES", "MAX_CSV_FIELD", "InputFileError", "check_regular_file",
           "read_csv_rows", "read_regular_file", "read_text_file"]

#: Default size cap for small input files read whole: 64 MiB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Longest CSV field (characters) :func:`read_csv_rows` accepts (the csv module's default
#: limit): a path, an identifier or a number is far shorter.
MAX_CSV_FIELD = 131072


def _size_text(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n} bytes"


def check_regular_file(path: str | os.PathLike, what: str = "file",
                       max_bytes: int | None = None) -> Path:
    """``path`` (user-expanded) when it is an existing regular file (links followed) of at
    most ``max_bytes`` bytes; else :class:`InputFileError` naming ``what``, the path and
    what to do. Nothing is opened, so a FIFO or device never blocks.

    Examples
    --------
    >>> check_regular_file("/dev/null", "survival table")
    Traceback (most recent call last):
    ...
    napari_ghanet.errors.InputFileError: survival table /dev/null: is not a regular file (a device, FIFO or socket); give a file on disk
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputFileError(f"{what} {p}: not found; check the path") from None
    except NotADirectoryError:
        raise InputFileError(f"{what} {p}: not found (a part of the path is a file)") from None
    except PermissionError:
        raise InputFileError(f"{what} {p}: permission denied; check its permissions") from None
    except OSError as e:
        raise InputFileError(f"{what} {p}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(f"{what} {p}: is a folder, not a file; give the file's path")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(
            f"{what} {p}: is not a regular file (a device, FIFO or socket); give a file on disk")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputFileError(
            f"{what} {p}: is {_size_text(st.st_size)}, larger than the {_size_text(max_bytes)} "
            f"such a file may be; check that it is the right file")
    return p


def read_regular_file(path: str | os.PathLike, what: str = "file",
                      max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`check_regular_file`).
    The file is opened without blocking (``O_NONBLOCK``) and checked again once open, so a
    path swapped for a FIFO between the check and the open cannot hang the read."""
    p = check_regular_file(path, what, max_bytes)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise InputFileError(f"{what} {p}: cannot be opened ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(f"{what} {p}: is not a regular file; give a file on disk")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputFileError(
            f"{what} {p}: is larger than the {_size_text(max_bytes)} such a file may be")
    return data


def read_text_file(path: str | os.PathLike, what: str = "file",
                   max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (a leading byte-order mark
    dropped); text in another encoding is :class:`InputFileError` naming the byte offset."""
    data = read_regular_file(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(
            f"{what} {Path(path).expanduser()}: is not UTF-8 text (byte {e.start}); save it "
            "as UTF-8 (CSV UTF-8 in a spreadsheet program)") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_csv_rows(path: str | os.PathLike, what: str = "table",
                  max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (names stripped of white space) and the data rows of a small CSV file,
    each row with its line number in the file; blank lines are skipped and every cell is
    stripped of white space. Read whole through :func:`read_text_file`.

    Refused with :class:`InputFileError` naming ``what``, the path and the line: an empty
    file, a field longer than :data:`MAX_CSV_FIELD` characters, a NUL byte, a quote left
    open, a row with more cells than the header has names, two columns of one name. A row
    with fewer cells is padded with empty strings.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text(' slide ,mpp\\na.svs, 0.5\\n\\nb.svs\\n')
    >>> read_csv_rows(p, "manifest")
    (['slide', 'mpp'], [(2, ['a.svs', '0.5']), (4, ['b.svs', ''])])
    >>> _ = p.write_text('slide\\na.svs,extra\\n')
    >>> read_csv_rows(p, "manifest")
    Traceback (most recent call last):
    ...
    napari_ghanet.errors.InputFileError: manifest ...: line 2 has 2 cells but the header names 1 column; quote a value that holds a comma
    """
    p = Path(path).expanduser()
    text = read_text_file(p, what, max_bytes)
    if not text.strip():
        raise InputFileError(f"{what} {p}: is empty; it needs a header line and one row per entry")
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise InputFileError(f"{what} {p}: line {line} holds a NUL byte; is it a text CSV file?")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    while True:  # csv's own field limit (MAX_CSV_FIELD, its default) bounds every field
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            reason = (f"a field is longer than {csv.field_size_limit()} characters"
                      if "field limit" in str(e) else f"not valid CSV ({e})")
            raise InputFileError(f"{what} {p}: line {start}: {reason}") from None
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        if header is None:
            header = cells
            continue
        if len(cells) > len(header):
            raise InputFileError(
                f"{what} {p}: line {start} has {len(cells)} cells but the header names "
                f"{len(header)} column{'s' if len(header) != 1 else ''}; quote a value "
                "that holds a comma")
        rows.append((start, cells + [""] * (len(header) - len(cells))))
    if header is None:  # only blank lines, or empty quoted cells
        raise InputFileError(f"{what} {p}: is empty; it needs a header line and one row per entry")
    named = [h for h in header if h]
    dup = sorted({h for h in named if named.count(h) > 1})
    if dup:
        raise InputFileError(f"{what} {p}: the header names column {dup[0]!r} twice; keep one")
    return header, rows
