"""``tinbao stats rebuild`` and ``tinbao stats check``: the statistics rollups by hand.

The triggers keep the rollups right in the transaction of every change; these commands are for
an operator who doubts them (``check``: a recount from the reports, compared row by row) or who
restored or bulk-loaded reports with the triggers off (``rebuild``: empty and fill again).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_session_factory
from storage.stats_rollup import ROLLUP_TABLES, rebuild_statements

from .check import Key, differences

#: Disagreements printed by ``check`` (all are counted).
SHOWN = 20


async def rebuild(engine: AsyncEngine) -> dict[str, int]:
    """Empty the rollups and fill them from the reports, in one transaction; rows per table.

    On PostgreSQL the reports are locked against writes meanwhile (readers go on), so no change
    slips between the emptying and the fill; SQLite's write transaction already excludes them.
    """
    factory = create_session_factory(engine)
    async with factory() as session, session.begin():
        dialect = engine.dialect.name
        if dialect == "postgresql":
            await session.execute(text("LOCK TABLE reports IN SHARE MODE"))
        for statement in rebuild_statements(dialect):
            await session.execute(text(statement))
        return {
            table: int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608
            for table in ROLLUP_TABLES
        }


async def check(engine: AsyncEngine) -> dict[str, dict[Key, tuple[int, int]]]:
    """Where the rollups disagree with a recount from the reports (empty when they agree)."""
    async with create_session_factory(engine)() as session:
        return await differences(session)


def report_check(wrong: dict[str, dict[Key, tuple[int, int]]], say: Callable[[str], None]) -> int:
    """Print the outcome of :func:`check`; the exit status (0 agree, 1 disagree)."""
    if not wrong:
        say("statistics rollups agree with a recount of the reports")
        return 0
    for table, rows in sorted(wrong.items()):
        say(f"{table}: {len(rows)} counts disagree (stored, recounted):")
        for key, (have, want) in sorted(rows.items(), key=str)[:SHOWN]:
            say(f"  {' '.join(str(k) if k != '' else '-' for k in key)}: {have}, {want}")
        if len(rows) > SHOWN:
            say(f"  ... and {len(rows) - SHOWN} more")
    say("run `tinbao stats rebuild` to fill the rollups again from the reports")
    return 1
