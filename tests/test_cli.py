"""The command line: help, migrate, and run on the embedded default without a token."""

from __future__ import annotations

import asyncio
import os
import select
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
        # Start-up migrates the embedded database: seconds on a busy machine (parallel tests).
        deadline = asyncio.get_running_loop().time() + 90
        async with aiohttp.ClientSession() as http:
            while body is None and process.returncode is None:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert response.status == 200
                        body = await response.json()
                except aiohttp.ClientConnectionError:
                    assert asyncio.get_running_loop().time() < deadline, "not serving in 90 s"
                    await asyncio.sleep(0.1)
        assert body == {
            "status": "ok",
            "database": "ok",
            "channels": {"telegram": "disabled: set TINBAO_TELEGRAM_TOKEN", "web": "running"},
            "database_down_since": None,
            "database_errors": 0,
            "spool_pending": 0,
        }
        key = tmp_path / "var" / "secret.key"
        assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert b"TINBAO_TELEGRAM_TOKEN is not set" in stderr


def _create_user_at_a_terminal(tmp_path: Path, args: list[str], typed: bytes) -> tuple[int, str]:
    """``tinbao admin create-user`` with a real terminal (a pseudo-terminal) as its stdin: what
    an operator types reaches ``getpass`` as it would from a keyboard."""
    import pty

    master, slave = pty.openpty()
    env = _env(tmp_path)
    env.pop("TINBAO_ADMIN_PASSWORD", None)
    try:
        process = subprocess.Popen(  # noqa: S603 (the test's own fixed command)
            [sys.executable, "-m", "bot", "admin", "create-user", *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        os.close(slave)
        slave = -1
        assert process.stderr is not None
        seen = b""
        for prompts, chunk in enumerate(typed.split(b"|"), start=1):
            # getpass flushes what was typed ahead, so each answer waits for its prompt.
            while seen.count(b"Password") < prompts:
                ready, _, _ = select.select([process.stderr], [], [], 60)
                assert ready, seen
                data = os.read(process.stderr.fileno(), 4096)
                assert data, seen
                seen += data
            os.write(master, chunk)
        _, rest = process.communicate(timeout=60)
        err = seen + rest
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return process.returncode, err.decode()


def test_create_user_passwords_that_differ_get_one_clear_message(tmp_path):
    code, err = _create_user_at_a_terminal(
        tmp_path,
        ["--username", "chihuy", "--role", "commander"],
        b"correct horse battery\n|correct horse battery staple\n",
    )
    assert code == 2
    assert err.count("tinbao:") == 1, err
    assert "passwords differ" in err and "no password given" not in err
    assert not (tmp_path / "var" / "tinbao.db").exists()  # nothing was touched


def test_create_user_ctrl_d_at_the_prompt_cancels_without_a_traceback(tmp_path):
    code, err = _create_user_at_a_terminal(
        tmp_path, ["--username", "chihuy", "--role", "commander"], b"\x04"
    )
    assert code == 2
    assert "Traceback" not in err and "EOFError" not in err
    assert err.count("tinbao:") == 1 and "cancelled" in err, err


def test_create_user_at_a_terminal_creates_the_account(tmp_path):
    code, err = _create_user_at_a_terminal(
        tmp_path,
        ["--username", "chihuy", "--role", "commander"],
        b"correct horse battery\n|correct horse battery\n",
    )
    assert code == 0, err
    assert (tmp_path / "var" / "tinbao.db").exists()


def test_create_user_requires_a_queue_for_an_officer(tmp_path):
    helped = subprocess.run(
        [sys.executable, "-m", "bot", "admin", "create-user", "--help"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        check=True,
    )
    assert "required with --role officer" in " ".join(helped.stdout.split())
    officer = ["--username", "canbo1", "--role", "officer"]
    refused = subprocess.run(  # noqa: S603 (the test's own fixed command)
        [sys.executable, "-m", "bot", "admin", "create-user", *officer],
        capture_output=True,
        text=True,
        env={**_env(tmp_path), "TINBAO_ADMIN_PASSWORD": "correct horse battery"},
        cwd=tmp_path,
    )
    assert refused.returncode == 2
    assert "--queue is required with --role officer" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "var" / "tinbao.db").exists()
