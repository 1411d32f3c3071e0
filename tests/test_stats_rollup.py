"""The statistics rollups agree with a recount from the reports after every kind of change,
and the figures read from them equal a direct count, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from admin.queries import Period, summary
from admin.queries import stats as direct_stats
from admin.stats.check import differences, stored
from admin.stats.maintenance import rollup_zone, stored_zone, sync_zone
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
from handlers import localtime
from handlers.retention import RetentionPolicy, apply_retention
from storage.db import create_session_factory
from storage.models import Report, ReportEvent, stats_received
from storage.repositories import Units
from storage.stats_rollup import DEFAULT_ZONE, rebuild_statements

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
    # the retention run redacts closed reports' texts (no counted column): nothing moves
    async with session_factory() as db, db.begin():
        db.add(
            ReportEvent(
                report_id=ids["FEB1"],
                at=datetime(2025, 3, 1, tzinfo=UTC),
                actor_kind="system",
                action="resolved",
                to_status="resolved",
            )
        )
        await db.execute(update(Report).values(description="chi tiết"))
    async with session_factory() as db:
        before = await stored(db)
    policy = RetentionPolicy.from_days(route_days=0, evidence_days=0, text_years=1, audit_days=0)
    async with session_factory() as db, db.begin():
        done = await apply_retention(db, policy, now=datetime(2027, 1, 1, tzinfo=UTC))
    assert done.texts == 1
    async with session_factory() as db:
        assert await stored(db) == before
    await _assert_agrees(session_factory)
    # a rolled-back change leaves nothing behind
    async with session_factory() as db, db.begin():
        await db.execute(update(Report).values(status="new"))
        await db.rollback()
    await _assert_agrees(session_factory)
    # and a rebuild gives the same tables
    async with session_factory() as db, db.begin():
        dialect = db.get_bind().dialect.name
        for statement in rebuild_statements(dialect, DEFAULT_ZONE):
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


async def _rezoned(engine: AsyncEngine, name: str) -> bool:
    """The service's start with ``TINBAO_TIMEZONE=name``: the rollups follow, and so does
    everything shown (:mod:`handlers.localtime`)."""
    localtime.configure(name)
    return await sync_zone(engine, name)


@pytest.fixture
def _zone_restored() -> Iterator[None]:
    yield
    localtime.configure(localtime.DEFAULT_TIMEZONE)


@pytest.mark.usefixtures("_zone_restored")
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
async def test_the_rollups_count_in_the_configured_zone(engine: AsyncEngine, zone: str) -> None:
    """With another TINBAO_TIMEZONE the start re-creates the triggers and rebuilds: the rollups
    (months, years and days) equal a recount in that zone, before and after changes, and the
    month by day counts that zone's days. Kolkata is +05:30: minutes, not hours."""
    factory = create_session_factory(engine)
    units = await _units(factory)
    ids = await _seed(factory, units)
    # 18:45 UTC on 31 March is 01:45 on 1 April in Vietnam and 00:15 on 1 April in Kolkata,
    # still 31 March in UTC; 23:59 UTC on 31 December 2024 is 2025 everywhere east of UTC.
    async with factory() as db, db.begin():
        db.add(_report("EDGE1", datetime(2025, 3, 31, 18, 45, tzinfo=UTC), unit_code=units[1]))
        db.add(_report("EDGE2", datetime(2024, 12, 31, 23, 59, tzinfo=UTC), kind="emergency"))
    async with factory() as db:  # before: Vietnam's days
        assert (await daily(db, Period(2025, 4), None))[0][1] == 1
    assert await _rezoned(engine, zone) is True
    assert await sync_zone(engine, zone) is False  # already counting there: nothing to do
    async with factory() as db:
        assert await stored_zone(db) == rollup_zone(zone)
        assert await differences(db) == {}
    # The triggers count in the new zone too.
    await _change(
        factory,
        ids["FEB1"],
        status="resolved",
        outcome="clarified",
        subjects_handled=2,
        resolved_at=datetime(2025, 2, 28, 18, 0, tzinfo=UTC),  # 1 March in Vietnam only
    )
    await _change(factory, ids["JAN1"], unit_code=units[2], claimed_at=START_OF_FEBRUARY)
    async with factory() as db, db.begin():
        await db.execute(delete(Report).where(Report.code == "FEB2"))
    async with factory() as db:
        assert await differences(db) == {}
        march = await daily(db, Period(2025, 3), None)
        april = await daily(db, Period(2025, 4), None)
        year_2024 = await figures(db, period_months(Period(2024)), None)
    utc = zone == "UTC"
    assert (march[-1][1], april[0][1]) == ((1, 0) if utc else (0, 1))
    # The emergency at 23:59 UTC on New Year's Eve is 2024's only in UTC.
    assert year_2024.emergencies == (1 if utc else 0)


@pytest.mark.usefixtures("_zone_restored")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_refuses_a_zone_with_daylight_saving(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="daylight saving"):
        await sync_zone(engine, "Europe/Berlin")
    async with create_session_factory(engine)() as db:  # nothing changed
        assert await stored_zone(db) == DEFAULT_ZONE


@pytest.mark.usefixtures("_zone_restored")
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_postgresql_counts_across_daylight_saving(engine: AsyncEngine) -> None:
    """PostgreSQL converts with the zone's name: 22:30 UTC is the next day in Berlin in summer
    (+02:00) and in winter (+01:00) alike, and the recount agrees."""
    factory = create_session_factory(engine)
    async with factory() as db, db.begin():
        db.add(_report("BER1", datetime(2025, 7, 31, 22, 30, tzinfo=UTC)))  # 00:30 1 Aug
        db.add(_report("BER2", datetime(2025, 1, 31, 22, 30, tzinfo=UTC)))  # 23:30 31 Jan
        db.add(_report("BER3", datetime(2025, 1, 31, 23, 30, tzinfo=UTC)))  # 00:30 1 Feb
    assert await _rezoned(engine, "Europe/Berlin") is True
    async with factory() as db:
        assert await differences(db) == {}
        assert (await daily(db, Period(2025, 8), None))[0][1] == 1
        assert (await daily(db, Period(2025, 1), None))[-1][1] == 1
        assert (await daily(db, Period(2025, 2), None))[0][1] == 1
