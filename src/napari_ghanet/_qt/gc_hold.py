"""One owner of the process-wide garbage-collector freeze.

A full (generation 2) collection of a napari process with a slide open scans a few
million objects: 250-300 ms with the GIL held, i.e. a frozen viewer. The dock keeps those
collections out of a prediction run (the worker's allocations would trigger one) and out
of the insertion of the result layers (the vispy visuals of new layers allocate enough to
trigger one). After :func:`gc.freeze` a full collection only scans the objects made since
(a few ms).

:func:`gc.freeze` / :func:`gc.unfreeze` act on the whole process, so two users flipping
them would undo each other (the layer batch's unfreeze used to end the run's freeze).
Every user holds a :class:`GCHold` instead: each :meth:`~GCHold.acquire` freezes what is
alive now (objects made since an earlier freeze join the frozen ones), and only the last
:meth:`~GCHold.release` unfreezes, so frozen objects never stay uncollectable after the
last holder is done. Qt's GUI thread is the only caller; a lock keeps the count right
anyway. No Qt, no napari.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["GCHold", "holders"]

_lock = threading.Lock()
_count = 0


def holders() -> int:
    """How many :class:`GCHold` objects hold the freeze now."""
    return _count


class GCHold:
    """One holder's share of the GC freeze; :meth:`release` is safe to call twice.

    Examples
    --------
    >>> import gc
    >>> outer, inner = GCHold(), GCHold()
    >>> outer.acquire(); inner.acquire()
    >>> inner.release()  # the outer holder still holds: objects stay frozen
    >>> gc.get_freeze_count() > 0
    True
    >>> outer.release()
    >>> gc.get_freeze_count()
    0
    """

    def __init__(self) -> None:
        self._held = False

    @property
    def held(self) -> bool:
        """True between :meth:`acquire` and :meth:`release`."""
        return self._held

    def acquire(self) -> None:
        """Freeze the objects alive now (again, when already held by someone)."""
        global _count
        with _lock:
            gc.freeze()
            if not self._held:
                self._held = True
                _count += 1

    def release(self) -> None:
        """Give this holder's share back; the last one unfreezes."""
        global _count
        with _lock:
            if not self._held:
                return
            self._held = False
            _count -= 1
            if _count == 0:
                gc.unfreeze()
