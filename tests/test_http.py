"""``bot.http.AiohttpRequest`` under the real python-telegram-bot ``Bot``/``Application``.

Most tests talk to the Bot API stand-in (``tests/standin``); timeouts and connection failures
use raw servers. ``measure_backends`` times sendMessage with PTB's httpx backend against ours;
run ``python -m tests.test_http [calls] [concurrency]`` for the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import io
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
    Update,
)
from telegram.error import (
    BadRequest,
    Forbidden,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import CommandHandler, ContextTypes
from telegram.request import BaseRequest, HTTPXRequest, RequestData

from bot.http import AiohttpRequest
from tests.standin import DEFAULT_TOKEN, BotAPIStandIn, UpdateFactory, make_jpeg

KEYBOARD = InlineKeyboardMarkup(
    [
        [InlineKeyboardButton("Tai nạn giao thông", callback_data="kind:acc")],
        [InlineKeyboardButton('Khác & "lạ"', callback_data="kind:other")],
    ]
)
MINIMAL_MESSAGE = {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}}
#: Larger than what loopback socket buffers absorb, so a server that never reads blocks it.
BLOCKING_UPLOAD = 32 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]


def _retry_seconds(exc: RetryAfter) -> float:
    value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def _bot(base_url: str, request: BaseRequest, base_file_url: str | None = None) -> Bot:
    return Bot(
        DEFAULT_TOKEN,
        base_url=base_url,
        base_file_url=base_file_url or base_url.replace("/bot", "/file/bot"),
        request=request,
        get_updates_request=AiohttpRequest(connection_pool_size=1),
    )


@pytest.fixture
async def standin() -> AsyncIterator[BotAPIStandIn]:
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def bot(standin: BotAPIStandIn) -> AsyncIterator[Bot]:
    async with _bot(standin.base_url, AiohttpRequest(), standin.base_file_url) as tg_bot:
        yield tg_bot


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """An aiohttp server answering every path with ``handler``; yields its ``/bot`` base URL."""
    app = web.Application(client_max_size=2 * BLOCKING_UPLOAD)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/bot"
    finally:
        await runner.cleanup()


async def _never_answer(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(30)
    return web.json_response({"ok": True, "result": True})


@contextlib.contextmanager
def deaf_server() -> Any:
    """A listening socket that is never accepted: connections open, nothing is ever read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/bot"
    finally:
        sock.close()


def _closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# ---------------------------------------------------------------------------- Bot API calls


async def test_get_me(standin: BotAPIStandIn, bot: Bot) -> None:
    assert isinstance(bot.request, AiohttpRequest)
    me = await bot.get_me()
    assert me.id == 123456
    assert me.username == "tinbao_test_bot"
    assert standin.calls_for("getMe")[-1].http_method == "POST"


async def test_send_message_with_inline_keyboard(standin: BotAPIStandIn, bot: Bot) -> None:
    text = "<b>Đã nhận</b> tin báo &amp; cảm ơn 🙏"
    message = await bot.send_message(1001, text, parse_mode="HTML", reply_markup=KEYBOARD)

    assert message.text == "Đã nhận tin báo & cảm ơn 🙏"
    assert message.entities[0].type == "bold"
    assert message.reply_markup == KEYBOARD
    call = standin.calls_for("sendMessage")[0]
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.chat_id == 1001
    assert call.text == text
    assert call.params["parse_mode"] == "HTML"
    assert call.params["reply_markup"] == KEYBOARD.to_dict()


async def test_send_photo_uploads_the_bytes(standin: BotAPIStandIn, bot: Bot) -> None:
    jpeg = make_jpeg(640, 480)
    message = await bot.send_photo(
        -1001234567890, jpeg, caption="Ảnh hiện trường", reply_markup=KEYBOARD
    )

    call = standin.calls_for("sendPhoto")[0]
    assert call.content_type == "multipart/form-data"
    assert call.files["photo"] == jpeg
    expected = InputFile(jpeg)  # PTB's own filename and mimetype for a bytes upload
    assert call.uploads["photo"].filename == expected.filename
    assert call.uploads["photo"].content_type == expected.mimetype
    assert call.params["caption"] == "Ảnh hiện trường"
    assert call.params["reply_markup"] == KEYBOARD.to_dict()
    assert message.caption == "Ảnh hiện trường"
    assert (message.photo[-1].width, message.photo[-1].height) == (640, 480)
    # what was stored is what we sent
    downloaded = await (await bot.get_file(message.photo[-1].file_id)).download_as_bytearray()
    assert bytes(downloaded) == jpeg


async def test_media_group_and_open_file_uploads(standin: BotAPIStandIn, bot: Bot) -> None:
    first, second = make_jpeg(32, 32), make_jpeg(48, 24)
    album = await bot.send_media_group(
        42, [InputMediaPhoto(first, caption="một"), InputMediaPhoto(second)]
    )
    assert len(album) == 2
    assert standin.calls_for("sendMediaGroup")[0].media_files() == [first, second]

    handle = io.BytesIO(b"%PDF-1.4 bien ban")
    handle.seek(5)  # rewound before sending, as httpx does
    document = InputFile(handle, filename="biên bản số 1.pdf", read_file_handle=False)
    sent = await bot.send_document(42, document, caption="BB")
    upload = standin.calls_for("sendDocument")[0].uploads["document"]
    assert upload.content == b"%PDF-1.4 bien ban"
    assert upload.filename == "biên bản số 1.pdf"
    assert upload.content_type == "application/pdf"
    assert sent.document is not None
    assert sent.document.file_name == "biên bản số 1.pdf"


async def test_get_file_and_download(standin: BotAPIStandIn, bot: Bot) -> None:
    content = bytes(range(256)) * 1000
    file_id, _ = standin.add_file(content, "bin", mime_type="application/octet-stream")
    tg_file = await bot.get_file(file_id)
    assert tg_file.file_size == len(content)
    assert bytes(await tg_file.download_as_bytearray()) == content
    target = io.BytesIO()
    await tg_file.download_to_memory(target)
    assert target.getvalue() == content


async def test_api_errors_map_to_ptb_exceptions(standin: BotAPIStandIn, bot: Bot) -> None:
    standin.fail_next("sendMessage", 429, retry_after=1)
    with pytest.raises(RetryAfter) as flood:
        await bot.send_message(7, "x")
    assert _retry_seconds(flood.value) == 1

    standin.fail_next("sendMessage", 403)
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(7, "x")

    standin.fail_next("sendMessage", 400, "Bad Request: chat not found")
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(7, "x")

    standin.fail_next("*", 500, "Internal Server Error")
    with pytest.raises(NetworkError, match="Internal Server Error"):
        await bot.get_me()

    # the connection stays usable after error answers
    assert (await bot.send_message(7, "sau lỗi")).text == "sau lỗi"
    assert [c.status for c in standin.calls_for("sendMessage")] == [429, 403, 400, 200]


# ---------------------------------------------------------------------------- polling


async def test_long_poll_read_timeout_includes_the_poll_timeout(standin: BotAPIStandIn) -> None:
    # The default read timeout (0.3 s) is much shorter than the poll: PTB adds the poll timeout
    # to it for getUpdates, and the request must honour the value it is given.
    async with Bot(
        DEFAULT_TOKEN,
        base_url=standin.base_url,
        request=AiohttpRequest(),
        get_updates_request=AiohttpRequest(connection_pool_size=1, read_timeout=0.3),
    ) as tg_bot:
        started = time.monotonic()
        assert await tg_bot.get_updates(timeout=1) == ()
        assert time.monotonic() - started >= 0.9

        factory = UpdateFactory(standin)
        asyncio.get_running_loop().call_later(
            0.5, standin.push_update, factory.text(factory.vi_user, "trong lúc chờ")
        )
        started = time.monotonic()
        updates = await tg_bot.get_updates(timeout=5)
        assert 0.4 < time.monotonic() - started < 3
        assert updates[0].effective_message is not None
        assert updates[0].effective_message.text == "trong lúc chờ"


async def test_application_long_polling_handler_replies(standin: BotAPIStandIn) -> None:
    factory = UpdateFactory(standin)
    user = factory.vi_user
    errors: list[object] = []

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("Chào bạn", reply_markup=KEYBOARD)

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        errors.append(context.error)

    app = (
        standin.application_builder()
        .request(AiohttpRequest())
        .get_updates_request(AiohttpRequest(connection_pool_size=1, read_timeout=1.0))
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    app.add_error_handler(on_error)
    assert isinstance(app.bot.request, AiohttpRequest)

    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=dtm.timedelta(seconds=2))
        await asyncio.sleep(0.2)  # the first poll is waiting on the server
        standin.push_update(factory.command(user, "start"))
        reply = await standin.wait_for(
            lambda c: c.method == "sendMessage" and c.chat_id == user.id
        )
        await app.updater.stop()
        await app.stop()

    assert reply.ok
    assert reply.params["reply_markup"] == KEYBOARD.to_dict()
    assert standin.texts_to(user.id) == ["Chào bạn"]
    assert standin.pending_updates == []
    assert errors == []
    polls = standin.calls_for("getUpdates")
    assert polls
    assert all(c.ok for c in polls)


# ---------------------------------------------------------------------------- timeouts


async def test_server_that_never_answers_times_out() -> None:
    async with raw_server(_never_answer) as base_url:
        with pytest.raises(TimedOut):  # Bot.initialize() calls getMe
            async with _bot(base_url, AiohttpRequest(read_timeout=0.2)):
                pass

    async with raw_server(_never_answer) as base_url:
        request = AiohttpRequest(read_timeout=0.2)
        await request.initialize()
        try:
            tg_bot = _bot(base_url, request)
            started = time.monotonic()
            with pytest.raises(TimedOut) as timed_out:
                await tg_bot.get_me()
            assert time.monotonic() - started < 2
            assert isinstance(timed_out.value.__cause__, aiohttp.ServerTimeoutError)

            # an explicit per-call value beats the default ...
            with pytest.raises(TimedOut):
                await tg_bot.get_me(read_timeout=0.1)
            # ... and None means no read timeout at all
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(tg_bot.get_me(read_timeout=None), 0.6)
        finally:
            await request.shutdown()


async def test_default_read_timeout_is_a_default_only() -> None:
    async with raw_server(_never_answer) as base_url:
        request = AiohttpRequest(read_timeout=30)
        await request.initialize()
        try:
            with pytest.raises(TimedOut):
                await _bot(base_url, request).get_me(read_timeout=0.2)
        finally:
            await request.shutdown()


async def test_upload_write_timeout_defaults_to_media_write_timeout() -> None:
    payload = b"\0" * BLOCKING_UPLOAD
    with deaf_server() as base_url:
        # uploads use media_write_timeout, not write_timeout ...
        request = AiohttpRequest(write_timeout=0.2, media_write_timeout=None)
        await request.initialize()
        try:
            tg_bot = _bot(base_url, request)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(tg_bot.send_document(1, payload), 1.0)
            # ... unless the call passes a write timeout itself
            started = time.monotonic()
            with pytest.raises(TimedOut) as timed_out:
                await tg_bot.send_document(1, payload, write_timeout=0.2)
            assert time.monotonic() - started < 3
            assert isinstance(timed_out.value.__cause__, TimeoutError)
        finally:
            await request.shutdown()

        request = AiohttpRequest(write_timeout=None, media_write_timeout=0.2)
        await request.initialize()
        try:
            with pytest.raises(TimedOut):
                await _bot(base_url, request).send_document(1, payload)
        finally:
            await request.shutdown()


async def test_pool_timeout_when_all_connections_are_busy() -> None:
    async with raw_server(_never_answer) as base_url:
        request = AiohttpRequest(connection_pool_size=1, pool_timeout=0.2, read_timeout=0.5)
        await request.initialize()
        tg_bot = _bot(base_url, request)
        busy = asyncio.create_task(tg_bot.get_me(read_timeout=None))  # holds the connection
        try:
            await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(TimedOut, match="Pool timeout"):
                await tg_bot.get_me()
            assert time.monotonic() - started < 1
            # an explicit pool timeout of None waits for the busy request to end
            waiting = asyncio.create_task(tg_bot.get_me(pool_timeout=None))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            busy.cancel()
            with pytest.raises(TimedOut) as timed_out:  # got the connection, then no answer
                await waiting
            assert "Pool" not in str(timed_out.value)
        finally:
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
            await request.shutdown()


async def test_refused_connection_is_a_network_error() -> None:
    request = AiohttpRequest()
    await request.initialize()
    try:
        tg_bot = _bot(f"http://127.0.0.1:{_closed_port()}/bot", request)
        with pytest.raises(NetworkError, match="ClientConnectorError") as refused:
            await tg_bot.get_me()
        assert not isinstance(refused.value, TimedOut)
        assert isinstance(refused.value.__cause__, aiohttp.ClientConnectorError)
    finally:
        await request.shutdown()


# ---------------------------------------------------------------------------- wire format


async def test_bodies_match_the_httpx_backend_byte_for_byte() -> None:
    seen: list[tuple[str, str, bytes]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        content_type = request.headers.get("Content-Type", "")
        if "boundary=" in content_type:
            boundary = content_type.split("boundary=", 1)[1]
            body = body.replace(boundary.encode(), b"BOUNDARY")
            content_type = content_type.replace(boundary, "BOUNDARY")
        seen.append((request.headers["User-Agent"], content_type, body))
        if request.path.endswith(("/sendMessage", "/sendDocument")):
            return web.json_response({"ok": True, "result": MINIMAL_MESSAGE})
        return web.json_response({"ok": True, "result": True})

    async def calls(tg_bot: Bot) -> None:
        await tg_bot.send_message(5, 'Tin báo: xe máy & ô tô 🚗 "gấp"', reply_markup=KEYBOARD)
        await tg_bot.set_my_commands([BotCommand("start", "Bắt đầu")], language_code="vi")
        await tg_bot.delete_my_commands()
        await tg_bot.send_document(
            5, b"\x00\x01binary\r\n--x", filename='ảnh "1"\\a.jpg', caption="Ảnh"
        )

    async with raw_server(record) as base_url:
        for request in (HTTPXRequest(), AiohttpRequest()):
            await request.initialize()
            try:
                await calls(_bot(base_url, request))
            finally:
                await request.shutdown()

    httpx_seen, aiohttp_seen = seen[:4], seen[4:]
    assert aiohttp_seen == httpx_seen
    assert aiohttp_seen[0][1] == "application/x-www-form-urlencoded"
    assert aiohttp_seen[3][1] == "multipart/form-data; boundary=BOUNDARY"
    assert aiohttp_seen[0][0] == BaseRequest.USER_AGENT


# ---------------------------------------------------------------------------- lifecycle


async def test_lifecycle_and_properties(standin: BotAPIStandIn) -> None:
    request = AiohttpRequest(read_timeout=3.5)
    assert request.read_timeout == 3.5
    assert AiohttpRequest(read_timeout=None).read_timeout is None
    url = f"{standin.base_url}{DEFAULT_TOKEN}/getMe"
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request(url, "POST", RequestData())
    # through BaseRequest.post the error reaches PTB callers as a NetworkError
    with pytest.raises(NetworkError, match="not initialized"):
        await request.post(url, RequestData())

    async with request:
        await request.initialize()  # a second initialize keeps the same session
        status, payload = await request.do_request(url, "POST", RequestData())
        assert status == 200
        assert request.parse_json_payload(payload)["result"]["id"] == 123456
        assert await request.post(url, RequestData()) == standin.bot_user
    await request.shutdown()  # already shut down: a no-op

    await request.initialize()  # usable again after shutdown
    try:
        assert isinstance(await request.post(url, None), dict)
    finally:
        await request.shutdown()
    with pytest.raises(ValueError, match="connection_pool_size"):
        AiohttpRequest(connection_pool_size=0)


async def test_same_instance_for_both_requests(standin: BotAPIStandIn) -> None:
    shared = AiohttpRequest()
    async with Bot(
        DEFAULT_TOKEN, base_url=standin.base_url, request=shared, get_updates_request=shared
    ) as tg_bot:
        assert await tg_bot.get_updates(timeout=0) == ()
        assert (await tg_bot.send_message(3, "x")).text == "x"


# ---------------------------------------------------------------------------- measurement

_STANDIN_PROCESS = """
import asyncio, sys
from tests.standin import BotAPIStandIn

async def main():
    async with BotAPIStandIn() as server:
        print(server.base_url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


async def _time_send_messages(
    base_url: str, request: BaseRequest, calls: int, concurrency: int
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``calls`` sendMessage calls, after a warm-up."""
    async with _bot(base_url, request) as tg_bot:

        async def send(i: int) -> None:
            await tg_bot.send_message(
                1000 + i % concurrency, f"tin báo {i}", reply_markup=KEYBOARD
            )

        for i in range(max(10, concurrency)):  # open the connections, warm the caches
            await send(i)
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, calls, concurrency):
            await asyncio.gather(*(send(i) for i in range(start, min(calls, start + concurrency))))
        return time.process_time() - cpu, time.perf_counter() - wall


async def measure_backends(
    calls: int = 500, concurrency: int = 1, rounds: int = 3
) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) seconds for ``calls`` sendMessage calls with each backend.

    The stand-in runs in a child process, so ``time.process_time()`` counts the client only
    (PTB's encoding and parsing included, which both backends share).
    """
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _STANDIN_PROCESS,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        base_url = (await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip()
        if not base_url:
            raise RuntimeError("the stand-in process did not start")
        samples: dict[str, list[tuple[float, float]]] = {"httpx": [], "aiohttp": []}
        for _ in range(rounds):
            for name, request in (
                ("httpx", HTTPXRequest(connection_pool_size=max(concurrency, 1))),
                ("aiohttp", AiohttpRequest(connection_pool_size=max(concurrency, 1))),
            ):
                samples[name].append(
                    await _time_send_messages(base_url, request, calls, concurrency)
                )
        return {
            name: (
                statistics.median(cpu for cpu, _ in runs),
                statistics.median(wall for _, wall in runs),
            )
            for name, runs in samples.items()
        }
    finally:
        server.stdin.close()
        try:
            await asyncio.wait_for(server.wait(), 10)
        except TimeoutError:
            server.kill()
            await server.wait()


async def test_measure_backends_runs() -> None:
    results = await measure_backends(calls=20, concurrency=4, rounds=1)
    assert set(results) == {"httpx", "aiohttp"}
    assert all(cpu > 0 and wall > 0 for cpu, wall in results.values())


def _report(calls: int, concurrency: int) -> None:
    results = asyncio.run(measure_backends(calls, concurrency))
    print(f"{calls} x sendMessage, concurrency {concurrency}, median of 3 rounds:")
    for name, (cpu, wall) in results.items():
        print(
            f"  {name:8} CPU {cpu:6.3f} s ({cpu / calls * 1000:.3f} ms/call)"
            f"   wall {wall:6.3f} s ({wall / calls * 1000:.3f} ms/call)"
        )


if __name__ == "__main__":
    try:
        _report(
            int(sys.argv[1]) if len(sys.argv) > 1 else 500,
            int(sys.argv[2]) if len(sys.argv) > 2 else 1,
        )
    except TelegramError as exc:
        raise SystemExit(f"measurement failed: {exc}") from exc
