"""The Zalo Bot Platform channel: a citizen writes to the police's Zalo bot.

Updates arrive by long polling (``getUpdates``, one update per call, no offset; a 408 means
"nothing yet") or, with ``TINBAO_ZALO_BOT_WEBHOOK_URL`` set, by webhook at
``POST /zalo/bot/webhook`` with the ``X-Bot-Api-Secret-Token`` header. Either way the update is
written to the spool before anything else (:mod:`bot.spool`; a polled update the spool cannot
write is handled at once instead, or held in memory while the database is down too). Group
chats and bots are ignored.

An officer's photo goes out by ``sendPhoto`` with a short-lived signed link to tinbao's own
server (:mod:`bot.zalo.photo_links`), since the API takes a URL, not bytes.

Two update shapes are documented and both are accepted: with or without the ``{ok, result}``
envelope, and with or without ``event_name`` (then the kind is read from the message's fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import SendError
from bot.dispatch import Dispatcher
from bot.spool import SpoolError
from bot.zalo.adapter import ZaloAdapter
from bot.zalo.bot_api import ZaloBotApiError, ZaloBotClient, sleep_backoff
from bot.zalo.fetch import UrlFetcher
from bot.zalo.inbox import Inbox, update_id_for
from bot.zalo.photo_links import PATH as PHOTO_PATH
from bot.zalo.photo_links import PhotoLinks
from config.settings import Settings
from handlers.channels import ChannelName
from handlers.events import Attachment, Message, Sender
from handlers.security import Keyring

log = logging.getLogger(__name__)
#: Polled updates held in memory while neither the spool nor the database can keep them.
UNKEPT_LIMIT = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WEBHOOK_PATH = "/zalo/bot/webhook"
SECRET_HEADER = "X-Bot-Api-Secret-Token"  # noqa: S105 (a header name)

TEXT = "message.text.received"
IMAGE = "message.image.received"
STICKER = "message.sticker.received"
UNSUPPORTED = "message.unsupported.received"
KNOWN_EVENTS = frozenset({TEXT, IMAGE, STICKER, UNSUPPORTED})


def unwrap(body: Any) -> list[dict[str, Any]]:
    """The updates in a ``getUpdates`` result or a webhook body (enveloped or not)."""
    if isinstance(body, dict) and "result" in body and ("ok" in body or len(body) == 1):
        body = body["result"]
    if isinstance(body, list):
        return [item for item in body if isinstance(item, dict)]
    return [body] if isinstance(body, dict) else []


def _message(update: dict[str, Any]) -> dict[str, Any] | None:
    message = update.get("message")
    return message if isinstance(message, dict) else None


def _event_name(update: dict[str, Any], message: dict[str, Any]) -> str:
    name = update.get("event_name")
    if isinstance(name, str) and name:
        return name
    if message.get("photo_url") or message.get("photo"):
        return IMAGE
    if message.get("sticker"):
        return STICKER
    if isinstance(message.get("text"), str):
        return TEXT
    return UNSUPPORTED


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def split_command(text: str) -> tuple[str, str] | None:
    """``/status ABC 123`` → ``("status", "ABC 123")``; ``None`` for text that is no command."""
    if not text.startswith("/") or len(text) < 2:
        return None
    head, _, rest = text.partition(" ")
    name = head[1:].split("@", 1)[0].lower()
    if not name.isascii() or not name.replace("_", "").isalnum():
        return None
    return name[:32], rest.strip()


def to_message(update: dict[str, Any]) -> Message | None:
    """A private-chat update as a citizen's message; ``None`` for anything else."""
    message = _message(update)
    if message is None:
        return None
    sender = _dict(message.get("from"))
    chat = _dict(message.get("chat"))
    user_id, chat_id, message_id = (
        _str(sender.get("id")),
        _str(chat.get("id")),
        _str(message.get("message_id")),
    )
    if user_id is None or message_id is None or sender.get("is_bot") is True:
        return None
    if str(chat.get("chat_type") or "PRIVATE").upper() != "PRIVATE":
        return None
    event = _event_name(update, message)
    if event not in KNOWN_EVENTS:
        log.info("zalo_bot: event %s ignored", event[:64])
        return None
    who = Sender(ChannelName.ZALO_BOT, user_id, chat_id or user_id, None)
    update_id = update_id_for(ChannelName.ZALO_BOT, message_id)
    if event == TEXT:
        text = str(message.get("text") or "")
        command = split_command(text)
        if command is not None:
            return Message(update_id, who, text=text, command=command[0], args=command[1])
        return Message(update_id, who, text=text)
    if event == IMAGE:
        url = _str(message.get("photo_url")) or _str(message.get("photo"))
        caption = message.get("caption")
        attachments = (Attachment("photo", url, None, "image/jpeg"),) if url else ()
        return Message(
            update_id,
            who,
            text=caption if isinstance(caption, str) and caption else None,
            attachments=attachments,
            unsupported=None if url else "image",
        )
    return Message(update_id, who, unsupported="sticker" if event == STICKER else "unsupported")


class ZaloBotChannel(ZaloAdapter):
    """The Zalo Bot Platform as a citizen :class:`~bot.channel.Channel`."""

    channel_name = ChannelName.ZALO_BOT

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
    ) -> None:
        if settings.zalo_bot_token is None:
            raise ValueError("TINBAO_ZALO_BOT_TOKEN is not set")
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        #: Polled updates that neither the spool nor the database could keep yet.
        self._unkept: list[dict[str, Any]] = []
        self.client: ZaloBotClient | None = None
        self.photo_links = PhotoLinks(session_factory, keyring, settings.public_url)
        inbox = Inbox(session_factory, keyring, ChannelName.ZALO_BOT)
        super().__init__(dispatcher, inbox, NotStarted())

    @property
    def webhook_enabled(self) -> bool:
        return bool(self.settings.zalo_bot_webhook_url)

    def to_message(self, update: dict[str, Any]) -> Message | None:
        return to_message(update)

    def message_id(self, update: dict[str, Any]) -> str | None:
        message = _message(update)
        return _str(message.get("message_id")) if message is not None else None

    async def send_text(self, chat_id: str, text: str) -> None:
        if self.client is None:
            raise SendError("zalo_bot: not started")
        await self.client.send_message(chat_id, text)

    async def send_photo(self, chat_id: str, photo: bytes, caption: str) -> None:
        """``sendPhoto`` with a short-lived signed link to the stored image (Zalo fetches it);
        without ``TINBAO_PUBLIC_URL`` there is no link to give, and the caption goes alone."""
        if self.client is None:
            raise SendError("zalo_bot: not started")
        if not self.photo_links.enabled:
            log.warning("zalo_bot: TINBAO_PUBLIC_URL is not set; a photo was sent as text only")
            if caption:
                await self.client.send_message(chat_id, caption)
            return
        link = self.photo_links.link(hashlib.sha256(photo).hexdigest())
        await self.client.send_photo(chat_id, link, caption)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        assert self.settings.zalo_bot_token is not None
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.client = ZaloBotClient(
            self._session,
            self.settings.zalo_bot_api_url,
            self.settings.zalo_bot_token.get_secret_value(),
        )
        self.fetcher = UrlFetcher(
            self._session,
            max_bytes=self.settings.zalo_media_max_bytes,
            timeout=self.settings.zalo_media_timeout,
        )
        self.start_purging()
        self._poller = asyncio.create_task(self._run(), name="zalo-bot")

    async def _run(self) -> None:
        """Set the webhook, or poll; retry with backoff while Zalo cannot be reached."""
        assert self.client is not None
        delay = 1.0
        while True:
            try:
                if self.webhook_enabled:
                    assert self.settings.zalo_bot_webhook_secret is not None
                    await self.client.set_webhook(
                        self.settings.zalo_bot_webhook_url or "",
                        self.settings.zalo_bot_webhook_secret.get_secret_value(),
                    )
                    self._state = "running: webhook"
                    log.info("Zalo bot channel running (webhook)")
                    return
                with contextlib.suppress(ZaloBotApiError):
                    await self.client.delete_webhook()
                self._state = "running: polling"
                log.info("Zalo bot channel running (polling)")
                await self._poll()
            except ZaloBotApiError as exc:
                self._state = f"failing: {exc.description[:120]}"
                log.warning("Zalo Bot API: %s; retrying in %.0fs", exc.description, delay)
                delay = await sleep_backoff(delay)

    async def _poll(self) -> None:
        assert self.client is not None
        while True:
            body = await self.client.get_update(self.settings.zalo_bot_polling_timeout)
            self._state = "running: polling"
            if body is None:
                continue
            for update in [*self._unkept, *unwrap(body)]:
                await self._keep(update)

    async def _keep(self, update: dict[str, Any]) -> None:
        """Polling hands an update out once, so it is never dropped for a failing disk: written
        to the spool; if the spool cannot write it, handled at once (the inbox still recognises
        a redelivery); if the database is down too, held in memory (bounded) and tried again at
        the next poll."""
        with contextlib.suppress(ValueError):
            self._unkept.remove(update)
        try:
            await self.accept(update)
            return
        except SpoolError:
            pass
        try:
            handled = await self._from_spool(update)
        except Exception as exc:  # as the spool does: logged (no content) and dropped
            log.error("Zalo bot: an unspooled update failed (%s); dropped", type(exc).__name__)
            return
        if not handled:
            log.warning("Zalo bot: an update could be neither spooled nor stored; held in memory")
            if len(self._unkept) < UNKEPT_LIMIT:
                self._unkept.append(update)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.stop_purging()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._state = "stopped"

    # ------------------------------------------------------------------ webhook

    def process_routes(self) -> list[tuple[str, str, Handler]]:
        """``GET`` routes this channel adds: the signed links to officers' photos."""
        return [("GET", PHOTO_PATH, self.photo_links.handle)] if self.photo_links.enabled else []

    def webhook_routes(self) -> list[tuple[str, Handler]]:
        """The routes tinbao's web server adds for this channel."""
        return [(WEBHOOK_PATH, self.handle_webhook)] if self.webhook_enabled else []

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """Check the secret header (constant time), reject bad JSON with 400, store, answer."""
        secret = self.settings.zalo_bot_webhook_secret
        expected = secret.get_secret_value().encode() if secret is not None else b""
        # aiohttp decodes header bytes with surrogateescape: encode them back the same way.
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "surrogateescape")
        if not expected or not hmac.compare_digest(given, expected):
            return web.Response(status=403, text="forbidden")
        try:
            updates = unwrap(json.loads(await request.read()))
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: too deep
            return web.Response(status=400, text="bad update")
        if not updates:
            return web.Response(status=400, text="bad update")
        try:
            for update in updates:
                await self.accept(update)
        except SpoolError:  # not even written down: Zalo must deliver it again
            return web.Response(status=503, text="not stored")
        return web.Response(text="ok")


class NotStarted:
    """The fetcher of a channel that is not started yet (its HTTP session does not exist)."""

    async def fetch(self, attachment: Attachment) -> bytes:
        raise RuntimeError("the Zalo channel is not started")
