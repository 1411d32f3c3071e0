"""Shared database fixtures: every test that uses them runs once per backend.

``db_url`` is parametrized over ``sqlite`` and ``postgresql``; any test depending on it, directly
or through ``engine``/``session_factory``/``session``, runs on both. To pin a test to one
backend, parametrize the fixture indirectly::

    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    async def test_pragmas(engine): ...

PostgreSQL: set ``TINBAO_TEST_POSTGRES_URL`` to a server where the user may create databases,
e.g. ``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres`` (only the server and credentials
are used). The session (each xdist worker) creates its own database ``tinbao_t_<random>``
through the maintenance database ``postgres`` and drops it at the end; before every test it is
emptied (other sessions on it ended, every schema dropped, ``public`` re-created), so each test
starts from an empty database whose URL it may hand to anything, even a whole service. That
costs ~10-25 ms a test, where ``CREATE DATABASE`` per test measured 25-330 ms.

Without the variable the PostgreSQL variants are skipped, unless ``TINBAO_REQUIRE_POSTGRES=1``
(CI), where they fail instead.

``engine`` (a migrated database): on PostgreSQL the migrations run for each test; on SQLite the
test's file is a copy of one the migrations made once per session (``migrated_sqlite_template``),
which saves ~0.5-1 s of CPU and disk a test. Tests of the migrations themselves start from
``empty_engine``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from storage.db import create_engine, create_session_factory, sqlite_file
from storage.migrate import upgrade

POSTGRES_URL_ENV = "TINBAO_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "TINBAO_REQUIRE_POSTGRES"
BACKENDS = ("sqlite", "postgresql")
MAINTENANCE_DB = "postgres"

T = TypeVar("T")


def postgres_base_url() -> URL:
    """The test server from the environment; skips (or fails, in CI) when it is not given."""
    raw = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if not raw:
        reason = (
            f"{POSTGRES_URL_ENV} is not set "
            "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/postgres)"
        )
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    url = make_url(raw)
    if url.get_backend_name() != "postgresql":
        pytest.fail(f"{POSTGRES_URL_ENV} is not a PostgreSQL URL: {url!r}", pytrace=False)
    return url.set(drivername="postgresql+asyncpg")


def run_in_thread(make_coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a private event loop in another thread (from a sync fixture)."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(lambda: asyncio.run(make_coroutine())).result()


async def execute_autocommit(url: URL, *statements: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


#: Brings the test database back to empty: no session left on it, no schema but a new "public".
RESET_POSTGRES = (
    "SET lock_timeout = '10s'",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    r"""
DO $$
DECLARE
    schema_name name;
BEGIN
    FOR schema_name IN
        SELECT nspname FROM pg_namespace
        WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
    LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', schema_name);
    END LOOP;
    CREATE SCHEMA public;
END
$$
""",
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """This session's own PostgreSQL database (one per xdist worker), dropped at the end.

    Created and dropped through the maintenance database ``postgres``; ``db_url`` empties it
    before every test.
    """
    base = postgres_base_url()
    admin = base.set(database=MAINTENANCE_DB)
    name = f"tinbao_t_{secrets.token_hex(6)}"
    try:
        # template0 + UTF8: nothing leaks in from template1, and any text round-trips.
        run_in_thread(
            lambda: execute_autocommit(
                admin, f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'"
            )
        )
    except (OSError, SQLAlchemyError) as exc:
        pytest.fail(
            f"cannot create a test database with {POSTGRES_URL_ENV}="
            f"{base.render_as_string(hide_password=True)}: {exc}",
            pytrace=False,
        )
    try:
        yield base.set(database=name)
    finally:
        run_in_thread(
            lambda: execute_autocommit(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


def sqlite_url(directory: Path) -> str:
    # A not-yet-existing sub-directory: create_engine() must make it.
    return f"sqlite+aiosqlite:///{(directory / 'data' / 'tinbao.db').as_posix()}"


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of the requested backend, for this test alone."""
    backend = request.param
    if backend == "sqlite":
        return sqlite_url(tmp_path)
    if backend == "postgresql":
        url: URL = request.getfixturevalue("postgres_database")
        await execute_autocommit(url, *RESET_POSTGRES)
        return url.render_as_string(hide_password=False)
    raise ValueError(f"unknown test backend {backend!r}; choose from {BACKENDS}")


@pytest.fixture
async def empty_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the empty database (no tables, not migrated)."""
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the newest revision by :func:`upgrade`, once per session (each
    xdist worker): ``engine`` copies it instead of running the migrations for every test."""
    path = tmp_path_factory.mktemp("migrated") / "tinbao.db"

    async def migrate() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path.as_posix()}")
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    run_in_thread(migrate)
    # Everything into the one file (WAL mode stays in its header): a copy is the whole database.
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
async def engine(request: pytest.FixtureRequest, empty_engine: AsyncEngine) -> AsyncEngine:
    """An engine on a database migrated to the newest revision.

    On SQLite the database is a copy of ``migrated_sqlite_template`` (the same migrations, run
    once; running them for every test cost ~0.5-1 s each); on PostgreSQL they run here.
    """
    path = sqlite_file(empty_engine.url) if empty_engine.dialect.name == "sqlite" else None
    if path is None:
        await upgrade(empty_engine)
    else:
        # Not opened yet: create_engine() only made the (empty, 0600) file, which keeps its mode.
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_template"), path)
    return empty_engine


@pytest.fixture
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture
async def session(
    session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session


@pytest.fixture(autouse=True, scope="session")
def _client_addresses_kept_out_of_logs() -> None:
    """As ``tinbao`` does at start (``setup_logging`` and the runtime): aiohttp's line for a
    malformed request loses the client's address."""
    from bot.logs import install_address_filter

    install_address_filter()


@pytest.fixture(autouse=True)
def _no_rate_limit_left_behind() -> Iterator[None]:
    """A test that runs the command line in-process (``bot.cli.main``) installs the log's rate
    limit on the root logger, as ``tinbao`` does at start; it must not outlive that test and
    swallow the log lines another test counts."""
    import logging

    from bot.logs import RATE_LIMIT

    yield
    root = logging.getLogger()
    for holder in (root, *root.handlers):
        if RATE_LIMIT in holder.filters:
            holder.removeFilter(RATE_LIMIT)
