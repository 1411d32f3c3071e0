"""Throw-away databases for the benchmarks, one per run.

SQLite: a file in a temporary directory. PostgreSQL: a temporary database created on the server
of ``TINBAO_BENCH_POSTGRES_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``;
the database named there is only used to create and drop it), migrated, and dropped at the end.
An unreachable server raises :class:`Unavailable` (the run is skipped, not failed).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from storage.db import create_engine
from storage.migrate import upgrade

POSTGRES_URL_ENV = "TINBAO_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


class Unavailable(Exception):
    """The backend cannot be used here; the run is skipped, not failed."""


@asynccontextmanager
async def sqlite_database() -> AsyncIterator[tuple[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="tinbao-bench-") as tmp:
        directory = Path(tmp)
        yield f"sqlite+aiosqlite:///{(directory / 'tinbao.db').as_posix()}", directory


async def _autocommit(url: URL, *statements: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with asyncio.timeout(60), engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[tuple[str, Path]]:
    raw = os.environ.get(POSTGRES_URL_ENV, "").strip() or DEFAULT_POSTGRES_URL
    try:
        admin = make_url(raw)
    except Exception as exc:
        raise Unavailable(f"{POSTGRES_URL_ENV} is not a database URL: {exc}") from exc
    if admin.get_backend_name() != "postgresql":
        raise Unavailable(f"{POSTGRES_URL_ENV} is not a PostgreSQL URL")
    admin = admin.set(drivername="postgresql+asyncpg")
    shown = admin.render_as_string(hide_password=True)
    name = f"tinbao_bench_{secrets.token_hex(4)}"
    try:
        await _autocommit(admin, f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    except (OSError, SQLAlchemyError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"cannot create a database on {shown}: {reason}") from exc
    url = admin.set(database=name)
    try:
        engine = create_engine(url.render_as_string(hide_password=False))
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        with tempfile.TemporaryDirectory(prefix="tinbao-bench-") as tmp:
            yield url.render_as_string(hide_password=False), Path(tmp)
    finally:
        await _autocommit(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


DATABASES: dict[str, Callable[[], Any]] = {
    "sqlite": sqlite_database,
    "postgresql": postgres_database,
}
