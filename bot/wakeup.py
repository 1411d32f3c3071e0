"""Workers wake at once when another process enqueues: LISTEN/NOTIFY on PostgreSQL.

A transaction that enqueues outbox rows notifies ``tinbao_outbox`` in itself
(:func:`storage.db._notify_outbox`), so PostgreSQL delivers the notification when it commits,
and only then. Each process that delivers (the officers' worker, the timers, the citizen
messenger) listens on a dedicated connection and kicks the loops the notification concerns
(officers' rows, citizens' rows, a timer due before the timers' next look): a card a ``web``
process stored reaches a ``worker`` at once, not at its next poll. A process's own commits
woke its loops already, without a round trip (:func:`storage.db.on_outbox_commit`): their
notifications, named by the engine's token, are left alone here.

The loops still poll (``TINBAO_OUTBOX_POLL_SECONDS``), as a fallback: a notification sent while
this process was not listening (its connection broke, the database restarted) is never
replayed, so each (re)connection kicks the loops once, and the poll catches anything else. The
connection is watched (a lost connection ends it at once; an idle one is pinged) and made again
with backoff after an outage. SQLite is one process: there, the in-process wake-ups are all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import OUTBOX_CHANNEL, Enqueued, outbox_token

log = logging.getLogger(__name__)

#: Seconds between two checks that an idle listening connection still answers.
PING_INTERVAL = 15.0
#: Longest wait before trying to listen again after the connection failed.
RETRY_CAP = 10.0


class OutboxListener:
    """LISTENs on ``tinbao_outbox`` and calls ``kick`` for each notification from another
    engine (another process), with what it says was enqueued; ``None`` when the connection
    was (re)made (anything may have been missed)."""

    def __init__(
        self,
        engine: AsyncEngine,
        kick: Callable[[Enqueued | None], None],
        *,
        ping_interval: float = PING_INTERVAL,
        retry: float = 0.5,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self.engine = engine
        self.kick = kick
        self.ping_interval = ping_interval
        self.retry = retry
        self.retry_cap = retry_cap
        #: Notifications received, and connections made (tests, health).
        self.notified = 0
        self.connections = 0
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.listening.clear()

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notified += 1
        token, what = Enqueued.parse(payload)
        if token == outbox_token(self.engine):
            return  # this engine's own commit: its wakers had it at once (storage.db)
        self.kick(what)

    async def _run(self) -> None:
        delay = self.retry
        while True:
            try:
                await self._listen()
                delay = self.retry
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down, or the connection broke
                log.warning(
                    "not listening for outbox wake-ups (%s); polling meanwhile, trying again "
                    "in %.1fs",
                    type(exc).__name__,
                    delay,
                )
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_cap)

    async def _listen(self) -> None:
        """Listen on one connection until it is lost (then return or raise)."""
        connection = await self.engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection  # asyncpg's own connection
            assert driver is not None
            lost = asyncio.Event()
            driver.add_termination_listener(lambda *_: lost.set())
            await driver.add_listener(OUTBOX_CHANNEL, self._notified)
            self.connections += 1
            self.listening.set()
            log.info("listening for outbox wake-ups")
            self.kick(None)  # whatever was enqueued while nobody listened
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.ping_interval)
                if not lost.is_set():
                    await asyncio.wait_for(
                        connection.execute(text("SELECT 1")), self.ping_interval
                    )
                    await connection.rollback()
            log.warning("the outbox wake-up connection was lost")
        finally:
            self.listening.clear()
            # Never back to the pool with a listener on it.
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()


__all__ = ["OutboxListener"]
