"""Statistics read from the rollups (``stats_*``, kept by triggers, :mod:`storage.stats_rollup`).

A period is a range of local calendar months (``yyyymm``), read from the monthly and yearly rows;
a view by day (the month by day) reads the daily rows (``yyyymmdd``). The viewer's scope and the
page's filters are conditions on :class:`~storage.models.Report` columns, as everywhere in the
panel; they are rewritten onto the rollup's columns (an absent unit, queue or category is ``''``
there). Nothing here reads ``reports``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import visitors
from sqlalchemy.sql.schema import Column

from admin.queries import Period
from storage.models import Report, stats_received, stats_received_daily, stats_resolved
from storage.stats_rollup import (
    ACK_COLUMNS,
    BUCKET_EDGES,
    CLAIM_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOMES,
    STATUS_COLUMNS,
    STATUSES,
)

RECEIVED: Table = stats_received
RESOLVED: Table = stats_resolved
RECEIVED_DAILY: Table = stats_received_daily
NULLABLE = ("unit_code", "queue_key", "category")


class UnsupportedScope(ValueError):
    """A condition on a report column the rollups do not keep."""


# --------------------------------------------------------------------------- months


def month_key(year: int, month: int) -> int:
    return year * 100 + month


def shift(key: int, months: int) -> int:
    index = (key // 100) * 12 + (key % 100 - 1) + months
    return month_key(index // 12, index % 12 + 1)


def months_between(first: int, last: int) -> list[int]:
    out, key = [], first
    while key <= last:
        out.append(key)
        key = shift(key, 1)
    return out


def month_keys(first: int, last: int) -> list[int]:
    """The rollup keys covering the months ``first``..``last``: ``yyyy00`` for each whole
    calendar year inside, ``yyyymm`` for the months around them."""
    keys: list[int] = []
    key = first
    while key <= last:
        if key % 100 == 1 and key + 11 <= last:
            keys.append(key - 1)  # yyyy00: the whole year
            key = shift(key, 12)
        else:
            keys.append(key)
            key = shift(key, 1)
    return keys


def months_only(column: Any, first: int, last: int) -> ColumnElement[bool]:
    """``column`` within ``first``..``last``, monthly rows only (not the yearly ``yyyy00``)."""
    return and_(column >= first, column <= last, column % 100 != 0)


def period_months(period: Period) -> tuple[int, int]:
    if period.month is None:
        return month_key(period.year, 1), month_key(period.year, 12)
    key = month_key(period.year, period.month)
    return key, key


def previous(period: Period) -> Period:
    if period.month is None:
        return Period(period.year - 1)
    key = shift(month_key(period.year, period.month), -1)
    return Period(key // 100, key % 100)


def year_before(period: Period) -> Period:
    return Period(period.year - 1, period.month)


# --------------------------------------------------------------------------- conditions


def adapt(condition: ColumnElement[bool] | None, table: Table) -> ColumnElement[bool]:
    """``condition`` on reports rewritten onto ``table`` (TRUE for None)."""
    if condition is None:
        return true()
    source = Report.__table__

    def replace(element: Any) -> Any:
        if isinstance(element, Column) and element.table is source:
            name = element.name
            if name not in table.c:
                raise UnsupportedScope(name)
            column = table.c[name]
            return func.nullif(column, "") if name in NULLABLE else column
        return None

    traverse: Any = visitors.replacement_traverse
    adapted: Any = traverse(condition, {}, replace)
    result: ColumnElement[bool] = adapted
    return result


def combine(*conditions: ColumnElement[bool] | None) -> ColumnElement[bool] | None:
    present = [c for c in conditions if c is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else and_(*present)


# --------------------------------------------------------------------------- figures


@dataclass(slots=True)
class Figures:
    """One period's counts (received by arrival; the notice's figures by resolution)."""

    received: int = 0
    emergencies: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    by_unit: dict[str, int] = field(default_factory=dict)
    resolved: int = 0
    clarified: int = 0
    handled: int = 0
    subjects: int = 0
    assisted: int = 0
    assisted_by_category: dict[str, int] = field(default_factory=dict)
    claim_median: float | None = None
    claim_p90: float | None = None
    claim_count: int = 0
    ack_median: float | None = None
    ack_p90: float | None = None
    ack_count: int = 0


def category_key(kind: str, category: str) -> str:
    return "accident" if kind == "emergency" else (category or "other")


async def figures(
    session: AsyncSession, months: tuple[int, int], where: ColumnElement[bool] | None
) -> Figures:
    """Everything the page and the report show for ``months``, from the rollup rows of its
    months and whole years (about a thousand rows a key): small grouped reads, so that little
    crosses the wire (by unit; by kind and category, with the statuses; the claim histogram; the
    acknowledgement histogram, emergencies' rows only; the resolutions by kind and category)."""
    first, last = months
    keys = month_keys(first, last)
    out = Figures()
    r = RECEIVED.c
    received = and_(r.month.in_(keys), adapt(where, RECEIVED))
    for unit, count in await session.execute(
        select(r.unit_code, func.sum(r.reports)).where(received).group_by(r.unit_code)
    ):
        if count:
            out.by_unit[unit] = int(count)
    rows = await session.execute(
        select(r.kind, r.category, func.sum(r.reports), *(func.sum(r[c]) for c in STATUS_COLUMNS))
        .where(received)
        .group_by(r.kind, r.category)
    )
    for kind, category, count, *statuses in rows:
        n = int(count or 0)
        if not n:
            continue
        out.received += n
        if kind == "emergency":
            out.emergencies += n
        for status, m in zip(STATUSES, statuses, strict=True):
            if m:
                _add(out.by_status, status, int(m))
        _add(out.by_category, category_key(kind, category), n)
    claim = (
        await session.execute(select(*(func.sum(r[c]) for c in CLAIM_COLUMNS)).where(received))
    ).one()
    ack = (
        await session.execute(
            select(*(func.sum(r[c]) for c in ACK_COLUMNS)).where(received, r.kind == "emergency")
        )
    ).one()
    s = RESOLVED.c
    resolved_rows = await session.execute(
        select(
            s.kind,
            s.category,
            func.sum(s.reports),
            func.sum(s.subjects),
            func.sum(s.assisted),
            *(func.sum(s[c]) for c in OUTCOME_COLUMNS),
        )
        .where(s.month.in_(keys), adapt(where, RESOLVED))
        .group_by(s.kind, s.category)
    )
    for kind, category, count, subjects, assisted, *outcomes in resolved_rows:
        out.resolved += int(count or 0)
        out.subjects += int(subjects or 0)
        by_outcome = dict(zip(OUTCOMES, outcomes, strict=True))
        out.clarified += int(by_outcome["clarified"] or 0)
        out.handled += int(by_outcome["handled"] or 0)
        if assisted:
            out.assisted += int(assisted)
            _add(out.assisted_by_category, category_key(kind, category), int(assisted))
    claims = {i: int(n or 0) for i, n in enumerate(claim)}
    acks = {i: int(n or 0) for i, n in enumerate(ack)}
    out.claim_count, out.claim_median = median_of(claims)
    out.claim_p90 = quantile_of(claims, 0.9)[1]
    out.ack_count, out.ack_median = median_of(acks)
    out.ack_p90 = quantile_of(acks, 0.9)[1]
    return out


def _add(target: dict[str, int], key: str, n: int) -> None:
    target[key] = target.get(key, 0) + n


def bucket_bounds(bucket: int) -> tuple[float, float]:
    low = 0.0 if bucket == 0 else float(BUCKET_EDGES[bucket - 1])
    high = float(BUCKET_EDGES[bucket]) if bucket < len(BUCKET_EDGES) else low
    return low, high


def quantile_of(histogram: dict[int, int], fraction: float) -> tuple[int, float | None]:
    """Count and the ``fraction`` quantile, interpolated within the bucket that holds it."""
    total = sum(histogram.values())
    if total <= 0:
        return 0, None
    rank = total * fraction
    seen = 0
    for bucket in sorted(histogram):
        count = histogram[bucket]
        if count <= 0:
            continue
        if seen + count >= rank:
            low, high = bucket_bounds(bucket)
            return total, low + (high - low) * (rank - seen) / count
        seen += count
    return total, bucket_bounds(max(histogram))[0]


def median_of(histogram: dict[int, int]) -> tuple[int, float | None]:
    """Count and median, interpolated within the bucket that holds the middle."""
    return quantile_of(histogram, 0.5)


# --------------------------------------------------------------------------- series


@dataclass(slots=True)
class Series:
    months: list[int]
    #: (kind or category key) → one count per month
    by_kind: dict[str, list[int]]
    by_category: dict[str, list[int]]


async def monthly_series(
    session: AsyncSession, last: int, count: int, where: ColumnElement[bool] | None
) -> Series:
    first = shift(last, -(count - 1))
    months = months_between(first, last)
    index = {m: i for i, m in enumerate(months)}
    r = RECEIVED.c
    rows = await session.execute(
        select(r.month, r.kind, r.category, func.sum(r.reports))
        .where(months_only(r.month, first, last), adapt(where, RECEIVED))
        .group_by(r.month, r.kind, r.category)
    )
    by_kind: dict[str, list[int]] = {"tip": [0] * count, "emergency": [0] * count}
    by_category: dict[str, list[int]] = {}
    for month, kind, category, n in rows:
        i = index[int(month)]
        by_kind.setdefault(kind, [0] * count)[i] += int(n or 0)
        by_category.setdefault(category_key(kind, category), [0] * count)[i] += int(n or 0)
    return Series(months, by_kind, by_category)


async def unit_months(
    session: AsyncSession, first: int, last: int, where: ColumnElement[bool] | None
) -> dict[str, dict[int, int]]:
    """Reports per unit and month (for the movers)."""
    r = RECEIVED.c
    rows = await session.execute(
        select(r.unit_code, r.month, func.sum(r.reports))
        .where(months_only(r.month, first, last), adapt(where, RECEIVED))
        .group_by(r.unit_code, r.month)
    )
    out: dict[str, dict[int, int]] = {}
    for unit, month, n in rows:
        out.setdefault(unit, {})[int(month)] = int(n or 0)
    return out


async def daily(
    session: AsyncSession, period: Period, where: ColumnElement[bool] | None
) -> list[tuple[date, int]]:
    """Reports per local day of a month, from the daily rollup (every day, zeros included)."""
    assert period.month is not None
    first = date(period.year, period.month, 1)
    following = date(period.year + period.month // 12, period.month % 12 + 1, 1)
    days = (following - first).days
    base = month_key(period.year, period.month) * 100
    d = RECEIVED_DAILY.c
    rows = await session.execute(
        select(d.day, func.sum(d.reports))
        .where(d.day > base, d.day <= base + days, adapt(where, RECEIVED_DAILY))
        .group_by(d.day)
    )
    counts = {int(day) - base: int(n or 0) for day, n in rows}
    return [(date(period.year, period.month, i), counts.get(i, 0)) for i in range(1, days + 1)]


def growth(now: int | float | None, before: int | float | None) -> float | None:
    """Change in per cent; None when there is nothing to compare with."""
    if now is None or before is None or before == 0:
        return None
    return (float(now) - float(before)) * 100.0 / float(before)
