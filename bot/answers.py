"""A direct answer to a citizen survives the channel's passing errors.

The answer to a citizen's message is sent while their update is handled (their chat's next
update waits). A 429 is waited out, honouring ``retry_after``; a 5xx or a connection error is
tried again after 0.5, 1, 2, 4 s. A time-out is not tried again at once, for a send: the request
may have reached Telegram and the message been delivered (only a wait for a free connection or
for a connection, before anything was sent, or an idempotent call such as an edit, is tried
again). What still fails then, or timed out, is not dropped: the adapter queues the rest of the
answer in the outbox (:mod:`bot.queued_answers`), in order with the chat's later answers. Only a
refusal that retrying cannot change (blocked bot, bad request) ends there, logged as a WARNING
without traceback; the conversation's state is committed either way.

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

from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.warnings import PTBDeprecationWarning

from bot.channel import SendError
from bot.http import ConnectionLost

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Tries in all for one call.
ATTEMPTS = 5
#: A 429 asking to wait longer than this is not waited out here.
LONGEST_WAIT = 60.0
#: The first wait after a 5xx or a connection error; it doubles with each try.
BACKOFF = 0.5


@dataclass
class AnswerStats:
    retried: int = 0
    waited_429: int = 0
    given_up: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


STATS = AnswerStats()


def retry_after_seconds(exc: RetryAfter, floor: float = 1.0) -> float:
    """The seconds a 429 asks to wait (an int or a timedelta, by PTB version), at least
    ``floor``. The one reading of ``retry_after`` (the outbox and the senders use it too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return max(floor, seconds)


def sent_nothing(exc: TimedOut) -> bool:
    """A time-out before the request left: waiting for a free connection of the pool, or
    opening a connection (:mod:`bot.http` says which)."""
    return str(exc).startswith(("Pool timeout", "Connect timeout"))


def maybe_delivered(exc: BaseException) -> bool:
    """A time-out, or a connection lost, after the request left: Telegram may have carried it
    out (a message created) although its answer never came."""
    if isinstance(exc, ConnectionLost):
        return True
    return isinstance(exc, TimedOut) and not sent_nothing(exc)


def wait_for(exc: BaseException, *, idempotent: bool = False) -> float | None:
    """Seconds to wait before trying again after ``exc``; ``None`` when retrying cannot help,
    or could send a message twice (a time-out, unless ``idempotent``)."""
    if isinstance(exc, RetryAfter):
        return retry_after_seconds(exc, floor=0.05)
    if not idempotent and maybe_delivered(exc):
        return None  # the message may have been delivered: never sent twice
    if isinstance(exc, BadRequest):  # a NetworkError in PTB, but retrying changes nothing
        return None
    if isinstance(exc, NetworkError):  # 5xx, connection errors
        return 0.0
    if isinstance(exc, SendError) and not (exc.gone or exc.permanent):
        return exc.retry_after if exc.retry_after is not None else 0.0
    return None


async def patiently(call: Callable[[], Awaitable[T]], *, idempotent: bool = False) -> T:
    """``await call()``, tried again after a 429 (as long as asked) or a passing error; after a
    time-out only when the call is ``idempotent`` (an edit: doing it twice changes nothing)."""
    backoff = BACKOFF
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await call()
        except Exception as exc:
            wait = wait_for(exc, idempotent=idempotent)
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
