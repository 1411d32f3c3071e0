"""The statistics rollups' zone, ``tinbao stats rebuild`` and ``tinbao stats check``.

The triggers keep the rollups right in the transaction of every change, in the zone recorded
in ``stats_rollup_state`` (:mod:`storage.stats_rollup`). :func:`sync_zone` runs at every start
(and after ``tinbao migrate``): when ``TINBAO_TIMEZONE`` names another zone, it re-creates the
triggers for it and rebuilds the rollups, in one transaction, so the days and months of the
statistics are always the ones people see elsewhere. The commands are for an operator who doubts
the rollups (``check``: a recount from the reports, compared row by row) or who restored or
bulk-loaded reports with the triggers off (``rebuild``: empty and fill again, in the configured
zone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from handlers.localtime import zone as local_zone
from storage.db import create_session_factory
from storage.models import stats_rollup_state
from storage.stats_rollup import ROLLUP_TABLES, Zone, rezone_statements

from .check import Key, differences

log = logging.getLogger(__name__)

#: Disagreements printed by ``check`` (all are counted).
SHOWN = 20
#: The years whose offsets a zone must keep to count as fixed (for SQLite).
FIXED_FROM, FIXED_TO = 1990, 2100


def rollup_zone(name: str) -> Zone:
    """``name`` (``TINBAO_TIMEZONE``) as the rollups' :class:`Zone`: its fixed offset when it
    kept one from 1990 to 2100 (sampled twice a month), else none. ``ValueError`` when unknown."""
    tz = local_zone(name)
    offsets = {
        datetime(year, month, day, 12, tzinfo=UTC).astimezone(tz).utcoffset() or timedelta(0)
        for year in range(FIXED_FROM, FIXED_TO)
        for month in range(1, 13)
        for day in (1, 15)
    }
    if len(offsets) != 1:
        return Zone(name, None)
    (offset,) = offsets
    return Zone(name, int(offset.total_seconds() // 60))


async def stored_zone(session: AsyncSession) -> Zone | None:
    row = (
        await session.execute(select(stats_rollup_state.c.zone, stats_rollup_state.c.minutes))
    ).first()
    return Zone(row.zone, row.minutes) if row is not None else None


async def _check_known(engine: AsyncEngine, zone: Zone) -> None:
    """PostgreSQL converts with its own time-zone database: it must know the name too."""
    if engine.dialect.name != "postgresql":
        zone.shift(engine.dialect.name)  # SQLite: ValueError unless the offset is fixed
        return
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT now() AT TIME ZONE :zone"), {"zone": zone.name})
    except DBAPIError as exc:
        raise ValueError(
            f"PostgreSQL does not know the time zone {zone.name!r} (TINBAO_TIMEZONE)"
        ) from exc


async def _rezone(session: AsyncSession, zone: Zone) -> dict[str, int]:
    dialect = session.get_bind().dialect.name
    for statement in rezone_statements(dialect, zone):
        await session.execute(text(statement))
    return {
        table: int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608
        for table in ROLLUP_TABLES
    }


async def _locked(session: AsyncSession) -> None:
    """PostgreSQL: writers of reports wait (readers go on), so no change slips between the
    emptying and the fill; one rebuild at a time. SQLite's write transaction already does."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("LOCK TABLE reports IN SHARE ROW EXCLUSIVE MODE"))


async def sync_zone(engine: AsyncEngine, name: str) -> bool:
    """Count the rollups in ``name`` (``TINBAO_TIMEZONE``): when they count in another zone,
    re-create the triggers and rebuild, in one transaction. True when it rebuilt.

    ``ValueError`` when the zone cannot be used (unknown; on SQLite, one with daylight saving).
    Several processes starting at once: the first rebuilds, the others find it done.
    """
    zone = rollup_zone(name)
    async with create_session_factory(engine)() as session:
        if await stored_zone(session) == zone:
            return False
    await _check_known(engine, zone)
    async with create_session_factory(engine)() as session, session.begin():
        await _locked(session)
        before = await stored_zone(session)
        if before == zone:
            return False
        rows = await _rezone(session, zone)
    log.warning(
        "statistics rollups rebuilt in TINBAO_TIMEZONE %s (they counted in %s): %s",
        zone.name,
        before.name if before is not None else "no zone",
        ", ".join(f"{table} {n} rows" for table, n in rows.items()),
    )
    return True


async def rebuild(engine: AsyncEngine, name: str) -> dict[str, int]:
    """Empty the rollups and fill them from the reports in the zone ``name``, the triggers
    re-created for it, in one transaction; rows per table."""
    zone = rollup_zone(name)
    await _check_known(engine, zone)
    async with create_session_factory(engine)() as session, session.begin():
        await _locked(session)
        return await _rezone(session, zone)


async def check(
    engine: AsyncEngine, name: str
) -> tuple[Zone | None, dict[str, dict[Key, tuple[int, int]]]]:
    """The zone the rollups count in, and where they disagree with a recount from the reports
    in the zone ``name`` (empty when they agree). The caller configured
    :mod:`handlers.localtime` with ``name``."""
    async with create_session_factory(engine)() as session:
        return await stored_zone(session), await differences(session)


def report_check(
    zone: Zone | None,
    name: str,
    wrong: dict[str, dict[Key, tuple[int, int]]],
    say: Callable[[str], None],
) -> int:
    """Print the outcome of :func:`check`; the exit status (0 agree, 1 disagree)."""
    if zone is None or zone.name != name:
        counted = zone.name if zone is not None else "no zone"
        say(
            f"statistics rollups count in {counted}, TINBAO_TIMEZONE is {name}: the service "
            "rebuilds them at its next start, or run `tinbao stats rebuild` now"
        )
    if not wrong:
        say("statistics rollups agree with a recount of the reports")
        return 0 if zone is not None and zone.name == name else 1
    for table, rows in sorted(wrong.items()):
        say(f"{table}: {len(rows)} counts disagree (stored, recounted):")
        for key, (have, want) in sorted(rows.items(), key=str)[:SHOWN]:
            say(f"  {' '.join(str(k) if k != '' else '-' for k in key)}: {have}, {want}")
        if len(rows) > SHOWN:
            say(f"  ... and {len(rows) - SHOWN} more")
    say("run `tinbao stats rebuild` to fill the rollups again from the reports")
    return 1
