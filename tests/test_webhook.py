"""Telegram by webhook on the service's own aiohttp server."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from sqlalchemy import func, select

from admin.web import build_web_app
from bot.runtime import Service
from handlers.i18n import t
from storage.models import Report
from tests.e2e import Chat, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory

SECRET = "webhook-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def webhook_service(standin, db_url, engine, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/telegram/webhook"
    settings = service_settings(
        standin, db_url, tmp_path, webhook_url=url, webhook_secret=SECRET, http_port=port
    )
    service = await Service.create(settings)
    app = build_web_app(service)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await service.start()
    try:
        for _ in range(500):
            if service.telegram is not None and service.telegram.state == "webhook":
                break
            await asyncio.sleep(0.01)
        yield service, url
    finally:
        await service.stop()
        await runner.cleanup()


async def test_webhook_is_registered_with_the_secret(standin, webhook_service):
    _, url = webhook_service
    calls = standin.calls_for("setWebhook")
    assert calls[-1].params["url"] == url
    assert calls[-1].params["secret_token"] == SECRET
    assert not standin.calls_for("getUpdates")


async def test_updates_arrive_by_webhook(standin, webhook_service):
    service, _ = webhook_service
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    calls = await chat.command("start")
    assert chat.texts(calls)[0].startswith(t("vi", "greet.intro"))


async def test_a_wrong_secret_is_refused(standin, webhook_service):
    _, url = webhook_service
    factory = UpdateFactory(standin)
    update = factory.command(factory.vi_user, "start")
    assert await standin.deliver_webhook(url, update, secret_token="wrong-secret") == 403
    assert await standin.deliver_webhook(url, update, secret_token=None) == 403


async def test_bad_json_gets_400(standin, webhook_service):
    _, url = webhook_service
    assert await standin.deliver_webhook_raw(url, b"{not json", secret_token=SECRET) == 400
    assert await standin.deliver_webhook_raw(url, b"[1, 2]", secret_token=SECRET) == 400
    assert await standin.deliver_webhook_raw(url, b'{"no": "id"}', secret_token=SECRET) == 400


async def test_a_webhook_delivered_twice_gives_one_report(standin, webhook_service):
    service, url = webhook_service
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say(t("vi", "place.dont_know"))
    await chat.press(t("vi", "when.today"))
    await chat.say("Trộm cắp điện thoại tại bến xe khách")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.none", mark=""))
    call = chat.last_keyboard_message()
    button = next(
        b
        for row in call.params["reply_markup"]["inline_keyboard"]
        for b in row
        if b["text"] == t("vi", "summary.confirm")
    )
    update = factory.callback(chat.user, button["callback_data"], message=call.result)
    assert service.telegram is not None
    handled = service.telegram.updates_handled
    assert await standin.deliver_webhook(url, update) == 200
    assert await standin.deliver_webhook(url, update) == 200
    await service.telegram.wait_handled(handled + 2)
    async with service.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Report)) == 1
