"""Officers triage in their Telegram group, with the anonymous relay: end to end through
python-telegram-bot, the delivery workers and the Bot API stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from handlers.i18n import t
from storage.models import CardPost, Report
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import Group, UpdateFactory

LX = Group(-1002000000001, "Công an phường Long Xuyên")
ADMIN_ID = 515151


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path: Path):
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        'units = ["30307", "30292"]\n',
        encoding="utf-8",
    )
    settings = service_settings(
        standin,
        db_url,
        tmp_path,
        queues_file=queues,
        duty_chat_id=-1009999999999,
        admin_telegram_ids=[ADMIN_ID],
    )
    async with running_service(settings) as running:
        yield running


async def until(predicate, seconds: float = 30.0):
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 - state lives in the database
            await asyncio.sleep(0.05)


class Group_:
    """Officers acting in the group."""

    def __init__(self, standin, factory, service):
        self.standin, self.factory, self.service = standin, factory, service

    async def send(self, update):
        before = self.service.telegram.updates_handled
        self.standin.push_update(update)
        await self.service.telegram.wait_handled(before + 1)
        return self.standin.calls[-10:]

    async def press(self, user, message, data):
        await self.send(self.factory.callback(user, data, message=message))
        return self.standin.calls_for("answerCallbackQuery")[-1].params.get("text")

    async def command(self, user, name, args=None, reply_to=None):
        update = self.factory.group_command(user, name, args, group=LX)
        if reply_to is not None:
            update["message"]["reply_to_message"] = reply_to
        return await self.send(update)

    async def reply(self, user, text, to):
        return await self.send(self.factory.group_text(user, text, group=LX, reply_to=to))


async def card_in_group(standin) -> dict:
    call = await standin.wait_for(
        lambda c: (
            c.method == "sendMessage"
            and c.chat_id == LX.id
            and c.ok
            and "r:claim:" in str(c.params.get("reply_markup"))
        ),
        timeout=10,
    )
    return call.result


def button(message: dict, prefix: str) -> str:
    for row in message["reply_markup"]["inline_keyboard"]:
        for b in row:
            if b["callback_data"].startswith(prefix):
                return b["callback_data"]
    raise AssertionError(f"no {prefix} button")


async def test_full_triage_with_the_relay_both_ways(standin, service):
    factory = UpdateFactory(standin)
    tipster = factory.new_user(first_name="Bí Mật", username="secret_tipster", user_id=880001)
    officer = factory.new_user(first_name="Trung úy", last_name="Lâm", user_id=880002)
    admin = factory.new_user(first_name="Quản trị", user_id=ADMIN_ID)
    group = Group_(standin, factory, service)
    chat = Chat(standin, factory, service, tipster)

    # The admin enrols the officer by replying to one of their messages.
    hello = factory.group_text(officer, "Chào mọi người", group=LX)["message"]
    await group.command(admin, "enrol", "officer", reply_to=hello)
    await standin.wait_for(
        lambda c: c.chat_id == LX.id and "Trung úy Lâm" in (c.text or ""), timeout=10
    )

    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.drugs"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    await chat.say("Mua bán ma túy ở quán nước đầu hẻm 5")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.relay", mark="✓ "))
    await chat.press(t("vi", "summary.confirm"))
    card = await card_in_group(standin)

    async def posted() -> bool:
        async with service.session_factory() as session:
            return await session.scalar(select(CardPost)) is not None

    await until(posted)
    notice = await group.press(officer, card, button(card, "r:claim:"))
    assert notice == t("vi", "triage.claimed")
    # The tipster hears that an officer has it.
    await standin.wait_for(
        lambda c: c.chat_id == tipster.id and "👮" in (c.text or ""), timeout=10
    )
    # Ask: a force-reply prompt in the group, the officer answers it.
    await group.press(officer, card, button(card, "r:ask:"))
    prompt = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "force_reply" in str(c.params.get("reply_markup")),
        timeout=10,
    )
    await group.reply(officer, "Quán tên gì, mấy giờ mở cửa?", prompt.result)
    question = await standin.wait_for(
        lambda c: c.chat_id == tipster.id and "Quán tên gì" in (c.text or ""), timeout=10
    )
    assert "Trung úy" not in question.text and "Lâm" not in question.text
    # The tipster answers through the Reply button.
    answer_button = question.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    await chat.send(factory.callback(tipster, answer_button, message=question.result))
    await chat.say("Quán Cô Ba, mở từ 6 giờ")
    relayed = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "Quán Cô Ba" in (c.text or ""), timeout=10
    )
    assert relayed.params["reply_parameters"]["message_id"] == card["message_id"]
    for call in standin.calls:
        if call.chat_id == LX.id:
            for needle in (str(tipster.id), "Bí Mật", "secret_tipster"):
                assert needle not in str(call.params)
    assert not standin.calls_for("forwardMessage")

    # Resolve with outcome and counts.
    await group.press(officer, card, button(card, "r:res:"))
    edited = [c for c in standin.calls_for("editMessageText") if c.chat_id == LX.id][-1]
    outcome_button = button(edited.result, "r:out:")
    assert outcome_button.endswith(":clarified")
    await group.press(officer, edited.result, outcome_button)
    count_prompt = await standin.wait_for(
        lambda c: (
            c.chat_id == LX.id
            and "force_reply" in str(c.params.get("reply_markup"))
            and c.result["message_id"] != prompt.result["message_id"]
        ),
        timeout=10,
    )
    await group.reply(officer, "2", count_prompt.result)
    yes_no = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "r:arr:" in str(c.params.get("reply_markup")), timeout=10
    )

    async def note_posted() -> bool:
        async with service.session_factory() as session:
            return (
                await session.scalar(select(CardPost).where(CardPost.kind == "note")) is not None
            )

    await until(note_posted)
    assert await group.press(officer, yes_no.result, button(yes_no.result, "r:arr:")) == t(
        "vi", "triage.resolved"
    )
    async with service.session_factory() as session:
        report = await session.scalar(select(Report))
        assert (report.status, report.outcome, report.subjects_handled) == (
            "resolved",
            "clarified",
            2,
        )
        assert report.citizen_assisted_arrest is True
    await standin.wait_for(
        lambda c: (
            c.chat_id == tipster.id and t("vi", "outcome.citizen.clarified") in (c.text or "")
        ),
        timeout=10,
    )


async def test_a_blocked_tipster_is_reported_to_the_officers(standin, service):
    factory = UpdateFactory(standin)
    tipster = factory.new_user(first_name="Ẩn", user_id=880101)
    officer = factory.new_user(first_name="Cán bộ", user_id=ADMIN_ID)
    group = Group_(standin, factory, service)
    chat = Chat(standin, factory, service, tipster)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.now"))
    await chat.say("Trộm xe máy trước cổng chợ")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.relay", mark="✓ "))
    await chat.press(t("vi", "summary.confirm"))
    card = await card_in_group(standin)

    async def posted() -> bool:
        async with service.session_factory() as session:
            return await session.scalar(select(CardPost)) is not None

    await until(posted)
    standin.block_chat(tipster.id)
    await group.press(officer, card, button(card, "r:ask:"))
    prompt = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "force_reply" in str(c.params.get("reply_markup")),
        timeout=10,
    )
    await group.reply(officer, "Xe màu gì?", prompt.result)
    await standin.wait_for(
        lambda c: c.chat_id == LX.id and "đã chặn bot" in (c.text or ""), timeout=10
    )
