"""The statistics rollups agree with a recount from the reports after every kind of change,
and the figures read from them equal a direct count, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin.queries import Period, summary
from admin.queries import stats as direct_stats
from admin.stats.check import differences
from admin.stats.queries import (
    Figures,
    adapt,
    daily,
    figures,
    month_keys,
    monthly_series,
    period_months,
)
from config.catalogue import load_catalogue
from storage.models import Report, stats_received
from storage.repositories import Units
from storage.stats_rollup import rebuild_statements

Factory = async_sessionmaker[AsyncSession]
# 16:59:59 UTC on 31 January is still January in Vietnam; 17:00:00 is 1 February.
END_OF_JANUARY = datetime(2025, 1, 31, 16, 59, 59, tzinfo=UTC)
START_OF_FEBRUARY = datetime(2025, 1, 31, 17, 0, 0, tzinfo=UTC)


def _report(code: str, created: datetime, **values: object) -> Report:
    fields: dict[str, object] = {
        "kind": "tip",
        "category": "theft",
        "unit_code": None,
        "contact_mode": "relay",
        "pin_hash": "x",
        "locale": "vi",
        "channel": "telegram",
        "status": "new",
    }
    fields.update(values)
    return Report(code=code, created_at=created, updated_at=created, **fields)


async def _units(session_factory: Factory) -> list[str]:
    catalogue = load_catalogue()
    async with session_factory() as db, db.begin():
        await Units(db).sync(catalogue)
    return [u.code for u in catalogue.units[:3]]


async def _seed(session_factory: Factory, units: list[str]) -> dict[str, int]:
    a, b, _ = units
    rows = [
        _report("JAN1", END_OF_JANUARY, unit_code=a),
        _report("FEB1", START_OF_FEBRUARY, unit_code=a, category="robbery"),
        _report("FEB2", START_OF_FEBRUARY + timedelta(days=3), unit_code=b),
        _report("FEB3", START_OF_FEBRUARY + timedelta(days=4), kind="emergency", category=None),
        _report("FEB4", START_OF_FEBRUARY + timedelta(days=5), unit_code=b, category="drugs"),
        _report("MAR1", START_OF_FEBRUARY + timedelta(days=30), unit_code=a),
    ]
    async with session_factory() as db, db.begin():
        db.add_all(rows)
    return {r.code: r.id for r in rows}


async def _change(session_factory: Factory, report_id: int, **values: object) -> None:
    async with session_factory() as db, db.begin():
        report = await db.get(Report, report_id)
        assert report is not None
        for key, value in values.items():
            setattr(report, key, value)


async def _assert_agrees(session_factory: Factory) -> None:
    async with session_factory() as db:
        assert await differences(db) == {}


async def test_rollups_follow_every_change(session_factory: Factory) -> None:
    units = await _units(session_factory)
    ids = await _seed(session_factory, units)
    await _assert_agrees(session_factory)
    feb = START_OF_FEBRUARY + timedelta(days=6)
    # claim, acknowledge, in progress
    await _change(session_factory, ids["FEB1"], status="assigned", claimed_at=feb)
    await _change(
        session_factory, ids["FEB3"], status="acknowledged", acknowledged_at=feb, claimed_at=feb
    )
    await _change(session_factory, ids["FEB1"], status="in_progress")
    await _assert_agrees(session_factory)
    # resolve with an arrest; resolve across the month's end; reopen
    await _change(
        session_factory,
        ids["FEB1"],
        status="resolved",
        outcome="clarified",
        subjects_handled=3,
        citizen_assisted_arrest=True,
        resolved_at=START_OF_FEBRUARY + timedelta(days=28),
    )
    await _change(
        session_factory,
        ids["JAN1"],
        status="resolved",
        outcome="handled",
        subjects_handled=1,
        resolved_at=END_OF_JANUARY + timedelta(seconds=2),
    )
    await _assert_agrees(session_factory)
    await _change(session_factory, ids["JAN1"], status="in_progress")
    await _assert_agrees(session_factory)
    # transfer to another queue and another unit; a duplicate
    await _change(session_factory, ids["FEB2"], queue_key="qa", unit_code=units[2])
    await _change(
        session_factory,
        ids["FEB4"],
        status="resolved",
        outcome="duplicate",
        duplicate_of_id=ids["FEB2"],
        resolved_at=feb,
    )
    await _assert_agrees(session_factory)
    # a bulk statement, and deletion by retention
    async with session_factory() as db, db.begin():
        await db.execute(
            update(Report).where(Report.code == "MAR1").values(status="rejected", queue_key="qb")
        )
        await db.execute(delete(Report).where(Report.code == "FEB3"))
    await _assert_agrees(session_factory)
    # a rolled-back change leaves nothing behind
    async with session_factory() as db, db.begin():
        await db.execute(update(Report).values(status="new"))
        await db.rollback()
    await _assert_agrees(session_factory)
    # and a rebuild gives the same tables
    async with session_factory() as db, db.begin():
        dialect = db.get_bind().dialect.name
        for statement in rebuild_statements(dialect):
            await db.execute(text(statement))
    await _assert_agrees(session_factory)


def _same_counts(rolled: Figures, stats_: object, notice: object) -> None:
    assert rolled.received == stats_.total  # type: ignore[attr-defined]
    assert rolled.by_status == stats_.by_status  # type: ignore[attr-defined]
    assert rolled.by_category == stats_.by_category  # type: ignore[attr-defined]
    assert rolled.by_unit == stats_.by_unit  # type: ignore[attr-defined]
    assert rolled.clarified == notice.clarified  # type: ignore[attr-defined]
    assert rolled.subjects == notice.subjects_handled  # type: ignore[attr-defined]
    assert rolled.assisted_by_category == notice.assisted_arrests  # type: ignore[attr-defined]


async def test_figures_equal_a_direct_count(session_factory: Factory) -> None:
    units = await _units(session_factory)
    ids = await _seed(session_factory, units)
    claimed = START_OF_FEBRUARY + timedelta(days=3, minutes=25)
    await _change(session_factory, ids["FEB2"], status="assigned", claimed_at=claimed)
    await _change(
        session_factory,
        ids["FEB1"],
        status="resolved",
        outcome="clarified",
        subjects_handled=2,
        citizen_assisted_arrest=True,
        claimed_at=START_OF_FEBRUARY + timedelta(minutes=5),
        resolved_at=START_OF_FEBRUARY + timedelta(days=2),
    )
    for period in (Period(2025, 1), Period(2025, 2), Period(2025, 3), Period(2025)):
        async with session_factory() as db:
            rolled = await figures(db, period_months(period), None)
            _same_counts(
                rolled, await direct_stats(db, period, None), await summary(db, period, None)
            )
    # The viewer's scope (a condition on reports) is applied to the rollups the same way.
    scope = Report.unit_code == units[0]
    async with session_factory() as db:
        rolled = await figures(db, period_months(Period(2025)), scope)
        direct = await direct_stats(db, Period(2025), scope)
        assert rolled.received == direct.total == 3
        feb = await figures(db, period_months(Period(2025, 2)), None)
        assert feb.emergencies == 1 and feb.claim_count == 2
        # 5 and 25 minutes: the median lies between, within the buckets' resolution.
        assert feb.claim_median is not None and 300 <= feb.claim_median <= 1800
        series = await monthly_series(db, 202503, 24, None)
        assert series.months[-1] == 202503 and len(series.months) == 24
        assert series.by_kind["tip"][-3:] == [1, 3, 1]
        assert series.by_kind["emergency"][-2] == 1
        days = await daily(db, Period(2025, 2), None)
        assert len(days) == 28 and days[0][1] == 1 and sum(n for _, n in days) == 4
        assert sum(n for _, n in await daily(db, Period(2025, 1), None)) == 1
        count = await db.scalar(
            select(func.sum(stats_received.c.reports)).where(
                adapt(Report.queue_key.is_(None), stats_received),
                stats_received.c.month % 100 != 0,  # the monthly rows, not the yearly ones
            )
        )
        assert count == 6


def test_month_keys_read_whole_years_from_their_yearly_rows() -> None:
    assert month_keys(202506, 202506) == [202506]
    assert month_keys(202501, 202512) == [202500]
    assert month_keys(202112, 202611) == [
        202112, 202200, 202300, 202400, 202500, *range(202601, 202612)
    ]  # fmt: skip
    assert month_keys(202502, 202601) == [*range(202502, 202513), 202601]


async def test_a_range_across_years_equals_the_sum_of_its_months(session_factory: Factory) -> None:
    units = await _units(session_factory)
    await _seed(session_factory, units)
    async with session_factory() as db:
        whole = await figures(db, (202412, 202603), None)
        months = [await figures(db, (m, m), None) for m in (202412, 202501, 202502, 202503)]
        assert whole.received == sum(m.received for m in months) == 6
        assert whole.by_unit == direct_total_by_unit(months)


def direct_total_by_unit(parts: list[Figures]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for unit, n in part.by_unit.items():
            out[unit] = out.get(unit, 0) + n
    return out


async def test_the_days_of_a_month_follow_the_configured_zone(session_factory: Factory) -> None:
    """``daily`` reads the local day in ``TINBAO_TIMEZONE``, not a hard-coded Vietnam."""
    from handlers import localtime

    # 15:30 UTC on 31 March: 22:30 on the 31st in Vietnam, 00:30 on 1 April in Tokyo.
    async with session_factory() as db, db.begin():
        db.add(_report("TOKYO1", datetime(2025, 3, 31, 15, 30, tzinfo=UTC)))
    localtime.configure("Asia/Tokyo")
    try:
        async with session_factory() as db:
            days = await daily(db, Period(2025, 4), None)
    finally:
        localtime.configure(localtime.DEFAULT_TIMEZONE)
    assert days[0] == (datetime(2025, 4, 1).date(), 1)
    async with session_factory() as db:
        march = await daily(db, Period(2025, 3), None)
    assert march[-1][1] == 1 and sum(n for _, n in march) == 1
