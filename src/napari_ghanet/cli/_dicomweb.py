"""DICOMweb options of ``ghanet predict`` and ``ghanet embed``.

``SLIDE`` may be a DICOMweb series URL, a study URL (its slide-microscopy series, like a
folder) or a server root with ``--dicomweb-query`` (:func:`~napari_ghanet.io.dicomweb.
expand_url`). Credentials: ``--dicomweb-token-file FILE`` (or ``GHANET_DICOMWEB_TOKEN``);
the file's path is handed to the reader (and to cohort workers) through the environment,
its content is never printed. ``ghanet predict`` also writes the result as DICOM
(``--dicom-out DIR``) and stores it on the slide's server (``--stow``) or another one
(``--stow URL``): :mod:`napari_ghanet.inference.dicom_export`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from napari_ghanet.cli._options import UsageError
from napari_ghanet.io.dicomweb import (
    TOKEN_FILE_ENV,
    DicomWebError,
    credentials_from_env,
    expand_url,
    is_dicomweb_url,
    parse_root,
    parse_url,
    url_stem,
)
from napari_ghanet.options import DicomWebOptions, add_arguments, fields_of

__all__ = ["add_dicomweb_arguments", "dicom_outputs", "setup_dicomweb"]

#: ``--stow`` without a URL: the server the slide came from (its declared value alone)
SAME_SERVER = next(f.info.alone for f in fields_of(DicomWebOptions) if f.name == "stow")


def add_dicomweb_arguments(p: argparse.ArgumentParser, *, predict: bool = True) -> None:
    """Add the DICOMweb flags (``--dicom-out`` and ``--stow`` for predict)."""
    add_arguments(p, DicomWebOptions, skip=() if predict else ("dicom_out", "stow"))


def setup_dicomweb(args: argparse.Namespace) -> None:
    """Before any work: the token file checked and handed on through the environment,
    study URLs and server queries expanded to series URLs in ``args.slides``."""
    token = getattr(args, "dicomweb_token_file", None)
    if token is not None:
        os.environ[TOKEN_FILE_ENV] = str(Path(token).expanduser().resolve())
    try:
        credentials_from_env()  # an unreadable or malformed secret: one line now
        slides, query = list(getattr(args, "slides", []) or []), args.dicomweb_query
        if query and not any(is_dicomweb_url(s) for s in slides):
            raise UsageError("--dicomweb-query needs the server's DICOMweb root URL as SLIDE")
        expanded = []
        for s in slides:
            expanded += expand_url(s, query) if is_dicomweb_url(s) else [s]
        args.slides = expanded
    except DicomWebError as e:
        raise UsageError(str(e)) from None
    stow = getattr(args, "stow", None)
    if stow is not None and stow != SAME_SERVER:
        try:
            parse_root(stow)
        except DicomWebError as e:
            raise UsageError(f"--stow: {e}") from None
    if (stow is not None or getattr(args, "dicom_out", None) is not None) and (
            getattr(args, "patient", None) or len(args.slides) != 1):
        raise UsageError("--dicom-out / --stow write one slide's DICOM results: give one slide")
    if stow == SAME_SERVER and not is_dicomweb_url(args.slides[0]):
        raise UsageError("--stow without a URL stores on the server the slide came from; "
                         "this slide is a file: give the server, --stow URL")


def dicom_outputs(prediction, args: argparse.Namespace) -> dict[str, object]:
    """Write (``--dicom-out``) and store (``--stow``) the prediction's DICOM objects."""
    out_dir, stow = getattr(args, "dicom_out", None), getattr(args, "stow", None)
    if out_dir is None and stow is None:
        return {}
    from napari_ghanet.inference.dicom_export import dicom_results, store_dicom, write_dicom

    results = dicom_results(prediction)
    written: dict[str, object] = {}
    slide = str(args.slides[0])
    stem = url_stem(slide) if is_dicomweb_url(slide) else Path(slide).stem
    if out_dir is not None:
        written.update(write_dicom(results, out_dir, stem))
    if stow is not None:
        root = parse_url(slide).root if stow == SAME_SERVER else parse_root(stow)
        for k, url in enumerate(store_dicom(results, root)):
            written[f"stow_{k}"] = url
        print(f"stored {len(results)} DICOM objects on {root}", file=sys.stderr)
    return written
