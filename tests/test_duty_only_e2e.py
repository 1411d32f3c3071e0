"""The README's default set-up, end to end: ``TINBAO_DUTY_CHAT_ID`` set, no queue file, the first
admin's id in ``TINBAO_ADMIN_TELEGRAM_IDS``. The duty queue is a queue like any other: the admin
enrols an officer there, the officer lists, claims and sees the reports in the chat and the panel.
Through python-telegram-bot, the delivery workers and the Bot API stand-in."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from admin.cli import _create
from admin.web import build_web_app
from handlers.i18n import t
from handlers.security import format_code
from storage.models import CardPost, Officer, Report
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
