"""The README's default set-up, end to end: ``TINBAO_DUTY_CHAT_ID`` set, no queue file, the first
admin's id in ``TINBAO_ADMIN_TELEGRAM_IDS``. The duty queue is a queue like any other: the admin
enrols an officer there, the officer lists, claims and sees the reports in the chat and the panel,
and rewards are proposed and decided there (the rewards chat falls back to the duty queue).
Through python-telegram-bot, the delivery workers and the Bot API stand-in."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from admin.cli import _create
from admin.web import build_web_app
from handlers.i18n import t
from handlers.security import format_code
from storage.models import CardPost, Officer, Report, Reward
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import Group, UpdateFactory

DUTY = Group(-1009999999999, "Trực ban Công an tỉnh")
ADMIN_ID = 616161
OFFICER_ID = 880102
PASSWORD = "correct horse battery staple"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path: Path):
    settings = service_settings(
        standin, db_url, tmp_path, duty_chat_id=DUTY.id, admin_telegram_ids=[ADMIN_ID]
    )
    assert settings.queues_file is None
    async with running_service(settings) as running:
        yield running


async def until(predicate, seconds: float = 30.0):
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 - state lives in the database
            await asyncio.sleep(0.05)


async def test_the_default_duty_queue_works_for_officers(standin, service):
    factory = UpdateFactory(standin)
    tipster = factory.new_user(first_name="Ẩn Danh", user_id=880101)
    officer = factory.new_user(first_name="Thiếu úy", last_name="Hà", user_id=OFFICER_ID)
    admin = factory.new_user(first_name="Quản trị", user_id=ADMIN_ID)
    chat = Chat(standin, factory, service, tipster)

    async def in_duty(user, command, args=None):
        before = service.telegram.updates_handled
        standin.push_update(factory.group_command(user, command, args, group=DUTY))
        await service.telegram.wait_handled(before + 1)

    # The admin enrols the officer by id, in the duty group.
    await in_duty(admin, "enrol", f"officer {OFFICER_ID} Thiếu úy Hà")
    enrolled = await standin.wait_for(
        lambda c: c.chat_id == DUTY.id and "Thiếu úy Hà" in (c.text or ""), timeout=10
    )
    assert t("vi", "triage.not_a_queue") not in enrolled.text
    async with service.session_factory() as session:
        row = await session.scalar(select(Officer).where(Officer.telegram_user_id == OFFICER_ID))
        assert row is not None and [s.queue_key for s in row.scopes] == ["duty"]

    # A tip for a unit without a queue of its own reaches the duty group.
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    await chat.say("Trộm xe máy trước cổng chợ lúc sáng sớm")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.none", mark=""))
    await chat.press(t("vi", "summary.confirm"))
    card_call = await standin.wait_for(
        lambda c: (
            c.method == "sendMessage"
            and c.chat_id == DUTY.id
            and c.ok
            and "r:claim:" in str(c.params.get("reply_markup"))
        ),
        timeout=10,
    )
    card = card_call.result

    async def posted() -> bool:
        async with service.session_factory() as session:
            return await session.scalar(select(CardPost)) is not None

    await until(posted)
    async with service.session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None and report.unit_code is not None
        code = report.code

    # The officer's /queue lists it, and /stats and /officers answer too.
    for command in ("queue", "stats", "officers"):
        await in_duty(officer, command)
    # The answers go out through the outbox (the group's flood budget): wait for the listing.
    listed = await standin.wait_for(
        lambda c: c.chat_id == DUTY.id and format_code(code) in (c.text or "") and "•" in c.text,
        timeout=20,
    )
    assert t("vi", "triage.queue_empty") not in (listed.text or "")
    texts = standin.texts_to(DUTY.id)
    assert not any(t("vi", "triage.not_a_queue") in text for text in texts)
    assert not any(t("vi", "triage.not_permitted") in text for text in texts)

    # The officer's claim is honoured, and the card is edited in place.
    claim = next(
        b["callback_data"]
        for row in card["reply_markup"]["inline_keyboard"]
        for b in row
        if b["callback_data"].startswith("r:claim:")
    )
    before = service.telegram.updates_handled
    standin.push_update(factory.callback(officer, claim, message=card))
    await service.telegram.wait_handled(before + 1)
    answer = standin.calls_for("answerCallbackQuery")[-1].params.get("text")
    assert answer == t("vi", "triage.claimed")
    await standin.wait_for(
        lambda c: (
            c.method == "editMessageText"
            and c.chat_id == DUTY.id
            and c.params.get("message_id") == card["message_id"]
        ),
        timeout=10,
    )
    async with service.session_factory() as session:
        claimed = await session.scalar(select(Report))
        assert claimed is not None and claimed.status == "assigned"

    # A panel account made with `create-user --role officer --queue duty` sees the report.
    args = argparse.Namespace(
        username="ha.duty", role="officer", queue="duty", name="Thiếu úy Hà", reset=False
    )
    status, message = await _create(service.settings, args, PASSWORD)
    assert status == 0, message
    client = TestClient(TestServer(build_web_app(service)))
    await client.start_server()
    try:
        page = await client.get("/admin/login")
        token = CSRF_RE.search(await page.text())
        assert token is not None
        response = await client.post(
            "/admin/login",
            data={"username": "ha.duty", "password": PASSWORD, "csrf": token[1]},
            allow_redirects=False,
        )
        assert response.status == 303
        listing_page = await (await client.get("/admin/reports")).text()
        assert code in listing_page
        detail = await client.get(f"/admin/reports/{code}")
        assert detail.status == 200
    finally:
        await client.close()


def _buttons(call) -> dict[str, str]:
    """Label → callback data of a recorded call's inline keyboard."""
    markup = call.params.get("reply_markup") or {}
    if isinstance(markup, str):
        markup = json.loads(markup)
    return {
        b["text"]: b["callback_data"]
        for row in markup.get("inline_keyboard", [])
        for b in row
        if "callback_data" in b
    }


async def test_a_reward_is_proposed_and_decided_in_the_duty_group(standin, service):
    """With no queue file and no rewards chat, the duty group is the rewards chat: an officer
    proposes on the duty card, the admin approves there with a reason, the tipster gets the
    claim code in their chat, and the payout is recorded with it, all in the duty group."""
    factory = UpdateFactory(standin)
    tipster = factory.new_user(first_name="Ẩn Danh", user_id=880111)
    officer = factory.new_user(first_name="Thiếu úy", last_name="Hà", user_id=OFFICER_ID)
    admin = factory.new_user(first_name="Quản trị", user_id=ADMIN_ID)
    chat = Chat(standin, factory, service, tipster)
    assert service.settings.rewards_chat_id is None
    assert service.telegram is not None
    telegram = service.telegram

    async def in_duty(update) -> None:
        before = telegram.updates_handled
        standin.push_update(update)
        await telegram.wait_handled(before + 1)

    await in_duty(factory.group_command(admin, "enrol", f"officer {OFFICER_ID} Hà", group=DUTY))

    # A tip whose tipster chose the anonymous chat: the reward's claim code can reach them.
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    await chat.say("Trộm xe máy trước cổng chợ lúc sáng sớm")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.relay", mark="✓ "))
    await chat.press(t("vi", "summary.confirm"))
    card_call = await standin.wait_for(
        lambda c: (
            c.method == "sendMessage"
            and c.chat_id == DUTY.id
            and c.ok
            and "r:claim:" in str(c.params.get("reply_markup"))
        ),
        timeout=10,
    )
    card = card_call.result
    card_id = card["message_id"]

    async def recorded(message) -> None:
        """Until the worker has recorded a message it sent (after sending it): a press on it
        is honoured only then."""

        async def found() -> bool:
            async with service.session_factory() as session:
                post = await session.scalar(
                    select(CardPost).where(
                        CardPost.chat_id == DUTY.id,
                        CardPost.message_id == message["message_id"],
                    )
                )
                return post is not None

        await until(found)

    await recorded(card)

    def latest_card(start: int):
        """The card as last edited (at or after call ``start``)."""
        return standin.wait_for(
            lambda c: (
                c.method in ("editMessageText", "editMessageReplyMarkup")
                and c.chat_id == DUTY.id
                and c.params.get("message_id") == card_id
                and c.ok
            ),
            timeout=10,
            start=start,
        )

    # Claimed, then resolved as clarified through the card's buttons and the bot's prompts.
    buttons = _buttons(card_call)
    for label in (t("vi", "card.btn.claim"), t("vi", "card.btn.resolve")):
        mark = len(standin.calls)
        await in_duty(factory.callback(officer, buttons[label], message=card))
        buttons = _buttons(await latest_card(mark))
    mark = len(standin.calls)
    await in_duty(factory.callback(officer, buttons[t("vi", "outcome.clarified")], message=card))
    subjects = await standin.wait_for(
        lambda c: c.chat_id == DUTY.id and c.ok and t("vi", "outcome.clarified") in (c.text or ""),
        timeout=20,
        start=mark,
    )
    mark = len(standin.calls)
    await in_duty(factory.group_text(officer, "1", group=DUTY, reply_to=subjects.result))
    arrest = await standin.wait_for(
        lambda c: c.chat_id == DUTY.id and c.ok and t("vi", "card.btn.no") in _buttons(c),
        timeout=20,
        start=mark,
    )
    await recorded(arrest.result)
    mark = len(standin.calls)
    no = _buttons(arrest)[t("vi", "card.btn.no")]
    await in_duty(factory.callback(officer, no, message=arrest.result))
    refreshed = await standin.wait_for(
        lambda c: (
            c.chat_id == DUTY.id
            and c.params.get("message_id") == card_id
            and c.ok
            and t("vi", "reward.btn.propose") in _buttons(c)
        ),
        timeout=20,
        start=mark,
    )
    buttons = _buttons(refreshed)
    async with service.session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None and report.status == "resolved"
        code = format_code(report.code)

    # The officer proposes a reward on the duty card, answering the bot's prompt.
    propose = buttons[t("vi", "reward.btn.propose")]
    mark = len(standin.calls)
    await in_duty(factory.callback(officer, propose, message=card))
    prompt = await standin.wait_for(
        lambda c: c.chat_id == DUTY.id and c.ok and code in (c.text or "") and "💰" in c.text,
        timeout=20,
        start=mark,
    )
    mark = len(standin.calls)
    await in_duty(
        factory.group_text(
            officer, "2.000.000 Thông tin giúp bắt quả tang", group=DUTY, reply_to=prompt.result
        )
    )
    # The proposal goes to the rewards chat, which falls back to the duty group.
    proposal = await standin.wait_for(
        lambda c: (
            c.chat_id == DUTY.id
            and c.ok
            and t("vi", "reward.btn.approve") in str(c.params.get("reply_markup"))
        ),
        timeout=20,
        start=mark,
    )
    assert code in (proposal.text or "") and "2.000.000" in proposal.text
    assert not any(t("vi", "triage.not_a_queue") in text for text in standin.texts_to(DUTY.id))
    approve = _buttons(proposal)[t("vi", "reward.btn.approve")]
    await recorded(proposal.result)

    # An officer may not decide a reward; the admin does, with a reason.
    await in_duty(factory.callback(officer, approve, message=proposal.result))
    assert standin.calls_for("answerCallbackQuery")[-1].params.get("text") == t(
        "vi", "triage.not_permitted"
    )
    mark = len(standin.calls)
    await in_duty(factory.callback(admin, approve, message=proposal.result))
    assert standin.calls_for("answerCallbackQuery")[-1].params.get("text") == t(
        "vi", "triage.prompt.sent"
    )
    reason_prompt = await standin.wait_for(
        lambda c: (
            c.chat_id == DUTY.id
            and c.ok
            and t("vi", "reward.decision.approve") in (c.text or "")
            and code in c.text
        ),
        timeout=20,
        start=mark,
    )
    await in_duty(
        factory.group_text(
            admin, "Đúng quy định khen thưởng", group=DUTY, reply_to=reason_prompt.result
        )
    )
    await standin.wait_for(
        lambda c: (
            c.chat_id == DUTY.id
            and c.ok
            and c.text == t("vi", "reward.approved_done", amount="2.000.000 ₫", code=code)
        ),
        timeout=20,
    )
    async with service.session_factory() as session:
        reward = await session.scalar(select(Reward))
        assert reward is not None and reward.status == "approved"

    # The tipster is sent the claim code in their own chat, and pays out with it in the group.
    note = await standin.wait_for(
        lambda c: c.chat_id == tipster.id and c.ok and "2.000.000" in (c.text or ""), timeout=20
    )
    claim = re.search(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}", note.text)
    assert claim is not None, note.text
    mark = len(standin.calls)
    await in_duty(
        factory.group_command(officer, "payout", f"{claim.group(0)} PC-0001", group=DUTY)
    )
    await standin.wait_for(
        lambda c: c.chat_id == DUTY.id and c.ok and "PC-0001" in (c.text or ""),
        timeout=20,
        start=mark,
    )
    async with service.session_factory() as session:
        paid = await session.scalar(select(Reward))
        assert paid is not None and paid.status == "paid"
        assert paid.payout_reference == "PC-0001"
