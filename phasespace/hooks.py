"""Named points of a sweep where an observer is told what is happening: the documented hook for
progress tools and for fault-injection tests (``tests/helpers/kill_driver.py`` kills the process at
these points to test resume).

Events and the keyword arguments they carry:

* ``"chunk_done"``: ``bucket`` (key), ``step`` (int, steps done after this chunk; the chunk's
  checkpoint, if one was due, has been handed to orbax);
* ``"analysis_start"``: ``bucket`` (key), before a bucket's final analysis;
* ``"file_ready"``: ``path``, a result file written to its temporary name and about to be
  renamed into place (:func:`phasespace.io.store.atomic_path`).

Listeners run synchronously in the emitting process; an exception in a listener propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EVENTS = ("chunk_done", "analysis_start", "file_ready")

Listener = Callable[..., None]
_listeners: dict[str, list[Listener]] = {e: [] for e in EVENTS}


def subscribe(event: str, listener: Listener) -> Callable[[], None]:
    """Call ``listener(**info)`` at every ``event``; returns a function that unsubscribes it.

    Raises:
        ValueError: ``event`` is not one of :data:`EVENTS`.
    """
    if event not in _listeners:
        raise ValueError(f"event={event!r}: must be one of {list(EVENTS)}")
    _listeners[event].append(listener)
    return lambda: _listeners[event].remove(listener)


def emit(event: str, **info: Any) -> None:
    """Tell every listener of ``event`` (no-op without listeners)."""
    for listener in list(_listeners[event]):
        listener(**info)
