"""Backup and restore as the README says: pg_dump (custom format), pg_restore into a fresh
database, and the service accepts it: the schema check passes and a report can be read, its
route back still opened with the same secret key (and with no other).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.runtime import Service
from config.settings import load_settings
from handlers.security import Keyring
from storage.db import create_session_factory
from storage.models import ContactRoute, Report
from tests.conftest import MAINTENANCE_DB, execute_autocommit
from tests.driver import TEST_KEY, citizen, label, sync_units

pytestmark = pytest.mark.skipif(
    shutil.which("pg_dump") is None or shutil.which("pg_restore") is None,
    reason="pg_dump/pg_restore are not installed (apt-get install postgresql-client)",
)


def _libpq(url: str) -> str:
    """The asyncpg URL as pg_dump and pg_restore take it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_dump_restored_into_a_fresh_database_is_accepted(db_url, engine, tmp_path: Path):
    factory = create_session_factory(engine)
    await sync_units(factory)
    c = citizen(factory, 5151)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.cyber_fraud"))
    await c.say("long xuyen")
    await c.press("Phường Long Xuyên")
    await c.press(label("vi", "when.today"))
    await c.say("Một nhóm người gọi điện giả danh công an để lừa tiền")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.relay", mark="✓ "))
    await c.press(label("vi", "summary.confirm"))
    async with factory() as session:
        original = await session.scalar(select(Report))
        assert original is not None

    dump = tmp_path / "tinbao.dump"
    await asyncio.to_thread(_run, "pg_dump", "--format=custom", f"--file={dump}", _libpq(db_url))
    fresh = make_url(db_url).set(database=f"tinbao_restore_{secrets.token_hex(4)}")
    admin = make_url(db_url).set(database=MAINTENANCE_DB)
    await execute_autocommit(
        admin, f"CREATE DATABASE \"{fresh.database}\" TEMPLATE template0 ENCODING 'UTF8'"
    )
    try:
        fresh_url = fresh.render_as_string(hide_password=False)
        await asyncio.to_thread(
            _run,
            "pg_restore",
            "--no-owner",
            "--exit-on-error",
            f"--dbname={_libpq(fresh_url)}",
            str(dump),
        )
        settings = load_settings(
            database_url=fresh_url,
            secret_key=base64.urlsafe_b64encode(TEST_KEY).decode(),
            data_dir=tmp_path / "data",
        )
        # What `tinbao run` does first: the schema check (no auto-upgrade on PostgreSQL), the
        # unit catalogue, the admins; it raises on a schema it does not accept.
        service = await Service.create(settings)
        try:
            async with service.session_factory() as session:
                report = await session.scalar(select(Report).where(Report.code == original.code))
                assert report is not None
                assert report.description == original.description
                route = await session.scalar(
                    select(ContactRoute).where(ContactRoute.report_id == report.id)
                )
                assert route is not None
            assert service.keyring is not None
            assert service.keyring.decrypt(route.route)["chat_id"] in (5151, "5151")
            # Without the key the backup can never reach the tipster again.
            with pytest.raises(ValueError, match="cannot be read"):
                Keyring(secrets.token_bytes(32)).decrypt(route.route)
        finally:
            await service.stop()
    finally:
        await execute_autocommit(admin, f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)')
