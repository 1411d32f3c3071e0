"""The timer worker: fires ``timer.*`` outbox rows on their own loop.

Timers (an emergency not acknowledged in time, a tip not claimed) are not sent: each due row is
handed to a :class:`TimerHandler` inside the transaction that marks it ``done``, so it fires
once across processes. They run apart from the officers' sends, so an escalation never waits
behind a Telegram backlog or a 429; what a timer enqueues is then sent by the delivery worker
(which it wakes through ``on_fired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from bot.delivery.leases import Leases, claimable, rowcount
from bot.delivery.rows import error_text
from bot.outage import DatabaseWatch, paused
from handlers.outbox import TIMER_PREFIX, Status
from storage.db import reading
from storage.models import OutboxMessage
from storage.types import utcnow

log = logging.getLogger(__name__)


class TimerHandler(Protocol):
    """Fires a ``timer.*`` outbox row; may enqueue new rows in ``session``.

    Called inside the transaction that marks the row ``done``: if it raises, nothing of it is
    kept and the timer is tried again later.
    """

    async def fire(self, session: AsyncSession, row: OutboxMessage) -> None: ...


class TimerRouter:
    """One :class:`TimerHandler` per timer kind (the rest to ``default``)."""

    def __init__(self, default: TimerHandler, by_kind: Mapping[str, TimerHandler]) -> None:
        self.default = default
        self.by_kind = dict(by_kind)

    async def fire(self, session: AsyncSession, row: OutboxMessage) -> None:
        await self.by_kind.get(row.kind, self.default).fire(session, row)


def is_timer() -> ColumnElement[bool]:
    return OutboxMessage.kind.startswith(TIMER_PREFIX, autoescape=True)


class TimerWorker:
    """Fires due timers. ``start()``/``stop()`` run it in the background, ``kick()`` wakes it,
    ``run_once()`` fires what is due now."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        handler: TimerHandler | None,
        *,
        clock: Callable[[], datetime] = utcnow,
        poll_interval: float = 5.0,
        park_seconds: float = 60.0,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        batch: int = 100,
        on_fired: Callable[[int], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.handler = handler
        self.clock = clock
        self.poll_interval = poll_interval
        #: The process's database watch: a pass that fails during an outage is only paused.
        self.watch: DatabaseWatch | None = None
        self.park_seconds = park_seconds
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.batch = batch
        self.on_fired = on_fired
        self.fired = 0
        self.leases = Leases(session_factory, clock, lease_seconds=60.0)
        self._wake = asyncio.Event()
        #: When the loop looks next, while it waits (``None`` while it looks).
        self._next_look: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="timer-worker")

    def kick(self) -> None:
        self._wake.set()

    def expect(self, due: datetime) -> None:
        """A timer due at ``due`` was committed: look now if it is due before the next look
        (a reminder due tomorrow wakes nobody)."""
        if self._next_look is None or due < self._next_look:
            self._wake.set()

    async def stop(self) -> None:
        """Stop after the timer being fired (its transaction is never cut short)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._next_look = None  # looking now: anything committed meanwhile is looked at
            try:
                await self.run_once()
                delay = await self._next_due()
            except Exception as exc:
                if not await paused(self.watch, exc, "timers"):
                    log.exception("timer pass failed; trying again shortly")
                delay = min(self.poll_interval, 2.0)
            if self._stopping:
                break
            self._next_look = self.clock() + timedelta(seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def run_once(self) -> int:
        """Fire every due timer; returns how many fired."""
        now = self.clock()
        async with reading(self.session_factory) as session:
            due = (
                await session.execute(
                    select(OutboxMessage.id, OutboxMessage.kind, OutboxMessage.attempts)
                    .where(claimable(now), is_timer())
                    .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
                    .limit(self.batch)
                )
            ).all()
        fired = 0
        for row in due:
            if self._stopping:
                break
            fired += await asyncio.shield(self._fire(row.id, row.kind, row.attempts))
        if fired and self.on_fired is not None:
            self.on_fired(fired)
        return fired

    async def _next_due(self) -> float:
        now = self.clock()
        async with reading(self.session_factory) as session:
            due = await session.scalar(
                select(func.min(OutboxMessage.next_attempt_at)).where(
                    OutboxMessage.status == Status.PENDING, is_timer()
                )
            )
        if due is None:
            return self.poll_interval
        return max(0.02, min(self.poll_interval, (due - now).total_seconds() + 0.01))

    async def _fire(self, row_id: int, kind: str, attempts: int) -> int:
        handler = self.handler
        if handler is None:
            await self.leases.park(
                row_id, self.park_seconds, "no timer handler is configured in this process"
            )
            return 0
        now = self.clock()

        async def fire(session: AsyncSession) -> int:
            result = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id, claimable(now))
                .values(status=Status.DONE, sent_at=now, claimed_until=None, last_error=None)
                .execution_options(synchronize_session=False)
            )
            if rowcount(result) != 1:
                return 0  # another process fired it
            message = await session.get(OutboxMessage, row_id)
            assert message is not None
            await handler.fire(session, message)
            return 1

        try:
            fired = await self.leases.write(fire)
        except Exception as exc:
            log.exception("timer row %d (%s) failed; trying again later", row_id, kind)
            delay = float(min(self.retry_cap, self.retry_base * 2 ** max(0, attempts)))
            error = error_text(exc)
            due = now + timedelta(seconds=delay)

            async def bump(session: AsyncSession) -> None:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == row_id, claimable(now))
                    .values(
                        status=Status.PENDING,
                        claimed_until=None,
                        next_attempt_at=due,
                        attempts=OutboxMessage.attempts + 1,
                        last_error=error,
                    )
                    .execution_options(synchronize_session=False)
                )

            await self.leases.write(bump)
            return 0
        self.fired += fired
        return fired


__all__ = ["TimerHandler", "TimerRouter", "TimerWorker", "is_timer"]
