"""The outbox contract, a citizen message through a channel with no buttons, and an unacknowledged
emergency already in the duty queue (one reminder, as a reply, no photo again). Real
python-telegram-bot against the Bot API stand-in where Telegram is involved; SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select

from bot.channel import ChannelRegistry, SendError
from bot.delivery import CitizenMessenger
from handlers.channels import CAPABILITIES, Capabilities, ChannelName
from handlers.escalation import Timers
from handlers.events import Button, Reply
from handlers.i18n import t
from handlers.outbox import (
    CardPayload,
    CitizenPayload,
    Destination,
    Kind,
    TimerPayload,
    Where,
    enqueue,
    payload_of,
)
from handlers.render import render, split_text
from handlers.security import Keyring, format_code, new_tracking_code
from storage.models import (
    ContactRoute,
    MediaBlob,
    RelayMessage,
    Report,
    ReportMedia,
)
from storage.repositories import Reports
from tests.driver import TEST_KEY, sync_units
from tests.standin import BotAPIStandIn
from tests.standin.factory import make_jpeg
from tests.test_delivery import DUTY_CHAT, QUEUES, make_worker, rows, seed

KEYRING = Keyring(TEST_KEY)


@pytest.fixture
async def session_factory(session_factory):
    await sync_units(session_factory)
    return session_factory


# ------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize(
    "text",
    [
        "duty",
        "timer",
        "unit:30307",
        "queue:long-xuyen",
        "chat:-100123",
        "chat:-100123/7",
        "report:42",
    ],
)
def test_a_destination_reads_back_as_written(text: str) -> None:
    assert str(Destination.parse(text)) == text


@pytest.mark.parametrize("text", ["", "nowhere", "unit:", "chat:x", "report:", "mars:1"])
def test_a_malformed_destination_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"destination|invalid literal"):
        Destination.parse(text)


def test_destination_helpers() -> None:
    assert Destination.for_unit(None).where == Where.DUTY
    assert str(Destination.for_unit("30307")) == "unit:30307"
    assert Destination.chat(-100, 3).chat_key == "-100/3"


def test_a_payload_ignores_the_workers_progress_keys() -> None:
    data = {**CardPayload(report_id=5, header="escalated").to_json(), "done": ["card"], "msg": 9}
    assert payload_of("report_card", data) == CardPayload(report_id=5, header="escalated")
    with pytest.raises(LookupError):
        payload_of("carrier_pigeon", {})


# ------------------------------------------------------------------------------ the renderer


def test_buttons_become_a_numbered_list_without_buttons() -> None:
    reply = Reply(text="Chọn", buttons=[[Button("Có", "y"), Button("Không", "n")]])
    [out] = render([reply], CAPABILITIES[ChannelName.ZALO_BOT])
    assert out.text == "Chọn\n\n1. Có\n2. Không" and out.buttons == []
    [same] = render([reply], CAPABILITIES[ChannelName.TELEGRAM])
    assert same.buttons == reply.buttons and same.text == "Chọn"


def test_a_long_text_is_split_at_the_limit() -> None:
    text = " ".join(["từ"] * 1500)
    pieces = split_text(text, 2000)
    assert all(len(p) <= 2000 for p in pieces) and len(pieces) == 3
    assert " ".join(pieces) == text


# ------------------------------------------------------------------------------ citizens


class TextOnlyChannel:
    """A stand-in citizen channel with no buttons, no edits and no reply-to (Zalo-like)."""

    def __init__(self, name: ChannelName = ChannelName.ZALO_BOT, fail: SendError | None = None):
        self._name = name
        self.fail = fail
        self.sent: list[tuple[str, list[Reply]]] = []

    @property
    def name(self) -> ChannelName:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES[ChannelName.ZALO_BOT]

    async def send(self, chat_id: str, replies: Sequence[Reply]) -> list[str]:
        if self.fail is not None:
            raise self.fail
        self.sent.append((chat_id, list(replies)))
        return []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def state(self) -> str:
        return "running"


async def _report_with_route(session_factory, route: dict[str, Any]) -> tuple[int, str]:
    async with session_factory() as session, session.begin():
        [(report_id, code)] = await seed_in(session)
        report = await session.get(Report, report_id)
        assert report is not None
        report.contact_mode = "relay"
        Reports(session).add_contact_route(
            report, sender_key="k" * 64, route=KEYRING.encrypt(route), phone=None
        )
        relay = RelayMessage(report_id=report_id, direction="to_citizen", text="Xe màu gì?")
        session.add(relay)
        await session.flush()
        enqueue(
            session,
            CitizenPayload(relay_id=relay.id),
            Destination.citizen(report_id),
            report_id=report_id,
        )
    return report_id, code


async def seed_in(session) -> list[tuple[int, str]]:
    report = Report(
        code=new_tracking_code(),
        kind="tip",
        category="drugs",
        unit_code="30307",
        description="mô tả",
        contact_mode="none",
        pin_hash="x",
        locale="vi",
        channel="zalo_bot",
    )
    await Reports(session).add(report, [])
    return [(report.id, format_code(report.code))]


async def test_a_question_reaches_a_channel_without_reply_to_as_type_your_answer_now(
    session_factory,
):
    _, code = await _report_with_route(
        session_factory, {"channel": "zalo_bot", "chat_id": "zalo-user-1"}
    )
    zalo = TextOnlyChannel()
    registry = ChannelRegistry()
    registry.add(zalo)
    messenger = CitizenMessenger(session_factory, registry, KEYRING, per_second=1000)
    assert await messenger.run_once() == 1
    [(chat_id, [reply])] = zalo.sent
    assert chat_id == "zalo-user-1" and reply.buttons == [] and reply.keyboard is None
    assert reply.text == t("vi", "answers.question_type_now", code=code, text="Xe màu gì?")
    assert t("vi", "relay.answer_button") not in reply.text
    [row] = await rows(session_factory, kind=Kind.CITIZEN_MESSAGE.value)
    assert row.status == "sent"


async def test_a_route_without_a_channel_goes_through_telegram(session_factory):
    await _report_with_route(session_factory, {"chat_id": "4242"})
    telegram = TextOnlyChannel(ChannelName.TELEGRAM)
    registry = ChannelRegistry()
    registry.add(TextOnlyChannel())
    registry.add(telegram)
    messenger = CitizenMessenger(session_factory, registry, KEYRING, per_second=1000)
    assert await messenger.run_once() == 1
    assert [chat for chat, _ in telegram.sent] == ["4242"]


async def test_a_channel_that_is_off_keeps_the_message_waiting(session_factory):
    await _report_with_route(session_factory, {"channel": "zalo_oa", "chat_id": "x"})
    messenger = CitizenMessenger(session_factory, ChannelRegistry(), KEYRING, per_second=1000)
    assert await messenger.run_once() == 0
    [row] = await rows(session_factory, kind=Kind.CITIZEN_MESSAGE.value)
    assert row.status == "pending" and row.attempts == 0


@pytest.mark.parametrize(
    ("error", "status", "attempts"),
    [
        (SendError("429", retry_after=30), "pending", 1),
        (SendError("timeout"), "pending", 1),
        (SendError("refused", permanent=True), "failed", 1),
    ],
)
async def test_send_errors_drive_retry_and_failure(session_factory, error, status, attempts):
    await _report_with_route(session_factory, {"channel": "zalo_bot", "chat_id": "z"})
    registry = ChannelRegistry()
    registry.add(TextOnlyChannel(fail=error))
    messenger = CitizenMessenger(session_factory, registry, KEYRING, per_second=1000)
    await messenger.run_once()
    [row] = await rows(session_factory, kind=Kind.CITIZEN_MESSAGE.value)
    assert (row.status, row.attempts) == (status, attempts)


async def test_a_citizen_gone_from_the_channel_blocks_the_route_and_tells_the_officers(
    session_factory,
):
    report_id, code = await _report_with_route(
        session_factory, {"channel": "zalo_bot", "chat_id": "z"}
    )
    registry = ChannelRegistry()
    registry.add(TextOnlyChannel(fail=SendError("unfollowed", gone=True)))
    messenger = CitizenMessenger(session_factory, registry, KEYRING, per_second=1000)
    await messenger.run_once()
    async with session_factory() as session:
        route = await session.scalar(
            select(ContactRoute).where(ContactRoute.report_id == report_id)
        )
    assert route is not None and route.blocked_at is not None
    [notice] = await rows(session_factory, kind=Kind.CHAT_TEXT.value)
    assert notice.payload["text"] == t("vi", "relay.tipster_blocked", code=code)
    assert notice.destination == "unit:30307"


# ------------------------------------------------------------------------------ escalation


def _reply_to(params: dict[str, Any]) -> int | None:
    value = params.get("reply_parameters")
    if isinstance(value, str):
        value = json.loads(value)
    return int(value["message_id"]) if isinstance(value, dict) else None


async def test_an_emergency_unacknowledged_in_the_duty_queue_gets_one_reminder(session_factory):
    [(report_id, code)] = await seed(session_factory, 1, kind="emergency", unit=None)
    async with session_factory() as session, session.begin():
        blob = MediaBlob(content=make_jpeg(), mime="image/jpeg", sha256="0" * 64, size=10)
        session.add(blob)
        await session.flush()
        session.add(ReportMedia(report_id=report_id, position=0, kind="photo", blob_id=blob.id))
    async with BotAPIStandIn() as standin:
        worker = make_worker(session_factory, standin, timers=Timers(QUEUES))
        await worker.run_once()
        first = standin.sent_to(DUTY_CHAT)
        assert [c.method for c in first] == ["sendMessage", "sendPhoto"]
        card_id = first[0].result["message_id"]
        async with session_factory() as session, session.begin():
            enqueue(
                session,
                TimerPayload(report_id=report_id),
                Destination.timer(),
                kind=Kind.TIMER_ESCALATE,
                report_id=report_id,
            )
        await worker.run_once()
        await worker.run_once()
        await worker.bot.shutdown()
        later = standin.sent_to(DUTY_CHAT)[len(first) :]
    assert [c.method for c in later] == ["sendMessage"]
    [reminder] = later
    assert _reply_to(reminder.params) == card_id
    assert code in (reminder.text or "")
    kinds = [r.kind for r in await rows(session_factory) if r.kind != Kind.TIMER_ESCALATE]
    assert kinds == ["report_card", "reminder"]
