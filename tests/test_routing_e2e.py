"""Reports reach the right officers' chat, and officers act on the card: end to end through
python-telegram-bot, the delivery worker and the Bot API stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from handlers.i18n import t
from storage.models import CardPost, OutboxMessage, Report, ReportEvent
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory

DATA = Path(__file__).parent / "data"
LX_CHAT = -1002000000001  # the Long Xuyên cluster's group in tests/data/queues_small.toml
DUTY_CHAT = -1009999999999


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


def queues_file(tmp_path: Path) -> Path:
    path = tmp_path / "queues.toml"
    path.write_text(
        f"""
[[queue]]
key = "long-xuyen"
name = "Cụm Long Xuyên"
chat_id = {LX_CHAT}
units = ["30307", "30292"]
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def ack_minutes() -> float:
    """Long enough that a test acknowledging in time never races the escalation."""
    return 1.0


@pytest.fixture
async def service(standin, db_url, engine, tmp_path, ack_minutes):
    settings = service_settings(
        standin,
        db_url,
        tmp_path,
        queues_file=queues_file(tmp_path),
        duty_chat_id=DUTY_CHAT,
        geometry_file=DATA / "geometry_small.geojson",
        admin_telegram_ids=[424242],
        emergency_ack_minutes=ack_minutes,
    )
    async with running_service(settings) as running:
        yield running


async def wait_until(predicate, seconds: float = 30.0):
    """Poll the database until ``predicate`` holds (the worker writes after it sends)."""
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 - the state is in the database
            await asyncio.sleep(0.05)


async def test_an_emergency_reaches_its_unit_and_is_acknowledged(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("accident")
    geo = (DATA / "geometry_small.geojson").read_text()
    assert "30307" in geo
    await chat.say("Ngã tư chợ Long Xuyên, xe tải va xe máy")
    await chat.press(t("vi", "acc.inj_2"))
    await chat.press(t("vi", "acc.send_now"))
    card = await standin.wait_for(
        lambda c: c.method == "sendMessage" and c.chat_id == LX_CHAT and c.ok, timeout=10
    )
    assert card.params.get("protect_content") is True
    assert str(factory.vi_user.id) not in str(card.params)
    assert factory.vi_user.first_name not in str(card.params)
    buttons = card.params["reply_markup"]["inline_keyboard"]
    ack = buttons[0][0]
    assert ack["callback_data"].startswith("r:ack:")

    async def posted() -> bool:
        async with service.session_factory() as session:
            return await session.scalar(select(CardPost)) is not None

    await wait_until(posted)
    # A member of the group who is not an officer presses it: nothing changes.
    stranger = factory.new_user(first_name="Người lạ", user_id=777001)
    press = factory.callback(stranger, ack["callback_data"], message=card.result)
    before = service.telegram.updates_handled
    standin.push_update(press)
    await service.telegram.wait_handled(before + 1)
    answer = standin.calls_for("answerCallbackQuery")[-1]
    assert answer.params.get("text") == t("vi", "triage.not_permitted")
    # The admin acknowledges: the card is edited in place and the escalation stops.
    admin = factory.new_user(first_name="Quản trị", user_id=424242)
    before = service.telegram.updates_handled
    standin.push_update(factory.callback(admin, ack["callback_data"], message=card.result))
    await service.telegram.wait_handled(before + 1)
    assert standin.calls_for("answerCallbackQuery")[-1].params.get("text") == t(
        "vi", "triage.acknowledged"
    )
    edits = [c for c in standin.calls_for("editMessageText") if c.chat_id == LX_CHAT]
    assert edits and t("vi", "officer.status.acknowledged") in edits[-1].text
    async with service.session_factory() as session:
        report = await session.scalar(select(Report))
        assert report.status == "acknowledged"
        events = (await session.scalars(select(ReportEvent.action))).all()
        assert "acknowledged" in events and "escalated" not in events
        timers = (
            await session.scalars(
                select(OutboxMessage.status).where(OutboxMessage.kind == "timer.escalate")
            )
        ).all()
        assert list(timers) == ["cancelled"]
    assert not standin.calls_for("forwardMessage")


@pytest.mark.parametrize("ack_minutes", [0.02])
async def test_an_unacknowledged_emergency_escalates_once(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.en_user)
    await chat.command("accident")
    await chat.say("Bridge near Long Xuyen market")
    await chat.press(t("en", "acc.inj_unknown"))
    await chat.press(t("en", "acc.send_now"))
    escalated = await standin.wait_for(
        lambda c: c.method == "sendMessage" and c.chat_id == DUTY_CHAT and c.ok, timeout=15
    )
    assert t("vi", "officer.header.escalated").split()[0] in escalated.text
    await asyncio.sleep(1.0)
    assert len([c for c in standin.calls_for("sendMessage") if c.chat_id == DUTY_CHAT]) == 1
    async with service.session_factory() as session:
        events = (
            await session.scalars(
                select(ReportEvent.action).where(ReportEvent.action == "escalated")
            )
        ).all()
    assert len(events) == 1


async def test_a_unit_without_a_queue_goes_to_duty(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say("chau doc")
    await chat.press("Phường Châu Đốc")
    await chat.press(t("vi", "when.today"))
    await chat.say("Trộm cắp xe đạp ở trường học")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.none", mark=""))
    await chat.press(t("vi", "summary.confirm"))
    card = await standin.wait_for(
        lambda c: c.method == "sendMessage" and c.chat_id == DUTY_CHAT and c.ok, timeout=10
    )
    assert "Châu Đốc" in card.text

    async def posted() -> bool:
        async with service.session_factory() as session:
            post = await session.scalar(select(CardPost))
            return post is not None and post.chat_id == DUTY_CHAT

    await wait_until(posted)
