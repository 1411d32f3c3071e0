"""The command line: help, migrate, and run on the embedded default without a token."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINBAO_")}
    env.update({"TINBAO_DATA_DIR": str(tmp_path / "var"), "PYTHONPATH": str(ROOT)}, **extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_explains_run_and_migrate(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--help"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        check=True,
    )
    assert "tinbao run" in result.stdout and "tinbao migrate" in result.stdout


def test_migrate_upgrades_the_embedded_database(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bot", "migrate"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "schema revision" in result.stdout
    assert (tmp_path / "var" / "tinbao.db").exists()


def test_placeholder_secret_refuses_to_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bot", "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env=_env(tmp_path, TINBAO_SECRET_KEY="changeme"),
    )
    assert result.returncode == 2
    assert "TINBAO_SECRET_KEY" in result.stderr


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_run_refuses_an_unmigrated_postgresql(tmp_path, db_url):
    result = subprocess.run(
        [sys.executable, "-m", "bot", "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env=_env(
            tmp_path,
            TINBAO_DATABASE_URL=db_url,
            TINBAO_SECRET_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    )
    assert result.returncode == 2, result.stderr
    assert "tinbao migrate" in result.stderr


async def test_run_serves_healthz_without_a_token(tmp_path):
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        cwd=tmp_path,
        env=_env(tmp_path, TINBAO_HTTP_PORT=str(port)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        body = None
        async with aiohttp.ClientSession() as http:
            for _ in range(150):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert response.status == 200
                        body = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert body == {
            "status": "ok",
            "database": "ok",
            "channels": {"telegram": "disabled: set TINBAO_TELEGRAM_TOKEN", "web": "running"},
        }
        key = tmp_path / "var" / "secret.key"
        assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert b"TINBAO_TELEGRAM_TOKEN is not set" in stderr
