"""The start-up heap, out of the garbage collector's way.

Importing the service (python-telegram-bot, SQLAlchemy, Alembic, the panel's libraries) leaves
hundreds of thousands of long-lived objects, and every full collection (generation 2) walks
them all: 90-290 ms each on the development machine, at any moment. A citizen's answer or a
card caught in one waits that long (P4, P6 in ``docs/performance.md``). Once the service has
started, its heap is collected once and frozen (:func:`gc.freeze`): later full collections
walk only the objects made since. Frozen objects are still freed when nothing refers to them;
only a cycle among them that becomes garbage later is never collected (start-up objects are
kept for the life of the process anyway).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

_settled = False


def settle() -> None:
    """Collect and freeze the heap, once per process (the first service to start)."""
    global _settled
    if _settled:
        return
    _settled = True
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "start-up heap frozen: %d objects, %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )


__all__ = ["settle"]
