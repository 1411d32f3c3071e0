"""The process's heap: the start-up heap out of the garbage collector's way, and freed memory
given back to the system.

**Frozen at start** (:func:`settle`). Importing the service (python-telegram-bot, SQLAlchemy,
Alembic, the panel's libraries) leaves hundreds of thousands of long-lived objects, and every
full collection (generation 2) walks them all: 90-290 ms each on the development machine, at
any moment. A citizen's answer or a card caught in one waits that long (P4, P6 in
``docs/performance.md``). Once the service has started, its heap is collected once and frozen
(:func:`gc.freeze`): later full collections walk only the objects made since. Frozen objects
are still freed when nothing refers to them; only a cycle among them that becomes garbage later
is never collected (start-up objects are kept for the life of the process anyway).

**Trimmed after a large purge** (:func:`trim`). glibc's ``malloc`` keeps the memory a process
freed for its next allocations: after the maintenance purge ends thousands of drafts (their rows
read, their JSON parsed, their cache entries dropped), the process's resident size stays where
the peak left it. ``malloc_trim(0)`` returns the free pages at the top of the heap and, since
glibc 2.8, the free whole pages inside it. It is glibc's alone: elsewhere (musl, macOS, Windows)
:func:`trim` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import platform
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: A purge that ended at least this many drafts is followed by a trim.
TRIM_AFTER_DRAFTS = 1000

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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


def available() -> bool:
    """Whether :func:`trim` can do anything here (glibc on Linux)."""
    return _malloc_trim() is not None


def trim() -> bool:
    """Return the heap's free pages to the system; ``True`` if some were (glibc only)."""
    function = _malloc_trim()
    if function is None:
        return False
    try:
        return bool(function(0))
    except Exception as exc:  # never let housekeeping fail over it
        log.debug("malloc_trim failed: %s", exc)
        return False
