"""Benchmark of the retention run's outbox pruning at millions of rows on PostgreSQL.

Seeds ``--rows`` outbox rows (default 2,000,000), one every few seconds over the last
``--days`` days (so the table's physical order follows time, as in production), into a scratch
database (``tinbao_bench_retention``, dropped and re-created), set-based with ``INSERT ...
SELECT ... FROM generate_series``: 84 % sent (a quarter of them to tipsters, 4 % of those
relayed questions, half of whose reports still have a route back), 5 % folded, 9 % fired and
1 % cancelled timers, 0.5 % failed, 0.5 % still pending (parked since), and the last hour
pending. Then:

* ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement one batch issues (rolled back): each must be
  an index scan on ``ix_outbox_status_due``;
* the first run (the whole backlog, with the settings' defaults: 30 days, failed 90), timed;
* a run with nothing left to delete (what the daily run costs at the least: only the rows that
  crossed the limit since), timed, and its plan;
* a day later: one more day of rows past the limit (the daily run in steady state), timed.

Times depend on the machine's load (note ``uptime`` with them); the plans and the buffers each
batch touches do not.

    python -m bench.retention [--url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
                              [--rows 2000000] [--days 400] [--database NAME] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.housekeeping import run_retention
from handlers.retention import RetentionPolicy, apply_retention
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade
from storage.stats_rollup import drop_trigger_statements
from tests.conftest import execute_autocommit

DB_NAME = "tinbao_bench_retention"
#: Reports the rows refer to: one for 40 rows, at most this many.
REPORTS = 50_000
POLICY = RetentionPolicy.from_days(
    route_days=0,
    evidence_days=0,
    text_years=0,
    audit_days=0,
    outbox_days=30,
    outbox_failed_days=90,
)

REPORTS_SQL = """
INSERT INTO reports (code, kind, contact_mode, pin_hash, locale, channel, status, occurred,
    created_at, updated_at)
SELECT 'B' || lpad(g::text, 9, '0'), 'tip', 'relay', 'x', 'vi', 'telegram', 'in_progress',
    'unknown', now(), now()
FROM generate_series(1, $1::int) AS g
"""
ROUTES_SQL = """
INSERT INTO contact_routes (report_id, sender_key, route, created_at)
SELECT id, 'k', 'token', now() FROM reports WHERE id % 2 = 0
"""
#: Rows ``$1``..``$2``; row g due ``$3 + (g - 1) * $4`` seconds; ``$5`` reports.
OUTBOX_SQL = """
INSERT INTO outbox (kind, report_id, destination, payload, status, attempts, next_attempt_at,
    created_at, sent_at, priority, chat_key, message_count)
SELECT kind,
    CASE WHEN kind = 'citizen_message' THEN report END,
    CASE WHEN kind = 'citizen_message' THEN 'report:' || report ELSE 'unit:30307' END,
    CASE WHEN question THEN jsonb_build_object('relay_id', g, 'sent_message_id', g)
         WHEN kind = 'citizen_message' THEN '{"key": "notify.assigned"}'::jsonb
         ELSE jsonb_build_object('report_id', report) END,
    status, 1, due, due,
    CASE WHEN status IN ('sent', 'done') THEN due + interval '2 seconds' END,
    0,
    CASE WHEN status = 'sent' AND kind <> 'citizen_message' THEN '-1001234567890' END,
    CASE WHEN status = 'sent' THEN 1 ELSE 0 END
FROM (
    SELECT g, due, report, status,
        CASE WHEN status IN ('done', 'cancelled') THEN 'timer.remind_unclaimed'
             WHEN status = 'sent' AND rk < 0.25 THEN 'citizen_message'
             ELSE 'report_card' END AS kind,
        status = 'sent' AND rk < 0.01 AS question
    FROM (
        SELECT g, due, 1 + floor(random() * $5::int)::int AS report, random() AS rk,
            CASE WHEN due > now() - interval '1 hour' THEN 'pending'
                 WHEN rs < 0.005 THEN 'pending' WHEN rs < 0.010 THEN 'failed'
                 WHEN rs < 0.060 THEN 'folded' WHEN rs < 0.150 THEN 'done'
                 WHEN rs < 0.160 THEN 'cancelled' ELSE 'sent' END AS status
        FROM (
            SELECT g, $3::timestamptz + make_interval(secs => (g - 1) * $4::float8) AS due,
                random() AS rs
            FROM generate_series($1::bigint, $2::bigint) AS g
        ) AS timed
    ) AS drawn
) AS rows
"""
SLICE = 500_000


def _connect_args(url: str) -> dict[str, Any]:
    target = make_url(url)
    return {
        "host": target.host,
        "port": target.port,
        "user": target.username,
        "password": target.password,
        "database": target.database,
    }


async def seed(url: str, rows: int, days: int) -> None:
    engine = create_engine(url)
    await upgrade(engine)
    await engine.dispose()
    connection = await asyncpg.connect(**_connect_args(url))
    try:
        await connection.execute("SET synchronous_commit = off")
        # The statistics rollups' triggers cost ~10 ms a report here; this scratch database
        # needs no statistics.
        for statement in drop_trigger_statements("postgresql"):
            await connection.execute(statement)
        started = time.perf_counter()
        reports = max(10, min(REPORTS, rows // 40))
        await connection.execute(REPORTS_SQL, reports)
        await connection.execute(ROUTES_SQL)
        begin = datetime.now(UTC) - timedelta(days=days)
        step = days * 86400 / rows
        for first in range(1, rows + 1, SLICE):
            last = min(rows, first + SLICE - 1)
            await connection.execute(OUTBOX_SQL, first, last, begin, step, reports)
            print(f"  {last:,} outbox rows ({time.perf_counter() - started:.0f} s)", flush=True)
        await connection.execute("VACUUM ANALYZE")
        counts = await connection.fetch(
            "SELECT status, count(*) AS n FROM outbox GROUP BY status ORDER BY status"
        )
        print("seeded: " + ", ".join(f"{r['status']} {r['n']:,}" for r in counts))
        size = await connection.fetchval("SELECT pg_size_pretty(pg_total_relation_size('outbox'))")
        print(f"outbox with its indexes: {size}")
    finally:
        await connection.close()


#: The statements of the outbox's pruning (``handlers/retention.py``).
PRUNING = re.compile(r"(SELECT outbox\.id\s+FROM outbox\s|DELETE FROM outbox\s)")


@contextmanager
def explaining(engine: AsyncEngine, plans: list[str]) -> Iterator[None]:
    """Before each statement of the outbox's pruning, the same statement with the same
    parameters under ``EXPLAIN (ANALYZE, BUFFERS)``; the plans go into ``plans``. (It runs
    twice: roll the transaction back.)"""

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if PRUNING.match(statement):
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    sync = engine.sync_engine
    event.listen(sync, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(sync, "before_cursor_execute", before)


def summary(plan: str) -> dict[str, Any]:
    scans = re.findall(
        r"(Seq Scan on \w+|(?:Bitmap )?Index (?:Only )?Scan (?:using |on )\w+(?: on \w+)?)", plan
    )
    top = next((row for row in plan.splitlines() if "Buffers:" in row), "")
    hit = sum(int(n) for n in re.findall(r"hit=(\d+)", top))
    read = sum(int(n) for n in re.findall(r"read=(\d+)", top))
    rows = re.search(r"\(actual time=[\d.]+\.\.[\d.]+ rows=(\d+)", plan)
    removed = re.findall(r"Rows Removed by Filter: (\d+)", plan)
    took = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return {
        "scans": scans,
        "top_buffers_hit": hit,
        "top_buffers_read": read,
        "rows_removed_by_filter": sum(int(n) for n in removed),
        "top_rows": int(rows.group(1)) if rows else None,
        "execution_ms": float(took.group(1)) if took else None,
    }


async def explain_one_batch(engine: AsyncEngine, label: str) -> None:
    plans: list[str] = []
    factory = create_session_factory(engine)
    async with factory() as session:
        with explaining(engine, plans):
            await session.begin()
            await apply_retention(session, POLICY, now=datetime.now(UTC))
        await session.rollback()
    for number, plan in enumerate(plans, 1):
        print(f"--- {label}: statement {number} of one batch\n{plan}")
        print(
            json.dumps({"bench": "retention", "plan": label, "statement": number, **summary(plan)})
        )


def line(metric: str, value: float, unit: str) -> None:
    print(
        json.dumps(
            {
                "bench": "retention",
                "backend": "postgresql",
                "metric": metric,
                "value": round(value, 1),
                "unit": unit,
            }
        )
    )


async def measure(url: str) -> None:
    engine = create_engine(url)
    factory = create_session_factory(engine)
    try:
        await explain_one_batch(engine, "backlog")
        started = time.perf_counter()
        first = await run_retention(factory, POLICY)
        took = time.perf_counter() - started
        print(f"first run: {first.as_dict()}")
        line("backlog_run_s", took, "s")
        line("backlog_rows_per_s", (first.outbox + first.outbox_failed) / took, "rows/s")
        connection = await asyncpg.connect(**_connect_args(url))
        try:
            await connection.execute("VACUUM ANALYZE outbox")
            await explain_one_batch(engine, "nothing_left")
            started = time.perf_counter()
            empty = await run_retention(factory, POLICY)
            line("nothing_left_run_ms", (time.perf_counter() - started) * 1000, "ms")
            # Only the rows that crossed the limit since the first run (seconds' worth).
            print(f"nothing left: {empty.as_dict()}")
            # A day later: the rows of the day now past the limit go.
            await connection.execute(
                "UPDATE outbox SET next_attempt_at = next_attempt_at - interval '1 day', "
                "created_at = created_at - interval '1 day', "
                "sent_at = sent_at - interval '1 day'"
            )
            await connection.execute("VACUUM ANALYZE outbox")
        finally:
            await connection.close()
        await explain_one_batch(engine, "a_day_later")
        started = time.perf_counter()
        daily = await run_retention(factory, POLICY)
        line("a_day_later_run_ms", (time.perf_counter() - started) * 1000, "ms")
        print(f"a day later: {daily.as_dict()}")
    finally:
        await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    base = make_url(args.url).set(drivername="postgresql+asyncpg")
    admin = base.set(database="postgres")
    target = base.set(database=args.database).render_as_string(hide_password=False)
    if not args.skip_seed:
        await execute_autocommit(
            admin,
            f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)',
            f"CREATE DATABASE \"{args.database}\" TEMPLATE template0 ENCODING 'UTF8'",
        )
        await seed(target, args.rows, args.days)
    await measure(target)
    if not args.keep:
        await execute_autocommit(admin, f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=400, help="seeded rows span (days)")
    parser.add_argument("--database", default=DB_NAME, help="scratch database (dropped first)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--skip-seed", action="store_true", help="measure a kept database")
    asyncio.run(main(parser.parse_args()))
