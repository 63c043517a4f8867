"""Notifications and user-facing error messages of the dock."""

from __future__ import annotations

import logging

from napari_ghanet.errors import (
    Cancelled,
    EncoderMismatchError,
    GHANetError,
    NoTissueError,
    SlideError,
)

__all__ = ["error_message", "notify"]

logger = logging.getLogger(__name__)

# What a failed prediction's message starts with, by exception class: the most specific
# class in the exception's MRO wins. Other GHANetErrors (bundle, prediction, features,
# encoder) are written for the user and shown as they are.
_PREFIXES: dict[type, str] = {
    EncoderMismatchError: "The model does not fit these features: ",
    NoTissueError: "No tissue found: ",
    SlideError: "Cannot read the slide: ",
    GHANetError: "",
    ValueError: "",
}


def error_message(exc: BaseException) -> str | None:
    """The notification text for a failed prediction; None for :class:`Cancelled`.

    Examples
    --------
    >>> from napari_ghanet.errors import BundleError, Cancelled, NoTissueError
    >>> error_message(NoTissueError("no patch with enough tissue"))
    'No tissue found: no patch with enough tissue'
    >>> error_message(BundleError("not a model bundle"))
    'not a model bundle'
    >>> error_message(Cancelled("stopped")) is None
    True
    >>> error_message(KeyError("x"))
    "Prediction failed (KeyError): 'x'"
    """
    if isinstance(exc, Cancelled):
        return None
    for cls in type(exc).__mro__:
        if cls in _PREFIXES:
            return f"{_PREFIXES[cls]}{exc}"
    return f"Prediction failed ({type(exc).__name__}): {exc}"


def notify(kind: str, message: str) -> None:
    """A napari notification ("error", "warning" or "info") that never raises."""
    from napari.utils.notifications import show_error, show_info, show_warning

    try:
        {"error": show_error, "warning": show_warning, "info": show_info}[kind](message)
    except Exception:  # noqa: BLE001 - a notification failure must not break the widget
        logger.log(logging.ERROR if kind == "error" else logging.INFO, message)
