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
from storage.stats_rollup import BUCKET_EDGES

from .queries import DURATIONS, RECEIVED, RESOLVED

Key = tuple[object, ...]
DIMENSIONS = ("month", "unit_code", "queue_key", "kind", "category")


def local_month(moment: datetime) -> int:
    local = to_local(moment)
    return local.year * 100 + local.month


def bucket_of(seconds: float) -> int:
    return bisect_right(BUCKET_EDGES, seconds)


async def recount(session: AsyncSession) -> dict[str, Counter[Key]]:
    """What each rollup table should hold (zero rows left out), counted from ``reports``."""
    out: dict[str, Counter[Key]] = {
        "stats_received": Counter(),
        "stats_resolved": Counter(),
        "stats_durations": Counter(),
    }
    rows = await session.stream(select(Report).execution_options(yield_per=5000))
    async for (report,) in rows:
        dims = (
            report.unit_code or "",
            report.queue_key or "",
            report.kind,
            report.category or "",
        )
        month = local_month(report.created_at)
        out["stats_received"][(month, *dims, report.status, "reports")] += 1
        if report.status == "resolved" and report.resolved_at is not None:
            key: Key = (
                local_month(report.resolved_at),
                *dims,
                report.outcome or "",
                1 if report.citizen_assisted_arrest else 0,
            )
            out["stats_resolved"][(*key, "reports")] += 1
            out["stats_resolved"][(*key, "subjects")] += report.subjects_handled or 0
        for measure, end in (("claim", report.claimed_at), ("ack", report.acknowledged_at)):
            if end is None or (measure == "ack" and report.kind != "emergency"):
                continue
            seconds = (end - report.created_at).total_seconds()
            key = (month, *dims, measure, bucket_of(seconds), "reports")
            out["stats_durations"][key] += 1
    for counter in out.values():
        for key in [k for k, v in counter.items() if v == 0]:
            del counter[key]
    return out


async def stored(session: AsyncSession) -> dict[str, Counter[Key]]:
    """The rollups as stored (zero rows left out)."""
    out: dict[str, Counter[Key]] = {}
    extra = {"stats_received": ["status"], "stats_resolved": ["outcome", "assisted"]}
    for table in (RECEIVED, RESOLVED, DURATIONS):
        measures = [c for c in ("reports", "subjects") if c in table.c]
        names = [*DIMENSIONS, *extra.get(table.name, ["measure", "bucket"])]
        keys = [table.c[name] for name in names]
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
