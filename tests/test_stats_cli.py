"""``tinbao stats check`` and ``tinbao stats rebuild`` through the real command line, on SQLite
and PostgreSQL: a rollup count altered behind the triggers' back is found, named, and repaired."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_session_factory
from storage.models import Report

ROOT = Path(__file__).resolve().parent.parent
SECRET = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def _tinbao(
    tmp_path: Path, db_url: str, *args: str, zone: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINBAO_")}
    env.update(
        PYTHONPATH=str(ROOT),
        TINBAO_DATA_DIR=str(tmp_path / "var"),
        TINBAO_DATABASE_URL=db_url,
        TINBAO_SECRET_KEY=SECRET,
    )
    if zone is not None:
        env["TINBAO_TIMEZONE"] = zone
    return subprocess.run(  # noqa: S603 (our own command, fixed arguments)
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )


async def _seed(engine: AsyncEngine) -> None:
    created = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)
    async with create_session_factory(engine)() as db, db.begin():
        for i, status in enumerate(("new", "assigned", "resolved")):
            db.add(
                Report(
                    code=f"CLI{i}",
                    kind="tip",
                    category="theft",
                    contact_mode="relay",
                    pin_hash="x",
                    locale="vi",
                    channel="telegram",
                    status=status,
                    outcome="clarified" if status == "resolved" else None,
                    claimed_at=created + timedelta(minutes=10) if status != "new" else None,
                    resolved_at=created + timedelta(days=1) if status == "resolved" else None,
                    created_at=created,
                    updated_at=created,
                )
            )


async def test_check_finds_a_tampered_count_and_rebuild_repairs_it(
    tmp_path: Path, db_url: str, engine: AsyncEngine
) -> None:
    await _seed(engine)
    agree = _tinbao(tmp_path, db_url, "stats", "check")
    assert agree.returncode == 0, agree.stderr
    assert "agree" in agree.stdout
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE stats_received SET reports = reports + 5"))
        await connection.execute(text("DELETE FROM stats_resolved"))
        await connection.execute(text("UPDATE stats_resolved_daily SET oc_clarified = 0"))
    wrong = _tinbao(tmp_path, db_url, "stats", "check")
    assert wrong.returncode == 1, wrong.stderr
    # The month's row and the year's (202500) row were both altered.
    assert "stats_received: 2 counts disagree" in wrong.stdout
    assert "202503 - - tip theft reports: 8, 3" in wrong.stdout  # no unit, no queue
    assert "202500 - - tip theft reports: 8, 3" in wrong.stdout
    assert "stats_resolved:" in wrong.stdout and "tinbao stats rebuild" in wrong.stdout
    # Resolved on 11 March (03:00 UTC + 1 day): the day's row lost its outcome.
    assert "stats_resolved_daily: 1 counts disagree" in wrong.stdout
    assert "20250311 - - tip theft oc_clarified: 0, 1" in wrong.stdout
    rebuilt = _tinbao(tmp_path, db_url, "stats", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "stats_received: 2 rows" in rebuilt.stdout  # March 2025, and 2025
    assert "stats_resolved: 2 rows" in rebuilt.stdout
    assert "stats_received_daily: 1 rows" in rebuilt.stdout  # 10 March 2025
    assert "stats_resolved_daily: 1 rows" in rebuilt.stdout
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT month, reports FROM stats_received"))
        assert sorted(tuple(row) for row in rows) == [(202500, 3), (202503, 3)]
        resolved = await connection.execute(text("SELECT oc_clarified FROM stats_resolved"))
        assert list(resolved.scalars()) == [1, 1]
    again = _tinbao(tmp_path, db_url, "stats", "check")
    assert again.returncode == 0 and "agree" in again.stdout


def test_stats_without_an_action_shows_help(tmp_path: Path) -> None:
    result = _tinbao(tmp_path, "sqlite+aiosqlite:///unused.db", "stats")
    assert "usage: tinbao stats" in result.stdout
    assert "check" in result.stdout and "rebuild" in result.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL's: test_stats_rollup
async def test_check_names_another_zone_and_rebuild_moves_to_it(
    tmp_path: Path, db_url: str, engine: AsyncEngine
) -> None:
    """TINBAO_TIMEZONE=UTC against rollups counted in Vietnam's time: ``check`` says so (exit 1,
    the 8 reports at 20:00 UTC on 9 March are the 10th in Vietnam); ``rebuild`` counts in UTC."""
    async with create_session_factory(engine)() as db, db.begin():
        late = datetime(2025, 3, 9, 20, 0, tzinfo=UTC)
        db.add_all(
            Report(
                code=f"UTC{i}",
                kind="tip",
                category="drugs",
                contact_mode="relay",
                pin_hash="x",
                locale="vi",
                channel="telegram",
                status="new",
                created_at=late,
                updated_at=late,
            )
            for i in range(8)
        )
    wrong = _tinbao(tmp_path, db_url, "stats", "check", zone="UTC")
    assert wrong.returncode == 1, wrong.stderr
    assert "count in Asia/Ho_Chi_Minh, TINBAO_TIMEZONE is UTC" in wrong.stdout
    assert "20250310 - - tip drugs reports: 8, 0" in wrong.stdout
    rebuilt = _tinbao(tmp_path, db_url, "stats", "rebuild", zone="UTC")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "(days and months in UTC)" in rebuilt.stdout
    async with engine.connect() as connection:
        days = await connection.execute(text("SELECT day, reports FROM stats_received_daily"))
        assert list(days) == [(20250309, 8)]
        zone = await connection.execute(text("SELECT zone, minutes FROM stats_rollup_state"))
        assert list(zone) == [("UTC", 0)]
    agree = _tinbao(tmp_path, db_url, "stats", "check", zone="UTC")
    assert agree.returncode == 0 and "agree" in agree.stdout
