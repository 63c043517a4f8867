"""Names that become file names: checked once, before any work, so that no output can
land outside the folder it was asked for.

A patient name (``--patient``, a manifest's ``case_id``), a slide's stem or any other
string that the package turns into a file or folder name goes through :func:`safe_name`
(refuse) and the output path through :func:`child_path` (join and check that the result
stays inside its folder). A name is refused, never silently rewritten, so two different
patients can never be mapped onto one file.

A safe name is one path component of at most :data:`MAX_NAME_BYTES` bytes (UTF-8) that

* is not empty, ``.`` or ``..`` and has no path separator (``/`` or ``\\``),
* has no NUL, control or line-break character,
* does not start with ``.`` (hidden files, and the package's own temporary files
  ``.<name>.ghanet-tmp-*``, start with one) or ``-`` (read as an option by other tools),
* does not start or end with white space,
* is not an absolute path or a Windows drive (``C:``).

Examples
--------
>>> safe_name("TCGA-2F-A9KO", "case_id")
'TCGA-2F-A9KO'
>>> safe_name("../../etc", "case_id")
Traceback (most recent call last):
...
napari_ghanet.errors.UnsafeNameError: case_id '../../etc' cannot be used as a file name: it contains a path separator ('/' or '\\'); use a plain name such as 'patient-01'
>>> child_path("out", "case-1", ".ghanet.json").as_posix()
'out/case-1.ghanet.json'
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from napari_ghanet.errors import UnsafeNameError

__all__ = ["MAX_NAME_BYTES", "NAME_OVERHEAD_BYTES", "UnsafeNameError", "check_name_fits",
           "child_path", "make_safe_name", "name_problem", "safe_name"]

#: Longest name in bytes: the file system's 255 less room for the longest suffix the
#: package adds (``.patches.geojson``) and its temporary-file tag (``.ghanet-tmp-XXXXXXXX``).
MAX_NAME_BYTES = 200
#: Bytes the package adds to a name in its output files: the longest export suffix
#: (``.patches.geojson``, 16) and a temporary file's ``.`` + ``.ghanet-tmp-XXXXXXXX`` (21),
#: with room to spare.
NAME_OVERHEAD_BYTES = 55


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one path component, or None when it can (see the module
    text for the rules).

    Examples
    --------
    >>> name_problem("slide-01") is None
    True
    >>> name_problem("..")
    "it is '.' or '..'"
    """
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it is '.' or '..'"
    if "/" in name or "\\" in name:
        return "it contains a path separator ('/' or '\\')"
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]
    if bad:
        return f"it contains the control character {bad[0]!r}"
    if name != name.strip():
        return "it starts or ends with white space"
    if name.startswith("."):
        return "it starts with '.' (a hidden file)"
    if name.startswith("-"):
        return "it starts with '-'"
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        return "it starts with a drive letter"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode text"
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long (at most {MAX_NAME_BYTES})"
    return None


def safe_name(name: object, what: str = "name") -> str:
    """``name`` itself when it is a safe single file name; otherwise
    :class:`~napari_ghanet.errors.UnsafeNameError` naming ``what`` (e.g. ``"case_id"``,
    ``"--patient"``), the value and the rule it breaks.

    Parameters
    ----------
    name : str
        The text that is to become (part of) a file or folder name.
    what : str
        What the text is, for the message.

    Returns
    -------
    str
        ``name``, unchanged.
    """
    problem = name_problem(name)
    if problem is not None:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else (
            repr(name[:60]) + f"... ({len(name)} characters)")
        raise UnsafeNameError(
            f"{what} {shown} cannot be used as a file name: {problem}; "
            "use a plain name such as 'patient-01'"
        )
    return name  # type: ignore[return-value]


def make_safe_name(text: str, fallback: str = "slide") -> str:
    """A safe name made from ``text`` that the user did not type as a file name (a napari
    layer's name, a title): separators, control characters and a leading ``.``/``-`` become
    ``_``, white space is trimmed, the UTF-8 length is cut to :data:`MAX_NAME_BYTES`;
    ``fallback`` when nothing is left. Names the user gives explicitly (``--patient``,
    ``case_id``) go through :func:`safe_name` instead and are refused, never rewritten.

    Examples
    --------
    >>> make_safe_name("../scan 1/x")
    '_._scan 1_x'
    >>> make_safe_name("..")
    'slide'
    """
    out = "".join(
        "_" if c in "/\\" or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") else c
        for c in str(text)
    ).strip()
    out = out.encode("utf-8", "ignore")[:MAX_NAME_BYTES].decode("utf-8", "ignore").strip()
    while out[:1] in (".", "-"):
        out = "_" + out[1:]
    if len(out) >= 2 and out[1] == ":" and out[0].isalpha():
        out = out[0] + "_" + out[2:]
    return out if name_problem(out) is None and out.strip("_. ") else fallback


def child_path(folder: str | os.PathLike, name: str, suffix: str = "",
               what: str = "name") -> Path:
    """``folder / (name + suffix)`` after :func:`safe_name` on ``name``, checked to lie
    directly inside ``folder`` (a second guard: the joined path's parent must be
    ``folder`` itself).

    Parameters
    ----------
    folder : path
        The output folder.
    name : str
        The file's stem (a slide stem, a patient name).
    suffix : str
        Appended as it is (``".ghanet.json"``); must not contain a separator.
    what : str
        What ``name`` is, for the message.
    """
    safe_name(name, what)
    if "/" in suffix or "\\" in suffix or "\0" in suffix:
        raise UnsafeNameError(f"file suffix {suffix!r} contains a path separator")
    path = Path(folder) / f"{name}{suffix}"
    if path.parent != Path(folder) or os.path.isabs(f"{name}{suffix}"):
        raise UnsafeNameError(
            f"{what} {name!r} would write outside {os.fspath(folder)!r}; "
            "use a plain name such as 'patient-01'"
        )
    return path


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) of the file system ``folder`` (or its nearest existing
    parent) lives on; 255 where the system does not say."""
    p = Path(os.path.abspath(folder))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(os.pathconf(p, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_fits(folder: str | os.PathLike, name: str, what: str = "name",
                    suffix_bytes: int = NAME_OVERHEAD_BYTES) -> str:
    """``name`` when it is a safe name (:func:`safe_name`) that, with ``suffix_bytes`` more
    (the suffixes and temporary-file tags the package adds), fits the file system of
    ``folder`` (``NAME_MAX``, usually 255 bytes, 143 on eCryptfs); else
    :class:`~napari_ghanet.errors.UnsafeNameError` before any work, naming the limit.

    Examples
    --------
    >>> check_name_fits(".", "slide-01", "slide name")
    'slide-01'
    >>> check_name_fits("/tmp", "x" * 150, "slide name", suffix_bytes=120)
    Traceback (most recent call last):
    ...
    napari_ghanet.errors.UnsafeNameError: slide name 'xxx...' is too long for a file name in /tmp: its file system takes at most 135 bytes here, it has 150; rename it
    """
    safe_name(name, what)
    size = len(name.encode("utf-8")) + int(suffix_bytes)
    limit = _name_max(Path(folder))
    if size > limit:
        room = max(limit - int(suffix_bytes), 0)
        raise UnsafeNameError(
            f"{what} {name[:60] + '...' if len(name) > 60 else name!r} is too long for a file name in {os.fspath(folder)}: its "
            f"file system takes at most {room} bytes here, it has "
            f"{len(name.encode('utf-8'))}; rename it"
        )
    return name
