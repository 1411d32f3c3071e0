"""Workers wake at once on PostgreSQL: a transaction that enqueues outbox rows notifies
``tinbao_outbox`` as it commits, and every delivering process listens (bot/wakeup.py).

The fallback poll is set to ten minutes here, so only a notification can bring the card out
within the test; no timing is asserted (figures belong in bench/)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from sqlalchemy import text

from bench.tip_flow import Answers, Driver, Run, description_for, tip_steps
from bot.wakeup import OutboxListener
from handlers.outbox import ChatTextPayload, Destination, enqueue
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade
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
    listener = OutboxListener(engine, woken.set, retry=0.05)
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
                    "WHERE query ILIKE 'LISTEN%tinbao_outbox%' AND pid <> pg_backend_pid()"
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
