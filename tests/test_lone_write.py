"""A step that changes nothing but the conversation is one statement in autocommit (PostgreSQL:
one round trip; SQLite through storage.sqlite_driver: one thread hop); a step that writes more
stays one transaction. Nothing may run after a lone write. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.dispatch import Dispatcher
from storage.db import begin_lone_write, lone_write_done
from storage.models import RateHit, Report
from storage.types import utcnow
from tests.conftest import execute_autocommit
from tests.driver import Citizen, label, make_flow, sync_units


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[tuple[str, bool]]]:
    """Each statement run on ``engine``: its first words, and whether it ran in autocommit."""
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        seen.append((" ".join(statement.split()[:3]), autocommit))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_a_conversation_only_step_is_one_statement(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await sync_units(session_factory)
    citizen = Citizen(Dispatcher(session_factory, make_flow()), 8101)
    await citizen.command("start")
    with statements(engine) as seen:
        await citizen.press(label("vi", "menu.tip"))
    # From the cache: no read, only the conditional write, alone (autocommit).
    assert seen == [("UPDATE conversations SET", True)]
    await citizen.press(label("vi", "cat.theft"))
    await citizen.say("long xuyen")
    await citizen.press("Phường Long Xuyên")
    await citizen.press(label("vi", "when.now"))
    await citizen.say("Kẻ gian trộm xe máy trước chợ Long Xuyên lúc tối")
    await citizen.press(label("vi", "ev.skip"))
    await citizen.press(label("vi", "contact.relay", mark="✓ "))
    with statements(engine) as seen:
        await citizen.press(label("vi", "summary.confirm"))
    # The confirmation writes the report, its audit event, its outbox rows, the sender's hit
    # and the conversation: one transaction, nothing of it in autocommit. On PostgreSQL the
    # report's id comes first, then the report and its rows in one statement (a CTE per row),
    # then the conversation.
    assert not any(autocommit for _, autocommit in seen), seen
    if engine.dialect.name == "postgresql":
        heads = ("SELECT nextval(pg_get_serial_sequence", "WITH add_0 AS", "UPDATE conversations")
        assert len(seen) == len(heads), seen
        assert all(text.startswith(head) for (text, _), head in zip(seen, heads, strict=True))
    else:
        assert len(seen) > 3
        assert any(text.startswith("INSERT INTO reports") for text, _ in seen)
    async with session_factory() as session:
        assert len(list(await session.scalars(select(Report.id)))) == 1


async def test_nothing_runs_after_a_lone_write(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    async with session_factory() as session, session.begin():
        lone = await begin_lone_write(session)
        assert lone is True
        await session.execute(select(1))
        if lone:
            lone_write_done(session)
            with pytest.raises(RuntimeError, match="not be atomic"):
                await session.execute(select(1))
            session.add(RateHit(scope="t", key="k", at=utcnow()))
            with pytest.raises(RuntimeError, match="not be atomic"):
                await session.flush()
            session.expunge_all()
    # The next transaction of a session is an ordinary one again.
    async with session_factory() as session, session.begin():
        session.add(RateHit(scope="t", key="k", at=utcnow()))
        # A pending change means the transaction is not one statement: no lone write.
        assert await begin_lone_write(session) is False


async def test_a_session_that_already_ran_a_statement_takes_no_lone_write(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with session_factory() as session, session.begin():
        await session.execute(select(1))
        assert await begin_lone_write(session) is False
    async with session_factory() as session:
        # Not inside session.begin(): no transaction to stand for.
        assert await begin_lone_write(session) is False


async def test_a_step_on_a_connection_the_server_closed_runs_again(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    """Connections are no longer pinged on every checkout: one the server closed (a restart, an
    idle timeout) fails its step, which runs again on a fresh connection; nothing is lost."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the server closing a connection is PostgreSQL's case")
    await sync_units(session_factory)
    citizen = Citizen(Dispatcher(session_factory, make_flow()), 8102)
    await citizen.command("start")
    await execute_autocommit(
        make_url(db_url),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    await citizen.press(label("vi", "menu.tip"))
    assert label("vi", "cat.theft") in [b.label for b in citizen.buttons()], citizen.texts()
    await citizen.press(label("vi", "cat.theft"))
    assert citizen.texts()[-1].endswith(label("vi", "place.ask")), citizen.texts()
