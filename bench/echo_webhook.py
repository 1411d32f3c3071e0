"""A bare python-telegram-bot echo bot behind a webhook, in a process of its own: the baseline of
``python -m bench.tip_flow --processes``.

``python -m bench.echo_webhook`` reads the same settings as ``tinbao run``
(``TINBAO_TELEGRAM_TOKEN``, ``TINBAO_TELEGRAM_API_URL``, ``TINBAO_TELEGRAM_FILE_URL``,
``TINBAO_WEBHOOK_URL``, ``TINBAO_WEBHOOK_SECRET``, ``TINBAO_HTTP_HOST``, ``TINBAO_HTTP_PORT``),
so that ``tests.cluster`` starts it like a web
process (any ``--role`` argument is ignored). It registers the webhook, checks the secret header,
and puts each update on the Application's queue (no spool, no database): one ``sendMessage`` per
message, one ``answerCallbackQuery`` per press, the same per-chat-ordered processor with 64
concurrent updates as tinbao. ``GET /healthz`` answers as tinbao's does once the bot is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
from urllib.parse import urlsplit

from aiohttp import web
from telegram import Update
from telegram.ext import Application, CallbackQueryHandler, ContextTypes, MessageHandler, filters

from bot.telegram import ALLOWED_UPDATES, PerChatUpdateProcessor

CONCURRENT_UPDATES = 64


async def _echo_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    if message is not None:
        await context.bot.send_message(chat_id=message.chat_id, text=message.text or "?")


async def _echo_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if update.callback_query is not None:
        await update.callback_query.answer()


def build_application(token: str, api_url: str, file_url: str) -> Application:
    application = (
        Application.builder()
        .token(token)
        .base_url(api_url)
        .base_file_url(file_url)
        .updater(None)
        .concurrent_updates(PerChatUpdateProcessor(CONCURRENT_UPDATES))
        .build()
    )
    application.add_handler(MessageHandler(filters.TEXT, _echo_message))
    application.add_handler(CallbackQueryHandler(_echo_press))
    return application


async def serve() -> None:
    env = os.environ
    webhook_url = env["TINBAO_WEBHOOK_URL"]
    secret = env["TINBAO_WEBHOOK_SECRET"].encode()
    application = build_application(
        env["TINBAO_TELEGRAM_TOKEN"],
        env["TINBAO_TELEGRAM_API_URL"],
        env["TINBAO_TELEGRAM_FILE_URL"],
    )
    running = asyncio.Event()

    async def webhook(request: web.Request) -> web.Response:
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret):
            return web.Response(status=403)
        update = Update.de_json(json.loads(await request.read()), application.bot)
        await application.update_queue.put(update)
        return web.Response(text="ok")

    async def healthz(request: web.Request) -> web.Response:
        state = "webhook" if running.is_set() else "starting"
        return web.json_response({"channels": {"telegram": state}})

    app = web.Application()
    app.router.add_post(urlsplit(webhook_url).path or "/", webhook)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, env.get("TINBAO_HTTP_HOST", "127.0.0.1"), int(env["TINBAO_HTTP_PORT"])
    )
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await application.initialize()
    try:
        await application.bot.set_webhook(
            webhook_url, secret_token=secret.decode(), allowed_updates=ALLOWED_UPDATES
        )
        await application.start()
        running.set()
        await stop.wait()
    finally:
        if application.running:
            await application.stop()
        await application.shutdown()
        with contextlib.suppress(Exception):
            await runner.cleanup()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
