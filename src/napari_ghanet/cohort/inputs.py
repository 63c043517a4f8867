"""Cohort inputs: slide files, folders, glob patterns and a manifest CSV -> slide items.

A folder is searched recursively for files whose extension is one the plugin's reader
accepts (the ``filename_patterns`` of ``napari.yaml``); hidden files (names starting with
a dot, such as unfinished temporary files) are left out, and a DICOM slide, stored as many
``.dcm`` files in one folder, counts once. A glob pattern (``*``, ``?``, ``[``; ``**``
recursive) may match files or folders. A manifest CSV has a ``slide`` column (paths; a
relative path is relative to the manifest's folder) and optional ``mpp`` (level-0 um/px)
and ``case_id`` columns; slides sharing a ``case_id`` are one patient.

The same file named twice is kept once (with a notice); two different files that would
write the same output name (same stem) are an error, as is a name that matches nothing.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from napari_ghanet.errors import CohortError, InputFileError
from napari_ghanet.io.dicomweb import DicomWebError, expand_url, is_dicomweb_url, url_stem
from napari_ghanet.io.names import safe_name
from napari_ghanet.io.safe_read import check_regular_file, read_csv_rows
from napari_ghanet.options import GridOptions, OptionError

__all__ = ["SlideItem", "SlideInputError", "is_pattern", "resolve_inputs", "slide_extensions"]


class SlideInputError(CohortError):
    """A cohort input (path, pattern, manifest) is missing, empty or ambiguous."""


@dataclass(frozen=True)
class SlideItem:
    """One slide of a cohort.

    Attributes
    ----------
    path : str
        Absolute path of the slide file.
    mpp : float or None
        Level-0 microns per pixel from the manifest, for files that do not record it.
    case_id : str or None
        Patient identifier; slides sharing it are predicted together.
    """

    path: str
    mpp: float | None = None
    case_id: str | None = None

    @property
    def name(self) -> str:
        """File name, e.g. ``slide1.svs`` (a DICOMweb series URL: its series UID)."""
        return url_stem(self.path) if is_dicomweb_url(self.path) else Path(self.path).name

    @property
    def stem(self) -> str:
        """Output stem (``Path.stem``; a DICOMweb series URL: its series UID):
        ``OUT/<stem>.h5``, ``OUT/<stem>/``."""
        return url_stem(self.path) if is_dicomweb_url(self.path) else Path(self.path).stem


_GLOB_CHARS = re.compile(r"[*?\[]")


def is_pattern(text: str | os.PathLike) -> bool:
    """Whether an input names a glob pattern (``*``, ``?`` or ``[``) rather than a file or
    folder.

    Examples
    --------
    >>> is_pattern("data/**/*.svs"), is_pattern("data/slide.svs")
    (True, False)
    """
    return bool(_GLOB_CHARS.search(os.fspath(text)))


@lru_cache(maxsize=1)
def slide_extensions() -> tuple[str, ...]:
    """Lower-case slide file extensions (with the dot) the reader accepts, read from the
    ``filename_patterns`` of the plugin manifest ``napari.yaml``.

    Examples
    --------
    >>> from napari_ghanet.cohort.inputs import slide_extensions
    >>> ".svs" in slide_extensions() and ".tif" in slide_extensions()
    True
    """
    text = (Path(__file__).resolve().parents[1] / "napari.yaml").read_text(encoding="utf-8")
    block = text.split("filename_patterns:", 1)[1]
    exts = []
    for line in block.splitlines()[1:]:
        m = re.match(r'\s*-\s*["\']?\*(\.[A-Za-z0-9.]+)["\']?\s*$', line)
        if not m:
            break
        exts.append(m.group(1).lower())
    return tuple(dict.fromkeys(exts))


def _is_slide_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(slide_extensions())


def _search_folder(folder: Path) -> list[Path]:
    found: list[Path] = []
    dicom_dirs: set[Path] = set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            p = Path(root) / f
            if not _is_slide_file(p):
                continue
            if f.lower().endswith(".dcm"):  # one DICOM WSI = many .dcm files in one folder
                if p.parent in dicom_dirs:
                    continue
                dicom_dirs.add(p.parent)
            found.append(p)
    return found


def _expand(item: str | os.PathLike) -> list[Path]:
    text = os.fspath(item)
    p = Path(text).expanduser()
    if p.is_dir():
        found = _search_folder(p)
        if not found:
            raise SlideInputError(
                f"{p}: folder holds no slide file ({', '.join(slide_extensions())})"
            )
        return found
    if p.is_file():
        return [p]
    if _GLOB_CHARS.search(text):
        hits = sorted(glob.glob(os.path.expanduser(text), recursive=True))
        out: list[Path] = []
        for h in hits:
            hp = Path(h)
            if hp.is_dir():
                out += _search_folder(hp)
            elif _is_slide_file(hp) or hp.is_file():
                out.append(hp)
        if not out:
            raise SlideInputError(f"{text}: the pattern matches no slide file")
        return out
    problem = _slide_problem(p)
    if problem is not None and problem != "not found":
        raise SlideInputError(f"slide {text}: {problem}")
    raise SlideInputError(f"{text}: no such slide file or folder")


def _short(text: object, n: int = 80) -> str:
    """``text`` for a message: at most ``n`` characters, the rest counted."""
    text = str(text)
    return text if len(text) <= n else f"{text[:n - 20]}... ({len(text)} characters)"


def _parse_mpp(value: str | None, where: str) -> float | None:
    if value is None or not str(value).strip():
        return None
    try:
        mpp = float(value)
    except ValueError:
        raise SlideInputError(
            f"{where}: mpp {_short(value)!r} is not a number (um per pixel)") from None
    try:  # the one level-0 resolution range: GridOptions.mpp's declaration
        return GridOptions(mpp=mpp).mpp
    except OptionError as e:
        raise SlideInputError(f"{where}: mpp {e.reason}") from None


def _case_id(value: str | None, where: str) -> str | None:
    """A manifest's ``case_id``: it names the patient's output folder, so it must be a
    plain file name (:func:`~napari_ghanet.io.names.safe_name`)."""
    if not value:
        return None
    return safe_name(value, f"{where}: case_id")


#: the manifest columns read; any other column is left out with a note
MANIFEST_COLUMNS = ("slide", "mpp", "case_id")
#: largest manifest read (bytes): a million slides' lines fit in far less
MANIFEST_MAX_BYTES = 64 * 1024 * 1024


def _slide_problem(path: Path) -> str | None:
    """Why ``path`` is no slide file to open ("not found", "is a folder", ...), or None."""
    try:
        check_regular_file(path, "slide")
    except InputFileError as e:
        return str(e).rsplit(": ", 1)[-1].split(";")[0]
    return None


def read_manifest(path: str | os.PathLike,
                  notify: Callable[[str], None] | None = None) -> list[SlideItem]:
    """Slide items of a manifest CSV (``slide`` column; optional ``mpp``, ``case_id``).

    The file is read through :func:`~napari_ghanet.io.safe_read.read_csv_rows`: a regular
    UTF-8 file of at most 64 MiB, fields of at most 131,072 characters, no row with more
    cells than the header; any of these is one :class:`SlideInputError` naming the line.
    Columns other than ``slide``, ``mpp`` and ``case_id`` are ignored with one note to
    ``notify`` (default: stderr), so a spreadsheet with extra columns still works.
    """
    path = Path(path).expanduser()
    try:
        header, rows = read_csv_rows(path, "manifest", MANIFEST_MAX_BYTES)
    except InputFileError as e:
        raise SlideInputError(str(e)) from None
    if "slide" not in header:
        shown = ", ".join(h[:40] for h in header[:10] if h) or "no header"
        raise SlideInputError(
            f"{path}: the manifest needs a 'slide' column with the slide paths "
            f"(found: {shown}); optional columns: mpp, case_id"
        )
    extra = [h for h in header if h and h not in MANIFEST_COLUMNS]
    if extra:
        say = notify or (lambda s: print(s, file=sys.stderr, flush=True))
        shown = ", ".join(repr(h[:40]) for h in extra[:5]) + (
            f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        say(f"note: {path}: column(s) {shown} ignored (a manifest reads slide, mpp and "
            "case_id)")
    col = {h: k for k, h in enumerate(header) if h in MANIFEST_COLUMNS}
    items, missing = [], []
    for i, cells in rows:
        r = {h: cells[k] for h, k in col.items()}
        where = f"{path}, line {i}"
        if not r.get("slide"):
            raise SlideInputError(f"{where}: empty 'slide' value")
        if is_dicomweb_url(r["slide"]):  # a DICOMweb series or study URL
            items += [SlideItem(u, _parse_mpp(r.get("mpp"), where),
                                _case_id(r.get("case_id"), where))
                      for u in _expand_url(r["slide"], where)]
            continue
        sp = Path(r["slide"]).expanduser()
        if not sp.is_absolute():
            sp = path.parent / sp
        problem = _slide_problem(sp)
        if problem is not None:
            missing.append(f"line {i}: {_short(sp, 200)} ({problem})")
            continue
        items.append(SlideItem(str(sp.resolve()), _parse_mpp(r.get("mpp"), where),
                               _case_id(r.get("case_id"), where)))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise SlideInputError(
            f"{path}: {len(missing)} slide(s) of the manifest cannot be read: "
            f"{'; '.join(missing[:5])}{more}"
        )
    if not items:
        raise SlideInputError(f"{path}: the manifest lists no slide")
    return items


def _expand_url(text: str, where: str) -> list[str]:
    """The series URLs of a DICOMweb series or study URL (its SM VOLUME series)."""
    try:
        return expand_url(text)
    except DicomWebError as e:
        raise SlideInputError(f"{where + ': ' if where else ''}{e}") from None


def resolve_inputs(
    items: Iterable[str | os.PathLike] | None,
    manifest: str | os.PathLike | None = None,
    *,
    notify: Callable[[str], None] | None = None,
) -> list[SlideItem]:
    """The cohort's slides, in order, each once.

    Parameters
    ----------
    items : iterable of str or PathLike
        Slide files, folders (searched recursively by extension) and glob patterns.
    manifest : path, optional
        CSV with a ``slide`` column and optional ``mpp`` and ``case_id`` columns; its
        slides come first.
    notify : callable(str), optional
        Receives notices (duplicates dropped); default: print to stderr.

    Returns
    -------
    list of SlideItem

    Raises
    ------
    SlideInputError
        A name that matches nothing, a manifest without a ``slide`` column or naming
        missing files, two files with the same stem, or no slide at all.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for n in ("a.svs", "b.tif", "notes.txt"):
    ...     _ = (d / n).write_bytes(b"x")
    >>> [i.name for i in resolve_inputs([d, d / "a.svs"], notify=lambda s: None)]
    ['a.svs', 'b.tif']
    """
    say = notify or (lambda s: print(s, file=sys.stderr, flush=True))
    found: list[SlideItem] = []
    if manifest is not None:
        found += read_manifest(manifest, notify=say)
    for it in items or ():
        if is_dicomweb_url(os.fspath(it)):  # series URL; a study URL is like a folder
            found += [SlideItem(u) for u in _expand_url(os.fspath(it), "")]
            continue
        found += [SlideItem(str(p.resolve())) for p in _expand(it)]
    if not found:
        raise SlideInputError("no slide given: name slide files, folders, glob patterns or a "
                              "manifest CSV")
    seen: dict[str, SlideItem] = {}
    stems: dict[str, str] = {}
    dups = 0
    for item in found:
        key = os.path.normcase(item.path)
        if key in seen:
            dups += 1
            continue
        other = stems.get(item.stem)
        if other is not None:
            raise SlideInputError(
                f"{other} and {item.path} would both write outputs named {item.stem!r}; "
                "rename one, or process them into different output folders"
            )
        stems[item.stem] = item.path
        seen[key] = item
    if dups:
        say(f"note: {dups} slide(s) named more than once; each is processed once")
    return list(seen.values())


def patient_groups(items: Iterable[SlideItem]) -> list[list[SlideItem]]:
    """Slides grouped by ``case_id`` (order of first appearance); a slide without a
    case_id is its own group."""
    groups: dict[str, list[SlideItem]] = {}
    for it in items:
        groups.setdefault(it.case_id or f"\0{it.path}", []).append(it)
    return list(groups.values())
