"""SQLite's driver (storage/sqlite_driver.py, storage/sqlite_writer.py): one thread hop per
operation, one writer at a time, lone writes committed together; durable and exact.

A conversation-only step is one trip to a connection's thread, its write committed (with
others waiting at the time) before its answer exists. Writes in one batch fail alone (a stale
version, a duplicate key); a step survives the process dying right after it (a fresh engine
over the same file finds it, and a re-delivery of it is a duplicate); concurrent citizens, and
concurrent steps of one conversation, each land exactly once; writers take turns without ever
meeting SQLite's busy handler. SQLite only (PostgreSQL's lone write: tests/test_lone_write.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bot.dispatch import Dispatcher
from storage.db import (
    SQLITE_PRAGMAS,
    begin_lone_write,
    create_engine,
    create_session_factory,
    lone_write_done,
)
from storage.migrate import upgrade
from storage.models import Conversation, RateHit, Report
from storage.sqlite_driver import Driver
from storage.types import utcnow
from tests.driver import Citizen, label, make_flow, sync_units

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

_READ_UNCOMMITTED_SET = re.compile(r"read_uncommitted\s*=", re.IGNORECASE)
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]


def driver_of(engine: AsyncEngine) -> Driver:
    driver = engine.dialect.dbapi
    assert isinstance(driver, Driver)
    return driver


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (state inside the driver: nothing to wait on)."""
    async with asyncio.timeout(30):
        while not condition():  # noqa: ASYNC110 - the driver's own queue and lock
            await asyncio.sleep(0.01)


@asynccontextmanager
async def held(driver: Driver) -> AsyncIterator[None]:
    """Hold the engine's writer lock, as a transaction that writes would."""
    await driver.writer.acquire()
    try:
        yield
    finally:
        driver.writer.release()


async def lone_write(factory: async_sessionmaker[AsyncSession], statement: Any) -> int:
    """``statement`` as a transaction's only one (as Conversations.save runs it); its rowcount."""
    async with factory() as session, session.begin():
        assert await begin_lone_write(session)
        result = await session.execute(statement)
        lone_write_done(session)
        return int(result.rowcount)  # type: ignore[attr-defined]


async def add_conversation(factory: async_sessionmaker[AsyncSession], key: str) -> None:
    now = utcnow()
    async with factory() as session, session.begin():
        await session.execute(
            insert(CONVERSATIONS).values(
                key=key, state="idle", data={}, step=0, version=1, created_at=now, updated_at=now
            )
        )


async def version_of(factory: async_sessionmaker[AsyncSession], key: str) -> int | None:
    async with factory() as session:
        return await session.scalar(
            select(CONVERSATIONS.c.version).where(CONVERSATIONS.c.key == key)
        )


def bump(key: str, seen: int) -> Any:
    """The conditional write of a step: only if the row is still at version ``seen``."""
    return (
        update(CONVERSATIONS)
        .where(CONVERSATIONS.c.key == key, CONVERSATIONS.c.version == seen)
        .values(version=seen + 1, step=seen + 1)
    )


async def file_tip(citizen: Citizen, description: str) -> None:
    await citizen.command("start")
    await citizen.press(label("vi", "menu.tip"))
    await citizen.press(label("vi", "cat.theft"))
    await citizen.say("long xuyen")
    await citizen.press("Phường Long Xuyên")
    await citizen.press(label("vi", "when.now"))
    await citizen.say(description)
    await citizen.press(label("vi", "ev.skip"))
    await citizen.press(label("vi", "contact.relay", mark="✓ "))
    await citizen.press(label("vi", "summary.confirm"))


# ------------------------------------------------------------------------------ cost


async def test_a_conversation_only_step_is_one_trip_to_a_thread(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await sync_units(session_factory)
    driver = driver_of(engine)
    citizen = Citizen(Dispatcher(session_factory, make_flow()), 8201)
    await citizen.command("start")
    await citizen.press(label("vi", "menu.tip"))  # (the group commit opens its connection)
    trips, grouped = driver.trips, driver.group.statements
    await citizen.press(label("vi", "cat.theft"))
    # The conditional UPDATE, committed by the group commit in one trip; nothing else.
    assert driver.trips - trips == 1
    assert driver.group.statements - grouped == 1
    assert citizen.texts()[-1].endswith(label("vi", "place.ask")), citizen.texts()


async def test_lone_writes_waiting_together_commit_in_one_transaction(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    keys = [f"k{i}" for i in range(8)]
    for key in keys:
        await add_conversation(session_factory, key)
    driver = driver_of(engine)
    async with held(driver):
        # The writer is busy: these wait for it together.
        writes = [asyncio.create_task(lone_write(session_factory, bump(k, 1))) for k in keys]
        await until(lambda: driver.group.waiting == len(keys))
        assert not any(w.done() for w in writes)
    batches = driver.group.batches
    assert await asyncio.gather(*writes) == [1] * len(keys)
    assert driver.group.batches - batches == 1
    for key in keys:
        assert await version_of(session_factory, key) == 2


# ------------------------------------------------------------------------------ exactness


async def test_writes_in_one_batch_fail_alone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """A stale version and a duplicate key in a batch: each caller learns its own outcome, and
    exactly the writes that reported success are on disk."""
    for key in ("fresh", "stale", "taken"):
        await add_conversation(session_factory, key)
    now = utcnow()
    duplicate = insert(CONVERSATIONS).values(
        key="taken", state="idle", data={}, step=0, version=1, created_at=now, updated_at=now
    )
    driver = driver_of(engine)
    async with held(driver):
        fresh = asyncio.create_task(lone_write(session_factory, bump("fresh", 1)))
        stale = asyncio.create_task(lone_write(session_factory, bump("stale", 7)))
        twice = asyncio.create_task(lone_write(session_factory, duplicate))
        later = asyncio.create_task(lone_write(session_factory, bump("stale", 1)))
        await until(lambda: driver.group.waiting == 4)
    assert await fresh == 1
    assert await stale == 0  # the conditional write found another version: the caller retries
    with pytest.raises(IntegrityError):
        await twice
    assert await later == 1
    assert await version_of(session_factory, "fresh") == 2
    assert await version_of(session_factory, "stale") == 2
    assert await version_of(session_factory, "taken") == 1


async def test_a_stale_step_in_a_batch_runs_again_from_a_fresh_read(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """The cache holds a version another writer has moved on from: the step's lone write
    changes nothing, the dispatcher reads the row again and the step lands once."""
    await sync_units(session_factory)
    flow = make_flow()
    citizen = Citizen(Dispatcher(session_factory, flow), 8202)
    await citizen.command("start")
    key = flow.keyring.sender_key("telegram", "8202")
    before = await version_of(session_factory, key)
    assert before is not None
    # Another writer (the draft sweeper, another process) changes the row behind the cache.
    async with session_factory() as session, session.begin():
        await session.execute(
            update(CONVERSATIONS).where(CONVERSATIONS.c.key == key).values(version=before + 1)
        )
    await citizen.press(label("vi", "menu.tip"))
    assert label("vi", "cat.theft") in [b.label for b in citizen.buttons()], citizen.texts()
    assert await version_of(session_factory, key) == before + 2
    await citizen.press(label("vi", "cat.theft"))
    assert citizen.texts()[-1].endswith(label("vi", "place.ask")), citizen.texts()


async def test_concurrent_steps_of_one_conversation_each_land_once(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Two updates of one citizen handled at once (both from the same cached version): one
    write wins, the other finds the row moved on, runs again, and lands after it."""
    await sync_units(session_factory)
    flow = make_flow()
    citizen = Citizen(Dispatcher(session_factory, flow), 8203)
    await citizen.command("start")
    key = flow.keyring.sender_key("telegram", "8203")
    before = await version_of(session_factory, key)
    assert before is not None
    first, second = await asyncio.gather(citizen.say("xin chào"), citizen.say("có ai không"))
    assert first is not None and second is not None
    assert await version_of(session_factory, key) == before + 2
    async with session_factory() as session:
        conversation = await session.get(Conversation, key)
    assert conversation is not None
    seen = conversation.data["seen"]
    assert len(seen) == len(set(seen)) == 3  # /start and both messages, each once


async def test_concurrent_citizens_each_file_one_report(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await sync_units(session_factory)
    dispatcher = Dispatcher(session_factory, make_flow())
    citizens = [Citizen(dispatcher, 8300 + number) for number in range(12)]
    await asyncio.gather(
        *(
            file_tip(c, f"Kẻ gian trộm xe máy trước chợ Long Xuyên, lần {n}")
            for n, c in enumerate(citizens)
        )
    )
    async with session_factory() as session:
        codes = list(await session.scalars(select(Report.code)))
    assert len(codes) == len(set(codes)) == len(citizens)
    for c in citizens:
        assert any(code in " ".join(c.texts()) for code in _shown(codes)), c.texts()
    assert driver_of(engine).group.statements > 0


def _shown(codes: list[str]) -> list[str]:
    return [f"{code[:5]}-{code[5:]}" for code in codes]


# ------------------------------------------------------------------------------ durability

CRASH_SCRIPT = """
import asyncio, json, os, sys
from bot.dispatch import Dispatcher
from storage.db import create_engine, create_session_factory
from tests.driver import Citizen, label, make_flow

async def main() -> None:
    engine = create_engine(sys.argv[1])
    citizen = Citizen(Dispatcher(create_session_factory(engine), make_flow()), 8401)
    await citizen.command("start")
    await citizen.press(label("vi", "menu.tip"))
    # The step whose answer never leaves: its update, then the process dies (no close).
    data = citizen.button(label("vi", "cat.theft")).data
    outcome = await citizen.press_data(data, update_id=990001)
    assert outcome is not None
    print(json.dumps({"data": data, "update_id": 990001}), flush=True)
    os._exit(9)

asyncio.run(main())
"""


async def test_a_step_survives_the_process_dying_before_its_answer(
    db_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    factory = create_session_factory(engine)
    await sync_units(factory)
    await engine.dispose()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASH_SCRIPT,
        db_url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode == 9, err.decode()
    step = json.loads(out.decode().strip().splitlines()[-1])
    fresh = create_engine(db_url)
    try:
        factory = create_session_factory(fresh)
        flow = make_flow()
        citizen = Citizen(Dispatcher(factory, flow), 8401)
        key = flow.keyring.sender_key("telegram", "8401")
        async with factory() as session:
            conversation = await session.get(Conversation, key)
        assert conversation is not None
        assert step["update_id"] in conversation.data["seen"]
        assert conversation.data["draft"]["category"] == "theft", conversation.data
        # Telegram delivers the unanswered update again: it is known, nothing runs twice.
        assert await citizen.press_data(step["data"], update_id=step["update_id"]) is None
        async with factory() as session:
            again = await session.get(Conversation, key)
        assert again is not None and again.version == conversation.version
    finally:
        await fresh.dispose()


# ------------------------------------------------------------------------------ the writer


@pytest.fixture
async def impatient(db_url: str, engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """A second engine on the migrated file whose SQLite never waits for a lock (busy_timeout
    0) and whose writers wait for each other 0.5 s at most."""
    await engine.dispose()
    pragmas = tuple((n, "0" if n == "busy_timeout" else v) for n, v in SQLITE_PRAGMAS)
    other = create_async_engine(db_url, module=Driver(pragmas, writer_timeout=0.5))
    try:
        yield other
    finally:
        await other.dispose()


async def test_writers_take_turns_without_sqlite_busy_waits(impatient: AsyncEngine) -> None:
    """With SQLite's busy timeout at 0, any two writers meeting in SQLite would fail at once:
    a transaction writing, lone writes, and other transactions all wait their turn instead."""
    factory = create_session_factory(impatient)
    await add_conversation(factory, "c")
    release = asyncio.Event()

    async def long_transaction() -> None:
        async with factory() as session, session.begin():
            session.add(RateHit(scope="t", key="long", at=utcnow()))
            await session.flush()
            await release.wait()

    async def short_transaction(number: int) -> None:
        async with factory() as session, session.begin():
            session.add(RateHit(scope="t", key=f"short{number}", at=utcnow()))

    holder = asyncio.create_task(long_transaction())
    await until(driver_of(impatient).writer.locked)
    others = [
        asyncio.create_task(lone_write(factory, bump("c", 1))),
        *(asyncio.create_task(short_transaction(n)) for n in range(3)),
    ]
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in others)
    release.set()
    await holder
    results = await asyncio.gather(*others)
    assert results[0] == 1
    async with factory() as session:
        assert await session.scalar(select(func.count()).select_from(RateHit)) == 4


async def test_a_writer_waiting_too_long_fails_as_sqlite_would(impatient: AsyncEngine) -> None:
    factory = create_session_factory(impatient)
    await add_conversation(factory, "c")
    release = asyncio.Event()

    async def holder() -> None:
        async with factory() as session, session.begin():
            session.add(RateHit(scope="t", key="holder", at=utcnow()))
            await session.flush()
            await release.wait()

    task = asyncio.create_task(holder())
    await until(driver_of(impatient).writer.locked)

    async def late() -> None:
        async with factory() as session, session.begin():
            session.add(RateHit(scope="t", key="late", at=utcnow()))

    with pytest.raises(OperationalError, match="database is locked"):
        await late()
    with pytest.raises(OperationalError, match="database is locked"):
        await lone_write(factory, bump("c", 1))
    release.set()
    await task
    # Nothing was left holding the writer: both go through now.
    assert await lone_write(factory, bump("c", 1)) == 1
    async with factory() as session, session.begin():
        session.add(RateHit(scope="t", key="after", at=utcnow()))


async def test_the_writer_is_given_back_after_errors_and_cancellation(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    driver = driver_of(engine)
    await add_conversation(session_factory, "c")
    now = utcnow()
    duplicate = insert(CONVERSATIONS).values(
        key="c", state="idle", data={}, step=0, version=1, created_at=now, updated_at=now
    )

    async def fails_midway() -> None:
        async with session_factory() as session, session.begin():
            session.add(RateHit(scope="t", key="k", at=utcnow()))
            await session.flush()
            await session.execute(duplicate)

    with pytest.raises(IntegrityError):
        await fails_midway()
    assert not driver.writer.locked()

    started = asyncio.Event()

    async def cut_off() -> None:
        async with session_factory() as session, session.begin():
            session.add(RateHit(scope="t", key="cut", at=utcnow()))
            await session.flush()
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(cut_off())
    await started.wait()
    assert driver.writer.locked()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not driver.writer.locked()
    assert await lone_write(session_factory, bump("c", 1)) == 1
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(RateHit)) == 0


async def test_reads_go_on_while_a_transaction_writes(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await add_conversation(session_factory, "c")
    async with session_factory() as writer, writer.begin():
        await writer.execute(bump("c", 1))
        assert driver_of(engine).writer.locked()
        # WAL: another connection reads the last committed row meanwhile, without waiting.
        assert await version_of(session_factory, "c") == 1
    assert await version_of(session_factory, "c") == 2


async def test_a_streamed_query_fetches_every_row(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    for number in range(7):
        await add_conversation(session_factory, f"s{number}")
    async with session_factory() as session:
        result = await session.stream(
            select(CONVERSATIONS.c.key)
            .order_by(CONVERSATIONS.c.key)
            .execution_options(yield_per=3)
        )
        keys = [key async for key in result.scalars()]
    assert keys == [f"s{number}" for number in range(7)]


async def test_the_migrations_and_a_fresh_engine_see_the_same_schema(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade(engine)
        async with engine.connect() as connection:
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar()
        assert (mode, keys) == ("wal", 1)
    finally:
        await engine.dispose()


async def test_a_connection_lent_for_a_lone_write_keeps_its_compiled_statements(
    db_url: str, engine: AsyncEngine
) -> None:
    """SQLAlchemy resets the isolation level of a connection that ran in autocommit with
    ``PRAGMA read_uncommitted = 0``; SQLite expires every compiled statement of the connection
    on it (a report's INSERT, with its triggers, then costs ~2 ms to compile again instead of
    ~0.1 ms to run). The driver sends it only when the value changes: never, here."""
    await engine.dispose()
    traced: list[str] = []
    fresh = create_engine(db_url)
    try:
        driver_of(fresh).trace(traced.append)
        factory = create_session_factory(fresh)
        await add_conversation(factory, "c")
        for seen in (1, 2, 3):
            assert await lone_write(factory, bump("c", seen)) == 1
            assert await version_of(factory, "c") == seen + 1
    finally:
        await fresh.dispose()
    assert any("UPDATE conversations" in sql for sql in traced), traced
    # (The dialect reads it once, as it starts: ``PRAGMA read_uncommitted``, no "=".)
    assert not [sql for sql in traced if _READ_UNCOMMITTED_SET.search(sql)], traced


async def test_a_burst_of_writers_uses_a_few_sqlite_connections(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """Each SQLite connection costs memory (it parses the schema): forty transactions waiting
    for the writer at once borrow one of the engine's few connections each in turn."""
    driver = driver_of(engine)

    async def transaction(number: int) -> None:
        async with session_factory() as session, session.begin():
            await session.scalar(select(func.count()).select_from(RateHit))
            session.add(RateHit(scope="t", key=f"k{number}", at=utcnow()))

    await asyncio.gather(*(transaction(n) for n in range(40)))
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(RateHit)) == 40
    assert driver.workers.opened <= driver.workers.limit
