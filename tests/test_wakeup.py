"""Workers wake at once: a commit that enqueued outbox rows wakes this process's loops that
have something to do (storage.db.on_outbox_commit), and on PostgreSQL notifies
``tinbao_outbox`` as it commits, which every other delivering process listens to
(bot/wakeup.py).

The fallback poll is set to ten minutes here, so only a notification can bring the card out
within the test; no timing is asserted (figures belong in bench/)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import pytest
from sqlalchemy import text

from bench.tip_flow import Answers, Driver, Run, description_for, tip_steps
from bot.wakeup import OutboxListener
from handlers.outbox import (
    TIMER_KINDS,
    ChatTextPayload,
    Destination,
    Kind,
    TimerPayload,
    enqueue,
)
from storage.db import (
    CITIZEN_KINDS,
    TIMER_KIND_PREFIX,
    Enqueued,
    create_engine,
    create_session_factory,
    off_outbox_commit,
    on_outbox_commit,
)
from storage.migrate import upgrade
from storage.types import utcnow
from tests.cluster import cluster
from tests.standin import BotAPIStandIn, UpdateFactory

DUTY_CHAT_ID = -1009000000016
#: The fallback poll: far beyond anything this test waits for.
POLL_SECONDS = "600"


async def enqueue_note(session_factory, text_: str) -> None:
    async with session_factory() as session, session.begin():
        enqueue(session, ChatTextPayload(text=text_), Destination.duty())


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_commit_that_enqueues_wakes_a_listener_and_it_listens_again_after_a_break(
    db_url,
):
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = create_session_factory(engine)
    woken = asyncio.Event()
    # The listener's own engine stands for another process (a process's own commits are left
    # to its in-process wake-up: test_own_commits_wake_in_process_and_only_whom_they_concern).
    elsewhere = create_engine(db_url)
    listener = OutboxListener(elsewhere, lambda _what: woken.set(), retry=0.05)
    try:
        listener.start()
        await asyncio.wait_for(listener.listening.wait(), 10)
        woken.clear()  # the kick every (re)connection gives
        async with sessions() as session, session.begin():
            enqueue(session, ChatTextPayload(text="không"), Destination.duty())
            await session.rollback()  # rolled back: nothing to deliver, no notification
        async with sessions() as session, session.begin():
            await session.execute(text("SELECT 1"))  # a commit that enqueued nothing
        await enqueue_note(sessions, "có")
        await asyncio.wait_for(woken.wait(), 10)
        assert listener.notified == 1
        # The server ends the listening connection (a restart, a failover): it listens again.
        async with engine.connect() as connection:
            ended = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE query ILIKE 'LISTEN%tinbao_outbox%' AND pid <> pg_backend_pid() "
                    "AND datname = current_database()"
                )
            )
        assert ended == 1
        async with asyncio.timeout(10):
            while listener.connections < 2:  # noqa: ASYNC110 - a counter, not an event
                await asyncio.sleep(0.02)
        await asyncio.wait_for(listener.listening.wait(), 10)
        woken.clear()
        await enqueue_note(sessions, "lần nữa")
        await asyncio.wait_for(woken.wait(), 10)
        assert listener.notified == 2
    finally:
        await listener.stop()
        await engine.dispose()
        await elsewhere.dispose()


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_own_commits_wake_in_process_and_only_whom_they_concern(db_url):
    """A commit that enqueued rows calls this process's wakers at once, with what it
    enqueued (officers' rows, citizens' rows, the earliest timer); the notification it sends
    (PostgreSQL) names its engine, whose own listener leaves it alone, and tells another
    engine the same."""
    engine = create_engine(db_url)
    await upgrade(engine)
    sessions = create_session_factory(engine)
    woken: list[Enqueued] = []
    on_outbox_commit(engine, woken.append)
    heard: list[Enqueued | None] = []
    postgres = engine.dialect.name == "postgresql"
    own = OutboxListener(engine, heard.append, retry=0.05)
    elsewhere = create_engine(db_url) if postgres else None
    others: asyncio.Queue[Enqueued | None] = asyncio.Queue()
    other = OutboxListener(elsewhere, others.put_nowait, retry=0.05) if elsewhere else None
    try:
        for listener in (own, other) if other is not None else ():
            listener.start()
            await asyncio.wait_for(listener.listening.wait(), 10)
        while not others.empty():
            others.get_nowait()  # the kick every (re)connection gives
        heard.clear()
        soon = utcnow() + timedelta(minutes=3)
        async with sessions() as session, session.begin():
            enqueue(session, ChatTextPayload(text="một"), Destination.duty())
            enqueue(
                session,
                TimerPayload(report_id=1),
                Destination.timer(),
                kind=Kind.TIMER_ESCALATE,
                due=soon,
            )
            enqueue(
                session,
                TimerPayload(report_id=1),
                Destination.timer(),
                kind=Kind.TIMER_REMIND_UNCLAIMED,
                due=soon + timedelta(days=1),
            )
        assert len(woken) == 1
        assert woken[0].officers and not woken[0].citizens
        assert woken[0].timers is not None
        assert abs((woken[0].timers - soon).total_seconds()) < 0.01  # the earliest
        async with sessions() as session, session.begin():
            enqueue(session, ChatTextPayload(text="hai"), Destination.duty())
            await session.rollback()  # nothing committed: nobody woken
        async with sessions() as session, session.begin():
            enqueue(
                session,
                TimerPayload(report_id=1),
                Destination.timer(),
                kind=Kind.TIMER_REMIND_UNCLAIMED,
                due=soon,
            )
        assert len(woken) == 2
        assert not woken[1].officers and not woken[1].citizens and woken[1].timers is not None
        if other is not None:
            first = await asyncio.wait_for(others.get(), 10)
            second = await asyncio.wait_for(others.get(), 10)
            assert first is not None and second is not None
            assert first.officers and first.timers is not None
            assert abs((first.timers - soon).total_seconds()) < 0.01
            assert not second.officers and second.timers is not None
            assert own.notified == 2  # heard, and left to the in-process wake-up
        assert heard == []
    finally:
        off_outbox_commit(engine, woken.append)
        await own.stop()
        if other is not None:
            await other.stop()
        await engine.dispose()
        if elsewhere is not None:
            await elsewhere.dispose()


def test_the_wake_up_kinds_are_the_outbox_kinds():
    """storage.db classifies rows by their kind's value; handlers.outbox names them."""
    assert {Kind.CITIZEN_MESSAGE.value, Kind.CITIZEN_ANSWER.value} == CITIZEN_KINDS
    assert all(kind.value.startswith(TIMER_KIND_PREFIX) for kind in TIMER_KINDS)
    others = set(Kind) - set(TIMER_KINDS) - {Kind.CITIZEN_MESSAGE, Kind.CITIZEN_ANSWER}
    assert not any(kind.value.startswith(TIMER_KIND_PREFIX) for kind in others)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_card_from_a_web_process_wakes_the_worker_process_at_once(db_url, tmp_path):
    async with BotAPIStandIn() as standin:
        factory = UpdateFactory(standin)
        env = {
            "TINBAO_DUTY_CHAT_ID": str(DUTY_CHAT_ID),
            "TINBAO_OUTBOX_POLL_SECONDS": POLL_SECONDS,
        }
        async with cluster(
            standin, db_url, tmp_path, webs=1, workers=1, duplicate_rate=0, extra_env=env
        ) as (_balancer, processes):
            worker = next(p for p in processes if p.role == "worker")
            answers = Answers(standin)
            answers.start()
            try:
                code = await Driver(standin, answers, factory).tinbao_citizen(
                    Run("wakeup"), factory.new_user(), tip_steps(description_for(1))
                )
                card = await standin.wait_for(
                    lambda c: (
                        c.method == "sendMessage"
                        and c.ok
                        and c.chat_id == DUTY_CHAT_ID
                        and code in (c.text or "").replace("-", "")
                    ),
                    timeout=60,
                )
            finally:
                await answers.stop()
            async with (
                aiohttp.ClientSession() as http,
                http.get(worker.url + "/healthz") as response,
            ):
                health = await response.json()
    assert card.ok
    # It was the notification that woke the worker (its poll would have been minutes away).
    assert health["outbox_wakeups"]["listening"] is True
    assert health["outbox_wakeups"]["notified"] >= 1
