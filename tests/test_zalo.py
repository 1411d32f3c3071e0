"""Citizens on Zalo: the Bot Platform and the Official Account, through their HTTP stand-ins."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from sqlalchemy import select, text

from bot.channel import SendError
from bot.zalo import ZaloBotChannel, ZaloOAChannel
from bot.zalo.bot_channel import to_message, unwrap
from bot.zalo.oa_api import ZaloOAClient
from bot.zalo.oa_channel import to_message as oa_to_message
from bot.zalo.oa_tokens import TokenStore
from bot.zalo.photo_links import PhotoLinks
from bot.zalo.text import render_texts
from handlers.channels import CAPABILITIES, ChannelName
from handlers.events import Button, Reply
from handlers.i18n import t
from handlers.security import Keyring
from storage.db import create_session_factory
from storage.models import ZaloToken
from tests.e2e import TEST_SECRET_KEY, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.zalo_bot import DEFAULT_TOKEN, ZaloBotStandIn, ZaloUser, post_webhook
from tests.standin.zalo_oa import (
    APP_ID,
    APP_SECRET,
    FIRST_REFRESH_TOKEN,
    OA_SECRET_KEY,
    ZaloOAStandIn,
    signed,
)

ZALO_CAPS = CAPABILITIES[ChannelName.ZALO_BOT]


# ---------------------------------------------------------------------- rendering and parsing


def test_buttons_become_a_numbered_list_and_long_text_is_split():
    reply = Reply(text="Chọn", buttons=[[Button("Ma túy", "1:a"), Button("Trộm", "1:b")]])
    assert render_texts([reply], ZALO_CAPS) == ["Chọn\n\n1. Ma túy\n2. Trộm"]
    long = Reply(text=("câu dài " * 400).strip())  # 2,500+ characters
    pieces = render_texts([long], ZALO_CAPS)
    assert len(pieces) == 2
    assert all(1 <= len(p) <= 2000 for p in pieces)
    assert " ".join(pieces) == long.text


def test_an_early_line_break_does_not_cost_a_message():
    """A heading's line break is no place to cut 2,500 characters: two messages, not three."""
    body = " ".join(f"từ{n:04d}" for n in range(1, 360))
    pieces = render_texts([Reply(text=f"❓ Câu hỏi về tin báo ABCDE-FGHJK:\n{body}")], ZALO_CAPS)
    assert len(pieces) == 2 and all(1 <= len(p) <= 2000 for p in pieces)
    assert pieces[0].startswith("❓ Câu hỏi") and pieces[1].endswith("từ0359")
    lines = "\n".join(f"dòng {i} " + "chữ " * 30 for i in range(30))  # ~3,800 characters
    assert all(p.endswith("chữ") for p in render_texts([Reply(text=lines)], ZALO_CAPS)[:-1])


def test_both_documented_update_shapes_are_accepted():
    user = ZaloUser("u1")
    with_name = user.text("xin chào")
    without = user.text("xin chào", event_name=False)
    for body in (with_name, {"ok": True, "result": without}):
        (update,) = unwrap(body)
        message = to_message(update)
        assert message is not None and message.text == "xin chào"
        assert message.sender.channel == "zalo_bot" and message.sender.user_id == "u1"
    group = user.text("hi")
    group["message"]["chat"]["chat_type"] = "GROUP"
    assert to_message(group) is None
    command = to_message(user.text("/status ABCDE-FGHJK 123456"))
    assert command is not None and command.command == "status"
    assert command.args == "ABCDE-FGHJK 123456"


def test_an_oa_location_in_either_shape():
    oa = ZaloOAStandIn()
    attached = oa.event(
        "z1",
        "user_send_location",
        {
            "attachments": [
                {"payload": {"coordinates": {"latitude": "10.38", "longitude": "105.43"}}}
            ]
        },
    )
    inline = oa.event(
        "z1", "user_send_location", {"location": {"latitude": 10.38, "longitude": 105.43}}
    )
    for event in (attached, inline):
        message = oa_to_message(event)
        assert message is not None and message.location is not None
        assert message.location.latitude == pytest.approx(10.38)
    assert oa_to_message(oa.event("z1", "user_seen_message", {})) is None


# ---------------------------------------------------------------------- the Zalo bot, end to end


@pytest.fixture
async def telegram():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def zalo_bot():
    async with ZaloBotStandIn() as server:
        yield server


@pytest.fixture
async def zalo_oa():
    async with ZaloOAStandIn() as server:
        yield server


def zalo_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path, **extra):
    return service_settings(
        telegram,
        db_url,
        tmp_path,
        zalo_bot_token=DEFAULT_TOKEN,
        zalo_bot_api_url=zalo_bot.api_url,
        zalo_bot_polling_timeout=1,
        zalo_oa_app_id=APP_ID,
        zalo_oa_secret_key=OA_SECRET_KEY,
        zalo_app_secret=APP_SECRET,
        zalo_oa_refresh_token=FIRST_REFRESH_TOKEN,
        zalo_oa_api_url=zalo_oa.url,
        zalo_oauth_url=zalo_oa.url,
        duty_chat_id=-1009999999999,
        **extra,
    )


@pytest.fixture
async def service(telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path):
    settings = zalo_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path)
    async with running_service(settings) as running:
        yield running


def channel(service, name):
    found = service.channels.get(name)
    assert found is not None
    return found


async def say(service, zalo_bot, update) -> list[str]:
    bot: ZaloBotChannel = channel(service, "zalo_bot")
    before_sent = len(zalo_bot.sent())
    target = bot.updates_handled + 1
    zalo_bot.updates.put_nowait(update)
    await bot.wait_handled(target)
    return zalo_bot.sent()[before_sent:]


async def test_polling_408s_are_not_errors(service, zalo_bot):
    async with asyncio.timeout(30):  # at least one empty long poll (1 s each)
        while zalo_bot.timeouts < 1:  # noqa: ASYNC110 - the count lives in the stand-in
            await asyncio.sleep(0.05)
    assert channel(service, "zalo_bot").state() == "running: polling"


async def test_a_zalo_citizen_starts_a_tip_by_typing(service, zalo_bot, caplog):
    caplog.set_level(logging.DEBUG)
    user = ZaloUser("7001234567890123456", display_name="Trần Bí Mật")
    sent = await say(service, zalo_bot, user.text("/start"))
    assert sent and sent[0].startswith(t("vi", "greet.intro"))
    assert "1. " in sent[-1]  # the menu's buttons, as numbers to type
    sent = await say(service, zalo_bot, user.text("/baotin"))
    joined = "\n".join(sent)
    assert f". {t('vi', 'cat.drugs')}" in joined  # the categories as a numbered list
    # Nothing stores or logs the Zalo id or the display name.
    async with service.session_factory() as session:
        for table in ("conversations", "zalo_inbox", "processed_updates"):
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            assert user.user_id not in repr(rows) and user.display_name not in repr(rows)
    assert user.user_id not in caplog.text and user.display_name not in caplog.text


async def test_the_same_message_twice_is_handled_once(service, zalo_bot):
    user = ZaloUser("7009")
    update = user.text("/start")
    first = await say(service, zalo_bot, update)
    assert first
    bot: ZaloBotChannel = channel(service, "zalo_bot")
    handled = bot.updates_handled
    zalo_bot.updates.put_nowait(update)
    await asyncio.sleep(1.0)
    assert bot.updates_handled == handled  # refused at the inbox, never dispatched
    assert len(zalo_bot.sent("7009")) == len(first)


async def test_a_complete_tip_typed_on_zalo_reaches_the_telegram_duty_group(
    service, zalo_bot, telegram
):
    user = ZaloUser("7002")
    await say(service, zalo_bot, user.text("/start"))
    await say(service, zalo_bot, user.text("/baotin"))
    await say(service, zalo_bot, user.text("2"))  # theft
    await say(service, zalo_bot, user.text("long xuyen"))
    await say(service, zalo_bot, user.text("1"))  # Phường Long Xuyên
    await say(service, zalo_bot, user.text("1"))  # now
    await say(service, zalo_bot, user.text("Kẻ gian trộm xe máy trước chợ Long Xuyên"))
    await say(service, zalo_bot, user.text("bỏ qua"))
    await say(service, zalo_bot, user.text("1"))  # relay contact
    sent = await say(service, zalo_bot, user.text("1"))  # confirm
    assert any("-" in s for s in sent)
    await telegram.wait_for(
        lambda c: c.method == "sendMessage" and c.chat_id == -1009999999999 and c.ok, timeout=10
    )


async def test_the_bot_webhook_checks_its_secret(
    telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path
):
    from admin.web import build_web_app

    secret = "zalo-webhook-secret-0123456789"
    settings = zalo_settings(
        telegram,
        zalo_bot,
        zalo_oa,
        db_url,
        tmp_path,
        zalo_bot_webhook_url="https://tinbao.example/zalo/bot/webhook",
        zalo_bot_webhook_secret=secret,
    )
    async with running_service(settings) as service, _serve(build_web_app(service)) as url:
        user = ZaloUser("7003")
        bot: ZaloBotChannel = channel(service, "zalo_bot")
        async with asyncio.timeout(30):  # generous: parallel test workers share the cores
            while zalo_bot.webhook is None:  # noqa: ASYNC110 - the hook lives in the stand-in
                await asyncio.sleep(0.05)
        assert zalo_bot.webhook is not None and zalo_bot.webhook["secret_token"] == secret
        hook = f"{url}/zalo/bot/webhook"
        assert await post_webhook(hook, user.text("/start"), None) == 403
        assert await post_webhook(hook, user.text("/start"), "wrong-secret-0123456789") == 403
        update = user.text("/start")
        assert await post_webhook(hook, {"ok": True, "result": update}, secret) == 200
        assert await post_webhook(hook, update, secret) == 200  # Zalo's retry
        await bot.wait_handled(1)
        await asyncio.sleep(0.3)
        assert bot.updates_handled == 1
        assert zalo_bot.sent("7003")


# ---------------------------------------------------------------------- the Zalo OA


class _serve:
    def __init__(self, app):
        self.app = app

    async def __aenter__(self) -> str:
        self.runner = aiohttp.web.AppRunner(self.app)
        await self.runner.setup()
        site = aiohttp.web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


async def post(url, raw, headers):
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=raw, headers=headers) as r,
    ):
        return r.status


async def test_the_oa_webhook_checks_the_signature(service, zalo_oa):
    from admin.web import build_web_app

    oa: ZaloOAChannel = channel(service, "zalo_oa")
    async with _serve(build_web_app(service)) as url:
        hook = f"{url}/zalo/oa/webhook"
        event = zalo_oa.event("8001", "user_send_text", {"text": "/start"})
        raw, headers = signed(event)
        forged = raw.replace(b"/start", b"/help!")
        assert await post(hook, forged, headers) == 403
        assert await post(hook, raw, {"Content-Type": "application/json"}) == 403
        _, wrong = signed(event, key="not-the-oa-secret-key")
        assert await post(hook, raw, wrong) == 403
        old = dict(event, timestamp=str(int(event["timestamp"]) - 3 * 3600 * 1000))
        assert await post(hook, *signed(old)) == 403
        async with service.session_factory() as session:
            assert (await session.execute(text("SELECT count(*) FROM zalo_inbox"))).scalar() == 0
        assert await post(hook, raw, headers) == 200
        assert await post(hook, raw, headers) == 200  # a retry with the same msg_id
        await oa.wait_handled(1)
        await asyncio.sleep(0.3)
        assert oa.updates_handled == 1
        delivered = zalo_oa.delivered("8001")
        assert delivered and delivered[0].startswith(t("vi", "greet.intro"))


async def test_oa_tokens_rotate_and_survive_a_restart(
    telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path
):
    settings = zalo_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path)
    zalo_oa.event("8002", "user_send_text", {"text": "hi"})  # opens the 7-day window
    async with running_service(settings) as service:
        oa: ZaloOAChannel = channel(service, "zalo_oa")
        assert oa.state() == "running: webhook"
        assert zalo_oa.refreshes == 1
        assert FIRST_REFRESH_TOKEN not in zalo_oa.refresh_tokens  # spent
        await oa.send("8002", [Reply(text="Xin chào")])
        # -216 in the middle of a send: refreshed once, then sent.
        zalo_oa.revoke_access_tokens()
        await oa.send("8002", [Reply(text="Lần hai")])
        assert zalo_oa.refreshes == 2
        assert zalo_oa.delivered("8002") == ["Xin chào", "Lần hai"]
    async with running_service(settings) as service:
        oa = channel(service, "zalo_oa")
        await oa.send("8002", [Reply(text="Sau khi khởi động lại")])
        assert zalo_oa.refreshes == 2  # the stored access token was reused
    async with create_session_factory(engine)() as session:
        row = await session.scalar(select(ZaloToken))
        assert row is not None and "refresh-" not in row.tokens  # encrypted


async def test_two_processes_racing_refresh_once(zalo_oa, engine):
    keyring = Keyring(__import__("base64").urlsafe_b64decode(TEST_SECRET_KEY))
    factory = create_session_factory(engine)
    async with aiohttp.ClientSession() as http:
        stores = []
        for _ in range(2):
            client = ZaloOAClient(
                http,
                api_url=zalo_oa.url,
                oauth_url=zalo_oa.url,
                app_id=APP_ID,
                app_secret=APP_SECRET,
            )
            stores.append(
                TokenStore(
                    factory,
                    keyring,
                    app_id=APP_ID,
                    initial_refresh_token=FIRST_REFRESH_TOKEN,
                    refresher=client.refresh,
                )
            )
        tokens = await asyncio.gather(*(s.access_token() for s in stores))
    assert tokens[0] == tokens[1]
    assert zalo_oa.refreshes == 1


async def test_a_closed_reply_window_is_gone(service, zalo_oa):
    oa: ZaloOAChannel = channel(service, "zalo_oa")
    with pytest.raises(SendError) as caught:
        await oa.send("8999", [Reply(text="Câu hỏi của cán bộ")])  # never wrote: no window
    assert caught.value.gone


async def test_the_bot_webhook_refuses_odd_header_bytes_and_deep_json(
    telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path
):
    from admin.web import build_web_app
    from tests.test_webhook import _raw_post

    secret = "zalo-webhook-secret-0123456789"
    settings = zalo_settings(
        telegram,
        zalo_bot,
        zalo_oa,
        db_url,
        tmp_path,
        zalo_bot_webhook_url="https://tinbao.example/zalo/bot/webhook",
        zalo_bot_webhook_secret=secret,
    )
    async with running_service(settings) as service, _serve(build_web_app(service)) as url:
        hook = f"{url}/zalo/bot/webhook"
        body = json.dumps(ZaloUser("7004").text("/start")).encode()
        name = b"X-Bot-Api-Secret-Token"
        for odd in (b"\xff\xfe\xfd", secret.encode()[:-1] + b"\xe9"):
            assert await _raw_post(hook, [(name, odd)], body) == 403, odd
        depth = 100_000
        deep = b'{"ok": true, "result": ' + b"[" * depth + b"]" * depth + b"}"
        assert await _raw_post(hook, [(name, secret.encode())], deep) == 400
        assert await _raw_post(hook, [(name, secret.encode())], body) == 200
        assert service.channels.get("zalo_bot") is not None


async def test_the_oa_webhook_refuses_deep_json_and_odd_signature_bytes(service, zalo_oa):
    from admin.web import build_web_app
    from tests.test_webhook import _raw_post

    async with _serve(build_web_app(service)) as url:
        hook = f"{url}/zalo/oa/webhook"
        depth = 100_000
        deep = b'{"app_id": "1", "x": ' + b"[" * depth + b"]" * depth + b"}"
        assert await _raw_post(hook, [], deep) == 400
        raw, _ = signed(zalo_oa.event("8002", "user_send_text", {"text": "/start"}))
        odd = [(b"X-ZEvent-Signature", b"mac=\xff\xfe")]
        assert await _raw_post(hook, odd, raw) == 403


def test_a_photo_link_with_odd_signature_characters_is_invalid():
    links = PhotoLinks(None, Keyring(b"k" * 32), "https://tinbao.example")  # type: ignore[arg-type]
    sha256, expires, _ = links.link("a" * 64).rsplit("/", 3)[1:]
    assert not links.valid(sha256, expires, "\udcff\udcfe")


async def test_a_polled_update_survives_a_failing_spool(service, zalo_bot, tmp_path):
    """Polling hands an update out once: when the spool cannot write it, the database inbox
    keeps it and it is still answered."""
    spool = service.spool.spool
    spool.load()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    spool.directory = blocker / "spool"  # every write fails (NotADirectoryError)
    failures = spool.failures
    user = ZaloUser("7005")
    sent = await say(service, zalo_bot, user.text("/start"))
    assert spool.failures > failures
    assert sent and sent[0].startswith(t("vi", "greet.intro"))
