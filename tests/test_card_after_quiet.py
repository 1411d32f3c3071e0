"""A tip that reaches a calm group goes at once, even right after another card (P6); a group
that has spent half its tips' burst holds a lone tip to fill a digest, as before.
Runs on SQLite and PostgreSQL (the planner reads the group's budget from the outbox)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.delivery.folding import Planner
from bot.delivery.leases import Leases
from bot.delivery.pacing import FloodLimits, Pacer
from bot.delivery.rows import Row, Target
from handlers.outbox import Destination, Kind, Priority, Status
from storage.types import utcnow

GROUP = -1_001_000_000_077


def tip_row(row_id: int, age: float) -> Row:
    return Row(
        id=row_id,
        kind=Kind.REPORT_CARD,
        destination=str(Destination.duty()),
        status=Status.PENDING,
        payload={},
        report_id=row_id,
        attempts=0,
        priority=Priority.TIP,
        urgent=False,
        cost=1,
        created_at=utcnow() - timedelta(seconds=age),
        target=Target(GROUP, None, "duty", True),
    )


def planner(session_factory: async_sessionmaker[AsyncSession], spent: float) -> Planner:
    clock = utcnow
    pacer = Pacer(FloodLimits(), session_factory, clock)
    bucket = pacer.tip_bucket(GROUP)
    bucket.take(pacer.mono(), spent)
    return Planner(pacer, Leases(session_factory, clock, 120.0), plan_size=5)


async def test_a_tip_right_after_a_single_card_goes_at_once(session_factory):
    plan = await planner(session_factory, spent=1).plan(GROUP, [tip_row(1, 0.1)], utcnow())
    assert [row.id for row in plan.rows] == [1]


async def test_a_group_that_spent_half_its_burst_holds_a_young_tip(session_factory):
    limits = FloodLimits()
    burst = limits.allowance // 2
    busy = planner(session_factory, spent=burst // 2 + 1)
    plan = await busy.plan(GROUP, [tip_row(2, 0.1)], utcnow())
    assert plan.rows == []  # held up to digest_hold to fill a digest
    assert GROUP in busy.pacer.blocked
    # once it has waited digest_hold, it goes as its own card
    old = await busy.plan(GROUP, [tip_row(3, limits.digest_hold + 0.5)], utcnow())
    assert [row.id for row in old.rows] == [3]


async def test_a_backlog_in_a_calm_group_waits_to_fill_a_digest(session_factory):
    """Tips arriving faster than cards go (a storm's start) are not spent as cards one by one:
    they wait up to digest_hold to fill a digest (the folding itself, with real outbox rows, is
    tests/test_delivery.py's storm test)."""
    calm = planner(session_factory, spent=0)
    young = await calm.plan(GROUP, [tip_row(4, 0.2), tip_row(5, 0.1)], utcnow())
    assert young.rows == [] and young.folded == 0
    assert GROUP in calm.pacer.blocked
