"""The result layers of the dock on the viewer.

:class:`ResultLayers` owns the layers a prediction adds to the viewer (attention,
tissue, regions, QC, ... one set per slide): it adds them hidden a few per turn of the
event loop (:class:`~._qt.layers.LayerBatch`, holding the GC freeze of
:mod:`~._qt.gc_hold` meanwhile) from the first quiet turn after the numbers are shown,
then shows the layers one per turn (a layer's text a turn after it), removes the previous result's layers, renames them when
several slide layers are open, switches the genome layer's category and centres the view
on a top region. The layers themselves are made by :mod:`~._qt.layers` (napari only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer

from napari_ghanet._qt import layers as qt_layers
from napari_ghanet._qt.notify import notify
from napari_ghanet.inference import overlays

logger = logging.getLogger(__name__)

__all__ = ["ResultLayers"]

#: a 1 ms timer firing this late (seconds) means other work ran in its turn of the loop
IDLE_LATE_S = 0.02
#: the longest wait (seconds) for a quiet turn before the first layer goes in anyway
SETTLE_MAX_S = 1.0


class ResultLayers:
    """The result layers of one prediction on ``viewer``.

    Parameters
    ----------
    viewer : napari.Viewer
    open_slides : callable
        Returns the slide layers open in the viewer (their count decides whether result
        layer names carry the slide's name).
    on_shown : callable
        Called (no arguments) once a result's layers are on screen, or adding them failed.

    Attributes
    ----------
    layers : dict of str to Layer
        The result layers in the viewer, by key (``"genome"``, ``"morphology@1"``, ...).
    slide_layers : list of Layer or None
        The slide layers the result belongs to (one per slide).
    batch : LayerBatch or None
        The layers being added, while they are.
    """

    def __init__(self, viewer, open_slides: Callable[[], list],
                 on_shown: Callable[[], None]) -> None:
        self.viewer = viewer
        self._open_slides = open_slides
        self._on_shown = on_shown
        self.layers: dict[str, Any] = {}
        self.slide_layers: list = []
        self.batch: qt_layers.LayerBatch | None = None
        self._settle_until = 0.0

    @property
    def busy(self) -> bool:
        """True while result layers are being added."""
        return self.batch is not None

    def prefix(self, slide_layer) -> str | None:
        """The slide's name, when several slide layers are open (else no prefix)."""
        several = len(self._open_slides()) > 1
        return slide_layer.name if several and slide_layer is not None else None

    def geometry(self, slide_layer) -> qt_layers.SlideGeometry:
        """Where ``slide_layer`` lies in the world, with its result layers' name prefix."""
        return qt_layers.SlideGeometry.of(slide_layer, self.prefix(slide_layer))

    def rename(self) -> None:
        """Name the result layers again (a slide layer opened, closed or was renamed)."""
        try:
            for k, slide_layer in enumerate(self.slide_layers):
                qt_layers.rename_result_layers(
                    [layer for layer in self.layers.values()
                     if layer.metadata.get("ghanet_slide", 0) == k],
                    self.prefix(slide_layer))
        except Exception:  # noqa: BLE001 - only names
            logger.exception("renaming the result layers failed")

    def layer_removed(self, removed) -> None:
        """Forget ``removed``; when it is a slide of the result, remove the whole result."""
        for key, layer in list(self.layers.items()):
            if layer is removed:
                del self.layers[key]
        if removed is not None and any(removed == layer for layer in self.slide_layers):
            self.clear()
            self.slide_layers = []

    def clear(self) -> None:
        """Remove the result layers from the viewer."""
        for layer in list(self.layers.values()):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}

    def cancel(self) -> None:
        """Take away the layers being added (and those added so far)."""
        if self.batch is not None:
            self.batch.remove()
        self.batch = None
        self.layers = {}

    def add(self, prediction, layers: list | None = None, incremental: bool = False) -> None:
        """Add ``prediction``'s result layers over :attr:`slide_layers`.

        ``layers`` are the result layers already built (in the worker thread) as
        :func:`napari_ghanet._qt.layers.build_result_layers` makes them; they are built
        here when not given. They go into the viewer hidden and appear together (one
        redraw); with ``incremental`` a few per turn of the event loop, so the viewer
        never freezes for the whole batch. ``on_shown`` is called at the end.
        """
        slide_layers = self.slide_layers
        if not any(lay is not None for lay in slide_layers):
            self._on_shown()
            return
        try:
            if layers is None:
                geometry = [self.geometry(lay) if lay is not None else None
                            for lay in slide_layers]
                layers = qt_layers.build_result_layers(prediction, geometry)
        except Exception as e:  # noqa: BLE001 - no layers, never a traceback
            logger.exception("building the result layers failed")
            notify("error", f"Could not show the prediction layers: {e}")
            self._on_shown()
            return
        self.batch = qt_layers.LayerBatch(self.viewer, layers, active=slide_layers[0])
        if incremental:
            self._settle_until = time.perf_counter() + SETTLE_MAX_S
            self._probe(self.batch)
        else:
            while self.batch is not None:
                self._insert(budget_s=float("inf"))

    def _probe(self, batch) -> None:
        """Start inserting ``batch`` at the first turn of the event loop with nothing else
        to do (a 1 ms timer that fires on time), at most :data:`SETTLE_MAX_S` seconds
        after :meth:`add`: the panels shown with the numbers lay themselves out and redraw
        (the survival plot: 50-100 ms a draw) over the turns that follow, and a layer
        inserted in one of those turns would add its own 50-100 ms to the same stall."""
        scheduled = time.perf_counter()

        def probed() -> None:
            if self.batch is not batch:
                return  # cancelled or replaced meanwhile
            now = time.perf_counter()
            if now - scheduled > IDLE_LATE_S and now < self._settle_until:
                self._probe(batch)  # something else ran in this turn: wait for a quiet one
            else:
                self._insert()

        QTimer.singleShot(1, probed)

    def _insert(self, budget_s: float = 0.04) -> None:
        batch = self.batch
        if batch is None:
            return  # cancelled meanwhile
        try:
            if not batch.done:
                batch.insert_some(budget_s)
                self.layers = dict(batch.inserted)
                if budget_s != float("inf"):
                    QTimer.singleShot(1, self._insert)  # a timer: paints go first
                    return
            if budget_s == float("inf"):
                batch.reveal()
            elif not batch.reveal_next():  # one layer's (or its text's) first draw per turn
                QTimer.singleShot(1, self._insert)
                return
            self.layers = dict(batch.inserted)
        except Exception as e:  # noqa: BLE001 - never half-made layers, never a traceback
            logger.exception("adding the result layers failed")
            batch.remove()
            self.layers = {}
            notify("error", f"Could not show the prediction layers: {e}")
        self.batch = None
        self._on_shown()

    def show_category(self, index: int | None, names: list[str]) -> None:
        """Show category ``index``'s genome-informed attention (named ``names[index]``)
        on the "genome" layer of each slide (None: hide it)."""
        for key, layer in self.layers.items():
            if key.split("@")[0] == "genome":
                qt_layers.show_genome_category(layer, index, names)

    def go_to_region(self, prediction, row: int) -> None:
        """Centre and zoom the view on ``prediction``'s top region ``row`` (0-based) and
        highlight its box (focus colour, thicker edge, selected) in its slide's regions
        layer."""
        try:
            p = prediction
            if p is None or not 0 <= row < len(p.top_regions):
                return
            r = p.top_regions[row]
            k = getattr(r, "slide", 0)
            layer = self.slide_layers[k] if k < len(self.slide_layers) else None
            if layer is not None and layer in self.viewer.layers:
                geometry = qt_layers.SlideGeometry.of(layer)
                dims = (p.slides[k] if k < len(p.slides) else p.slide)["dimensions_level0"]
                scale, translate = geometry.level0_transform(dims)
            else:
                scale, translate = (1.0, 1.0), (0.0, 0.0)
            cy, cx = overlays.region_centre(r.x, r.y, r.width, r.height, scale, translate)
            canvas = getattr(self.viewer, "canvas", None)
            size = getattr(canvas, "size", None) or getattr(self.viewer, "_canvas_size", (600, 800))
            extent = 3.0 * max(r.width * scale[1], r.height * scale[0])  # patch + context
            camera = self.viewer.scene.camera
            camera.center = (cy, cx)
            camera.zoom = float(min(size)) / extent
            shapes = self.layers.get(qt_layers.slide_key("regions", k))
            if shapes is not None:
                qt_layers.focus_region(shapes, r.rank)
                shapes.visible = True
        except Exception:  # noqa: BLE001
            logger.exception("going to region %s failed", row)
