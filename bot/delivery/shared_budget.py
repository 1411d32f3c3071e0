"""Telegram's per-chat and global flood budgets, shared by every process on one PostgreSQL.

Each budget is a row of ``send_slots``: ``free_at``, the moment (in the database's clock, so
that the processes' clocks never disagree) from which the budget has room again. Taking
``weight`` messages is one atomic statement (the generic cell rate algorithm):

    free_at := max(free_at, now) + weight * interval

and the caller waits ``max(0, old free_at - burst - now)`` before it sends. Every process takes
its slot from the same row, so N workers together keep to one chat's 1 message a second and
the bot's 30 a second; a burst of ``chat_burst`` messages is allowed as before. A slot is
always granted (a later one, never a refusal), so two processes never spin on one row.

The group budget (20 a minute) was already shared (:meth:`bot.delivery.pacing.Pacer.group_used`
reads it from the outbox). On SQLite there is one process and this budget is not used.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

#: Our budgets run a little below Telegram's limits (as the in-process pacing does).
MARGIN: Final = 0.95
#: Slots not touched for this long are deleted by the maintenance.
IDLE_SECONDS: Final = 600.0

_TAKE = text(
    """
    INSERT INTO send_slots (key, free_at, stamped)
    VALUES (:key, extract(epoch FROM clock_timestamp()) + :cost,
            extract(epoch FROM clock_timestamp()))
    ON CONFLICT (key) DO UPDATE
        SET free_at = GREATEST(send_slots.free_at, EXCLUDED.stamped) + :cost,
            stamped = EXCLUDED.stamped
    RETURNING free_at, stamped
    """
)


def chat_budget_key(chat_id: int) -> str:
    """A budget key that does not show the chat id (a tipster's chat is a person's id)."""
    return "chat:" + hashlib.sha256(f"tinbao/chat/{chat_id}".encode()).hexdigest()[:32]


GLOBAL_KEY: Final = "bot:global"


class SharedBudget:
    """The per-chat and global budgets as rows of ``send_slots``."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        global_per_second: float,
        chat_per_second: float,
        chat_burst: int,
    ) -> None:
        self.session_factory = session_factory
        self.global_interval = 1.0 / (global_per_second * MARGIN)
        self.chat_interval = 1.0 / (chat_per_second * MARGIN)
        self.chat_burst = max(1, chat_burst)
        #: Seconds callers were told to wait in all (for tests and logs).
        self.waited = 0.0

    async def _take(self, session: AsyncSession, key: str, cost: float, burst: float) -> float:
        free_at, stamped = (await session.execute(_TAKE, {"key": key, "cost": cost})).one()
        previous = float(free_at) - cost
        return max(0.0, previous - burst - float(stamped))

    async def reserve(self, chat_id: int, weight: int = 1) -> float:
        """Take ``weight`` messages from the chat's and the bot's budgets; returns the seconds
        to wait before sending them."""
        weight = max(1, weight)
        async with self.session_factory() as session, session.begin():
            chat = await self._take(
                session,
                chat_budget_key(chat_id),
                weight * self.chat_interval,
                (self.chat_burst - 1) * self.chat_interval,
            )
            overall = await self._take(session, GLOBAL_KEY, weight * self.global_interval, 0.0)
        wait = max(chat, overall)
        self.waited += wait
        return wait

    async def purge(self) -> int:
        async with self.session_factory() as session, session.begin():
            result = await session.execute(
                text(
                    "DELETE FROM send_slots "
                    "WHERE free_at < extract(epoch FROM clock_timestamp()) - :idle"
                ),
                {"idle": IDLE_SECONDS},
            )
        return int(getattr(result, "rowcount", 0) or 0)


__all__ = ["GLOBAL_KEY", "SharedBudget", "chat_budget_key"]
