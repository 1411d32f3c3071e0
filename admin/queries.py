"""Read-only queries behind the panel: statistics, the reports list and the audit log.

Periods are calendar months or years in the service's zone (``handlers.localtime``). The lists
use keyset pagination on ``(created_at, id)`` (index ``ix_reports_created_id``) and on the
event id, so a deep page costs the same as the first.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.localtime import local_midnight, local_zone
from storage.models import Report, ReportEvent, Reward
from storage.types import UTCDateTime, utcnow

EMERGENCY_CATEGORY = "accident"


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar month (``2025-07``) or year (``2025``) in local time."""

    year: int
    month: int | None = None

    @classmethod
    def parse(cls, text: str | None, *, today: date | None = None) -> Period:
        today = today or utcnow().astimezone(local_zone()).date()
        text = (text or "").strip()
        try:
            if len(text) == 4 and text.isdigit():
                return cls(int(text))
            if len(text) == 7 and text[4] == "-":
                year, month = int(text[:4]), int(text[5:])
                if 1 <= month <= 12:
                    return cls(year, month)
        except ValueError:
            pass
        return cls(today.year, today.month)

    @property
    def key(self) -> str:
        return f"{self.year:04d}" if self.month is None else f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month or 1, 1, tzinfo=local_zone()).astimezone(UTC)

    @property
    def end(self) -> datetime:
        if self.month is None or self.month == 12:
            return datetime(self.year + 1, 1, 1, tzinfo=local_zone()).astimezone(UTC)
        return datetime(self.year, self.month + 1, 1, tzinfo=local_zone()).astimezone(UTC)

    @property
    def label(self) -> str:
        return str(self.year) if self.month is None else f"{self.month:02d}/{self.year}"


def local_day_start(day: date) -> datetime:
    return local_midnight(day)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class Durations:
    """Seconds: count, median and 90th percentile (None without data)."""

    count: int
    median: float | None
    p90: float | None


@dataclass(slots=True)
class Stats:
    period: Period
    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    #: Tips by category; emergencies under ``accident``.
    by_category: dict[str, int] = field(default_factory=dict)
    #: Unit code (``""`` for none) → count.
    by_unit: dict[str, int] = field(default_factory=dict)
    claim: Durations = Durations(0, None, None)
    acknowledge: Durations = Durations(0, None, None)


@dataclass(slots=True)
class Summary:
    """The notice's figures for a period (by the resolution and payout dates)."""

    period: Period
    clarified: int = 0
    subjects_handled: int = 0
    assisted_arrests: dict[str, int] = field(default_factory=dict)
    rewards_paid: int = 0
    rewards_paid_vnd: int = 0


S = TypeVar("S", bound=Select)


def _where(stmt: S, scope: ColumnElement[bool] | None) -> S:
    return stmt if scope is None else stmt.where(scope)


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else ""


async def _durations_pg(
    session: AsyncSession,
    conditions: Sequence[ColumnElement[bool]],
    scope: ColumnElement[bool] | None,
) -> tuple[Durations, Durations]:
    """Claim and acknowledgement times in one scan (``percentile_cont`` skips NULLs)."""
    claim = func.extract("epoch", Report.claimed_at - Report.created_at)
    ack = case(
        (
            Report.kind == "emergency",
            func.extract("epoch", Report.acknowledged_at - Report.created_at),
        )
    )
    stmt = select(
        func.count(Report.claimed_at),
        func.percentile_cont(0.5).within_group(claim),
        func.percentile_cont(0.9).within_group(claim),
        func.count(ack),
        func.percentile_cont(0.5).within_group(ack),
        func.percentile_cont(0.9).within_group(ack),
    ).where(*conditions)
    row = (await session.execute(_where(stmt, scope))).one()

    def durations(count: Any, median: Any, p90: Any) -> Durations:
        return Durations(
            int(count or 0),
            float(median) if median is not None else None,
            float(p90) if p90 is not None else None,
        )

    return durations(*row[:3]), durations(*row[3:])


async def _durations(
    session: AsyncSession,
    start_col: Any,
    end_col: Any,
    conditions: Sequence[ColumnElement[bool]],
    scope: ColumnElement[bool] | None,
) -> Durations:
    """Elsewhere (SQLite): the seconds are fetched and ranked here."""
    seconds = (func.julianday(end_col) - func.julianday(start_col)) * 86400.0
    stmt = select(seconds).where(*conditions, end_col.is_not(None))
    values = sorted(float(v) for v in (await session.scalars(_where(stmt, scope))).all())
    if not values:
        return Durations(0, None, None)
    return Durations(len(values), statistics.median(values), _percentile(values, 0.9))


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks, as PostgreSQL's ``percentile_cont``."""
    position = (len(values) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


async def stats(session: AsyncSession, period: Period, scope: ColumnElement[bool] | None) -> Stats:
    """Reports received in ``period`` (by ``created_at``), by status, category and unit."""
    in_period = [Report.created_at >= period.start, Report.created_at < period.end]
    result = Stats(period)
    category = case(
        (Report.kind == "emergency", literal(EMERGENCY_CATEGORY)), else_=Report.category
    ).label("category")
    rows = (
        await session.execute(
            _where(
                select(Report.status, category, Report.unit_code, func.count())
                .where(*in_period)
                .group_by(Report.status, category, Report.unit_code),
                scope,
            )
        )
    ).all()
    for status, cat, unit, count in rows:
        n = int(count)
        result.total += n
        result.by_status[status] = result.by_status.get(status, 0) + n
        cat_key = cat or "other"
        result.by_category[cat_key] = result.by_category.get(cat_key, 0) + n
        unit_key = unit or ""
        result.by_unit[unit_key] = result.by_unit.get(unit_key, 0) + n
    if _dialect(session) == "postgresql":
        result.claim, result.acknowledge = await _durations_pg(session, in_period, scope)
        return result
    result.claim = await _durations(
        session, Report.created_at, Report.claimed_at, in_period, scope
    )
    result.acknowledge = await _durations(
        session,
        Report.created_at,
        Report.acknowledged_at,
        [*in_period, Report.kind == "emergency"],
        scope,
    )
    return result


async def summary(
    session: AsyncSession, period: Period, scope: ColumnElement[bool] | None
) -> Summary:
    """Cases clarified, subjects handled, assisted arrests by crime type and rewards paid."""
    result = Summary(period)
    resolved = [
        Report.status == "resolved",
        Report.resolved_at >= period.start,
        Report.resolved_at < period.end,
    ]
    rows = (
        await session.execute(
            _where(
                select(
                    Report.category,
                    func.count().filter(Report.outcome == "clarified"),
                    func.coalesce(func.sum(Report.subjects_handled), 0),
                    func.count().filter(Report.citizen_assisted_arrest.is_(True)),
                )
                .where(*resolved)
                .group_by(Report.category),
                scope,
            )
        )
    ).all()
    for category, clarified, subjects, arrests in rows:
        result.clarified += int(clarified or 0)
        result.subjects_handled += int(subjects or 0)
        if arrests:
            key = category or "other"
            result.assisted_arrests[key] = result.assisted_arrests.get(key, 0) + int(arrests)
    paid = select(func.count(), func.coalesce(func.sum(Reward.amount_vnd), 0)).where(
        Reward.status == "paid", Reward.paid_at >= period.start, Reward.paid_at < period.end
    )
    if scope is not None:
        paid = paid.join(Report, Report.id == Reward.report_id).where(scope)
    count, total = (await session.execute(paid)).one()
    result.rewards_paid, result.rewards_paid_vnd = int(count), int(total)
    return result


# --------------------------------------------------------------------------- reports list


@dataclass(frozen=True, slots=True)
class ReportFilter:
    status: str | None = None
    unit: str | None = None
    category: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    emergency: bool | None = None
    code: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.code:
            out.append(Report.code == self.code)
        if self.status:
            out.append(Report.status == self.status)
        if self.unit:
            out.append(Report.unit_code == self.unit)
        if self.category:
            out.append(Report.category == self.category)
        if self.emergency is not None:
            out.append(Report.kind == ("emergency" if self.emergency else "tip"))
        if self.date_from:
            out.append(Report.created_at >= local_day_start(self.date_from))
        if self.date_to:
            out.append(Report.created_at < local_day_start(self.date_to + timedelta(days=1)))
        return out


def encode_cursor(created_at: datetime, report_id: int) -> str:
    raw = f"{created_at.astimezone(UTC).isoformat()}|{report_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[datetime, int] | None:
    if not text or len(text) > 200:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        moment, _, ident = raw.partition("|")
        when = datetime.fromisoformat(moment)
        if when.tzinfo is None:
            return None
        return when, int(ident)
    except ValueError:
        return None


async def report_page(
    session: AsyncSession,
    filters: ReportFilter,
    scope: ColumnElement[bool] | None,
    *,
    after: tuple[datetime, int] | None,
    size: int,
) -> tuple[list[Report], str | None]:
    """Newest first; returns the page and the cursor of the next one (None at the end)."""
    stmt = select(Report).where(*filters.conditions())
    if after is not None:
        stmt = stmt.where(
            tuple_(Report.created_at, Report.id)
            < tuple_(literal(after[0], UTCDateTime()), literal(after[1]))
        )
    stmt = _where(stmt, scope).order_by(Report.created_at.desc(), Report.id.desc())
    rows = list((await session.scalars(stmt.limit(size + 1))).all())
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        return rows, encode_cursor(last.created_at, last.id)
    return rows, None


# --------------------------------------------------------------------------- audit log


@dataclass(frozen=True, slots=True)
class AuditFilter:
    action: str | None = None
    actor_id: int | None = None
    actor_kind: str | None = None
    code: str | None = None
    date_from: date | None = None
    date_to: date | None = None


async def audit_page(
    session: AsyncSession,
    filters: AuditFilter,
    scope: ColumnElement[bool] | None,
    *,
    before_id: int | None,
    size: int,
) -> tuple[list[tuple[ReportEvent, str]], int | None]:
    """Events newest first, each with its report's code; the next page's ``before_id``."""
    stmt = select(ReportEvent, Report.code).join(Report, Report.id == ReportEvent.report_id)
    conditions: list[ColumnElement[bool]] = []
    if filters.action:
        conditions.append(ReportEvent.action == filters.action)
    if filters.actor_id is not None:
        conditions.append(ReportEvent.actor_id == filters.actor_id)
    if filters.actor_kind:
        conditions.append(ReportEvent.actor_kind == filters.actor_kind)
    if filters.code:
        conditions.append(Report.code == filters.code)
    if filters.date_from:
        conditions.append(ReportEvent.at >= local_day_start(filters.date_from))
    if filters.date_to:
        conditions.append(ReportEvent.at < local_day_start(filters.date_to + timedelta(days=1)))
    if before_id is not None:
        conditions.append(ReportEvent.id < before_id)
    if conditions:
        stmt = stmt.where(and_(*conditions))
    stmt = _where(stmt, scope).order_by(ReportEvent.id.desc()).limit(size + 1)
    rows = [(event, code) for event, code in (await session.execute(stmt)).all()]
    if len(rows) > size:
        rows = rows[:size]
        return rows, rows[-1][0].id
    return rows, None
