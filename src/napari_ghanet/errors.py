"""The package's exceptions: one root, one subclass per kind of input that can be wrong.

Every error a user can cause (a bad slide, model bundle, feature file, encoder, cohort
table) is a :class:`GHANetError` whose message names the problem and what to do, so the
command lines and the dock widget catch one type and show its text as it is. Those that
signal a bad value also derive from :class:`ValueError`, as they did before. A run stopped
on request raises :class:`Cancelled`, which is not a failure.

Examples
--------
>>> from napari_ghanet.errors import BundleError, GHANetError
>>> issubclass(BundleError, GHANetError) and issubclass(BundleError, ValueError)
True
>>> try:
...     raise BundleError("model.safetensors is not a napari-ghanet model bundle")
... except GHANetError as e:
...     print(e)
model.safetensors is not a napari-ghanet model bundle
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "BundleError",
    "Cancelled",
    "CheckpointError",
    "CohortError",
    "EncoderError",
    "EncoderMismatchError",
    "FeaturesError",
    "InputFileError",
    "GHANetError",
    "NoTissueError",
    "NotWritableError",
    "PredictionError",
    "RegionError",
    "SlideError",
    "TrainingError",
    "UnsafeNameError",
]


class GHANetError(Exception):
    """Root of every napari-ghanet error; the message is written for the user."""


class ArgumentError(GHANetError, ValueError):
    """A value given to a library function is outside what it accepts (a patch size below
    8 px, a negative batch size, an unknown QC detector); the message names the argument,
    its value and what it must be."""


class SlideError(GHANetError):
    """A slide cannot be opened or read (missing, not a slide, damaged, no pixel size)."""


class FeaturesError(GHANetError, ValueError):
    """A patch-feature file is unreadable, damaged or does not fit its slide."""


class EncoderError(GHANetError, ValueError):
    """A patch encoder cannot be built (unknown name, missing or wrong weights)."""


class BundleError(GHANetError, ValueError):
    """A model bundle is missing, malformed, or not something this version can run."""


class EncoderMismatchError(BundleError):
    """Features were made by another encoder than the one the model was trained on."""


class CheckpointError(GHANetError, ValueError):
    """An official G-HANet checkpoint cannot be mapped onto the model."""


class CohortError(GHANetError, ValueError):
    """A training cohort (tables, splits, features) is inconsistent."""


class NotWritableError(GHANetError, PermissionError):
    """An output folder cannot be created or written to."""


class RegionError(GHANetError, ValueError):
    """A region file (GeoJSON) or drawn shape cannot be used as a region of interest."""


class InputFileError(GHANetError, ValueError):
    """A file the user named (manifest, survival table, regions, settings) is missing, not a
    regular file, too large or not text."""


class UnsafeNameError(GHANetError, ValueError):
    """A name that is to become a file name (a patient, a case_id) could write outside its
    output folder or is not a plain file name."""


class PredictionError(GHANetError, ValueError):
    """A prediction cannot be made; the message names the problem and what to do."""


class NoTissueError(PredictionError):
    """The slide (or the chosen regions) has no patch with enough tissue to score."""


class TrainingError(GHANetError, RuntimeError):
    """A training run cannot go on (diverged, nothing to train on)."""


class Cancelled(GHANetError):
    """The user stopped the run; nothing half-made was written or returned."""
