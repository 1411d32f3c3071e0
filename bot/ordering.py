"""One chat's updates in update-id order across web processes (PostgreSQL).

Several ``web`` processes behind one URL may be handed two updates of one chat at once. Two
things keep them in order:

1. **One at a time.** The transaction that handles a citizen's update first takes
   ``pg_advisory_xact_lock(chat)``: a second process handling the same chat waits for the
   first one's commit (the key is derived from the keyed sender hash, never the chat id).
2. **Earlier first.** Each update is registered in ``update_arrivals`` (chat key, update id) as
   soon as a process sees it: at the webhook (Telegram), else when it reaches the dispatcher.
   Before taking the lock, an update waits while an *earlier* update of the same chat is
   registered and not yet handled, at most :data:`HOLD_LIMIT` seconds (a process that died
   holding one must not stall the chat). Handling an update removes its row.

The guarantee: two updates of one chat are handled one after the other, never concurrently;
and the earlier one is handled first whenever it was registered before the later one finished
waiting (in practice: whenever it reached any web process before the later one was handled).
Only an earlier update that reaches no process until after the later one was handled, or
one whose process stalls for more than :data:`HOLD_LIMIT`, comes after it; the conversation's
version check still keeps the draft consistent then, and a duplicate is still dropped.

The bookkeeping costs three statements per update besides the handling's own lock: the
registration, the look for earlier ones, the removal. Each runs alone in autocommit (a single
statement is its own transaction in PostgreSQL: one round trip, not ``BEGIN``, the statement and
``COMMIT``), and an update this process registered at its webhook is not registered again when
it is handled (``bench/tip_flow.py --processes`` counts them; docs/performance.md).

SQLite is one process: the adapters' per-chat processing already orders a chat's updates, so
:class:`ChatOrder` is only installed on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Executable, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handlers.events import Event
from storage.models import UpdateArrival
from storage.types import utcnow

log = logging.getLogger(__name__)

#: Seconds an update waits at most for an earlier one of its chat.
HOLD_LIMIT = 3.0
#: Seconds between two looks while waiting.
HOLD_STEP = 0.02
#: An arrival older than this is a leftover (its process died); it holds nothing back.
STALE_AFTER = timedelta(minutes=2)
#: High bits of the per-chat lock keys ("tc"), apart from the polling lock's.
CHAT_LOCK_CLASS = 0x7463
#: Arrivals this process registered and has not handled yet, remembered so that handling them
#: does not register them again; the oldest are forgotten beyond this (then registered twice,
#: which changes nothing).
REMEMBERED = 10_000

#: (chat key, channel, update id)
Arrival = tuple[int, str, int]


def chat_lock_key(sender_hash: str) -> int:
    """A signed 64-bit key from a keyed sender hash."""
    digest = int.from_bytes(hashlib.sha256(sender_hash.encode()).digest()[:6], "big")
    return (CHAT_LOCK_CLASS << 48) | digest


class ChatOrder:
    """See the module docstring."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        sender_hash: Callable[[str, str], str],
    ) -> None:
        self.session_factory = session_factory
        self.sender_hash = sender_hash
        #: Updates that waited for an earlier one, and waits that ran out (for tests and logs).
        self.held = 0
        self.gave_up = 0
        self._registered: OrderedDict[Arrival, None] = OrderedDict()

    def key(self, event: Event) -> int:
        return chat_lock_key(self.sender_hash(str(event.sender.channel), event.sender.user_id))

    def _arrival(self, event: Event) -> Arrival:
        return (self.key(event), str(event.sender.channel), event.update_id)

    async def _alone(self, statement: Executable) -> Any:
        """Run ``statement`` as its own transaction (autocommit: one round trip); its first
        value, if it returns rows."""
        async with self.session_factory() as session:
            connection = await session.connection(
                execution_options={"isolation_level": "AUTOCOMMIT"}
            )
            result = await connection.execute(statement)
            return result.scalar() if result.returns_rows else None

    async def arrived(self, event: Event) -> None:
        """Register ``event`` (idempotent). Best effort: a failure only weakens the order."""
        chat, channel, update_id = arrival = self._arrival(event)
        try:
            await self._alone(
                pg_insert(UpdateArrival)
                .values(chat=chat, update_id=update_id, channel=channel, arrived_at=utcnow())
                .on_conflict_do_nothing()
            )
        except Exception as exc:
            log.warning("update arrival not registered (%s)", type(exc).__name__)
            return
        self._registered[arrival] = None
        while len(self._registered) > REMEMBERED:
            self._registered.popitem(last=False)

    async def _earlier_waiting(self, arrival: Arrival) -> bool:
        chat, channel, update_id = arrival
        result = await self._alone(
            select(UpdateArrival.update_id)
            .where(
                UpdateArrival.chat == chat,
                UpdateArrival.channel == channel,
                UpdateArrival.update_id < update_id,
                UpdateArrival.arrived_at > utcnow() - STALE_AFTER,
            )
            .limit(1)
        )
        return result is not None

    @contextlib.asynccontextmanager
    async def turn(self, event: Event) -> AsyncIterator[None]:
        """Register (unless this process did at its webhook), wait for earlier updates of the
        chat, run the body, then deregister."""
        arrival = self._arrival(event)
        if arrival not in self._registered:
            await self.arrived(event)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HOLD_LIMIT
            waited = False
            while await self._earlier_waiting(arrival):
                if loop.time() >= deadline:
                    self.gave_up += 1
                    log.warning("an earlier update of a chat did not come in time; going on")
                    break
                waited = True
                await asyncio.sleep(HOLD_STEP)
            if waited:
                self.held += 1
        except Exception as exc:  # the database is down: the body will say so
            log.warning("update order not checked (%s)", type(exc).__name__)
        try:
            yield
        finally:
            await self._done(arrival)

    async def _done(self, arrival: Arrival) -> None:
        self._registered.pop(arrival, None)
        chat, channel, update_id = arrival
        with contextlib.suppress(Exception):
            await self._alone(
                delete(UpdateArrival).where(
                    UpdateArrival.chat == chat,
                    UpdateArrival.channel == channel,
                    UpdateArrival.update_id == update_id,
                )
            )

    async def lock(self, session: AsyncSession, event: Event) -> None:
        """Inside the handling transaction: one process at a time per chat."""
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.key(event)})


async def purge_arrivals(session_factory: async_sessionmaker[AsyncSession]) -> int:
    """Drop leftover arrivals of processes that died (maintenance)."""
    async with session_factory() as session, session.begin():
        result = await session.execute(
            delete(UpdateArrival).where(UpdateArrival.arrived_at < utcnow() - STALE_AFTER)
        )
    return int(getattr(result, "rowcount", 0) or 0)


__all__ = ["HOLD_LIMIT", "ChatOrder", "chat_lock_key", "purge_arrivals"]
