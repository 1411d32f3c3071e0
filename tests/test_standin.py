"""The Bot API stand-in, driven by the real python-telegram-bot over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Update,
)
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    Forbidden,
    RetryAfter,
    TimedOut,
)
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from tests.standin import (
    DEFAULT_TOKEN,
    BotAPIStandIn,
    FloodLimits,
    Group,
    UpdateFactory,
    make_jpeg,
)
from tests.standin.server import webhook_queue

KEYBOARD = InlineKeyboardMarkup([[InlineKeyboardButton("Tai nạn", callback_data="kind:acc")]])


@pytest.fixture
async def standin() -> AsyncIterator[BotAPIStandIn]:
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def bot(standin: BotAPIStandIn) -> AsyncIterator[Bot]:
    async with Bot(
        DEFAULT_TOKEN, base_url=standin.base_url, base_file_url=standin.base_file_url
    ) as tg_bot:
        yield tg_bot


def _retry_seconds(exc: RetryAfter) -> float:
    value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


# ---------------------------------------------------------------------------- sending


async def test_send_message_is_recorded_with_typed_params(
    standin: BotAPIStandIn, bot: Bot
) -> None:
    first = await bot.send_message(
        1001, "<b>Đã nhận</b> tin báo &amp; cảm ơn", parse_mode="HTML", reply_markup=KEYBOARD
    )
    second = await bot.send_message(1001, "Thứ hai")

    assert first.message_id + 1 == second.message_id
    assert first.text == "Đã nhận tin báo & cảm ơn"
    assert first.entities[0].type == "bold"
    assert first.entities[0].length == len("Đã nhận")
    assert first.from_user is not None
    assert first.from_user.username == "tinbao_test_bot"
    assert first.chat.type == "private"
    assert first.reply_markup == KEYBOARD

    call = standin.calls_for("sendMessage")[0]
    # PTB sends form-urlencoded strings; the stand-in decodes them back to typed values.
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.chat_id == 1001
    assert call.params["reply_markup"] == KEYBOARD.to_dict()
    assert standin.texts_to(1001) == ["<b>Đã nhận</b> tin báo &amp; cảm ơn", "Thứ hai"]
    assert [m["message_id"] for m in standin.messages(1001)] == [1, 2]
    assert standin.stats.sent == 2


async def test_get_me_follows_token(standin: BotAPIStandIn, bot: Bot) -> None:
    me = await bot.get_me()
    assert me.id == 123456
    assert me.username == "tinbao_test_bot"
    assert me.can_join_groups is True
    assert standin.bot_user["username"] == "tinbao_test_bot"


async def test_send_photo_upload_bytes_are_recorded(standin: BotAPIStandIn, bot: Bot) -> None:
    jpeg = make_jpeg(640, 480)
    message = await bot.send_photo(
        -1001234567890,
        jpeg,
        caption="Ảnh hiện trường",
        reply_markup=KEYBOARD,
        message_thread_id=7,
    )

    call = standin.calls_for("sendPhoto")[0]
    assert call.content_type == "multipart/form-data"
    assert call.files["photo"] == jpeg
    # nested objects arrive as JSON strings inside multipart and are decoded
    assert call.params["reply_markup"] == KEYBOARD.to_dict()
    assert call.params["message_thread_id"] == 7
    assert message.message_thread_id == 7
    assert message.caption == "Ảnh hiện trường"
    assert (message.photo[-1].width, message.photo[-1].height) == (640, 480)
    assert len({p.file_id for p in message.photo}) == len(message.photo) > 1

    # the new file id is downloadable and gives back the uploaded bytes
    tg_file = await bot.get_file(message.photo[-1].file_id)
    assert bytes(await tg_file.download_as_bytearray()) == jpeg


async def test_get_file_downloads_registered_bytes(standin: BotAPIStandIn, bot: Bot) -> None:
    content = b"%PDF-1.4 bien ban"
    file_id, unique_id = standin.add_file(content, "pdf")

    tg_file = await bot.get_file(file_id)
    assert tg_file.file_unique_id == unique_id
    assert tg_file.file_size == len(content)
    assert tg_file.file_path is not None
    assert tg_file.file_path.startswith(standin.base_file_url)
    assert bytes(await tg_file.download_as_bytearray()) == content

    with pytest.raises(BadRequest, match=r"(?i)invalid file_id"):
        await bot.get_file("nope")


async def test_media_group_copy_and_forward_are_recorded(standin: BotAPIStandIn, bot: Bot) -> None:
    factory = UpdateFactory(standin)
    user = factory.vi_user
    report = factory.photo(user, make_jpeg(), caption="xe máy đâm nhau")
    standin.push_update(report)
    officers = Group()

    one, two = make_jpeg(color=(1, 2, 3)), make_jpeg(color=(4, 5, 6))
    album = await bot.send_media_group(
        officers.id, [InputMediaPhoto(one, caption="Tin báo #12"), InputMediaPhoto(two)]
    )
    copied = await bot.copy_message(officers.id, user.id, report["message"]["message_id"])

    assert len(album) == 2
    assert album[0].media_group_id == album[1].media_group_id
    media_call = standin.calls_for("sendMediaGroup")[0]
    assert media_call.media_files() == [one, two]
    assert standin.texts_to(officers.id) == ["Tin báo #12"]
    assert copied.message_id == album[1].message_id + 1
    copy_of = standin.message(officers.id, copied.message_id)
    assert copy_of is not None
    assert copy_of["caption"] == "xe máy đâm nhau"
    assert "forward_origin" not in copy_of
    assert standin.stats.sent == 3  # an album counts one per item
    assert standin.calls_for("forwardMessage") == []

    forwarded = await bot.forward_message(officers.id, user.id, report["message"]["message_id"])
    assert forwarded.forward_origin is not None
    assert len(standin.calls_for("forwardMessage")) == 1
    assert len(standin.sent_to(officers.id)) == 3


# ---------------------------------------------------------------------------- polling


async def test_polling_application_handles_pushed_updates(standin: BotAPIStandIn) -> None:
    factory = UpdateFactory(standin)
    user = factory.vi_user

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("Chào bạn", reply_markup=KEYBOARD)

    async def pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        await query.answer("OK")
        await query.edit_message_text(f"Đã chọn {query.data}")

    async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        tg_file = await update.effective_message.photo[-1].get_file()
        data = await tg_file.download_as_bytearray()
        await update.effective_message.reply_text(f"{len(data)} bytes")

    app = standin.application_builder().build()
    app.add_handler(CommandHandler("start", start))
    app.add_handler(CallbackQueryHandler(pressed))
    app.add_handler(MessageHandler(filters.PHOTO, photo))

    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=dtm.timedelta(seconds=2))

        standin.push_update(factory.command(user, "start"))
        reply = await standin.wait_for(
            lambda c: c.method == "sendMessage" and c.chat_id == user.id
        )
        greeting = reply.result
        standin.push_update(factory.callback(user, "kind:acc", message=greeting))
        await standin.wait_calls("editMessageText", 1)
        jpeg = make_jpeg(32, 32)
        standin.push_update(factory.photo(user, jpeg))
        await standin.wait_for(lambda c: c.text == f"{len(jpeg)} bytes")

        await app.updater.stop()
        await app.stop()

    assert standin.texts_to(user.id) == ["Chào bạn", f"{len(jpeg)} bytes"]
    assert standin.calls_for("answerCallbackQuery")[0].params["text"] == "OK"
    edited = standin.message(user.id, greeting["message_id"])
    assert edited is not None
    assert edited["text"] == "Đã chọn kind:acc"
    assert "reply_markup" not in edited  # editing without a markup removes the keyboard
    # shutdown confirmed every fetched update with a final offset
    assert standin.pending_updates == []
    assert standin.calls_for("getMe")
    assert standin.calls_for("deleteWebhook")
    assert all(c.ok for c in standin.calls), [c.summary() for c in standin.calls if not c.ok]


async def test_get_updates_offset_limit_timeout(standin: BotAPIStandIn, bot: Bot) -> None:
    factory = UpdateFactory(standin)
    ids = [standin.push_update(factory.text(factory.en_user, f"m{i}")) for i in range(3)]

    batch = await bot.get_updates(limit=2, timeout=0)
    assert [u.update_id for u in batch] == ids[:2]
    assert (await bot.get_updates(offset=ids[1] + 1, timeout=0))[0].update_id == ids[2]
    assert [u["update_id"] for u in standin.pending_updates] == [ids[2]]
    assert await bot.get_updates(offset=ids[2] + 1, timeout=0) == ()

    # a long poll returns as soon as an update arrives
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, standin.push_update, factory.text(factory.en_user, "late"))
    started = loop.time()
    late = await bot.get_updates(offset=ids[2] + 1, timeout=5)
    assert loop.time() - started < 1.5
    assert late[0].message is not None
    assert late[0].message.text == "late"

    # an empty long poll waits for the timeout
    started = loop.time()
    assert await bot.get_updates(offset=late[0].update_id + 1, timeout=1) == ()
    assert 0.8 < loop.time() - started < 1.8


async def test_allowed_updates_is_sticky(standin: BotAPIStandIn, bot: Bot) -> None:
    factory = UpdateFactory(standin)
    standin.push_update(factory.text(factory.vi_user, "xin chào"))
    standin.push_update(factory.callback(factory.vi_user, "a"))

    got = await bot.get_updates(timeout=0, allowed_updates=["callback_query"])
    assert [u.callback_query is not None for u in got] == [True]
    standin.push_update(factory.text(factory.vi_user, "bỏ qua"))
    assert (await bot.get_updates(offset=got[0].update_id + 1, timeout=0)) == ()


async def test_get_updates_conflicts_with_webhook(standin: BotAPIStandIn, bot: Bot) -> None:
    await bot.set_webhook("http://127.0.0.1:9/hook")
    with pytest.raises(Conflict, match=r"(?i)webhook is active"):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook()
    assert await bot.get_updates(timeout=0) == ()


# ---------------------------------------------------------------------------- errors


async def test_injected_429_raises_retry_after(
    standin: BotAPIStandIn, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # RetryAfter.retry_after as timedelta
    standin.fail_next("sendMessage", 429, retry_after=7)

    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(5, "x")
    assert _retry_seconds(caught.value) == 7
    failed = standin.calls_for("sendMessage")[0]
    assert failed.status == 429
    assert failed.response["parameters"] == {"retry_after": 7}
    assert standin.sent_to(5) == []

    await bot.send_message(5, "x")  # only the next call fails
    assert len(standin.sent_to(5)) == 1
    assert standin.stats.injected_failures == 1


async def test_forbidden_and_bad_request(standin: BotAPIStandIn, bot: Bot) -> None:
    standin.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user", chat_id=9)
    with pytest.raises(Forbidden, match=r"(?i)blocked by the user"):
        await bot.send_message(9, "x")

    standin.block_chat(10)
    with pytest.raises(Forbidden):
        await bot.send_photo(10, make_jpeg())
    standin.unblock_chat(10)
    await bot.send_message(10, "ok")

    standin.fail_next("sendMessage", 400, "Bad Request: chat not found")
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(11, "x")

    standin.fail_next("*", 500, "Internal Server Error")
    with pytest.raises(Exception, match=r"(?i)Internal Server Error"):
        await bot.send_message(11, "x")


async def test_telegram_validation_errors(standin: BotAPIStandIn, bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
        await bot.send_message(1, "speed < 50 km/h", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
        await bot.send_message(1, "Tin báo số 12.", parse_mode="MarkdownV2")
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(1, "a" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await bot.send_message(1, "   ")
    too_long = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x" * 65)]])
    with pytest.raises(BadRequest, match=r"(?i)BUTTON_DATA_INVALID"):
        await bot.send_message(1, "x", reply_markup=too_long)

    sent = await bot.send_message(1, "giống", reply_markup=KEYBOARD)
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await bot.edit_message_text(
            "giống", chat_id=1, message_id=sent.message_id, reply_markup=KEYBOARD
        )
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await bot.edit_message_text("x", chat_id=1, message_id=999)
    assert await bot.delete_message(1, sent.message_id)
    with pytest.raises(BadRequest, match=r"(?i)message to delete not found"):
        await bot.delete_message(1, sent.message_id)
    with pytest.raises(BadRequest, match=r"(?i)query ID is invalid"):
        await bot.answer_callback_query("123")
    assert standin.stats.sent == 1


async def test_the_probe_answers_of_a_no_op_keyboard_edit(
    standin: BotAPIStandIn, bot: Bot
) -> None:
    """What bot.delivery.landing reads: the bot's own message with that markup, someone
    else's message, a message Telegram never lets a bot edit (force_reply), no message."""
    mine = await bot.send_message(-100555, "thẻ", reply_markup=KEYBOARD)
    with pytest.raises(BadRequest, match=r"^Message is not modified"):
        await bot.edit_message_reply_markup(-100555, mine.message_id, reply_markup=KEYBOARD)
    factory = UpdateFactory(standin)
    theirs = standin.push_update(
        factory.group_text(factory.new_user(), "ok", group=Group(-100555))
    )
    [update] = [u for u in standin.pending_updates if u["update_id"] == theirs]
    with pytest.raises(BadRequest, match=r"^Message can't be edited$"):
        await bot.edit_message_reply_markup(-100555, update["message"]["message_id"])
    prompt = await bot.send_message(-100555, "lý do?", reply_markup=ForceReply())
    with pytest.raises(BadRequest, match=r"^Message can't be edited$"):
        await bot.edit_message_reply_markup(-100555, prompt.message_id)
    with pytest.raises(BadRequest, match=r"^Message to edit not found$"):
        await bot.edit_message_reply_markup(-100555, prompt.message_id + 1)
    stored = standin.message(-100555, mine.message_id)
    assert stored is not None and stored["reply_markup"] == KEYBOARD.to_dict()


async def test_a_held_back_answer_times_out_the_client_but_the_message_exists(
    standin: BotAPIStandIn,
) -> None:
    impatient = Bot(
        DEFAULT_TOKEN,
        base_url=standin.base_url,
        request=HTTPXRequest(read_timeout=0.2),
    )
    standin.delay_response("sendMessage", 0.8, chat_id=-100556)
    async with impatient:
        with pytest.raises(TimedOut):
            await impatient.send_message(-100556, "đến nơi")
        again = await impatient.send_message(-100556, "lần sau")
    assert [m["text"] for m in standin.messages(-100556)] == ["đến nơi", "lần sau"]
    assert again.message_id == 2
    assert standin.stats.delayed_responses == 1


async def test_unknown_method_is_404(standin: BotAPIStandIn, bot: Bot) -> None:
    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("sendTelepathy")
    assert standin.calls[-1].response == {
        "ok": False,
        "error_code": 404,
        "description": "Not Found: method not found",
    }


async def test_commands_round_trip(standin: BotAPIStandIn, bot: Bot) -> None:
    await bot.set_my_commands(
        [BotCommand("start", "Bắt đầu"), BotCommand("bao", "Báo tin")], language_code="vi"
    )
    assert [c.command for c in await bot.get_my_commands(language_code="vi")] == ["start", "bao"]
    assert await bot.get_my_commands() == ()
    assert standin.commands(language_code="vi")[1] == {"command": "bao", "description": "Báo tin"}
    await bot.delete_my_commands(language_code="vi")
    assert standin.commands(language_code="vi") == []


# ---------------------------------------------------------------------------- flood limits


def frozen_clock() -> float:
    """The stand-in's clock for the flood-limit tests: every send at the same instant, however
    long a busy machine takes between them (a moving clock refills the allowance meanwhile)."""
    return 1000.0


async def test_flood_limits_per_chat_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # silence PTB's retry_after deprecation warning
    limits = FloodLimits(per_chat_per_second=1.0, per_chat_burst=3)
    async with (
        BotAPIStandIn(
            enforce_flood_limits=True, flood_limits=limits, clock=frozen_clock
        ) as standin,
        standin.bot() as tg_bot,
    ):
        for i in range(3):
            await tg_bot.send_message(77, f"tin {i}")
        with pytest.raises(RetryAfter):
            await tg_bot.send_message(77, "quá nhanh")
        assert standin.calls[-1].description == "Too Many Requests: retry after 1"
        await tg_bot.send_message(78, "another chat is fine")
        await tg_bot.edit_message_text("edits are not counted", chat_id=77, message_id=1)

        assert standin.stats.sent == 4
        assert standin.stats.rate_limited == 1
        limited = [c for c in standin.calls if c.status == 429]
        assert limited[0].response["parameters"]["retry_after"] == 1


async def test_flood_limits_group_shared_by_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # silence PTB's retry_after deprecation warning
    limits = FloodLimits(per_chat_burst=100, group_per_minute=20)
    async with (
        BotAPIStandIn(
            enforce_flood_limits=True, flood_limits=limits, clock=frozen_clock
        ) as standin,
        standin.bot() as tg_bot,
    ):
        for i in range(20):
            await tg_bot.send_message(-1001234567890, f"tin {i}", message_thread_id=1 + i % 4)
        with pytest.raises(RetryAfter):
            await tg_bot.send_message(-1001234567890, "tin 21", message_thread_id=99)
        denied = standin.calls[-1]
        assert 55 <= denied.response["parameters"]["retry_after"] <= 60
        assert standin.stats.sent == 20
        assert standin.stats.rate_limited == 1


async def test_flood_limits_global_30_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # silence PTB's retry_after deprecation warning
    async with (
        BotAPIStandIn(enforce_flood_limits=True, clock=frozen_clock) as standin,
        standin.bot() as tg_bot,
    ):
        for chat in range(30):
            await tg_bot.send_message(1000 + chat, "x")
        with pytest.raises(RetryAfter):
            await tg_bot.send_message(2000, "x")
        assert standin.stats.sent == 30
        assert standin.stats.rate_limited == 1


# ---------------------------------------------------------------------------- webhook


async def test_webhook_delivery_sends_secret_header(standin: BotAPIStandIn, bot: Bot) -> None:
    received: list[tuple[str | None, bytes]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(
            (request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.read())
        )
        arrived.set()
        secret_ok = request.headers.get("X-Telegram-Bot-Api-Secret-Token") == "s3cret"
        return web.Response(status=200 if secret_ok else 403)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/hook"
    try:
        factory = UpdateFactory(standin)
        assert await bot.set_webhook(url, secret_token="s3cret")
        info = await bot.get_webhook_info()
        assert info.url == url

        # push_update with a webhook set delivers like Telegram does
        update_id = standin.push_update(factory.text(factory.vi_user, "qua webhook"))
        await asyncio.wait_for(arrived.wait(), 20)
        assert received[0][0] == "s3cret"
        assert json.loads(received[0][1])["update_id"] == update_id
        async with asyncio.timeout(20):  # the hook's 200 reaches the stand-in
            while standin.pending_updates:  # noqa: ASYNC110 - the queue lives in the stand-in
                await asyncio.sleep(0.01)
        assert standin.pending_updates == []

        # explicit deliveries: registered secret by default, none, a wrong one, bad JSON
        update = factory.text(factory.vi_user, "thủ công")
        assert await standin.deliver_webhook(url, update) == 200
        assert await standin.deliver_webhook(url, update, secret_token=None) == 403
        assert await standin.deliver_webhook(None, update, secret_token="wrong") == 403
        assert await standin.deliver_webhook_raw(url, b"{not json") == 200
        assert received[-1] == ("s3cret", b"{not json")
        assert [d.status for d in standin.webhook_deliveries] == [200, 200, 403, 403, 200]
    finally:
        await runner.cleanup()


async def test_webhook_deliveries_go_several_at_once_one_chat_after_the_other(bot: Bot) -> None:
    """``webhook_connections=4`` with ``max_connections=3``: three chats' updates are in flight
    together (none waits for another chat's 200), never a fourth, and never two of one chat (nor
    two presses of one user); a refused update is sent again before its chat's next one."""
    in_flight: list[str] = []
    most = 0
    three = asyncio.Event()
    refused_once: set[int] = set()
    answered: list[tuple[str, int]] = []

    async def hook(request: web.Request) -> web.Response:
        nonlocal most
        update = json.loads(await request.read())
        queue = webhook_queue(update)
        assert queue not in in_flight, f"two updates of {queue} at once"
        in_flight.append(queue)
        most = max(most, len(in_flight))
        if len(in_flight) == 3:
            three.set()
        try:
            await asyncio.wait_for(three.wait(), 5)
            await asyncio.sleep(0.01)
        finally:
            in_flight.remove(queue)
        if update["update_id"] % 3 == 0 and update["update_id"] not in refused_once:
            refused_once.add(update["update_id"])
            return web.Response(status=502)
        answered.append((queue, update["update_id"]))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        async with BotAPIStandIn(webhook_connections=4, webhook_retry_delay=0.01) as standin:
            async with Bot(DEFAULT_TOKEN, base_url=standin.base_url) as tg_bot:
                assert await tg_bot.set_webhook(url, max_connections=3)
            factory = UpdateFactory(standin)
            users = [factory.new_user(language_code="vi") for _ in range(4)]
            ids: list[int] = []
            for round_ in range(3):
                for user in users:
                    ids.append(standin.push_update(factory.text(user, f"tin {round_}")))
                ids.append(standin.push_update(factory.callback(users[0], "x")))
            async with asyncio.timeout(5):
                while standin.pending_updates:  # noqa: ASYNC110 - the stand-in's own queue
                    await asyncio.sleep(0.01)
        assert most == 3
        assert sorted(i for _, i in answered) == ids  # each once, the refused ones retried
        assert refused_once == {i for i in ids if i % 3 == 0}
        for queue in {q for q, _ in answered}:  # each queue in update-id order
            mine = [i for q, i in answered if q == queue]
            assert mine == sorted(mine)
        assert {q for q, _ in answered} == {f"chat:{u.id}" for u in users} | {
            f"press:{users[0].id}"
        }
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------- factory


def _unknown_fields(ours: Any, ptb: Any, path: str = "") -> list[str]:
    """Keys we produce that PTB does not map to a field (they land in api_kwargs)."""
    problems: list[str] = []
    if isinstance(ours, dict) and isinstance(ptb, dict):
        for key, value in ours.items():
            if key not in ptb:
                problems.append(f"{path}.{key}")
            else:
                problems.extend(_unknown_fields(value, ptb[key], f"{path}.{key}"))
    elif isinstance(ours, list) and isinstance(ptb, list):
        for i, (a, b) in enumerate(zip(ours, ptb, strict=True)):
            problems.extend(_unknown_fields(a, b, f"{path}[{i}]"))
    elif ours != ptb:
        problems.append(f"{path}: {ours!r} != {ptb!r}")
    return problems


def test_factory_updates_round_trip_through_ptb() -> None:
    factory = UpdateFactory()
    user = factory.vi_user
    forum = Group(is_forum=True)
    first = factory.text(user, "Có tai nạn ở ngã tư")
    updates = [
        first,
        factory.command(user, "start", "ref123"),
        factory.callback(user, "kind:acc"),
        factory.photo(user, caption="ảnh"),
        factory.document(user, file_name="anh.jpg", mime_type="image/jpeg"),
        factory.video(user),
        factory.voice(user),
        factory.sticker(user),
        factory.location(user, live_period=900),
        factory.live_location_update(factory.location(user, live_period=900), 21.0, 105.8),
        factory.contact(user),
        factory.edited_text(first, "Có tai nạn ở ngã tư Sở"),
        factory.group_text(
            user, "Đã tiếp nhận", group=forum, message_thread_id=5, reply_to=first["message"]
        ),
        factory.group_command(user, "nhan"),
        factory.my_chat_member(user),
    ]
    bot = Bot(DEFAULT_TOKEN)
    for update in updates:
        parsed = Update.de_json(update, bot)
        assert _unknown_fields(update, parsed.to_dict(recursive=True)) == []
    ids = [u["update_id"] for u in updates]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)

    command = Update.de_json(updates[1], bot)
    assert command.effective_message is not None
    assert command.effective_message.text == "/start ref123"
    assert command.effective_message.entities[0].type == "bot_command"
    assert command.effective_message.entities[0].length == len("/start")
    topic = Update.de_json(updates[12], bot).effective_message
    assert topic is not None
    assert topic.is_topic_message
    assert topic.message_thread_id == 5
    assert topic.chat.id < 0
    assert topic.chat.type == "supergroup"
    assert Update.de_json(updates[9], bot).edited_message is not None
    assert user.to_dict()["language_code"] == "vi"
    assert factory.en_user.language_code == "en"


async def test_wait_for_times_out_with_recent_calls(standin: BotAPIStandIn, bot: Bot) -> None:
    await bot.send_message(3, "x")
    with pytest.raises(TimeoutError, match="sendMessage"):
        await standin.wait_for(lambda c: c.method == "sendPhoto", timeout=0.1)
    found = await standin.wait_calls("sendMessage", 1, timeout=0.1)
    assert found[0].text == "x"
    standin.clear()
    assert standin.calls == []


async def test_application_builder_helper(standin: BotAPIStandIn) -> None:
    app: Application[Any, Any, Any, Any, Any, Any] = standin.application_builder().build()
    async with app:
        assert app.bot.base_url == f"{standin.base_url}{DEFAULT_TOKEN}"
        assert app.bot.username == "tinbao_test_bot"


async def test_other_methods_answer_what_ptb_expects(standin: BotAPIStandIn, bot: Bot) -> None:
    factory = UpdateFactory(standin)
    user = factory.vi_user
    standin.push_update(factory.text(user, "xin chào"))  # the chat becomes known

    doc = await bot.send_document(user.id, b"%PDF-1.4", filename="bien_ban.pdf", caption="BB")
    assert doc.document is not None
    assert doc.document.file_name == "bien_ban.pdf"
    assert standin.calls_for("sendDocument")[0].uploads["document"].filename == "bien_ban.pdf"
    edited = await bot.edit_message_caption(user.id, doc.message_id, caption="Biên bản")
    assert not isinstance(edited, bool)
    assert edited.caption == "Biên bản"
    marked = await bot.edit_message_reply_markup(user.id, doc.message_id, reply_markup=KEYBOARD)
    assert not isinstance(marked, bool)
    assert marked.reply_markup == KEYBOARD

    for send in (bot.send_video, bot.send_voice, bot.send_audio, bot.send_animation):
        sent = await send(user.id, b"media-bytes")
        assert sent.message_id > doc.message_id
    location = await bot.send_location(user.id, 10.7769, 106.7009)
    assert location.location is not None
    assert location.location.latitude == 10.7769
    venue = await bot.send_venue(user.id, 10.7769, 106.7009, "Công an phường", "1 Lê Lợi")
    assert venue.venue is not None
    assert venue.venue.title == "Công an phường"
    assert await bot.send_chat_action(user.id, "typing")
    assert await bot.pin_chat_message(user.id, location.message_id)

    chat = await bot.get_chat(user.id)
    assert chat.first_name == user.first_name
    assert chat.type == "private"
    assert await bot.close()
    assert await bot.log_out()
    copies = await bot.copy_messages(-100555, user.id, [location.message_id, venue.message_id])
    assert [c.message_id for c in copies] == [1, 2]
    assert len(standin.sent_to(-100555)) == 1  # one copyMessages call, two messages
    assert standin.stats.sent_per_chat[-100555] == 2


async def test_raw_http_json_body_get_and_bad_token(standin: BotAPIStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{standin.base_url}{DEFAULT_TOKEN}"
        async with session.post(
            f"{url}/SENDMESSAGE",  # method names are case-insensitive
            json={"chat_id": "42", "text": "123", "reply_markup": json.dumps(KEYBOARD.to_dict())},
        ) as response:
            body = await response.json()
        assert body["ok"] is True
        assert body["result"]["text"] == "123"
        call = standin.calls_for("sendMessage")[0]
        assert call.chat_id == 42
        assert call.params["reply_markup"] == KEYBOARD.to_dict()

        async with session.get(f"{url}/getMe") as response:
            assert (await response.json())["result"]["id"] == 123456
        async with session.get(f"{standin.base_url}not-a-token/getMe") as response:
            assert response.status == 404
        async with session.get(f"{standin.base_file_url}{DEFAULT_TOKEN}/nope.jpg") as response:
            assert response.status == 404


async def test_a_raw_update_is_served_verbatim(standin: BotAPIStandIn) -> None:
    first = standin.push_raw_update({"message": 5})
    second = standin.push_raw_update({"update_id": first + 10, "callback_query": {"id": "x"}})
    async with aiohttp.ClientSession() as http:
        url = f"{standin.base_url}{DEFAULT_TOKEN}/getUpdates"
        async with http.post(url, json={"timeout": 0}) as response:
            result = (await response.json())["result"]
        assert result == [
            {"message": 5, "update_id": first},
            {"update_id": second, "callback_query": {"id": "x"}},
        ]
        async with http.post(url, json={"offset": second + 1, "timeout": 0}) as response:
            assert (await response.json())["result"] == []
    assert not standin.pending_updates
