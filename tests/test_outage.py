"""PostgreSQL stops while citizens are in the middle of a tip, and starts again.

The test runs its own PostgreSQL server (:mod:`tests.pg_instance`), stops it for
:data:`OUTAGE` seconds (10 s here; the issue's fault-injection run used 60 s with 50 citizens,
:data:`CITIZENS` keeps CI fast: the mechanism does not depend on the count) while each citizen
sends the second half of their tip, then starts it again. In polling and in webhook mode:

- during the outage each citizen gets exactly one "noted" message, never the error message;
  Telegram is told nothing (polling: the offset does not move) or everything is on disk
  (webhook: the spool);
- ``/readyz`` says "down since …";
- afterwards every tip completes, in the citizen's order, once; the spool is empty; and the
  duty group gets every card (delivery resumed by itself).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from sqlalchemy import select

from admin.web import build_web_app
from bot.runtime import Service
from handlers.i18n import t
from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Report
from tests.e2e import service_settings
from tests.pg_instance import PgInstance
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory

CITIZENS = 10
OUTAGE = 10.0
DUTY = -1009999999999
SECRET = "outage-secret-0123456789abcdef"

BEFORE = ["to giac bao tin toi pham", "Ma túy", "long xuyen", "1"]
DURING = [
    "tối qua khoảng 21 giờ",
    "Mua bán ma túy ở quán nước đầu hẻm {n}",
    "bo qua",
    "tro chuyen an danh qua bot",
    "Gửi tin báo",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    async with BotAPIStandIn() as server:
        yield server


async def _wait(condition: Callable[[], Awaitable[bool]], what: str, limit: float = 40.0) -> None:
    try:
        async with asyncio.timeout(limit):
            while not await condition():  # noqa: ASYNC110 - polls a database and a stand-in
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"waited {limit:.0f} s for {what}") from None


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_a_database_outage_mid_tip_loses_nothing(
    mode: str, postgres: PgInstance, standin: BotAPIStandIn, tmp_path: Path
) -> None:
    engine = create_engine(postgres.url)
    await upgrade(engine)
    await engine.dispose()
    port = _free_port()
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
    channel = service.telegram
    async with asyncio.timeout(10):
        while channel.state != mode:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    factory = UpdateFactory(standin)
    users = [factory.new_user(first_name=f"C{n}", user_id=880000 + n) for n in range(CITIZENS)]

    # The first half of every tip, with the database up.
    for user in users:
        standin.push_update(factory.command(user, "start"))
    for text in BEFORE:
        for user in users:
            standin.push_update(factory.text(user, text))
    when_asked = t("vi", "when.ask")

    async def all_asked_when() -> bool:
        return all(any(when_asked in x for x in standin.texts_to(u.id)) for u in users)

    await _wait(all_asked_when, "the first half")

    # The database stops; the citizens go on typing.
    seen = {u.id: len(standin.texts_to(u.id)) for u in users}
    await asyncio.to_thread(postgres.stop)
    for step, text in enumerate(DURING):
        for n, user in enumerate(users):
            standin.push_update(factory.text(user, text.format(n=n)))
        if step == 0:
            await asyncio.sleep(2.0)  # the outage is noticed on the first message
    noted = t("vi", "outage.noted")

    async def all_noted() -> bool:
        return all(noted in standin.texts_to(u.id)[seen[u.id] :] for u in users)

    await _wait(all_noted, "the outage notices", limit=OUTAGE)
    async with ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            ready = await response.json()
            assert response.status == 503
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            health = await response.json()
    assert ready["ready"] is False and ready["database"].startswith("down since 20")
    assert health["database"] == ready["database"]
    if mode == "polling":
        assert len(standin.pending_updates) == CITIZENS * len(DURING)  # nothing confirmed
    else:
        spool = service.spool

        async def all_spooled() -> bool:  # the stand-in delivers one update at a time
            return spool.size() == CITIZENS * len(DURING)

        await _wait(all_spooled, "the spool", limit=OUTAGE)  # everything on disk, and 200
        assert not standin.pending_updates
        assert list((data_dir / "spool").glob("spool-*.log"))
    await asyncio.sleep(max(0.0, OUTAGE - 2.0))
    await asyncio.to_thread(postgres.start)

    # Every tip completes, once, in order.
    async def all_reported() -> bool:
        try:
            async with service.session_factory() as session:
                found = (await session.scalars(select(Report))).all()
        except Exception:
            return False
        return len(found) >= CITIZENS

    await _wait(all_reported, "the reports")
    async with service.session_factory() as session:
        reports = list((await session.scalars(select(Report).order_by(Report.id))).all())
    assert len(reports) == CITIZENS
    assert sorted(r.description or "" for r in reports) == sorted(
        DURING[1].format(n=n) for n in range(CITIZENS)
    )
    assert all(r.occurred_text == DURING[0] for r in reports)  # the answers in their order
    failed = t("vi", "err.internal")
    for user in users:
        texts = standin.texts_to(user.id)
        assert texts.count(noted) == 1, "one notice per outage per citizen"
        assert not any(failed in x for x in texts)
    codes = [r.code[:4] for r in reports]
    for code in codes:
        assert sum(any(code in x.replace("-", "") for x in standin.texts_to(u.id)) for u in users)

    # Delivery resumed by itself: every card reaches the duty group, once.
    async def cards_delivered() -> bool:
        return (
            len({c for c in codes if any(c in x.replace("-", "") for x in standin.texts_to(DUTY))})
            == CITIZENS
        )

    await _wait(cards_delivered, "the cards")
    if mode == "polling":

        async def confirmed() -> bool:
            return not standin.pending_updates

        await _wait(confirmed, "the offset")
    await _wait(_empty(service, data_dir), "the spool")
    assert service.watch.down_since is None
    assert service.watch.outages >= 1


def _empty(service: Service, data_dir: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        assert service.spool is not None
        return service.spool.size() == 0 and not list((data_dir / "spool").glob("spool-*"))

    return check
