"""Planning one chat's next sends, and folding its tip backlog into digests.

When more tips wait for a chat than its budget can carry soon, they are folded into digest
messages (≤ 30 reports each, one line and one "open" button per report). The folded rows become
``folded`` with the digest's id in their payload; the digest goes before the tips still waiting.
Only plain tip cards are folded (priority 0, routed by unit, queue or to duty). Emergencies,
their reminders and cards an officer opened (``chat:`` destinations) never are: emergencies
keep their Acknowledge button and go first.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.delivery.leases import Leases, rowcount
from bot.delivery.pacing import Pacer
from bot.delivery.rows import Row
from handlers.cards import DIGEST_MAX
from handlers.outbox import Destination, DigestPayload, Kind, Priority, Status, Where
from storage.models import OutboxMessage

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What one chat's lane sends next, and how many rows were folded on the way."""

    rows: list[Row] = field(default_factory=list)
    folded: int = 0


def foldable(row: Row) -> bool:
    return (
        row.kind == Kind.REPORT_CARD
        and not row.urgent
        and row.status == Status.PENDING
        and not row.partial
        and not row.in_doubt
        and row.priority <= Priority.TIP
        and not row.destination.startswith(f"{Where.CHAT}:")
        and row.target is not None
    )


class Planner:
    def __init__(self, pacer: Pacer, leases: Leases, *, plan_size: int) -> None:
        self.pacer = pacer
        self.leases = leases
        self.plan_size = plan_size
        self.digests = 0

    async def plan(self, chat_id: int, rows: list[Row], now: datetime) -> Plan:
        """The rows one chat's lane sends next, after folding its tip backlog if needed."""
        pacer = self.pacer
        limits = pacer.limits
        mono = pacer.mono()
        big = 10**6
        urgent_room, tip_room = big, big
        tips = pacer.tip_bucket(chat_id) if chat_id < 0 else None
        if tips is not None:
            # The group's budget as the database has it (every process's sends) matters when
            # there is a choice to make: several rows (fold them? how many fit?). A lone row's
            # claim reads it anyway, and its first part is admitted on that; here this
            # process's own records do (one round trip less before a card).
            used = await pacer.group_used(chat_id, read=None if len(rows) > 1 else (0, 0))
            urgent_room = limits.group_per_minute - used.total
            tip_room = min(
                urgent_room, limits.allowance - used.tips, math.floor(tips.available(mono))
            )
        fresh: dict[str, list[Row]] = {}
        for row in rows:
            if foldable(row):
                assert row.target is not None
                fresh.setdefault(row.target.chat_key, []).append(row)
        folded: set[int] = set()
        held: set[int] = set()
        digests: list[Row] = []
        retry = [1.0]
        # Calm while at least half the tips' burst is left: a card or two after a quiet spell
        # go at once; only a chat that has spent half its burst holds tips to fill digests.
        relaxed = tips is None or tips.available(mono) >= tips.capacity / 2
        for waiting in fresh.values():
            if tip_room < 1:
                break  # nothing can go now; they are folded once the budget is back
            cost = sum(r.cost for r in waiting)
            # a calm chat: a lone tip goes as its full card (as do up to ``fold_backlog`` at
            # once, keeping half of what tips can afford for what follows)
            if relaxed and (
                len(waiting) < 2 or (len(waiting) <= limits.fold_backlog and cost * 2 <= tip_room)
            ):
                continue
            # the budget is being spent, or tips arrive faster than cards go (a backlog in a
            # calm chat is the start of a storm): full digests go now; a younger rest waits for
            # a moment to fill one (oldest first: rows come in id order)
            full = len(waiting) // DIGEST_MAX * DIGEST_MAX
            rest = waiting[full:]
            age = (now - min((r.created_at for r in rest), default=now)).total_seconds()
            if rest and age < limits.digest_hold:
                held |= {r.id for r in rest}
                retry.append(limits.digest_hold - age)
                waiting = waiting[:full]
            if len(waiting) < 2:
                continue  # nothing, or one tip waited alone: its full card
            made, ids = await self.fold(waiting, now)
            digests += made
            folded |= ids
        ordered = [r for r in rows if r.id not in folded and r.id not in held] + digests
        # A row in doubt holds its chat until it is resolved: it goes first.
        ordered.sort(key=lambda r: (not r.in_doubt, not r.urgent, -r.priority, r.partial, r.id))
        plan = Plan(folded=len(folded))
        for row in ordered:
            if len(plan.rows) >= self.plan_size:
                break
            room = urgent_room if row.urgent else tip_room
            if room < 1:
                continue
            plan.rows.append(row)
            urgent_room -= row.cost
            tip_room -= row.cost
        if not plan.rows and (ordered or held):
            if tips is not None and (wait := tips.wait_time(mono)) > 0:
                retry.append(wait)
            pacer.blocked[chat_id] = mono + max(0.1, min(retry))
        return plan

    async def fold(self, waiting: list[Row], now: datetime) -> tuple[list[Row], set[int]]:
        """Fold waiting tip cards of one chat into digests (≤ DIGEST_MAX reports each)."""
        target = waiting[0].target
        assert target is not None
        destination = str(Destination.chat(target.chat_id, target.thread_id))
        made: list[Row] = []
        folded: set[int] = set()
        count = -(-len(waiting) // DIGEST_MAX)
        bounds = [len(waiting) * i // count for i in range(count + 1)]
        for start, end in itertools.pairwise(bounds):  # even sizes: 31 is 16 + 15, not 30 + 1
            chunk = waiting[start:end]

            async def fold(
                session: AsyncSession, chunk: list[Row] = chunk
            ) -> tuple[int, DigestPayload] | None:
                digest = OutboxMessage(
                    kind=Kind.DIGEST.value,
                    destination=destination,
                    payload={},
                    status=Status.PENDING,
                    priority=int(Priority.DIGEST),
                    attempts=0,
                    message_count=0,
                    next_attempt_at=now,
                    created_at=now,
                )
                session.add(digest)
                await session.flush()
                rows: list[int] = []
                reports: list[int] = []
                for row in chunk:
                    report_id = row.report_id or row.payload.get("report_id")
                    if not isinstance(report_id, int):
                        continue  # not foldable; it fails alone as a card without a report
                    result = await session.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id == row.id, OutboxMessage.status == Status.PENDING)
                        .values(status=Status.FOLDED, payload={**row.payload, "digest": digest.id})
                        .execution_options(synchronize_session=False)
                    )
                    if rowcount(result) == 1:
                        rows.append(row.id)
                        reports.append(report_id)
                if not rows:
                    await session.delete(digest)
                    return None
                payload = DigestPayload(report_ids=reports, rows=rows)
                digest.payload = payload.to_json()
                return digest.id, payload

            outcome = await self.leases.write(fold)
            if outcome is None:
                continue
            digest_id, payload = outcome
            folded |= set(payload.rows)
            log.info(
                "folded %d waiting cards for chat %s into digest %d",
                len(payload.rows),
                target.chat_key,
                digest_id,
            )
            made.append(
                Row(
                    id=digest_id,
                    kind=Kind.DIGEST.value,
                    destination=destination,
                    status=Status.PENDING,
                    payload=payload.to_json(),
                    report_id=None,
                    attempts=0,
                    priority=int(Priority.DIGEST),
                    urgent=False,
                    cost=1,
                    created_at=now,
                    target=target,
                )
            )
        return made, folded


__all__ = ["Plan", "Planner", "foldable"]
