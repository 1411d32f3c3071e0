"""Three web processes and two workers on one PostgreSQL, behind a balancer that spreads the
webhook deliveries at random and repeats some: nothing lost, nothing doubled, each chat's
updates handled in order, every card delivered once.

Real subprocesses of ``tinbao run --role web|worker`` (tests/cluster.py). The issue asks for
500 citizens; this test files 60 tips (600 updates) plus 40 quick bursts of 6, to stay near a
minute on two cores; ``bench/tip_flow.py --processes 3 --tips 500`` runs the full number.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import select

from bench.tip_flow import (
    Answers,
    Driver,
    Run,
    description_for,
    drive,
    new_users,
    tip_steps,
)
from storage.db import create_engine, create_session_factory
from storage.models import Conversation, OutboxMessage, Report
from tests.cluster import cluster
from tests.standin import BotAPIStandIn, UpdateFactory

TIPS = 60
BURSTS = 40
BURST_TEXTS = 5
DUTY_CHAT_ID = -1009000000015
CODE_RE = re.compile(r"[2-9A-Z]{5}-[2-9A-Z]{5}")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_three_web_processes_and_two_workers(db_url, tmp_path):
    async with BotAPIStandIn(webhook_connections=40) as standin:
        factory = UpdateFactory(standin)
        env = {
            "TINBAO_DUTY_CHAT_ID": str(DUTY_CHAT_ID),
            # Cards as they come: the group's allowance is not what this test is about.
            "TINBAO_DELIVERY_GROUP_PER_MINUTE": "100000",
            "TINBAO_DELIVERY_CHAT_PER_SECOND": "200",
            "TINBAO_DELIVERY_GLOBAL_PER_SECOND": "1000",
        }
        async with cluster(standin, db_url, tmp_path, webs=3, workers=2, extra_env=env) as (
            balancer,
            _processes,
        ):
            answers = Answers(standin)
            answers.start()
            driver = Driver(standin, answers, factory)
            run = Run("cluster")
            users = new_users(factory, TIPS)
            started = asyncio.get_running_loop().time()
            codes = await drive(
                users,
                40,
                lambda user: driver.tinbao_citizen(
                    run, user, tip_steps(description_for(users.index(user)))
                ),
            )
            # Bursts: a citizen types several messages at once; consecutive deliveries go to
            # different processes and are handled concurrently there.
            bursters = [factory.new_user(language_code="vi") for _ in range(BURSTS)]
            for user in bursters:
                standin.push_update(factory.command(user, "start"))
                for number in range(BURST_TEXTS):
                    standin.push_update(factory.text(user, f"tin nhắn {number}"))
            print(f"tips filed in {asyncio.get_running_loop().time() - started:.1f}s")
            await asyncio.sleep(0.5)
            engine = create_engine(db_url)
            try:
                sessions = create_session_factory(engine)
                for _ in range(300):  # the bursts handled, and every card sent
                    async with sessions() as session:
                        conversations = list(await session.scalars(select(Conversation)))
                        cards = list(
                            await session.scalars(
                                select(OutboxMessage).where(OutboxMessage.kind == "report_card")
                            )
                        )
                    full = sum(
                        len((c.data or {}).get("seen") or []) == 1 + BURST_TEXTS
                        for c in conversations
                    )
                    cards_done = all(c.status in ("sent", "folded") for c in cards)
                    settled = not standin.pending_updates and cards_done and len(cards) >= TIPS
                    if settled and full >= BURSTS:
                        break
                    await asyncio.sleep(0.2)
                print(f"all settled at {asyncio.get_running_loop().time() - started:.1f}s")
                async with sessions() as session:
                    stored = list(await session.scalars(select(Report.code)))
                    conversations = list(await session.scalars(select(Conversation)))
            finally:
                await engine.dispose()
            await answers.stop()
    # Spread over every web process, some deliveries twice.
    assert len(balancer.by_backend) == 3
    assert balancer.duplicated > 0
    # 0 lost, 0 duplicated: one report per tip, the codes the citizens were shown.
    assert sorted(stored) == sorted(codes)
    assert len(set(codes)) == TIPS
    # Each code shown once to its citizen, and each card once in the duty group.
    duty = [c for c in standin.sent_to(DUTY_CHAT_ID) if c.ok]
    in_duty = [m.group(0).replace("-", "") for c in duty for m in CODE_RE.finditer(c.text or "")]
    assert sorted(in_duty) == sorted(codes)
    for user in users:
        shown = [
            m.group(0)
            for c in standin.calls
            if c.ok and c.chat_id == user.id and c.method in ("sendMessage", "editMessageText")
            for m in CODE_RE.finditer(c.text or "")
        ]
        assert len(set(shown)) == 1, shown
    # Per-chat order: each conversation saw its updates once each, in update-id order.
    bursts_seen = 0
    for conversation in conversations:
        seen = list((conversation.data or {}).get("seen") or [])
        assert seen == sorted(seen)
        assert len(seen) == len(set(seen))
        if len(seen) == 1 + BURST_TEXTS:
            bursts_seen += 1
    assert bursts_seen >= BURSTS
    # Nothing refused by Telegram's stand-in (no 429 from a shared budget gone wrong).
    assert not [c for c in standin.calls if not c.ok and c.method != "getUpdates"]
