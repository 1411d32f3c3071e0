"""The embedded database, its WAL and shared-memory files, the data directory and the secret
key are for the service's own user only, whatever the umask of whoever starts it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from config.settings import Settings, resolve_secret_key
from storage.db import create_engine


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """An operator's usual umask (022), under which files are created world-readable."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("loose_umask")
async def test_database_wal_and_shm_are_created_private(tmp_path):
    data_dir = tmp_path / "var"
    database = data_dir / "tinbao.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER)"))
            await connection.execute(text("INSERT INTO t VALUES (1)"))
        async with engine.connect() as connection:  # the WAL is open while connected
            await connection.execute(text("SELECT x FROM t"))
            files = [database, data_dir / "tinbao.db-wal", data_dir / "tinbao.db-shm"]
            assert all(f.exists() for f in files), list(data_dir.iterdir())
            assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await engine.dispose()
    assert _mode(data_dir) == 0o700


@pytest.mark.usefixtures("loose_umask")
async def test_an_existing_readable_database_is_tightened_at_start(tmp_path, caplog):
    database = tmp_path / "tinbao.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="storage.db"):
        engine = create_engine(f"sqlite+aiosqlite:///{database}")
    await engine.dispose()
    assert _mode(database) == 0o600
    assert "readable by other users" in caplog.text


@pytest.mark.usefixtures("loose_umask")
def test_data_directory_and_secret_key_are_private(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path / "var")
    resolve_secret_key(settings)
    assert _mode(tmp_path / "var") == 0o700
    assert _mode(tmp_path / "var" / "secret.key") == 0o600
