"""Process roles: what one ``tinbao run`` process does, and the lock that keeps polling single.

``tinbao run --role all|web|worker`` (default ``all``):

- ``web`` receives: the webhooks (Telegram, Zalo Bot, Zalo OA) or Telegram polling, the panel,
  ``/healthz`` and ``/metrics``; it answers citizens and sends what officers write back to them
  (the citizens' outbox, which needs the channels this process owns).
- ``worker`` delivers: the officers' outbox (cards, digests, reminders, alerts), the timers, the
  maintenance purge and the daily retention run. It talks to Telegram only to send (no webhook,
  no polling) and serves ``/healthz`` and ``/metrics`` for its health check.
- ``all`` is both, the single-process default.

Any number of ``web`` and ``worker`` processes may share one PostgreSQL: updates are claimed
once (:mod:`bot.ordering`), outbox rows by lease (:mod:`bot.delivery.leases`), the flood
budget is one (:mod:`bot.delivery.shared_budget`). Telegram polling is one process per bot:
:class:`PollingLock` refuses a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from config.settings import ConfigError

log = logging.getLogger(__name__)

#: High bits of the advisory-lock key of Telegram polling ("tb"), so that it never meets the
#: per-chat lock keys of :mod:`bot.ordering` (which have other high bits).
POLLING_LOCK_CLASS = 0x7462
LOCK_FILE = "telegram-polling.lock"


class Role(StrEnum):
    ALL = "all"
    WEB = "web"
    WORKER = "worker"

    @property
    def receives(self) -> bool:
        """Takes updates from the channels and serves the panel."""
        return self is not Role.WORKER

    @property
    def delivers(self) -> bool:
        """Runs the officers' delivery, the timers and the maintenance."""
        return self is not Role.WEB


def bot_id(token: str) -> int:
    """The numeric id at the front of a Bot API token (``123456:ABC...``)."""
    head = token.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def polling_lock_key(bot: int) -> int:
    """A signed 64-bit advisory lock key for ``bot``'s polling."""
    return (POLLING_LOCK_CLASS << 48) | (bot & ((1 << 48) - 1))


def _refused(bot: int, where: str) -> ConfigError:
    return ConfigError(
        f"another tinbao process is already polling Telegram for bot {bot} ({where}). "
        "Polling is one process per bot: stop the other one, or set TINBAO_WEBHOOK_URL and run "
        "several 'tinbao run --role web' processes behind one URL (docs/operations.md)."
    )


#: Advisory lock key of the start-up writes (the unit catalogue, the admins): several processes
#: starting at once on one PostgreSQL take turns instead of inserting the same rows.
STARTUP_LOCK_KEY = (POLLING_LOCK_CLASS << 48) | ((1 << 48) - 1)


async def startup_turn(session: AsyncSession) -> None:
    """Inside a start-up transaction: one process at a time (PostgreSQL; SQLite is one)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": STARTUP_LOCK_KEY}
        )


class PollingLock:
    """Held for the life of the process that polls Telegram for one bot.

    On PostgreSQL: a session-level advisory lock on a connection kept open (the server releases
    it if the process dies). On SQLite: an exclusive ``flock`` on a file in the data directory
    (the kernel releases it if the process dies).
    """

    def __init__(self, engine: AsyncEngine, data_dir: Path, token: str) -> None:
        self.engine = engine
        self.data_dir = data_dir
        self.bot = bot_id(token)
        self._connection: AsyncConnection | None = None
        self._file: IO[bytes] | None = None

    async def acquire(self) -> None:
        if self.engine.dialect.name == "postgresql":
            connection = await self.engine.connect()
            try:
                got = await connection.scalar(
                    text("SELECT pg_try_advisory_lock(:key)"),
                    {"key": polling_lock_key(self.bot)},
                )
                await connection.commit()
            except BaseException:
                await connection.close()
                raise
            if not got:
                await connection.close()
                raise _refused(self.bot, "it holds the database's polling lock")
            self._connection = connection
            return
        self._file = self._lock_file(self.data_dir / LOCK_FILE)

    def _lock_file(self, path: Path) -> IO[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("ab")  # held for the life of the process
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise _refused(self.bot, f"it holds {path}") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        return handle

    async def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": polling_lock_key(self.bot)}
                )
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class SendOnlyTelegram:
    """Telegram in a ``worker`` process: the bot is initialised to send (cards, alerts), but it
    neither polls nor sets the webhook, which belong to the ``web`` processes."""

    def __init__(self, channel: Any) -> None:
        #: A ``bot.telegram.TelegramChannel`` (not imported here: no cycle).
        self.channel = channel
        self.bot = channel.application.bot
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telegram-send-only")

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.bot.initialize()
                break
            except Exception as exc:  # network, or the Bot API refusing getMe
                self.channel.state = f"error: {type(exc).__name__}, retrying"
                log.warning("Telegram is not reachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        self.channel.state = "send-only"
        self.channel.ready.set()
        log.info("Telegram channel running (send-only: worker role)")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.bot.shutdown()
        self.channel.state = "stopped"

    def state(self) -> str:
        return str(self.channel.state)


__all__ = ["PollingLock", "Role", "SendOnlyTelegram", "bot_id", "polling_lock_key"]
