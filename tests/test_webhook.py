"""Telegram by webhook on the service's own aiohttp server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from sqlalchemy import func, select

from admin.web import build_web_app
from bot.runtime import Service
from handlers.i18n import t
from storage.models import Report
from tests.e2e import Chat, service_settings
from tests.standin import ApiCall, BotAPIStandIn
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
        async with asyncio.timeout(30):  # generous: parallel test workers share the cores
            while service.telegram is None or service.telegram.state != "webhook":  # noqa: ASYNC110
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


# ---------------------------------------------------------------- malformed input (issues 12, 17)


async def _raw_post(url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """POST with header bytes as given (aiohttp's client would refuse non-UTF-8 ones)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = [
            f"POST {parts.path} HTTP/1.1".encode(),
            f"Host: {parts.netloc}".encode(),
            b"Content-Type: application/json",
            f"Content-Length: {len(body)}".encode(),
            b"Connection: close",
        ]
        head += [name + b": " + value for name, value in headers]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_a_non_utf8_secret_header_gets_403(standin, webhook_service):
    _, url = webhook_service
    factory = UpdateFactory(standin)
    body = json.dumps(factory.command(factory.vi_user, "start")).encode()
    for secret in (b"\xff\xfe\xfd", SECRET.encode()[:-1] + b"\xe9", b"\xc3\x28" * 20):
        status = await _raw_post(url, [(b"X-Telegram-Bot-Api-Secret-Token", secret)], body)
        assert status == 403, secret
    good = await _raw_post(url, [(b"X-Telegram-Bot-Api-Secret-Token", SECRET.encode())], body)
    assert good == 200


async def test_deeply_nested_json_gets_400(standin, webhook_service):
    _, url = webhook_service
    depth = 100_000  # under the 1 MB body limit, far over the parser's recursion limit
    nested = b'{"update_id": 7, "message": ' + b"[" * depth + b"]" * depth + b"}"
    assert await standin.deliver_webhook_raw(url, nested, secret_token=SECRET) == 400
    deep_object = b'{"update_id": 8, "x": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    assert await standin.deliver_webhook_raw(url, deep_object, secret_token=SECRET) == 400
    assert await standin.deliver_webhook_raw(url, b"\xff\xfe", secret_token=SECRET) == 400
    body = b'{"update_id": true, "message": {}}'
    assert await standin.deliver_webhook_raw(url, body, secret_token=SECRET) == 400


async def test_an_unparseable_update_is_logged_skipped_and_answered_200(
    standin, webhook_service, caplog
):
    service, url = webhook_service
    assert service.telegram is not None
    body = b'{"update_id": 4242, "message": 5}'
    with caplog.at_level(logging.WARNING, logger="bot.telegram_intake"):
        assert await standin.deliver_webhook_raw(url, body, secret_token=SECRET) == 200
        assert await standin.deliver_webhook_raw(url, body, secret_token=SECRET) == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.telegram_intake"]
    assert len(lines) == 1 and "4242" in lines[0] and "AttributeError" in lines[0]
    assert service.telegram.metrics.malformed_updates == 2


async def test_a_malformed_update_between_two_good_ones_by_webhook(
    standin, webhook_service, caplog
):
    """As Telegram delivers them: the stand-in posts each queued update until it gets a 2xx;
    nothing is retried forever, and both good updates are answered."""
    factory = UpdateFactory(standin)
    bad = factory.text(factory.vi_user, "x")
    bad["message"]["photo"] = [{}]
    with caplog.at_level(logging.WARNING, logger="bot.telegram_intake"):
        standin.push_update(factory.command(factory.vi_user, "start"))
        bad_id = standin.push_raw_update(bad)
        standin.push_update(factory.command(factory.en_user, "start"))
        await standin.wait_for(lambda c: c.chat_id == factory.en_user.id, timeout=10)
        await standin.wait_for(lambda c: c.chat_id == factory.vi_user.id, timeout=10)
        async with asyncio.timeout(10):
            while standin.pending_updates:  # noqa: ASYNC110 - the stand-in's queue
                await asyncio.sleep(0.02)
    assert [d.status for d in standin.webhook_deliveries] == [200, 200, 200]
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.telegram_intake"]
    assert len(lines) == 1 and str(bad_id) in lines[0]
    assert str(factory.vi_user.id) not in lines[0]


# ---------------------------------------------------------------- the spool cannot be written (15)


async def test_an_unwritable_spool_answers_503_and_telegrams_retry_is_handled_once(
    standin, webhook_service
):
    """The update must be on disk before the 200: when the spool cannot be written (a file
    stands where its directory should be), the webhook answers 503 and nothing is handled.
    Telegram keeps delivering it; once the spool can be written again, the retry is answered
    200 and handled exactly once (one report, one confirmation with one code)."""
    service, _ = webhook_service
    assert service.spool is not None and service.telegram is not None
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
    confirm = factory.callback(chat.user, button["callback_data"], message=call.result)
    directory = service.spool.spool.directory
    assert directory.is_dir() and not any(directory.iterdir())  # nothing waits in it
    away = directory.with_name("spool-away")
    directory.rename(away)
    directory.write_bytes(b"")  # the disk goes wrong: no directory to write into
    handled = service.telegram.updates_handled
    start = len(standin.calls)
    failures = service.spool.spool.failures
    update_id = standin.push_update(confirm)

    def deliveries() -> list[int | None]:
        return [d.status for d in standin.webhook_deliveries if d.update["update_id"] == update_id]

    async with asyncio.timeout(30):
        while deliveries().count(503) < 3:  # noqa: ASYNC110 - Telegram keeps trying
            await asyncio.sleep(0.05)
    assert set(deliveries()) == {503}
    assert service.spool.spool.failures >= failures + 3
    assert service.telegram.updates_handled == handled  # nothing handled from a 503
    assert [c for c in standin.calls[start:] if c.chat_id == chat.user.id] == []
    async with service.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Report)) == 0

    directory.unlink()  # writable again
    away.rename(directory)
    await service.telegram.wait_handled(handled + 1, timeout=30)
    async with asyncio.timeout(30):
        while standin.pending_updates:  # noqa: ASYNC110 - the stand-in's queue
            await asyncio.sleep(0.02)
    await service.spool.drained()
    statuses = deliveries()
    assert statuses[-1] == 200 and statuses.count(200) == 1
    assert set(statuses[:-1]) == {503}

    def answered() -> tuple[list[ApiCall], list[ApiCall]]:
        """The press answered, and the messages to the citizen that carry the report's code."""
        pressed = [
            c
            for c in standin.calls[start:]
            if c.method == "answerCallbackQuery"
            and c.params.get("callback_query_id") == confirm["callback_query"]["id"]
        ]
        with_code = [
            c
            for c in standin.calls[start:]
            if c.chat_id == chat.user.id
            and c.method in ("sendMessage", "editMessageText")
            and code in (c.text or "").replace("-", "")
        ]
        return pressed, with_code

    async with service.session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None
        code = report.code
    pressed, with_code = answered()
    assert len(pressed) == 1 and len(with_code) == 1, [c.text for c in with_code]
    # A copy Telegram sends once more (its 200 lost on the way) makes no second report.
    assert await standin.deliver_webhook(None, confirm) == 200
    await service.telegram.wait_handled(handled + 2, timeout=30)
    await service.spool.drained()
    async with service.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Report)) == 1
    assert len(answered()[1]) == 1
