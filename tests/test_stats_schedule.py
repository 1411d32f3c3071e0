"""The monthly statistics report posts itself: on the first of the month (Vietnam's time) the
month before's PDF reaches the duty chat through the outbox, exactly once across restarts and
several workers, late but once after the worker was down; against the Bot API stand-in (real
python-telegram-bot, multipart ``sendDocument``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from admin.queries import Period
from admin.queries import stats as direct_stats
from admin.stats.report import MonthlyReports
from bot.delivery import DeliveryWorker
from bot.delivery.timers import TimerRouter
from config.catalogue import load_catalogue
from config.settings import ConfigError, Settings
from handlers import localtime
from handlers.escalation import Timers
from handlers.i18n import t
from handlers.outbox import Destination, Document, DocumentPayload, Kind
from handlers.stats_schedule import MonthlyReportSchedule, destination_of
from storage.db import create_engine, create_session_factory
from storage.models import OutboxMessage, Report
from tests.e2e import running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.test_delivery import DUTY_CHAT, FAST, QUEUES, wait_until

Factory = async_sessionmaker[AsyncSession]
VN = 7  # hours east of UTC
#: Midnight on 1 June 2025 in Vietnam.
FIRST_OF_JUNE = datetime(2025, 5, 31, 24 - VN, 0, tzinfo=UTC)


class Clock:
    """The worker's clock: a moment in 2025 that moves on with the real clock (so retries
    come due)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    @property
    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    @now.setter
    def now(self, moment: datetime) -> None:
        self._offset = moment - datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _report(code: str, created: datetime, **values: Any) -> Report:
    fields: dict[str, Any] = {
        "kind": "tip",
        "category": "theft",
        "contact_mode": "relay",
        "pin_hash": "x",
        "locale": "vi",
        "channel": "telegram",
        "status": "new",
        "unit_code": "30307",
    }
    fields.update(values)
    return Report(code=code, created_at=created, updated_at=created, **fields)


@pytest.fixture
async def factory(session_factory: Factory) -> Factory:
    """Units, and reports in April, May (one at 23:30 on 31 May, Vietnam) and June 2025."""
    from tests.driver import sync_units

    await sync_units(session_factory)
    may = datetime(2025, 5, 10, 3, 0, tzinfo=UTC)
    async with session_factory() as db, db.begin():
        db.add_all(
            [
                _report("APR1", datetime(2025, 4, 8, 3, 0, tzinfo=UTC)),
                _report("MAY1", may),
                _report(
                    "MAY2",
                    may,
                    status="resolved",
                    outcome="clarified",
                    subjects_handled=2,
                    resolved_at=may + timedelta(days=3),
                ),
                _report("MAY3", may + timedelta(days=1), kind="emergency", category=None),
                _report("MAY4", FIRST_OF_JUNE - timedelta(minutes=30)),
                _report("JUN1", FIRST_OF_JUNE + timedelta(minutes=30)),
            ]
        )
    return session_factory


def _worker(
    factory: Factory,
    standin: BotAPIStandIn,
    clock: Clock,
    schedule: MonthlyReportSchedule,
    documents: Any = None,
) -> DeliveryWorker:
    return DeliveryWorker(
        factory,
        standin.bot(),
        QUEUES,
        limits=FAST,
        clock=clock,
        retry_base=0.05,
        retry_cap=0.2,
        poll_interval=0.2,
        timers=TimerRouter(Timers(QUEUES), {Kind.TIMER_MONTHLY_REPORT: schedule}),
        documents=documents or MonthlyReports(factory, load_catalogue(), QUEUES),
    )


@asynccontextmanager
async def _running(*workers: DeliveryWorker) -> AsyncIterator[None]:
    for worker in workers:
        await worker.start()
    try:
        yield
    finally:
        for worker in workers:
            await worker.stop()
            await worker.bot.shutdown()


async def _ensure(factory: Factory, schedule: MonthlyReportSchedule, now: datetime) -> bool:
    """What a worker's start (and its maintenance) does."""
    async with factory() as db, db.begin():
        return await schedule.ensure(db, now)


async def _rows(factory: Factory) -> list[tuple[str, str, str | None]]:
    async with factory() as db:
        found = await db.execute(
            select(OutboxMessage.kind, OutboxMessage.status, OutboxMessage.dedupe_key)
            .where(OutboxMessage.kind.in_((Kind.DOCUMENT, Kind.TIMER_MONTHLY_REPORT)))
            .order_by(OutboxMessage.id)
        )
        return [tuple(r) for r in found]  # type: ignore[misc]


def _pdf_lines(content: bytes) -> list[str]:
    reader = PdfReader(io.BytesIO(content))
    assert len(reader.pages) == 1
    return [" ".join(line.split()) for line in reader.pages[0].extract_text().splitlines()]


def _documents(standin: BotAPIStandIn) -> list[Any]:
    return [c for c in standin.sent_to(DUTY_CHAT) if c.method == "sendDocument"]


def _schedule() -> MonthlyReportSchedule:
    return MonthlyReportSchedule(Destination.duty(), "vi")


async def test_the_month_before_is_posted_on_the_first_once(factory: Factory, db_url: str) -> None:
    """Three workers on their own engines (processes), each started (ensure) several times:
    nothing before local midnight; then one timer fires, one document goes out as a multipart
    ``sendDocument`` to the duty chat, its PDF's figures equal a recount, June's timer waits."""
    clock = Clock(datetime(2025, 5, 20, tzinfo=UTC))
    assert await _ensure(factory, _schedule(), clock.now) is True
    assert await _ensure(factory, _schedule(), clock.now) is False  # a restart adds nothing
    clock.now = FIRST_OF_JUNE - timedelta(seconds=30)  # 23:59:30 on 31 May in Vietnam
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        factories = [create_session_factory(engine) for engine in engines]
        schedules = [_schedule() for _ in factories]
        async with BotAPIStandIn() as standin:
            workers = [
                _worker(f, standin, clock, s) for f, s in zip(factories, schedules, strict=True)
            ]
            async with _running(*workers):
                await asyncio.sleep(0.5)
                assert _documents(standin) == []
                clock.now = FIRST_OF_JUNE + timedelta(seconds=1)
                for _ in range(3):  # restarts: each process adds June's timer, if missing
                    await asyncio.gather(
                        *(
                            _ensure(f, s, clock.now)
                            for f, s in zip(factories, schedules, strict=True)
                        )
                    )
                    for worker in workers:
                        worker.kick()
                await wait_until(lambda: len(_documents(standin)) >= 1, 30)
                await asyncio.sleep(1.0)  # room for a second posting, were there one
            (call,) = _documents(standin)
    finally:
        for engine in engines:
            await engine.dispose()
    assert call.content_type.startswith("multipart/form-data")
    upload = call.uploads["document"]
    assert upload.filename == "tinbao-report-2025-05.pdf"
    assert upload.content.startswith(b"%PDF-")
    async with factory() as db:
        may = await direct_stats(db, Period(2025, 5), None)
    assert may.total == 4  # the report at 23:30 on 31 May counts in May, not June
    assert call.params["caption"] == t(
        "vi", "stats.scheduled.caption", period="05/2025", received=4
    )
    lines = _pdf_lines(upload.content)
    assert t("vi", "stats.report.title", period="05/2025") in " ".join(lines)
    assert f"{t('vi', 'stats.report.received')} 4" in lines
    assert f"{t('vi', 'stats.report.clarified')} 1" in lines
    assert sorted(await _rows(factory)) == [
        (Kind.DOCUMENT, "sent", "document:stats_report:2025-05"),
        (Kind.TIMER_MONTHLY_REPORT, "done", "timer:monthly_report:2025-05"),
        (Kind.TIMER_MONTHLY_REPORT, "pending", "timer:monthly_report:2025-06"),
    ]
    async with factory() as db:
        june = await db.scalar(
            select(OutboxMessage.next_attempt_at).where(
                OutboxMessage.dedupe_key == "timer:monthly_report:2025-06"
            )
        )
    assert june is not None and june.replace(tzinfo=UTC) == datetime(2025, 6, 30, 17, tzinfo=UTC)


async def test_a_worker_down_on_the_first_catches_up(factory: Factory, db_url: str) -> None:
    """Started in April, down from before 1 May to 3 June: April's and May's reports both go
    out when it is back, in order, once each; June's timer waits for 1 July."""
    schedule = _schedule()
    await _ensure(factory, schedule, datetime(2025, 4, 10, tzinfo=UTC))
    clock = Clock(datetime(2025, 6, 3, 2, 0, tzinfo=UTC))
    async with BotAPIStandIn() as standin:
        worker = _worker(factory, standin, clock, schedule)
        async with _running(worker):
            await _ensure(factory, schedule, clock.now)  # the start: June's timer, or it is there
            await wait_until(lambda: len(_documents(standin)) >= 2, 30)
            await asyncio.sleep(0.5)
        calls = _documents(standin)
    assert [c.uploads["document"].filename for c in calls] == [
        "tinbao-report-2025-04.pdf",
        "tinbao-report-2025-05.pdf",
    ]
    assert calls[0].params["caption"] == t(
        "vi", "stats.scheduled.caption", period="04/2025", received=1
    )
    assert [r for r in await _rows(factory) if r[1] == "pending"] == [
        (Kind.TIMER_MONTHLY_REPORT, "pending", "timer:monthly_report:2025-06")
    ]


class FailsOnce:
    """The real renderer, after one failure (a missing font, a database hiccup)."""

    def __init__(self, inner: MonthlyReports) -> None:
        self.inner = inner
        self.failed = False

    async def render(self, payload: DocumentPayload, locale: str) -> Document:
        if not self.failed:
            self.failed = True
            raise OSError("cannot load a font")
        return await self.inner.render(payload, locale)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_failed_send_or_render_is_retried(factory: Factory) -> None:
    """A 502 from Telegram and a renderer error are retried like any outbox row; a render
    error does not hold up the duty chat meanwhile."""
    schedule = _schedule()
    await _ensure(factory, schedule, datetime(2025, 5, 20, tzinfo=UTC))
    clock = Clock(FIRST_OF_JUNE + timedelta(seconds=5))
    async with BotAPIStandIn() as standin:
        standin.fail_next("sendDocument", 502)
        documents = FailsOnce(MonthlyReports(factory, load_catalogue(), QUEUES))
        worker = _worker(factory, standin, clock, schedule, documents)
        async with _running(worker):
            await wait_until(lambda: len(_documents(standin)) == 1, 30)
        refused = [c for c in standin.calls_for("sendDocument") if not c.ok]
        assert documents.failed and len(refused) == 1
    async with factory() as db:
        row = (
            await db.execute(select(OutboxMessage).where(OutboxMessage.kind == Kind.DOCUMENT))
        ).scalar_one()
    assert row.status == "sent" and row.attempts == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_turned_off_it_posts_nothing(factory: Factory) -> None:
    on = _schedule()
    await _ensure(factory, on, datetime(2025, 5, 20, tzinfo=UTC))
    off = MonthlyReportSchedule(destination_of("off"), "vi")
    assert await _ensure(factory, off, datetime(2025, 5, 21, tzinfo=UTC)) is False
    async with BotAPIStandIn() as standin:
        worker = _worker(factory, standin, Clock(FIRST_OF_JUNE + timedelta(hours=1)), off)
        await worker.run_once()
        await worker.run_once()
        await worker.bot.shutdown()
        assert _documents(standin) == []
    assert await _rows(factory) == [
        (Kind.TIMER_MONTHLY_REPORT, "done", "timer:monthly_report:2025-05")
    ]


def test_the_setting_names_a_chat_the_duty_chat_or_nothing() -> None:
    assert destination_of("duty") == Destination.duty()
    assert destination_of(" OFF ") is None
    assert destination_of("-1001234567890/42") == Destination.chat(-1001234567890, 42)
    with pytest.raises(ValueError, match="TINBAO_STATS_REPORT_CHAT"):
        destination_of("the duty room")
    with pytest.raises(ValueError, match="stats_report_chat"):
        Settings(stats_report_chat="somewhere")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_service_keeps_the_current_months_timer(
    db_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    """The worker's start adds this month's timer (a second start does not), due at local
    midnight on the first of next month."""
    async with BotAPIStandIn() as standin:
        settings = service_settings(standin, db_url, tmp_path, duty_chat_id=DUTY_CHAT)
        for _ in range(2):
            async with running_service(settings) as service:
                await wait_until(lambda: service.schedule is not None, 5)

                async def timers() -> list[OutboxMessage]:
                    async with service.session_factory() as db:
                        found = await db.scalars(
                            select(OutboxMessage).where(
                                OutboxMessage.kind == Kind.TIMER_MONTHLY_REPORT
                            )
                        )
                        return list(found)

                for _ in range(250):
                    if await timers():
                        break
                    await asyncio.sleep(0.02)
                rows = await timers()
        assert len(rows) == 1
        now = datetime.now(UTC) + timedelta(hours=VN)
        assert rows[0].dedupe_key == f"timer:monthly_report:{now:%Y-%m}"
        due = rows[0].next_attempt_at.replace(tzinfo=UTC) + timedelta(hours=VN)
        assert (due.day, due.hour, due.minute) == (1, 0, 0) and due > now


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_refuses_to_start_with_a_daylight_saving_zone(
    db_url: str, tmp_path: Path
) -> None:
    from bot.runtime import Service

    async with BotAPIStandIn() as standin:
        settings = service_settings(standin, db_url, tmp_path, timezone="Europe/Berlin")
        try:
            with pytest.raises(ConfigError, match="daylight saving"):
                await Service.create(settings)
        finally:  # Service.create set the zone shown to people before it refused
            localtime.configure(localtime.DEFAULT_TIMEZONE)
