"""Alembic environment of tinbao.

Normally run through :mod:`storage.migrate`, which builds the Alembic config in code and hands a
(sync side of an async) connection in ``config.attributes["connection"]``. Without one, the
database URL comes from the ``sqlalchemy.url`` option or ``TINBAO_DATABASE_URL`` and an async
engine is made here; ``--sql`` (offline) mode only needs the URL.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from storage.migrate import context_options, migration_engine

config = context.config


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("TINBAO_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "no database to migrate: pass a connection in config.attributes['connection'], "
            "or set the sqlalchemy.url option or TINBAO_DATABASE_URL"
        )
    return url


def run_migrations_offline() -> None:
    """Write the SQL to the output instead of running it (``alembic upgrade --sql``)."""
    url = database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, **context_options(connection.dialect.name))
    # A no-op around the whole run: with transaction_per_migration each revision has its own.
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = migration_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
