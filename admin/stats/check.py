"""A recount of the statistics rollups from the reports themselves, in Python.

Independent of the SQL that keeps the rollups (:mod:`storage.stats_rollup`): the tests compare
the two after every kind of change, and an operator can run it against a live database.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.localtime import to_local
from storage.models import Report, stats_received_daily, stats_resolved_daily
from storage.stats_rollup import BUCKET_EDGES, DIMS, MEASURES, OUTCOMES, PERIOD, STATUSES

from .queries import RECEIVED, RESOLVED

Key = tuple[object, ...]


def local_month(moment: datetime) -> int:
    local = to_local(moment)
    return local.year * 100 + local.month


def local_day(moment: datetime) -> int:
    local = to_local(moment)
    return (local.year * 100 + local.month) * 100 + local.day


def bucket_of(seconds: float) -> int:
    return bisect_right(BUCKET_EDGES, seconds)


async def recount(session: AsyncSession) -> dict[str, Counter[Key]]:
    """What each rollup table should hold, as (period, unit, queue, kind, category, column) →
    count (zero counts left out; the period is ``yyyymm``, ``yyyy00`` for a whole year's row,
    or ``yyyymmdd`` in a daily table), counted from ``reports`` in the configured zone
    (:mod:`handlers.localtime`)."""
    out: dict[str, Counter[Key]] = {table: Counter() for table in MEASURES}
    received, resolved = out["stats_received"], out["stats_resolved"]
    received_daily, resolved_daily = out["stats_received_daily"], out["stats_resolved_daily"]
    rows = await session.stream(select(Report).execution_options(yield_per=5000))
    async for (report,) in rows:
        dims = (
            report.unit_code or "",
            report.queue_key or "",
            report.kind,
            report.category or "",
        )
        key: Key = (local_month(report.created_at), *dims)
        day: Key = (local_day(report.created_at), *dims)
        received[(*key, "reports")] += 1
        received_daily[(*day, "reports")] += 1
        if report.status in STATUSES:
            received[(*key, f"st_{report.status}")] += 1
            received_daily[(*day, f"st_{report.status}")] += 1
        for measure, end in (("claim", report.claimed_at), ("ack", report.acknowledged_at)):
            if end is None or (measure == "ack" and report.kind != "emergency"):
                continue
            seconds = (end - report.created_at).total_seconds()
            received[(*key, f"{measure}_{bucket_of(seconds)}")] += 1
        if report.status == "resolved" and report.resolved_at is not None:
            for counter, period in (
                (resolved, local_month(report.resolved_at)),
                (resolved_daily, local_day(report.resolved_at)),
            ):
                counter[(period, *dims, "reports")] += 1
                counter[(period, *dims, "subjects")] += report.subjects_handled or 0
                counter[(period, *dims, "assisted")] += 1 if report.citizen_assisted_arrest else 0
                if report.outcome in OUTCOMES:
                    counter[(period, *dims, f"oc_{report.outcome}")] += 1
    for table, counter in out.items():
        if PERIOD[table] == "month":  # every month counts again in its year's row (yyyy00)
            for key, value in list(counter.items()):
                month = int(key[0])  # type: ignore[call-overload]
                counter[(month // 100 * 100, *key[1:])] += value
        for zero in [k for k, v in counter.items() if v == 0]:
            del counter[zero]
    return out


async def stored(session: AsyncSession) -> dict[str, Counter[Key]]:
    """The rollups as stored, in the shape of :func:`recount` (zero counts left out)."""
    out: dict[str, Counter[Key]] = {}
    for table in (RECEIVED, RESOLVED, stats_received_daily, stats_resolved_daily):
        measures = MEASURES[table.name]
        keys = [table.c[name] for name in (PERIOD[table.name], *DIMS)]
        counter: Counter[Key] = Counter()
        for row in await session.execute(select(*keys, *(table.c[m] for m in measures))):
            values = tuple(row)
            for offset, measure in enumerate(measures):
                value = int(values[len(keys) + offset])
                if value:
                    counter[(*values[: len(keys)], measure)] += value
        out[table.name] = counter
    return out


async def differences(session: AsyncSession) -> dict[str, dict[Key, tuple[int, int]]]:
    """Per table: key → (stored, recounted), for every key where they disagree."""
    expected = await recount(session)
    actual = await stored(session)
    out: dict[str, dict[Key, tuple[int, int]]] = {}
    for table, counter in expected.items():
        have = actual.get(table, Counter())
        wrong = {
            key: (have.get(key, 0), counter.get(key, 0))
            for key in set(counter) | set(have)
            if have.get(key, 0) != counter.get(key, 0)
        }
        if wrong:
            out[table] = wrong
    return out
