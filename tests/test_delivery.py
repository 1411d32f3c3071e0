"""The delivery worker against the Bot API stand-in, on SQLite and PostgreSQL.

Real python-telegram-bot over HTTP to ``BotAPIStandIn``; rows seeded through the citizen flow
or with the repositories. Where a test is about correctness rather than pacing, the worker and
the stand-in get generous limits so that it runs in a second.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.delivery import (
    DIGEST_PRIORITY,
    EMERGENCY_PRIORITY,
    NO_DUTY_ERROR,
    DeliveryWorker,
    FloodLimits,
)
from config.queues import Queue, QueueMap, duty_queue
from handlers.events import Attachment
from handlers.i18n import t
from handlers.intake import PRIORITY_EMERGENCY
from handlers.security import format_code, new_tracking_code
from storage.db import create_engine, create_session_factory
from storage.models import CardPost, MediaBlob, OutboxMessage, Report
from storage.repositories import Outbox, Reports
from storage.types import utcnow
from tests.driver import FileStore, citizen, label, make_flow, sync_units
from tests.standin import BotAPIStandIn
from tests.standin.factory import MP4_LOCATION, make_jpeg, make_mp4

UNIT = "30307"
UNIT_CHAT = -1_001_000_000_001
DUTY_CHAT = -1_001_000_000_099
QUEUES = QueueMap(
    queues=(Queue("long-xuyen", "CA phường Long Xuyên", UNIT_CHAT, None, frozenset({UNIT})),),
    duty=duty_queue(DUTY_CHAT),
)
#: No pacing at all: for tests about correctness, not about flood limits.
FAST = FloodLimits(
    global_per_second=10_000,
    chat_per_second=10_000,
    chat_burst=10_000,
    group_per_minute=1_000_000,
    fold_backlog=1_000_000,
)
TIPSTER_ID = 987_654_321
CODE_RE = re.compile(r"[2-9A-Z]{5}-[2-9A-Z]{5}")


@pytest.fixture
async def session_factory(session_factory):
    await sync_units(session_factory)
    return session_factory


class SquareLocator:
    """Operator geometry reduced to one square around Long Xuyên (unit 30307)."""

    def locate(self, latitude: float, longitude: float) -> str | None:
        if 10.3 <= latitude <= 10.45 and 105.35 <= longitude <= 105.5:
            return UNIT
        return None


def make_worker(session_factory, standin: BotAPIStandIn, **options: Any) -> DeliveryWorker:
    options.setdefault("limits", FAST)
    options.setdefault("retry_base", 0.05)
    options.setdefault("retry_cap", 0.5)
    options.setdefault("poll_interval", 0.5)
    queue_map = options.pop("queue_map", QUEUES)
    return DeliveryWorker(session_factory, standin.bot(), queue_map, **options)


@asynccontextmanager
async def running(worker: DeliveryWorker) -> AsyncIterator[DeliveryWorker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
        await worker.bot.shutdown()


async def seed(
    session_factory,
    count: int,
    *,
    kind: str = "tip",
    unit: str | None = UNIT,
    location: bool = False,
) -> list[tuple[int, str]]:
    """``count`` reports and their card rows, as the intake writes them; (id, code) each."""
    out: list[tuple[int, str]] = []
    async with session_factory() as session, session.begin():
        for _ in range(count):
            report = Report(
                code=new_tracking_code(),
                kind=kind,
                category="drugs" if kind == "tip" else None,
                unit_code=unit,
                latitude=10.38 if location else None,
                longitude=105.42 if location else None,
                description="Có người bán ma túy <b>ở quán</b>",
                contact_mode="none",
                pin_hash="x",
                locale="vi",
                channel="telegram",
            )
            await Reports(session).add(report, [])
            row = Outbox(session).enqueue(
                kind="report_card",
                destination=f"unit:{unit}" if unit else "duty",
                payload={"report_id": report.id},
                report_id=report.id,
                dedupe_key=f"card:{report.id}",
            )
            row.priority = PRIORITY_EMERGENCY if kind == "emergency" else 0
            out.append((report.id, format_code(report.code)))
    return out


def code_counts(standin: BotAPIStandIn, chat: int) -> Counter[str]:
    """How many sent text messages show each report code (a card or a digest line)."""
    counts: Counter[str] = Counter()
    for call in standin.sent_to(chat):
        if call.method == "sendMessage" and call.text:
            counts.update(CODE_RE.findall(call.text))
    return counts


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def rows(session_factory, **where: Any) -> list[OutboxMessage]:
    async with session_factory() as session:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        for name, value in where.items():
            query = query.where(getattr(OutboxMessage, name) == value)
        return list((await session.scalars(query)).all())


# ------------------------------------------------------------------------------ cards


async def test_a_card_and_its_evidence_are_re_sent_never_forwarded(session_factory):
    original = make_jpeg(gps=(10.38, 105.42), make="CameraMaker")
    async with BotAPIStandIn() as standin:
        filmed, voice_note = make_mp4(), b"OggS voice"
        flow = make_flow()
        flow.locator = SquareLocator()
        c = citizen(session_factory, TIPSTER_ID, flow=flow)
        c.files = FileStore(
            {
                "P1": original,
                "P2": make_jpeg(color=(0, 90, 0)),
                "V1": filmed,
                "VN1": voice_note,
            }
        )
        await c.command("start")
        await c.press(label("vi", "menu.tip"))
        await c.press(label("vi", "cat.drugs"))
        await c.location(10.38, 105.42)
        await c.press(label("vi", "when.now"))
        await c.say("<script>x</script> đang giao hàng trước cổng trường")
        await c.attach(Attachment("photo", "P1", 2000, "image/jpeg"))
        await c.attach(Attachment("photo", "P2", 2000, "image/jpeg"))
        await c.attach(Attachment("video", "V1", len(filmed), "video/mp4"), caption="clip")
        await c.attach(Attachment("voice", "VN1", len(voice_note), "audio/ogg"))
        await c.press(label("vi", "ev.done"))
        await c.press(label("vi", "contact.relay", mark="✓ "))
        await c.press(label("vi", "summary.confirm"))

        worker = make_worker(session_factory, standin)
        assert await worker.run_once() == 1
        await worker.bot.shutdown()

        async with session_factory() as session:
            blobs = (await session.scalars(select(MediaBlob.content).order_by(MediaBlob.id))).all()
            report = await session.scalar(select(Report))
            posts = (await session.scalars(select(CardPost))).all()
        assert report is not None
        calls = standin.sent_to(UNIT_CHAT)
        assert [c.method for c in calls] == [
            "sendMessage",
            "sendLocation",
            "sendMediaGroup",
            "sendVideo",
            "sendVoice",
        ]
        assert not standin.calls_for("forwardMessage") and not standin.calls_for("copyMessage")
        assert not standin.calls_for("forwardMessages") and not standin.calls_for("copyMessages")
        card, pin, album, video, voice = calls
        assert all(call.params.get("protect_content") is True for call in calls)
        assert card.params["parse_mode"] == "HTML"
        text = card.text or ""
        assert str(TIPSTER_ID) not in text and "&lt;script&gt;" in text
        assert format_code(report.code) in text
        # The voice note could not be cleaned: the card tells officers which file that is.
        assert t("vi", "evidence.not_cleaned", files="4") in text
        card_id = card.result["message_id"]
        for follower in (pin, album, video, voice):
            assert follower.params["reply_parameters"]["message_id"] == card_id
        assert (pin.params["latitude"], pin.params["longitude"]) == (10.38, 105.42)
        assert album.media_files() == list(blobs[:2])  # the cleaned copies, re-uploaded
        assert original not in album.media_files()
        # The video and the voice note are re-uploaded from their stored copies under neutral
        # names; the video without the place and time its metadata gave.
        assert {n: (u.filename, u.content) for n, u in video.uploads.items()} == {
            "video": ("evidence-3.mp4", blobs[2])
        }
        assert MP4_LOCATION in filmed and MP4_LOCATION not in blobs[2]
        assert {n: (u.filename, u.content) for n, u in voice.uploads.items()} == {
            "voice": ("evidence-4.ogg", voice_note)
        }
        assert video.params["caption"] == f"📎 {format_code(report.code)}\nclip"
        assert [(p.report_id, p.chat_id, p.message_id, p.kind) for p in posts] == [
            (report.id, UNIT_CHAT, card_id, "card")
        ]
        [row] = await rows(session_factory, kind="report_card")
        assert (row.status, row.chat_key, row.message_count) == ("sent", str(UNIT_CHAT), 6)
        assert row.sent_at is not None and row.claimed_until is None
        assert row.payload["done"] == ["card", "loc", "m0", "m1", "m2"]


async def test_emergencies_go_first_with_their_pin_and_acknowledge(session_factory):
    async with BotAPIStandIn() as standin:
        await seed(session_factory, 3)
        [(emergency_id, code)] = await seed(session_factory, 1, kind="emergency", location=True)
        async with session_factory() as session, session.begin():
            row = await session.scalar(
                select(OutboxMessage).where(OutboxMessage.report_id == emergency_id)
            )
            assert row is not None
            row.priority = 0  # an enqueuer that forgot: the worker raises it at claim time
        worker = make_worker(session_factory, standin)
        await worker.run_once()
        await worker.bot.shutdown()
        first, second = standin.sent_to(UNIT_CHAT)[:2]
        assert first.text is not None and first.text.startswith("🚑") and code in first.text
        buttons = first.params["reply_markup"]["inline_keyboard"]
        assert buttons[0][0]["callback_data"] == f"r:ack:{emergency_id}"
        assert second.method == "sendLocation"
        assert second.params["reply_parameters"]["message_id"] == first.result["message_id"]
        [row] = await rows(session_factory, report_id=emergency_id)
        assert row.priority == EMERGENCY_PRIORITY
        assert sum(code_counts(standin, UNIT_CHAT).values()) == 4


# ------------------------------------------------------------------------------ flood limits


async def test_a_burst_of_200_tips_reaches_officers_within_the_limits(session_factory):
    """Real Telegram limits on both sides: every report visible, folded into digests, no 429."""
    async with BotAPIStandIn(enforce_flood_limits=True) as standin:
        worker = make_worker(session_factory, standin, limits=FloodLimits())
        codes: list[str] = []
        async with running(worker):
            started = time.monotonic()
            for _ in range(10):  # 200 tips over about a second
                codes += [code for _, code in await seed(session_factory, 20)]
                worker.kick()
                await asyncio.sleep(0.1)
            await wait_until(lambda: set(codes) <= set(code_counts(standin, UNIT_CHAT)), 40)
            elapsed = time.monotonic() - started
        counts = code_counts(standin, UNIT_CHAT)
        assert all(counts[code] == 1 for code in codes), "a report shown twice"
        assert standin.stats.rate_limited == 0
        assert worker.stats.rate_limited == 0
        sent = standin.sent_to(UNIT_CHAT)
        assert len(sent) <= FloodLimits().allowance  # the whole burst fits in one minute
        digests = [
            call
            for call in sent
            if any(
                b["callback_data"].startswith("r:open:")
                for row in call.params.get("reply_markup", {}).get("inline_keyboard", [])
                for b in row
            )
        ]
        assert digests, "the backlog was not folded"
        assert elapsed < 30
    outbox = await rows(session_factory)
    cards = [r for r in outbox if r.kind == "report_card"]
    assert {r.status for r in cards} <= {"sent", "folded"}
    sent_digests = {r.id for r in outbox if r.kind == "digest" and r.status == "sent"}
    assert all(r.payload["digest"] in sent_digests for r in cards if r.status == "folded")
    assert all(r.priority == DIGEST_PRIORITY for r in outbox if r.kind == "digest")
    async with session_factory() as session:
        posted = set((await session.scalars(select(CardPost.report_id))).all())
    # one CardPost per digest message at least (see the report on uq_card_posts_chat_id)
    assert len(posted) >= len(sent_digests)


async def test_a_429_is_honoured_before_that_chat_gets_anything_else(session_factory):
    async with BotAPIStandIn() as standin:
        standin.fail_next("sendMessage", 429, retry_after=1)
        standin.fail_next("sendLocation", 429, retry_after=1)
        reports = await seed(session_factory, 2, location=True)
        worker = make_worker(session_factory, standin, poll_interval=0.2)
        async with running(worker):
            await wait_until(lambda: len(standin.sent_to(UNIT_CHAT)) == 4, 15)
        refused = [c for c in standin.calls if c.error_code == 429]
        assert len(refused) == 2
        for refusal in refused:
            later = [c for c in standin.calls if c.chat_id == UNIT_CHAT and c.at > refusal.at]
            assert later and later[0].at - refusal.at >= 1.0
        counts = code_counts(standin, UNIT_CHAT)
        assert all(counts[code] == 1 for _, code in reports)  # no card sent twice
        assert len(standin.calls_for("sendLocation", ok_only=True)) == 2
        assert worker.stats.rate_limited == 2
    assert {r.status for r in await rows(session_factory)} == {"sent"}


async def test_the_group_budget_is_shared_through_the_database(session_factory):
    """Another process already spent the group's minute in a forum topic: nothing is sent."""
    now = utcnow()
    async with session_factory() as session, session.begin():
        session.add(
            OutboxMessage(
                kind="report_card",
                destination=f"chat:{UNIT_CHAT}/7",
                payload={},
                status="sent",
                sent_at=now - timedelta(seconds=5),
                chat_key=f"{UNIT_CHAT}/7",
                message_count=FloodLimits().allowance,
            )
        )
    await seed(session_factory, 1)
    async with BotAPIStandIn() as standin:
        worker = make_worker(session_factory, standin, limits=FloodLimits())
        assert await worker.run_once() == 0
        await worker.bot.shutdown()
        assert standin.sent_to(UNIT_CHAT) == []
    [row] = await rows(session_factory, kind="report_card", status="pending")
    assert row.attempts == 0


# ------------------------------------------------------------------------------ restarts


@pytest.mark.parametrize("how", ["graceful", "killed"])
async def test_a_worker_stopped_mid_burst_and_a_new_one_deliver_exactly_once(session_factory, how):
    reports = await seed(session_factory, 30, location=True)
    codes = [code for _, code in reports]
    async with BotAPIStandIn() as standin:
        first = make_worker(session_factory, standin, lease_seconds=1.0)
        await first.start()
        await standin.wait_calls("sendMessage", 8, ok_only=True)
        await first.stop(timeout=30.0 if how == "graceful" else 0.0)
        await first.bot.shutdown()
        stopped_at = len(standin.sent_to(UNIT_CHAT))
        assert stopped_at < 60, "the first worker finished before it was stopped"
        if how == "graceful":  # every row it held went back, progress kept (a card whose pin
            # is still to send is typical here); a killed worker's lease lapses instead
            assert "sending" not in {r.status for r in await rows(session_factory)}
        async with running(make_worker(session_factory, standin)):
            await wait_until(
                lambda: (
                    set(codes) <= set(code_counts(standin, UNIT_CHAT))
                    and len(standin.calls_for("sendLocation", ok_only=True)) == 30
                ),
                15,
            )
        counts = code_counts(standin, UNIT_CHAT)
        assert all(counts[code] == 1 for code in codes), counts.most_common(3)
        cards = {
            c.result["message_id"] for c in standin.sent_to(UNIT_CHAT) if c.method == "sendMessage"
        }
        pins = standin.calls_for("sendLocation", ok_only=True)
        assert len(pins) == 30
        assert sorted(p.params["reply_parameters"]["message_id"] for p in pins) == sorted(cards)
    assert {r.status for r in await rows(session_factory)} == {"sent"}


async def test_a_5xx_storm_then_recovery_loses_nothing(session_factory):
    reports = await seed(session_factory, 10, location=True)
    async with BotAPIStandIn() as standin:
        standin.fail_next("*", 500, count=20)
        worker = make_worker(session_factory, standin, retry_base=0.02, retry_cap=0.1)
        async with running(worker):
            await wait_until(
                lambda: len(standin.calls_for("sendLocation", ok_only=True)) == 10, 20
            )
        assert standin.stats.injected_failures == 20
        counts = code_counts(standin, UNIT_CHAT)
        assert all(counts[code] == 1 for _, code in reports)
        assert worker.stats.transient_errors == 20
    outbox = await rows(session_factory)
    assert {r.status for r in outbox} == {"sent"}
    assert sum(r.attempts for r in outbox) == 20


# ------------------------------------------------------------------------------ permanent errors


@pytest.mark.parametrize("error", ["chat not found", "bot was kicked"])
async def test_a_dead_chat_fails_alerts_duty_once_and_reroutes_the_cards(session_factory, error):
    reports = await seed(session_factory, 3)
    async with BotAPIStandIn() as standin:
        if error == "chat not found":
            standin.fail_next(
                "sendMessage", 400, "Bad Request: chat not found", count=100, chat_id=UNIT_CHAT
            )
        else:
            standin.block_chat(UNIT_CHAT, "Forbidden: bot was kicked from the supergroup chat")
        async with running(make_worker(session_factory, standin)):
            await wait_until(
                lambda: {code for _, code in reports} <= set(code_counts(standin, DUTY_CHAT)), 10
            )
            await wait_until(lambda: len(standin.sent_to(DUTY_CHAT)) == 4)
        duty = [c.text or "" for c in standin.sent_to(DUTY_CHAT)]
        alerts = [text for text in duty if error in text.lower()]
        assert len(alerts) == 1 and str(UNIT_CHAT) in alerts[0]
        assert "CA phường Long Xuyên" in alerts[0]
        rerouted = [text for text in duty if CODE_RE.search(text)]
        assert len(rerouted) == 3
        assert all(text.startswith(t("vi", "officer.header.rerouted")) for text in rerouted)
        assert standin.sent_to(UNIT_CHAT) == []
    outbox = await rows(session_factory)
    originals = [r for r in outbox if r.dedupe_key == f"card:{r.report_id}"]
    assert {r.status for r in originals} == {"failed"}
    assert all(error in (r.last_error or "").lower() for r in originals)
    moved = [r for r in outbox if r.destination == "duty" and r.kind == "report_card"]
    assert sorted(r.dedupe_key or "" for r in moved) == sorted(
        f"card:{report_id}:duty" for report_id, _ in reports
    )
    assert {r.status for r in moved} == {"sent"}
    assert len([r for r in outbox if r.kind == "alert"]) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_dead_duty_chat_is_logged_without_tipster_data(session_factory, caplog):
    await seed(session_factory, 1, unit=None)
    async with BotAPIStandIn() as standin:
        standin.block_chat(DUTY_CHAT)
        worker = make_worker(session_factory, standin)
        with caplog.at_level(logging.ERROR, logger="bot.delivery"):
            assert await worker.run_once() == 1
        await worker.bot.shutdown()
    [row] = await rows(session_factory)
    assert row.status == "failed"
    assert any("duty chat" in r.getMessage() for r in caplog.records)
    assert all("ma túy" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_no_queue_and_no_duty_queue_keeps_the_card_waiting(session_factory):
    await seed(session_factory, 1)
    async with BotAPIStandIn() as standin:
        worker = make_worker(session_factory, standin, queue_map=QueueMap())
        assert await worker.run_once() == 0
        await worker.bot.shutdown()
        assert standin.calls == []
    [row] = await rows(session_factory)
    assert row.status == "pending"
    assert "TINBAO_DUTY_CHAT_ID" in (row.last_error or "") and row.last_error == NO_DUTY_ERROR
    assert row.next_attempt_at > utcnow() + timedelta(seconds=30)


# ------------------------------------------------------------------------------ processes


async def test_two_workers_on_one_database_never_send_a_row_twice(session_factory, db_url):
    reports = await seed(session_factory, 40, location=True)
    second_engine = create_engine(db_url)
    try:
        async with BotAPIStandIn() as standin:
            one = make_worker(session_factory, standin)
            two = make_worker(create_session_factory(second_engine), standin)
            async with running(one), running(two):
                await wait_until(
                    lambda: len(standin.calls_for("sendLocation", ok_only=True)) >= 40, 20
                )
                await asyncio.sleep(0.2)
            counts = code_counts(standin, UNIT_CHAT)
            assert all(counts[code] == 1 for _, code in reports)
            assert len(standin.calls_for("sendLocation", ok_only=True)) == 40
            # One sender per chat at a time (bot.delivery.landing): the two took turns, or one
            # kept the chat; each row went once either way.
            assert one.stats.rows_sent + two.stats.rows_sent == 40
    finally:
        await second_engine.dispose()


class RecordingTimers:
    def __init__(self) -> None:
        self.fired: list[int] = []

    async def fire(self, session, row: OutboxMessage) -> None:
        self.fired.append(row.id)
        await asyncio.sleep(0.05)  # let the other worker try meanwhile
        Outbox(session).enqueue(
            kind="alert",
            destination="duty",
            payload={"reason": "generic", "error": f"timer {row.kind}"},
            dedupe_key=f"timer-alert:{row.id}",
        )


async def test_a_timer_fires_once_with_two_workers(session_factory, db_url):
    async with session_factory() as session, session.begin():
        Outbox(session).enqueue(
            kind="timer.test", destination="timer", payload={}, dedupe_key="timer.test:1"
        )
    second_engine = create_engine(db_url)
    timers = RecordingTimers()
    try:
        async with BotAPIStandIn() as standin:
            one = make_worker(session_factory, standin, timers=timers)
            two = make_worker(create_session_factory(second_engine), standin, timers=timers)
            await asyncio.gather(one.run_once(), two.run_once())
            assert len(timers.fired) == 1
            await one.run_once()
            for worker in (one, two):
                await worker.bot.shutdown()
            assert [c.text for c in standin.sent_to(DUTY_CHAT)] == [
                t("vi", "officer.alert.generic", error="timer timer.test")
            ]
    finally:
        await second_engine.dispose()
    statuses = {r.kind: r.status for r in await rows(session_factory)}
    assert statuses == {"timer.test": "done", "alert": "sent"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_kinds_it_does_not_send_are_left_alone(session_factory):
    async with session_factory() as session, session.begin():
        Outbox(session).enqueue(
            kind="citizen_message", destination="report:1", payload={"key": "x"}
        )
    async with BotAPIStandIn() as standin:
        worker = make_worker(session_factory, standin)
        assert await worker.run_once() == 0
        await worker.bot.shutdown()
        assert standin.calls == []
    [row] = await rows(session_factory)
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, None)
