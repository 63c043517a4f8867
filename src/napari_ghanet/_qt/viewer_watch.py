"""Follow the viewer's layer list for the dock: insertions, removals, reorders and the
renames of the user's layers (slides, Shapes), with everything disconnected again when
the dock goes (the viewer may outlive it). Result layers (:data:`~._qt.layers.OVERLAY_KEY`)
are not followed by name."""

from __future__ import annotations

from collections.abc import Callable

from napari_ghanet._qt.layers import OVERLAY_KEY

__all__ = ["LayerWatch"]


class LayerWatch:
    """Calls ``changed(event)`` when layers are inserted, reordered or renamed, and
    ``removed(layer)`` then ``changed(event)`` when one is removed.

    Parameters
    ----------
    viewer : napari.Viewer
    owner : QWidget
        Its ``destroyed`` signal disconnects everything.
    changed, removed : callable
    """

    def __init__(self, viewer, owner, changed: Callable, removed: Callable) -> None:
        self._changed, self._removed = changed, removed
        events = viewer.layers.events
        self._handlers = [(events.inserted, self._on_changed), (events.removed, self._on_removed),
                          (events.reordered, self._on_changed)]
        for emitter, callback in self._handlers:
            emitter.connect(callback)
        self._named: list = []  # layers whose renames re-list the dropdowns
        for layer in viewer.layers:
            self._follow(layer)
        owner.destroyed.connect(self.disconnect)

    def disconnect(self, *_) -> None:
        """Stop following the viewer (safe to call twice)."""
        for emitter, callback in self._handlers:
            try:
                emitter.disconnect(callback)
            except Exception:  # noqa: BLE001
                pass
        for layer in self._named:
            self._unfollow(layer)
        self._named = []

    def _follow(self, layer) -> None:
        if layer is None or OVERLAY_KEY in getattr(layer, "metadata", {}):
            return
        if not any(layer is other for other in self._named):
            layer.events.name.connect(self._on_renamed)
            self._named.append(layer)

    def _unfollow(self, layer) -> None:
        try:
            layer.events.name.disconnect(self._on_renamed)
        except Exception:  # noqa: BLE001
            pass

    def _on_renamed(self, event=None) -> None:
        self._changed(None)

    def _on_changed(self, event=None) -> None:
        if getattr(event, "type", "") == "inserted":
            self._follow(getattr(event, "value", None))
        self._changed(event)

    def _on_removed(self, event=None) -> None:
        removed = getattr(event, "value", None)
        if any(removed is layer for layer in self._named):
            self._unfollow(removed)
            self._named = [layer for layer in self._named if layer is not removed]
        self._removed(removed)
        self._changed(event)
