"""PostgreSQL stops for 60 s while 50 citizens are in the middle of a tip, and starts again.

The issue's figures. The test runs its own PostgreSQL server (:mod:`tests.pg_instance`: its own
directory and port), stops it for :data:`OUTAGE` seconds while each citizen sends the second half
of their tip, then starts it again. In polling and in webhook mode:

- during the outage each citizen gets exactly one short "noted" message, never the error
  message, however many messages they send; Telegram is told nothing (polling: the offset does
  not move) or everything is on disk (webhook: the spool);
- ``/healthz`` and ``/readyz`` say "database down since …";
- afterwards every tip completes, in the citizen's order, once; the spool is empty; and the
  duty group gets every card (delivery resumed by itself).

Only the outage itself is timed; every other wait ends on the event it waits for (a Bot API call
seen by the stand-in, or the service's own state), so each mode costs little beyond 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from sqlalchemy import select

from admin.web import build_web_app
from bot.outage import DatabaseWatch
from bot.runtime import Service
from handlers.i18n import t
from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Report
from tests.cluster import free_port
from tests.e2e import service_settings
from tests.pg_instance import PgInstance
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory

CITIZENS = 50
OUTAGE = 60.0
#: Seconds any one step may take (the machine may be busy: CI runs tests side by side).
STEP_LIMIT = 60.0
DUTY = -1009999999999
SECRET = "outage-secret-0123456789abcdef"
CODE_RE = re.compile(r"[2-9A-Z]{5}-[2-9A-Z]{5}")

BEFORE = ["to giac bao tin toi pham", "Ma túy", "long xuyen", "1"]
DURING = [
    "tối qua khoảng 21 giờ",
    "Mua bán ma túy ở quán nước đầu hẻm {n}",
    "bo qua",
    "tro chuyen an danh qua bot",
    "Gửi tin báo",
]


@pytest.fixture
def postgres() -> Iterator[PgInstance]:
    instance = PgInstance()
    try:
        instance.start()
        yield instance
    finally:
        instance.destroy()


@pytest.fixture
async def standin() -> AsyncIterator[BotAPIStandIn]:
    # Webhook deliveries as Telegram sends them: many chats at once, one chat's in order.
    async with BotAPIStandIn(webhook_connections=40) as server:
        yield server


class Seen:
    """The texts each chat was sent, kept up to date from the stand-in's recorded calls; waits
    end on the call that makes their condition true."""

    def __init__(self, standin: BotAPIStandIn) -> None:
        self.standin = standin
        self.cursor = 0
        self.texts: dict[int | str | None, list[str]] = defaultdict(list)

    def _catch_up(self) -> None:
        calls = self.standin.calls
        for call in calls[self.cursor :]:
            if call.ok and call.method == "sendMessage" and call.text is not None:
                self.texts[call.chat_id].append(call.text)
        self.cursor = len(calls)

    def to(self, chat_id: int) -> list[str]:
        self._catch_up()
        return self.texts[chat_id]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + STEP_LIMIT
        while not condition():
            self._catch_up()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"waited {STEP_LIMIT:.0f} s for {what}")
            with contextlib.suppress(TimeoutError):  # the next recorded call, whatever it is
                await self.standin.wait_for(
                    lambda _call: True, timeout=min(remaining, 1.0), start=self.cursor
                )


async def until_state(condition: Callable[[], bool], what: str) -> None:
    """For the service's own state (the spool, the database watch): looked at every 20 ms."""
    deadline = time.monotonic() + STEP_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {STEP_LIMIT:.0f} s for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_a_database_outage_mid_tip_loses_nothing(
    mode: str, postgres: PgInstance, standin: BotAPIStandIn, tmp_path: Path
) -> None:
    engine = create_engine(postgres.url)
    await upgrade(engine)
    await engine.dispose()
    port = free_port()
    extra: dict[str, object] = {"duty_chat_id": DUTY, "http_port": port}
    if mode == "webhook":
        extra |= {"webhook_url": f"http://127.0.0.1:{port}/telegram/webhook"}
        extra |= {"webhook_secret": SECRET}
    settings = service_settings(standin, postgres.url, tmp_path, **extra)
    service = await Service.create(settings)
    runner = web.AppRunner(build_web_app(service))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await service.start()
    try:
        await _run_outage(mode, postgres, standin, service, port, tmp_path)
    finally:
        await service.stop()
        await runner.cleanup()


async def _run_outage(
    mode: str,
    postgres: PgInstance,
    standin: BotAPIStandIn,
    service: Service,
    port: int,
    data_dir: Path,
) -> None:
    assert service.telegram is not None and service.spool is not None
    assert service.watch is not None
    channel, spool, watch = service.telegram, service.spool, service.watch
    clock = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - clock, 1)
        print(f"{mode}: {phases}")

    await until_state(lambda: channel.state == mode, f"Telegram in {mode} mode")
    factory = UpdateFactory(standin)
    seen = Seen(standin)
    users = [factory.new_user(first_name=f"C{n}", user_id=880000 + n) for n in range(CITIZENS)]

    # The first half of every tip, with the database up.
    for user in users:
        standin.push_update(factory.command(user, "start"))
    for text in BEFORE:
        for user in users:
            standin.push_update(factory.text(user, text))
    when_asked = t("vi", "when.ask")
    await seen.until(
        lambda: all(any(when_asked in x for x in seen.to(u.id)) for u in users),
        "the first half of every tip",
    )
    phase("first half")

    # The database stops; the citizens go on typing.
    before = {u.id: len(seen.to(u.id)) for u in users}
    stopped = time.monotonic()
    await asyncio.to_thread(postgres.stop)
    noted = t("vi", "outage.noted")

    def during(user_id: int) -> list[str]:
        return seen.to(user_id)[before[user_id] :]

    first = [
        standin.push_update(factory.text(u, DURING[0].format(n=n))) for n, u in enumerate(users)
    ]
    await seen.until(lambda: all(noted in during(u.id) for u in users), "the outage notices")
    phase("noticed")
    mark = len(standin.calls)
    for text in DURING[1:]:
        for n, user in enumerate(users):
            standin.push_update(factory.text(user, text.format(n=n)))
    held = CITIZENS * len(DURING)
    if mode == "polling":  # fetched again from the same offset: nothing confirmed to Telegram

        def fetched_again() -> bool:
            return any(
                c.method == "getUpdates"
                and c.ok
                and c.result
                and c.result[0]["update_id"] == first[0]
                for c in standin.calls[mark:]
            )

        await seen.until(fetched_again, "the poller to fetch the held updates again")
        assert len(standin.pending_updates) == held
    else:  # everything on disk, each answered 200
        # On disk first, then answered 200 (the stand-in drops an update as its 200 arrives).
        await until_state(
            lambda: spool.size() == held and not standin.pending_updates,
            "every update in the spool and answered 200",
        )
        assert spool.size() == held and not standin.pending_updates
        assert list((data_dir / "spool").glob("spool-*.log"))
    async with ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            ready = await response.json()
            assert response.status == 503
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            health = await response.json()
    assert ready["ready"] is False and ready["database"].startswith("down since 20")
    assert health["database"] == ready["database"]
    # What the citizens saw so far: one notice each, however many messages, and no error.
    failed = t("vi", "err.internal")
    for user in users:
        assert during(user.id) == [noted]
    assert watch.down and watch.outages == 1

    phase("checked during the outage")
    await asyncio.sleep(max(0.0, stopped + OUTAGE - time.monotonic()))
    await asyncio.to_thread(postgres.start)
    phase("database started")

    # Every tip completes, once, in order: each citizen is shown a tracking code.
    def shown_code(user_id: int) -> bool:
        return any(CODE_RE.search(x) for x in during(user_id))

    await seen.until(lambda: all(shown_code(u.id) for u in users), "every tip's tracking code")
    phase("tips completed")
    async with service.session_factory() as session:
        reports = list((await session.scalars(select(Report).order_by(Report.id))).all())
    assert len(reports) == CITIZENS
    assert sorted(r.description or "" for r in reports) == sorted(
        DURING[1].format(n=n) for n in range(CITIZENS)
    )
    assert all(r.occurred_text == DURING[0] for r in reports)  # the answers in their order
    codes = {r.code for r in reports}
    for user in users:
        texts = seen.to(user.id)
        assert texts.count(noted) == 1, "one notice per outage per citizen"
        assert not any(failed in x for x in texts)
        shown = {m.group(0).replace("-", "") for x in texts for m in CODE_RE.finditer(x)}
        assert len(shown) == 1 and shown <= codes

    # Delivery resumed by itself: every card reaches the duty group, once.
    def carded() -> list[str]:
        return [m.group(0).replace("-", "") for x in seen.to(DUTY) for m in CODE_RE.finditer(x)]

    await seen.until(lambda: set(carded()) == codes, "every card in the duty group")
    assert sorted(carded()) == sorted(codes)
    if mode == "polling":
        await until_state(lambda: not standin.pending_updates, "the offset confirmed")
    await until_state(
        lambda: spool.size() == 0 and not list((data_dir / "spool").glob("spool-*")),
        "the spool empty",
    )
    assert watch.down_since is None
    assert watch.outages == 1
    phase("cards and spool")


async def test_a_pool_in_full_use_is_not_an_outage(engine) -> None:
    """Every pooled connection busy (a burst of citizens): the watch's probe does not queue
    behind them, so a busy pool is never taken for a database that cannot be reached."""
    pool = engine.sync_engine.pool
    held = []
    try:
        for _ in range(pool.size() + getattr(pool, "_max_overflow", 0)):
            held.append(await engine.connect())
        watch = DatabaseWatch(engine)
        try:
            assert await watch.check() is True
            assert not watch.down and watch.outages == 0
        finally:
            await watch.stop()
    finally:
        for connection in held:
            await connection.close()
