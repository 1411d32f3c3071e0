"""A direct answer to a citizen survives the channel's passing errors.

The answer to a citizen's message is sent while their update is handled (their chat's next
update waits). A 429 is waited out, honouring ``retry_after``; a 5xx, a time-out or a network
error is tried again after 0.5, 1, 2, 4 s. Only then, or for a refusal that retrying cannot
change (blocked bot, bad request), does the error reach the caller, which logs it as a WARNING
without traceback: the conversation's state is committed either way, so the citizen sees the
next prompt again with their next message.

Counters for ``/metrics``: :data:`STATS` (``retried``, ``waited_429``, ``given_up``).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TypeVar

from telegram.error import NetworkError, RetryAfter
from telegram.warnings import PTBDeprecationWarning

from bot.channel import SendError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Tries in all for one call.
ATTEMPTS = 5
#: A 429 asking to wait longer than this is not waited out here.
LONGEST_WAIT = 60.0


@dataclass
class AnswerStats:
    retried: int = 0
    waited_429: int = 0
    given_up: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


STATS = AnswerStats()


def wait_for(exc: BaseException) -> float | None:
    """Seconds to wait before trying again after ``exc``; ``None`` when retrying cannot help."""
    if isinstance(exc, RetryAfter):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            value = exc.retry_after
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
        return max(0.05, seconds)
    if isinstance(exc, NetworkError):  # 5xx, time-outs, connection errors (BadRequest is not)
        return 0.0
    if isinstance(exc, SendError) and not (exc.gone or exc.permanent):
        return exc.retry_after if exc.retry_after is not None else 0.0
    return None


async def patiently(call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, tried again after a 429 (as long as asked) or a passing error."""
    backoff = 0.5
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await call()
        except Exception as exc:
            wait = wait_for(exc)
            if wait is None or attempt == ATTEMPTS or wait > LONGEST_WAIT:
                if wait is not None:
                    STATS.given_up += 1
                raise
            STATS.retried += 1
            if wait > 0:
                STATS.waited_429 += 1
            else:
                wait, backoff = backoff, backoff * 2
            log.info("an answer is sent again in %.1f s (%s)", wait, type(exc).__name__)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
