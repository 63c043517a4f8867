"""What every stage shares: the progress callback, cancelling, stage clocks, the
feature-cache folder and the JSON description of a slide. Times in seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_ghanet.errors import (
    Cancelled,
)
from napari_ghanet.io.cache import cache_dir as _user_cache_dir
from napari_ghanet.io.slide import Slide

#: Signature of progress callbacks: (stage, done, total). Stages, in order: "slide",
#: "tissue", "patches", "features" (done/total = patches embedded), "model", "done".
#: A patient's slides each go through "slide" ... "features" before "model".
ProgressCallback = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- helpers


def default_cache_dir() -> Path:
    """The patch-feature cache: ``<user cache>/napari-ghanet/features`` (the user cache is
    ``$NAPARI_GHANET_CACHE`` when set, else ``$XDG_CACHE_HOME`` or ~/.cache)."""
    return _user_cache_dir() / "features"


def check_cancel(cancel: threading.Event | None, what: str = "prediction cancelled") -> None:
    """Raise :class:`~napari_ghanet.errors.Cancelled` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(what)



def report(progress: ProgressCallback | None, stage: str, done: int = 0, total: int = 0) -> None:
    if progress is not None:
        progress(stage, int(done), int(total))


class Clock:
    """Adds the seconds since the last lap to ``timings[name]`` (summed over slides)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.t0 = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = round(self.timings.get(name, 0.0) + now - self.t0, 4)
        self.t0 = now


def slide_info(slide: Slide) -> dict[str, Any]:
    """JSON-able description of an open slide (path, name, fingerprint, level-0 size in
    pixels, mpp in um/px and where it came from, objective power, vendor)."""
    return {
        "path": str(slide.path),
        "name": Path(slide.path).name,
        "fingerprint": slide.fingerprint(),
        "dimensions_level0": [int(v) for v in slide.dimensions],
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "objective_power": slide.objective_power,
        "vendor": slide.vendor,
    }
