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
from storage.models import Report
from storage.stats_rollup import BUCKET_EDGES, DIMENSIONS, MEASURES, OUTCOMES, STATUSES

from .queries import RECEIVED, RESOLVED

Key = tuple[object, ...]


def local_month(moment: datetime) -> int:
    local = to_local(moment)
    return local.year * 100 + local.month


def bucket_of(seconds: float) -> int:
    return bisect_right(BUCKET_EDGES, seconds)


async def recount(session: AsyncSession) -> dict[str, Counter[Key]]:
    """What each rollup table should hold, as (month, unit, queue, kind, category, column) →
    count (zero counts left out; ``month`` is ``yyyy00`` for a whole year's row), counted from
    ``reports``."""
    out: dict[str, Counter[Key]] = {table: Counter() for table in MEASURES}
    received, resolved = out["stats_received"], out["stats_resolved"]
    rows = await session.stream(select(Report).execution_options(yield_per=5000))
    async for (report,) in rows:
        dims = (
            report.unit_code or "",
            report.queue_key or "",
            report.kind,
            report.category or "",
        )
        key: Key = (local_month(report.created_at), *dims)
        received[(*key, "reports")] += 1
        if report.status in STATUSES:
            received[(*key, f"st_{report.status}")] += 1
        for measure, end in (("claim", report.claimed_at), ("ack", report.acknowledged_at)):
            if end is None or (measure == "ack" and report.kind != "emergency"):
                continue
            seconds = (end - report.created_at).total_seconds()
            received[(*key, f"{measure}_{bucket_of(seconds)}")] += 1
        if report.status == "resolved" and report.resolved_at is not None:
            key = (local_month(report.resolved_at), *dims)
            resolved[(*key, "reports")] += 1
            resolved[(*key, "subjects")] += report.subjects_handled or 0
            resolved[(*key, "assisted")] += 1 if report.citizen_assisted_arrest else 0
            if report.outcome in OUTCOMES:
                resolved[(*key, f"oc_{report.outcome}")] += 1
    for counter in out.values():
        # Every month counts again in its year's row (yyyy00).
        for key, value in list(counter.items()):
            month = int(key[0])  # type: ignore[call-overload]
            counter[(month // 100 * 100, *key[1:])] += value
        for zero in [k for k, v in counter.items() if v == 0]:
            del counter[zero]
    return out


async def stored(session: AsyncSession) -> dict[str, Counter[Key]]:
    """The rollups as stored, in the shape of :func:`recount` (zero counts left out)."""
    out: dict[str, Counter[Key]] = {}
    for table in (RECEIVED, RESOLVED):
        measures = MEASURES[table.name]
        keys = [table.c[name] for name in DIMENSIONS]
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
