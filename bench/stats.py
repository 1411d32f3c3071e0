"""Benchmark of the panel's statistics and lists at 1,000,000 reports on PostgreSQL.

Seeds the reports, spread over the last five years, with COPY into a scratch database
(``tinbao_bench_stats``, dropped and re-created), then times what the statistics page reads for
a month, a year and five years (the period, the previous one, the same period a year before,
and the units' 12 months before), and the first and a deep page of the reports list (keyset on
``(created_at, id)``). Targets: statistics within 200 ms, a list page within 50 ms, at any
number of reports (``--reports 10000000`` for the issue's ten million).

    python -m bench.stats [--url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
                          [--reports 1000000] [--years 5] [--database NAME] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from admin.queries import Period, ReportFilter, report_page
from admin.stats.queries import figures, period_months, previous, shift, unit_months, year_before
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
COLUMNS = (
    "code",
    "kind",
    "category",
    "unit_code",
    "occurred",
    "contact_mode",
    "pin_hash",
    "locale",
    "channel",
    "status",
    "outcome",
    "subjects_handled",
    "citizen_assisted_arrest",
    "created_at",
    "updated_at",
    "claimed_at",
    "acknowledged_at",
    "resolved_at",
)
STATUS_WEIGHTS = {
    "new": 5,
    "assigned": 5,
    "in_progress": 10,
    "needs_info": 3,
    "resolved": 70,
    "rejected": 7,
}


def _rows(
    count: int, units: list[str], begin: datetime, span: int, start: int
) -> list[tuple[Any, ...]]:
    """``count`` reports created within ``span`` seconds from ``begin``, in time order."""
    rng = random.Random(start)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    out = []
    for i in range(count):
        created = begin + timedelta(seconds=rng.randrange(span))
        emergency = rng.random() < 0.1
        status = rng.choices(statuses, weights)[0]
        if emergency and status not in ("new", "resolved"):
            status = "acknowledged"
        claimed = created + timedelta(minutes=rng.expovariate(1 / 40)) if status != "new" else None
        acked = created + timedelta(seconds=rng.expovariate(1 / 150)) if emergency else None
        resolved = status == "resolved"
        outcome = rng.choice(OUTCOMES) if resolved else None
        code = f"{start + i:010d}".translate(str.maketrans("0123456789", CODE_ALPHABET[:10]))
        out.append(
            (
                code,
                "emergency" if emergency else "tip",
                None if emergency else rng.choice(CATEGORIES),
                rng.choice(units),
                "unknown",
                "relay",
                "x",
                "vi",
                "telegram",
                status,
                outcome,
                rng.randrange(4) if resolved else None,
                (rng.random() < 0.05) if resolved else None,
                created,
                created,
                claimed,
                acked,
                created + timedelta(days=rng.randrange(1, 30)) if resolved else None,
            )
        )
    # Reports arrive in time order, so the table's physical order follows created_at.
    out.sort(key=lambda row: row[13])
    return out


async def seed(url: str, count: int, name: str = DB_NAME, years: int = 5) -> None:
    """``count`` reports spread evenly over the last ``years`` years."""
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
    now = datetime.now(UTC)
    connection = await asyncpg.connect(
        host=target.host,
        port=target.port,
        user=target.username,
        password=target.password,
        database=name,
    )
    try:
        for statement in drop_trigger_statements("postgresql"):
            await connection.execute(statement)
        started = time.perf_counter()
        batch = 100_000
        slices = max(1, -(-count // batch))
        span = years * 365 * 24 * 3600 // slices
        for index, offset in enumerate(range(0, count, batch)):
            begin = now - timedelta(days=years * 365) + timedelta(seconds=index * span)
            rows = _rows(min(batch, count - offset), units, begin, span, start=offset)
            await connection.copy_records_to_table("reports", records=rows, columns=COLUMNS)
        # The triggers keep the rollups row by row; for a bulk load, fill them once instead.
        await connection.execute("ANALYZE reports")
        fill_started = time.perf_counter()
        async with connection.transaction():
            for statement in fill("postgresql", DEFAULT_ZONE):
                await connection.execute(statement)
            for statement in trigger_statements("postgresql", DEFAULT_ZONE):
                await connection.execute(statement)
        await connection.execute("ANALYZE")
        print(f"rollups filled in {time.perf_counter() - fill_started:.1f} s")
        print(f"seeded {count:,} reports in {time.perf_counter() - started:.1f} s")
    finally:
        await connection.close()


async def timed(label: str, run: Callable[[], Awaitable[object]], repeat: int = 7) -> float:
    await run()  # warm the cache and the connection
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - started) * 1000)
    median = statistics.median(samples)
    print(f"{label:<44} median {median:7.1f} ms   max {max(samples):7.1f} ms")
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

    async with factory() as session:
        deep = (
            await session.execute(
                select(Report.created_at, Report.id)
                .order_by(Report.created_at.desc(), Report.id.desc())
                .offset(600_000)
                .limit(1)
            )
        ).one()
        total = await session.scalar(text("SELECT count(*) FROM reports"))
        unit = await session.scalar(text("SELECT unit_code FROM reports LIMIT 1"))
    print(f"{total:,} reports")
    last = period_months(current)[1]
    results = {
        "month_median_ms": await timed(
            f"month: page figures ({month.key})", lambda: period_stats(month)
        ),
        "year_median_ms": await timed(
            f"year: page figures ({year.key})", lambda: period_stats(year)
        ),
        "five_years_median_ms": await timed(
            "five years: figures", lambda: period_stats((shift(last, -59), last))
        ),
        "list_first_ms": await timed("list, first page (50)", lambda: page(None, ReportFilter())),
        "list_deep_ms": await timed(
            "list, page after 600,000 rows", lambda: page((deep[0], deep[1]), ReportFilter())
        ),
    }
    await timed(
        "list, first page, status+unit filter",
        lambda: page(None, ReportFilter(status="resolved", unit=unit)),
    )
    await engine.dispose()
    targets = {
        "month_median_ms": 200,
        "year_median_ms": 200,
        "five_years_median_ms": 200,
        "list_first_ms": 50,
        "list_deep_ms": 50,
    }
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
