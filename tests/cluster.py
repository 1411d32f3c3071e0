"""Several ``tinbao run --role web|worker`` processes on one database, behind a balancer.

Used by ``tests/test_processes.py`` and ``bench/tip_flow.py --processes``. Each process is a
real subprocess of ``python -m bot run --role ...`` with its own HTTP port; the balancer is a
small aiohttp server standing where nginx would: the Bot API stand-in's webhook points at it,
and it hands each delivery to one web process chosen at random, and a share of them a second
time to another one (a redelivery), as Telegram and a load balancer may.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from storage.db import create_engine
from storage.migrate import upgrade
from tests.e2e import TEST_SECRET_KEY
from tests.standin import DEFAULT_TOKEN, BotAPIStandIn

WEBHOOK_SECRET = "cluster-test-webhook-secret-0123456789"
WEBHOOK_PATH = "/telegram/webhook"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Balancer:
    """Spreads webhook deliveries over the web processes; repeats some of them."""

    backends: list[str]
    duplicate_rate: float = 0.1
    seed: int = 15
    delivered: int = 0
    duplicated: int = 0
    by_backend: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    port: int = 0

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    async def _forward(self, backend: str, body: bytes, headers: dict[str, str]) -> int:
        assert self._session is not None
        self.by_backend[backend] = self.by_backend.get(backend, 0) + 1
        async with self._session.post(backend + WEBHOOK_PATH, data=body, headers=headers) as r:
            await r.read()
            return r.status

    async def _again(self, backend: str, body: bytes, headers: dict[str, str]) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await self._forward(backend, body, headers)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            key: value
            for key, value in request.headers.items()
            if key.lower() in ("content-type", "x-telegram-bot-api-secret-token")
        }
        first, *others = self.random.sample(self.backends, len(self.backends))
        self.delivered += 1
        if others and self.random.random() < self.duplicate_rate:
            # The same update again, at the same time, to another process.
            self.duplicated += 1
            task = asyncio.create_task(self._again(others[0], body, headers))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            status = await self._forward(first, body, headers)
        except (aiohttp.ClientError, OSError, TimeoutError):
            status = 502
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def stop(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Process:
    role: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _wait_healthy(process: Process, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if process.proc.returncode is not None:
                raise RuntimeError(
                    f"{process.role} process exited ({process.proc.returncode}):\n"
                    + process.log.read_text(errors="replace")[-3000:]
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(process.url + "/healthz") as response:
                    body = await response.json()
                    states = body.get("channels", {})
                    if response.status == 200 and states.get("telegram") in (
                        "webhook",
                        "send-only",
                    ):
                        return
            if loop.time() > deadline:
                raise RuntimeError(
                    f"{process.role} process not healthy in time:\n"
                    + process.log.read_text(errors="replace")[-3000:]
                )
            await asyncio.sleep(0.2)


@asynccontextmanager
async def cluster(
    standin: BotAPIStandIn,
    db_url: str,
    data_dir: Path,
    *,
    webs: int,
    workers: int,
    duplicate_rate: float = 0.1,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Balancer, list[Process]]]:
    """Migrate the database, start the balancer and the processes; stop them all at the end."""
    engine = create_engine(db_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    ports = [free_port() for _ in range(webs + workers)]
    balancer = Balancer([f"http://127.0.0.1:{port}" for port in ports[:webs]], duplicate_rate)
    await balancer.start()
    base_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TINBAO_")},
        "TINBAO_TELEGRAM_TOKEN": DEFAULT_TOKEN,
        "TINBAO_TELEGRAM_API_URL": standin.base_url,
        "TINBAO_TELEGRAM_FILE_URL": standin.base_file_url,
        "TINBAO_DATABASE_URL": db_url,
        "TINBAO_SECRET_KEY": TEST_SECRET_KEY,
        "TINBAO_WEBHOOK_URL": balancer.url,
        "TINBAO_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TINBAO_HTTP_HOST": "127.0.0.1",
        "TINBAO_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    processes: list[Process] = []
    try:
        for index, port in enumerate(ports):
            role = "web" if index < webs else "worker"
            directory = data_dir / f"{role}{index}"
            directory.mkdir(parents=True, exist_ok=True)
            log = directory / "process.log"
            env = {**base_env, "TINBAO_HTTP_PORT": str(port), "TINBAO_DATA_DIR": str(directory)}
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot", "run", "--role", role,
                    cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            processes.append(Process(role, port, proc, log))
        # Generous: five processes start at once, on cores that parallel test workers share.
        deadline = asyncio.get_running_loop().time() + 180.0
        await asyncio.gather(*(_wait_healthy(p, deadline) for p in processes))
        yield balancer, processes
    finally:
        for process in processes:
            if process.proc.returncode is None:
                process.proc.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.proc.wait(), 20)
            except TimeoutError:
                process.proc.kill()
                await process.proc.wait()
        await balancer.stop()
