"""Create the PostgreSQL test database named by ``TINBAO_TEST_POSTGRES_URL`` if it is missing.

``python -m tests.pg_setup`` — used by ``make test`` and CI. Without the variable it does
nothing (the PostgreSQL test variants then skip, or fail where ``TINBAO_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
from sqlalchemy.engine import make_url


async def ensure_database(raw_url: str) -> str:
    url = make_url(raw_url)
    name = url.database or "tinbao_test"
    connection = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database="postgres",
    )
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
            return f"created database {name}"
        return f"database {name} exists"
    finally:
        await connection.close()


def main() -> int:
    raw = os.environ.get("TINBAO_TEST_POSTGRES_URL", "").strip()
    if not raw:
        print("TINBAO_TEST_POSTGRES_URL is empty: PostgreSQL tests will be skipped")
        return 0
    try:
        print(asyncio.run(ensure_database(raw)))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cannot reach PostgreSQL at {make_url(raw)!r}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
