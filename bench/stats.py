"""Benchmark of the panel's statistics and lists at 1,000,000 reports on PostgreSQL.

Seeds the reports, spread over the last five years, into a scratch database
(``tinbao_bench_stats``, dropped and re-created) with set-based ``INSERT ... SELECT ... FROM
generate_series`` (a million rows a statement, the rollup triggers off), then fills the rollups
once. It times what the statistics page reads for a month, a year and five years (the period,
the previous one, the same period a year before, and the units' 12 months before), the month by
day (the daily rollup), the panel's landing page (the current month), and the first and a deep
page of the reports list (keyset on ``(created_at, id)``). Targets: statistics within 200 ms, a
list page within 50 ms, at any number of reports (``--reports 10000000`` for the issue's ten
million: about 5 GB of disk).

    python -m bench.stats [--url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
                          [--reports 1000000] [--years 5] [--database NAME] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from admin.queries import Period, ReportFilter, report_page
from admin.stats.queries import (
    daily,
    figures,
    period_months,
    previous,
    shift,
    unit_months,
    year_before,
)
from config.catalogue import load_catalogue
from handlers.domain import CATEGORIES, OUTCOMES
from handlers.security import CODE_ALPHABET
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade
from storage.models import Report
from storage.repositories import Units
from storage.stats_rollup import DEFAULT_ZONE, drop_trigger_statements, fill, trigger_statements
from tests.conftest import execute_autocommit

DB_NAME = "tinbao_bench_stats"
STATUS_WEIGHTS = {
    "new": 5,
    "assigned": 5,
    "in_progress": 10,
    "needs_info": 3,
    "resolved": 70,
    "rejected": 7,
}


#: One INSERT ... SELECT per slice of this many reports (its own transaction).
SLICE = 1_000_000

#: The reports of ``generate_series($1, $2)``, set-based: ``created_at`` evenly from ``$3``
#: every ``$4`` seconds (so the table's physical order follows it, as in production), the rest
#: drawn with ``random()`` as the old Python seeding did: 10 % emergencies, the statuses by
#: :data:`STATUS_WEIGHTS`, a claim ~40 min and an acknowledgement ~150 s after arrival
#: (exponential), resolved 1-29 days later with an outcome, 0-3 subjects and 5 % assisted.
SEED_SQL = """
INSERT INTO reports (code, kind, category, unit_code, occurred, contact_mode, pin_hash, locale,
    channel, status, outcome, subjects_handled, citizen_assisted_arrest, created_at, updated_at,
    claimed_at, acknowledged_at, resolved_at)
SELECT code, kind, category, unit_code, 'unknown', 'relay', 'x', 'vi', 'telegram', status,
    CASE WHEN status = 'resolved'
         THEN ($7::text[])[1 + floor(r3 * cardinality($7::text[]))::int] END,
    CASE WHEN status = 'resolved' THEN floor(r4 * 4)::int END,
    CASE WHEN status = 'resolved' THEN r7 < 0.05 END,
    created, created,
    CASE WHEN status <> 'new' THEN created + make_interval(secs => -ln(1 - r5) * 2400) END,
    CASE WHEN kind = 'emergency' THEN created + make_interval(secs => -ln(1 - r6) * 150) END,
    CASE WHEN status = 'resolved' THEN created + make_interval(days => 1 + floor(r8 * 29)::int) END
FROM (
    SELECT code, created, kind, category, unit_code, r3, r4, r5, r6, r7, r8,
        CASE WHEN kind = 'emergency' AND drawn NOT IN ('new', 'resolved') THEN 'acknowledged'
             ELSE drawn END AS status
    FROM (
        SELECT translate(lpad(g::text, 10, '0'), '0123456789', $5) AS code,
            $3::timestamptz + make_interval(secs => (g - 1) * $4::float8) AS created,
            CASE WHEN e THEN 'emergency' ELSE 'tip' END AS kind,
            CASE WHEN e THEN NULL
                 ELSE ($6::text[])[1 + floor(r1 * cardinality($6::text[]))::int] END AS category,
            ($8::text[])[1 + floor(r2 * cardinality($8::text[]))::int] AS unit_code,
            CASE WHEN rs < 0.05 THEN 'new' WHEN rs < 0.10 THEN 'assigned'
                 WHEN rs < 0.20 THEN 'in_progress' WHEN rs < 0.23 THEN 'needs_info'
                 WHEN rs < 0.93 THEN 'resolved' ELSE 'rejected' END AS drawn,
            r3, r4, r5, r6, r7, r8
        FROM (
            SELECT g, random() < 0.1 AS e, random() AS rs, random() AS r1, random() AS r2,
                random() AS r3, random() AS r4, random() AS r5, random() AS r6,
                random() AS r7, random() AS r8
            FROM generate_series($1::bigint, $2::bigint) AS g
        ) AS drawn
    ) AS picked
) AS seeded
"""


async def seed(url: str, count: int, name: str = DB_NAME, years: int = 5) -> None:
    """``count`` reports spread evenly over the last ``years`` years, inserted set-based with
    the rollup triggers off, then the rollups filled once and the triggers put back."""
    base = make_url(url).set(drivername="postgresql+asyncpg")
    admin = base.set(database="postgres")
    await execute_autocommit(
        admin,
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'",
    )
    target = base.set(database=name)
    engine = create_engine(target.render_as_string(hide_password=False))
    await upgrade(engine)
    catalogue = load_catalogue()
    async with create_session_factory(engine)() as session, session.begin():
        await Units(session).sync(catalogue)
    await engine.dispose()
    units = [u.code for u in catalogue.units]
    assert sum(STATUS_WEIGHTS.values()) == 100  # SEED_SQL's thresholds
    begin = datetime.now(UTC) - timedelta(days=years * 365)
    step = years * 365 * 24 * 3600 / count
    connection = await asyncpg.connect(
        host=target.host,
        port=target.port,
        user=target.username,
        password=target.password,
        database=name,
    )
    try:
        await connection.execute("SET synchronous_commit = off")
        for statement in drop_trigger_statements("postgresql"):
            await connection.execute(statement)
        started = time.perf_counter()
        for first in range(1, count + 1, SLICE):
            last = min(count, first + SLICE - 1)
            await connection.execute(
                SEED_SQL,
                first,
                last,
                begin,
                step,
                CODE_ALPHABET[:10],
                list(CATEGORIES),
                list(OUTCOMES),
                units,
            )
            print(f"  {last:,} reports ({time.perf_counter() - started:.0f} s)", flush=True)
        inserted = time.perf_counter()
        first_at, last_at = await connection.fetchrow(
            "SELECT min(created_at), max(created_at) FROM reports"
        )
        print(f"  arrived from {first_at:%Y-%m-%d} to {last_at:%Y-%m-%d}")
        # The triggers keep the rollups row by row; for a bulk load, fill them once instead.
        await connection.execute("ANALYZE reports")
        async with connection.transaction():
            for statement in fill("postgresql", DEFAULT_ZONE):
                await connection.execute(statement)
            for statement in trigger_statements("postgresql", DEFAULT_ZONE):
                await connection.execute(statement)
        filled = time.perf_counter()
        await connection.execute("VACUUM ANALYZE")
        print(f"seeded {count:,} reports in {inserted - started:.1f} s")
        print(f"rollups filled in {filled - inserted:.1f} s")
    finally:
        await connection.close()


async def timed(
    label: str, run: Callable[[], Awaitable[object]], target: int, repeat: int = 7
) -> float:
    await run()  # warm the cache and the connection
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - started) * 1000)
    median = statistics.median(samples)
    print(f"{label:<44} median {median:7.1f} ms   max {max(samples):7.1f} ms   target {target} ms")
    return median


async def measure(url: str, name: str = DB_NAME) -> None:
    target = make_url(url).set(drivername="postgresql+asyncpg", database=name)
    engine = create_engine(target.render_as_string(hide_password=False))
    factory = create_session_factory(engine)
    current = Period.parse(None)
    assert current.month is not None
    # The last complete month: a full month of data (1/60 of the reports over five years).
    month = (
        Period(current.year, current.month - 1)
        if current.month > 1
        else Period(current.year - 1, 12)
    )
    year = Period(current.year)

    async def period_stats(period: Period | tuple[int, int]) -> None:
        """What the statistics page reads: the period, the previous one, a year before, and
        the units' 12 months before."""
        months = period if isinstance(period, tuple) else period_months(period)
        async with factory() as session:
            await figures(session, months, None)
            if isinstance(period, Period):
                await figures(session, period_months(previous(period)), None)
                if year_before(period) != previous(period):  # as the page: a year's is the same
                    await figures(session, period_months(year_before(period)), None)
            await unit_months(session, shift(months[1], -12), months[1], None)

    async def page(after: tuple[datetime, int] | None, filters: ReportFilter) -> None:
        async with factory() as session:
            await report_page(session, filters, None, after=after, size=50)

    async def dashboard() -> None:
        """The panel's landing page: the current month."""
        async with factory() as session:
            await figures(session, period_months(current), None)

    async def month_by_day() -> None:
        async with factory() as session:
            await daily(session, month, None)

    async with factory() as session:
        total = int(await session.scalar(text("SELECT count(*) FROM reports")) or 0)
        deep_offset = total // 2
        deep = (
            await session.execute(
                select(Report.created_at, Report.id)
                .order_by(Report.created_at.desc(), Report.id.desc())
                .offset(deep_offset)
                .limit(1)
            )
        ).one()
        unit = await session.scalar(text("SELECT unit_code FROM reports LIMIT 1"))
    print(f"{total:,} reports")
    last = period_months(current)[1]
    targets = {
        "month_median_ms": 200,
        "year_median_ms": 200,
        "five_years_median_ms": 200,
        "month_by_day_median_ms": 200,
        "dashboard_median_ms": 200,
        "list_first_ms": 50,
        "list_deep_ms": 50,
    }
    results = {
        "month_median_ms": await timed(
            f"month: page figures ({month.key})",
            lambda: period_stats(month),
            targets["month_median_ms"],
        ),
        "year_median_ms": await timed(
            f"year: page figures ({year.key})",
            lambda: period_stats(year),
            targets["year_median_ms"],
        ),
        "five_years_median_ms": await timed(
            "five years: figures",
            lambda: period_stats((shift(last, -59), last)),
            targets["five_years_median_ms"],
        ),
        "month_by_day_median_ms": await timed(
            f"month by day ({month.key})", month_by_day, targets["month_by_day_median_ms"]
        ),
        "dashboard_median_ms": await timed(
            f"dashboard: this month ({current.key})", dashboard, targets["dashboard_median_ms"]
        ),
        "list_first_ms": await timed(
            "list, first page (50)", lambda: page(None, ReportFilter()), targets["list_first_ms"]
        ),
        "list_deep_ms": await timed(
            f"list, page after {deep_offset:,} rows",
            lambda: page((deep[0], deep[1]), ReportFilter()),
            targets["list_deep_ms"],
        ),
    }
    await timed(
        "list, first page, status+unit filter",
        lambda: page(None, ReportFilter(status="resolved", unit=unit)),
        targets["list_first_ms"],
    )
    await engine.dispose()
    for metric, value in results.items():
        line = {
            "bench": "stats",
            "backend": "postgresql",
            "metric": metric,
            "value": round(value, 1),
            "unit": "ms",
            "target": targets[metric],
        }
        print(json.dumps(line))


async def main(args: argparse.Namespace) -> None:
    if not args.skip_seed:
        await seed(args.url, args.reports, args.database, args.years)
    await measure(args.url, args.database)
    if not args.keep:
        base = make_url(args.url).set(drivername="postgresql+asyncpg", database="postgres")
        await execute_autocommit(base, f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--years", type=int, default=5, help="seeded reports span (years)")
    parser.add_argument("--database", default=DB_NAME, help="scratch database (dropped first)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--skip-seed", action="store_true", help="measure a kept database")
    asyncio.run(main(parser.parse_args()))
