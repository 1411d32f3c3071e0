"""Whether the database can be reached, and since when it cannot.

One :class:`DatabaseWatch` per process. It is told about a failure by whoever meets one (the
dispatcher, the delivery workers) and checks with ``SELECT 1`` before believing it: a single
busy SQLite or a constraint error is not an outage. The check opens a connection of its own
(:func:`storage.db.probe_engine`), so a pool whose every connection is in use (a burst of
citizens) is not taken for an outage either. While the database is down it probes every
second; the moment the probe answers, everyone waiting in :meth:`DatabaseWatch.wait_up` resumes
(the spool's replay, delivery, timers). No restart is needed.

It also remembers which citizens were told "your message is noted" during the current outage,
so each gets that short message once per outage (the key is the channel and chat id, kept in
memory only and forgotten when the outage ends).

Counters for ``/healthz``, ``/readyz`` and ``/metrics``: :attr:`DatabaseWatch.down_since`
(``datetime`` in UTC or ``None``), :attr:`DatabaseWatch.errors` (database errors met, total),
:attr:`DatabaseWatch.outages` (outages begun, total).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import HEALTH_CHECK_TIMEOUT, probe_engine
from storage.types import utcnow

log = logging.getLogger(__name__)

#: Seconds between probes while the database is down.
PROBE_DOWN = 1.0
#: Seconds between probes while it is up (so that /healthz knows without traffic).
PROBE_UP = 5.0


async def _answers(engine: AsyncEngine) -> bool:
    """``SELECT 1`` within the health check's timeout; quiet (the watch logs the transitions)."""
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "down"
        return False
    return True


class DatabaseDown(Exception):
    """The database cannot be reached: the update stays unconfirmed, to be handled later."""


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class DatabaseWatch:
    """The database's reachability, shared by every part of one process."""

    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        probe: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._probe_engine: AsyncEngine | None = None
        if probe is None:
            if engine is None:
                raise ValueError("an engine or a probe is needed")
            # Its own connections, not the pool's: a pool in full use is not an outage.
            self._probe_engine = bound = probe_engine(engine)

            async def probe() -> bool:
                return await _answers(bound)

        self._probe = probe
        #: When the current outage began (UTC), ``None`` while the database answers.
        self.down_since: datetime | None = None
        #: Database errors met by the dispatcher and the workers (all of them, not only outages).
        self.errors = 0
        #: Outages begun since the start.
        self.outages = 0
        self._up = asyncio.Event()
        self._up.set()
        self._noticed: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._checking: asyncio.Lock | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def down_since_iso(self) -> str | None:
        return iso_utc(self.down_since)

    def status(self) -> str:
        """``ok`` or ``down since 2026-01-31T02:03:04Z`` (for /healthz and /readyz)."""
        since = self.down_since_iso()
        return "ok" if since is None else f"down since {since}"

    def _mark_down(self) -> None:
        if self.down_since is None:
            self.down_since = utcnow()
            self.outages += 1
            self._up.clear()
            self._noticed.clear()
            log.warning("the database cannot be reached; updates are kept until it is back")

    def _mark_up(self) -> None:
        if self.down_since is not None:
            seconds = (utcnow() - self.down_since).total_seconds()
            self.down_since = None
            self._noticed.clear()
            self._up.set()
            log.warning("the database is back after %.0f s; resuming", seconds)

    async def check(self) -> bool:
        """Probe now; ``True`` when the database answers. Updates the state either way."""
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:
            ok = await self._probe()
        if ok:
            self._mark_up()
        else:
            self._mark_down()
        return ok

    async def failed(self, exc: BaseException | None = None) -> bool:
        """Someone met ``exc`` talking to the database: ``True`` when it is an outage (the
        probe fails too), ``False`` for an error of the statement itself."""
        self.errors += 1
        if self.down:
            return True
        return not await self.check()

    def first_notice(self, channel: str, chat_id: str) -> bool:
        """``True`` the first time a chat is met during this outage (tell the citizen once)."""
        key = (channel, chat_id)
        if key in self._noticed:
            return False
        self._noticed.add(key)
        return True

    async def wait_up(self) -> None:
        await self._up.wait()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="database-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._probe_engine is not None:
            await self._probe_engine.dispose()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.check()
            await asyncio.sleep(PROBE_DOWN if self.down else PROBE_UP)


async def paused(watch: DatabaseWatch | None, exc: BaseException, what: str) -> bool:
    """After a failed pass of a background loop: ``True`` (and a WARNING without traceback,
    once per outage) when the database is down, so the loop just tries again shortly."""
    if watch is None or not await watch.failed(exc):
        return False
    if watch.first_notice("#loop", what):
        log.warning("%s paused: the database is down; resuming by itself when it is back", what)
    return True
