"""The card path's statements, on SQLite and PostgreSQL: the claim (one ``UPDATE ... RETURNING``
under the chat's lock, with the group's budget read in it) and the settle (one statement with
the chat's mark and the card's post on PostgreSQL).

Two workers are two engines on one database, as two processes would be."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.delivery import DeliveryWorker, FloodLimits, Leases, Pacer
from bot.delivery.landing import claim_lock_key, claim_terms, marking
from bot.delivery.rows import posting
from storage.db import create_engine, create_session_factory
from storage.models import CardPost, ChatMark, OutboxMessage
from storage.types import utcnow
from tests.driver import sync_units
from tests.standin import BotAPIStandIn
from tests.test_delivery import CODE_RE, FAST, QUEUES, UNIT, UNIT_CHAT, running, seed


@pytest.fixture
async def session_factory(session_factory):
    await sync_units(session_factory)
    return session_factory


@asynccontextmanager
async def second_engine(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def outbox(session_factory, row_id: int) -> OutboxMessage:
    async with session_factory() as session:
        row = await session.get(OutboxMessage, row_id)
        assert row is not None
        return row


def card_ids(rows: list[tuple[int, str]]) -> list[int]:
    return [report_id for report_id, _code in rows]


async def card_rows(session_factory) -> list[int]:
    async with session_factory() as session:
        found = await session.scalars(
            select(OutboxMessage.id)
            .where(OutboxMessage.kind == "report_card")
            .order_by(OutboxMessage.id)
        )
        return list(found.all())


def claiming(leases: Leases, row_id: int, pacer: Pacer | None = None, **extra: Any) -> Any:
    """The worker's claim of ``row_id`` for the unit's group."""
    usage = pacer.usage_columns(UNIT_CHAT, exclude=row_id) if pacer is not None else None
    return leases.claim(
        row_id,
        where=claim_terms(UNIT_CHAT, row_id),
        lock=claim_lock_key(UNIT_CHAT),
        returning=usage,
        chat_key=str(UNIT_CHAT),
        **extra,
    )


async def test_two_workers_claiming_one_row_at_once_take_it_once(session_factory, db_url):
    await seed(session_factory, 6)
    rows = await card_rows(session_factory)
    async with second_engine(db_url) as other:
        for row_id in rows:
            one = Leases(session_factory, utcnow, 60.0)
            two = Leases(other, utcnow, 60.0)
            claims = await asyncio.gather(
                claiming(one, row_id, message_count=1), claiming(two, row_id, message_count=1)
            )
            assert sum(claim is not None for claim in claims) == 1
            [claim] = [c for c in claims if c is not None]
            assert claim.taken_over is False
            assert claim.payload == {
                "report_id": (await outbox(session_factory, row_id)).report_id
            }
            # Settle it, so that the chat is free for the next row.
            leases = one if claims[0] is not None else two
            assert await leases.finish(claim, message_count=1)


async def test_while_a_row_of_a_chat_is_sent_no_other_row_of_it_is_claimed(
    session_factory, db_url
):
    await seed(session_factory, 3)
    first, second, third = await card_rows(session_factory)
    async with second_engine(db_url) as other:
        one = Leases(session_factory, utcnow, 60.0)
        two = Leases(other, utcnow, 60.0)
        held = await claiming(one, first, message_count=1)
        assert held is not None
        # Two other rows of the same chat, claimed at once by the other worker: neither.
        assert await asyncio.gather(claiming(two, second), claiming(two, third)) == [None, None]
        assert await one.finish(held, message_count=1)
        # Free again: two rows of the chat claimed at once by two workers: one of them.
        claims = await asyncio.gather(claiming(one, second), claiming(two, third))
        assert sum(claim is not None for claim in claims) == 1


async def test_a_lapsed_lease_is_taken_over_and_the_old_holder_records_nothing(
    session_factory, db_url
):
    [(report_id, _code)] = await seed(session_factory, 1)
    [row_id] = await card_rows(session_factory)
    async with second_engine(db_url) as other:
        stuck = Leases(session_factory, utcnow, 0.2)
        taker = Leases(other, utcnow, 60.0)
        old = await claiming(stuck, row_id, message_count=1)
        assert old is not None and not old.taken_over
        assert await claiming(taker, row_id) is None  # the lease is live
        await asyncio.sleep(0.4)
        new = await claiming(taker, row_id, message_count=1)
        assert new is not None and new.taken_over
        post = CardPost(
            channel="telegram",
            chat_id=UNIT_CHAT,
            thread_id=None,
            message_id=41,
            kind="card",
            created_at=utcnow(),
        )

        def after(message_id: int, claim_row: int) -> list[Any]:
            post.message_id = message_id
            return [
                lambda settled, pg: marking(
                    settled, pg, chat_id=UNIT_CHAT, row_id=claim_row, ids=[message_id], unsure=None
                ),
                lambda settled, pg: posting(settled, pg, post, [report_id]),
            ]

        # The stuck worker's settle finds the row no longer its: nothing goes with it.
        assert not await stuck.finish(old, after=after(41, row_id), payload={"msg": 41})
        async with session_factory() as session:
            assert (await session.scalars(select(CardPost))).all() == []
            assert (await session.scalars(select(ChatMark))).all() == []
        assert await taker.finish(new, after=after(42, row_id), payload={"msg": 42})
    async with session_factory() as session:
        [card] = (await session.scalars(select(CardPost))).all()
        [mark] = (await session.scalars(select(ChatMark))).all()
    assert (card.report_id, card.message_id, card.chat_id) == (report_id, 42, UNIT_CHAT)
    assert mark.last_message_id == 42 and mark.unsure_row_id is None
    row = await outbox(session_factory, row_id)
    assert row.status == "sent" and row.payload == {"msg": 42} and row.claimed_until is None


async def test_the_claim_reads_the_groups_budget_others_spent(session_factory):
    """What the claim reads of the group's minute: rows sent lately and rows other workers
    hold, in any topic of the group; not the claimed row itself."""
    now = utcnow()
    async with session_factory() as session, session.begin():
        for status, count, extra in (
            ("sent", 3, {"sent_at": now - timedelta(seconds=10)}),
            ("sent", 5, {"sent_at": now - timedelta(minutes=5)}),  # out of the window
            ("sending", 2, {"claimed_until": now + timedelta(seconds=60)}),
        ):
            session.add(
                OutboxMessage(
                    kind="report_card",
                    destination=f"chat:{UNIT_CHAT}/7",
                    payload={},
                    status=status,
                    chat_key=f"{UNIT_CHAT}/7",
                    message_count=count,
                    **extra,
                )
            )
    await seed(session_factory, 1)
    row_id = (await card_rows(session_factory))[-1]
    pacer = Pacer(FloodLimits(), session_factory, utcnow)
    leases = Leases(session_factory, utcnow, 60.0)
    # The in-flight row of the other worker holds the chat: the claim waits its turn.
    assert await claiming(leases, row_id, pacer, message_count=1) is None
    async with session_factory() as session, session.begin():
        held = await session.scalar(select(OutboxMessage).where(OutboxMessage.status == "sending"))
        assert held is not None
        held.chat_key = "-1009999"  # another group's, from now on
    claim = await claiming(leases, row_id, pacer, message_count=1)
    assert claim is not None
    assert (claim.extra["total"], claim.extra["tips"]) == (3, 3)
    used = await pacer.group_used(UNIT_CHAT, exclude=row_id)
    assert (used.total, used.tips) == (3, 3)  # the same, read on its own


async def test_two_workers_keep_one_groups_budget_together(session_factory, db_url):
    """Two processes on a backlog for one group (emergencies: never folded, never held): the
    group's budget is what the claims read from the database, so together they send no more
    than it."""
    limits = FloodLimits(
        global_per_second=10_000,
        chat_per_second=10_000,
        chat_burst=10_000,
        group_per_minute=6,
        emergency_reserve=0,
        fold_backlog=1_000_000,
    )
    await seed(session_factory, 12, kind="emergency")
    async with second_engine(db_url) as other, BotAPIStandIn() as standin:
        one = make_worker(session_factory, standin, limits)
        two = make_worker(other, standin, limits)
        async with running(one), running(two):
            await standin.wait_calls("sendMessage", 6, ok_only=True)
            await asyncio.sleep(1.5)  # time enough for more, were the budget not shared
        sent = [c for c in standin.sent_to(UNIT_CHAT) if c.method == "sendMessage"]
        assert len(sent) == 6
        assert one.stats.rows_sent + two.stats.rows_sent == 6


async def test_one_chats_cards_go_in_order_with_two_workers(session_factory, db_url):
    reports = await seed(session_factory, 12)
    codes = [code for _id, code in reports]
    async with second_engine(db_url) as other, BotAPIStandIn() as standin:
        one = make_worker(session_factory, standin, FAST)
        two = make_worker(other, standin, FAST)
        async with running(one), running(two):
            await standin.wait_calls("sendMessage", 12, ok_only=True, timeout=60)
        sent = [
            CODE_RE.search(c.text or "").group(0)  # type: ignore[union-attr]
            for c in standin.sent_to(UNIT_CHAT)
            if c.method == "sendMessage"
        ]
    assert sent == codes  # each once, in the order they were filed
    async with session_factory() as session:
        posts = (await session.scalars(select(CardPost).order_by(CardPost.id))).all()
        [mark] = (await session.scalars(select(ChatMark))).all()
    assert [p.report_id for p in posts] == card_ids(reports)
    assert mark.last_message_id == max(p.message_id for p in posts)


def make_worker(session_factory, standin: BotAPIStandIn, limits: FloodLimits) -> DeliveryWorker:
    return DeliveryWorker(
        session_factory,
        standin.bot(),
        QUEUES,
        limits=limits,
        retry_base=0.05,
        retry_cap=0.5,
        poll_interval=0.2,
    )


assert UNIT  # the seeded cards' unit, whose queue is UNIT_CHAT
