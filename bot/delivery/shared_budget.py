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

from storage.db import begin_lone_write, lone_write_done

log = logging.getLogger(__name__)

#: Our budgets run a little below Telegram's limits (as the in-process pacing does).
MARGIN: Final = 0.95
#: Slots not touched for this long are deleted by the maintenance.
IDLE_SECONDS: Final = 600.0

#: Takes from the chat's and the bot's budgets in one statement (one round trip, alone in
#: autocommit): each row's cost is its ``free_at - stamped`` in ``VALUES``. Rows are locked in
#: ``VALUES`` order, the chat's before the bot's, in every process: no deadlock.
_TAKE = text(
    """
    INSERT INTO send_slots (key, free_at, stamped)
    SELECT key, now + cost, now
    FROM (VALUES (:chat, CAST(:chat_cost AS double precision), 1),
                 (:global, CAST(:global_cost AS double precision), 2)) AS wanted (key, cost, n),
         (SELECT extract(epoch FROM clock_timestamp()) AS now) AS clock
    ORDER BY n
    ON CONFLICT (key) DO UPDATE
        SET free_at = GREATEST(send_slots.free_at, EXCLUDED.stamped)
                      + (EXCLUDED.free_at - EXCLUDED.stamped),
            stamped = EXCLUDED.stamped
    RETURNING key, free_at, stamped
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

    async def reserve(self, chat_id: int, weight: int = 1) -> float:
        """Take ``weight`` messages from the chat's and the bot's budgets; returns the seconds
        to wait before sending them."""
        weight = max(1, weight)
        chat_key = chat_budget_key(chat_id)
        costs = {chat_key: weight * self.chat_interval, GLOBAL_KEY: weight * self.global_interval}
        bursts = {chat_key: (self.chat_burst - 1) * self.chat_interval, GLOBAL_KEY: 0.0}
        async with self.session_factory() as session, session.begin():
            alone = await begin_lone_write(session)
            rows = (
                await session.execute(
                    _TAKE,
                    {
                        "chat": chat_key,
                        "chat_cost": costs[chat_key],
                        "global": GLOBAL_KEY,
                        "global_cost": costs[GLOBAL_KEY],
                    },
                )
            ).all()
            if alone:
                lone_write_done(session)
        wait = 0.0
        for key, free_at, stamped in rows:
            # The budget had room from ``free_at - cost`` on: wait until then, less the burst.
            previous = float(free_at) - costs[key]
            wait = max(wait, previous - bursts[key] - float(stamped))
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
