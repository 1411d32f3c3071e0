"""The in-process conversation cache stays correct with several processes on one database.

Two dispatchers, each with its own engine, flow and cache, stand for two processes. A step
served from a stale cache must fail its conditional write, read the row again and answer as if
there were no cache; nothing is lost or done twice. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.dispatch import Dispatcher
from handlers.citizen import State
from handlers.events import ButtonPress, Message
from handlers.maintenance import purge
from storage.db import create_engine, create_session_factory
from storage.models import Conversation, Report
from storage.repositories import ConversationCache, ConversationState
from storage.types import utcnow
from tests.driver import Citizen, label, make_flow, sync_units
from tests.test_citizen_flow import CODE_RE


@pytest.fixture
async def second_factory(db_url: str, engine: object) -> AsyncIterator[async_sessionmaker]:
    """A second "process": its own engine (connections) on the same database."""
    other = create_engine(db_url)
    try:
        yield create_session_factory(other)
    finally:
        await other.dispose()


def two_dispatchers(
    first: async_sessionmaker[AsyncSession], second: async_sessionmaker[AsyncSession]
) -> tuple[Dispatcher, Dispatcher]:
    return Dispatcher(first, make_flow()), Dispatcher(second, make_flow())


async def stored_state(factory: async_sessionmaker[AsyncSession], user: Citizen) -> Conversation:
    flow = make_flow()
    key = flow.keyring.sender_key("telegram", str(user.user_id))
    async with factory() as session:
        conversation = await session.get(Conversation, key)
    assert conversation is not None
    return conversation


async def test_a_tip_alternating_between_two_processes_is_filed_once(
    session_factory, second_factory
):
    await sync_units(session_factory)
    a, b = two_dispatchers(session_factory, second_factory)
    c = Citizen(a, 7001)

    async def on(dispatcher: Dispatcher) -> None:
        c.dispatcher = dispatcher

    await on(a)
    await c.command("start")
    await on(b)
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.theft"))
    # A's cache still holds the conversation at the menu: its write must fail and re-read.
    await on(a)
    await c.say("long xuyen")
    assert any(b.label == "Phường Long Xuyên" for b in c.buttons()), c.texts()
    await c.press("Phường Long Xuyên")
    await on(b)
    await c.press(label("vi", "when.now"))
    await on(a)
    await c.say("Kẻ gian trộm xe máy trước chợ Long Xuyên lúc tối")
    await c.press(label("vi", "ev.skip"))
    await on(b)
    await c.press(label("vi", "contact.relay", mark="✓ "))
    await on(a)
    await c.press(label("vi", "summary.confirm"))
    text = "\n".join(c.texts())
    code = CODE_RE.search(text)
    assert code is not None, text
    async with session_factory() as session:
        reports = list(await session.scalars(select(Report.code)))
    assert reports == [code.group(1).replace("-", "")]
    # Both caches were used, and the stale guesses were caught.
    cache_a = a.flow.conversation_cache
    cache_b = b.flow.conversation_cache
    assert cache_a.hits >= 3 and cache_b.hits >= 2
    stored = await stored_state(second_factory, c)
    assert stored.state == State.IDLE.value
    assert stored.version == 10  # one write per step, none lost, none doubled


async def test_the_same_update_in_two_processes_counts_once(session_factory, second_factory):
    await sync_units(session_factory)
    a, b = two_dispatchers(session_factory, second_factory)
    c = Citizen(a, 7002)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    # B learns the conversation (its cache now holds it).
    c.dispatcher = b
    await c.press(label("vi", "cat.theft"))
    # The same text update delivered twice, first to A (stale cache), then to B (stale too).
    event = Message(update_id=990_001, sender=c.sender, text="long xuyen")
    first = await a.process(event, c.files)
    again = await b.process(event, c.files)
    assert first is not None and again is None
    stored = await stored_state(session_factory, c)
    assert stored.state == State.PLACE.value
    assert 990_001 in stored.data["seen"]
    assert stored.version == 4


async def test_a_draft_swept_by_maintenance_is_not_revived_by_the_cache(
    session_factory, second_factory
):
    await sync_units(session_factory)
    flow = make_flow(draft_ttl=timedelta(hours=1))
    a = Dispatcher(session_factory, flow)
    c = Citizen(a, 7003)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.theft"))
    # Another process sweeps the draft as expired (bumping the version).
    swept = await purge(
        second_factory, now=utcnow() + timedelta(hours=2), draft_ttl=flow.settings.draft_ttl
    )
    assert swept.drafts == 1
    # A's cache still holds the draft at the place step; the answer must see it gone.
    await c.press_data("999:m:tip")
    assert label("vi", "cat.theft") in [b.label for b in c.buttons()]
    stored = await stored_state(session_factory, c)
    assert stored.data.get("draft", {}).get("category") is None


async def test_a_rolled_back_step_never_reaches_the_cache(session_factory):
    await sync_units(session_factory)
    a = Dispatcher(session_factory, make_flow())
    c = Citizen(a, 7004)
    await c.command("start")
    cache = a.flow.conversation_cache
    key = a.flow.keyring.sender_key("telegram", str(c.user_id))
    cached = cache.get(key)
    assert cached is not None
    # A step whose transaction rolls back (the event is unusable): nothing is published.
    async with session_factory() as session, session.begin():
        await a.flow.handle(session, ButtonPress(update_id=990_100, sender=c.sender, data="x"))
        await session.rollback()
    assert cache.get(key).version == cached.version  # type: ignore[union-attr]
    async with session_factory() as session:
        count = await session.scalar(select(func.count()).select_from(Conversation))
    assert count == 1


def test_the_cache_keeps_at_most_its_limit_and_returns_copies() -> None:
    cache = ConversationCache(limit=3)
    now = utcnow()
    for number in range(5):
        cache.put(ConversationState(f"k{number}", "vi", "idle", {"n": [number]}, 1, 1, now, None))
    assert len(cache) == 3
    assert cache.get("k0") is None and cache.get("k1") is None
    first = cache.get("k4")
    assert first is not None
    first.data["n"].append(99)
    second = cache.get("k4")
    assert second is not None and second.data == {"n": [4]}
