"""The Zalo Official Account channel: a citizen writes to the police unit's verified OA.

Zalo posts each event to ``POST /zalo/oa/webhook``, signed with ``X-ZEvent-Signature``. The
signature is checked over the raw bytes in constant time (403 on a mismatch, nothing stored),
an event older than :data:`REPLAY_WINDOW` is refused, and the event is written to the spool
(:mod:`bot.spool`) and answered at once (503 when it cannot be written, so that Zalo delivers it
again); Zalo's retries are recognised by ``message.msg_id`` (:mod:`bot.zalo.inbox`).

Events: ``user_send_text``, ``user_send_image``, ``user_send_location`` (coordinates in the
attachment payload or in ``message.location``; both accepted), ``user_send_file``,
``user_send_sticker`` and ``follow`` become citizen messages (a follow greets like ``/start``);
``unfollow``, ``user_received_message``, ``user_seen_message`` and the OA's own ``oa_send_*``
echoes are ignored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import SendError
from bot.dispatch import Dispatcher
from bot.spool import SpoolError
from bot.zalo.adapter import ZaloAdapter
from bot.zalo.bot_channel import NotStarted, split_command
from bot.zalo.fetch import UrlFetcher
from bot.zalo.inbox import Inbox, update_id_for
from bot.zalo.oa_api import ZaloOAClient, signature_ok
from bot.zalo.oa_tokens import TokenRefreshError, TokenStore
from config.settings import Settings
from handlers.channels import ChannelName
from handlers.events import Attachment, GeoPoint, Message, Sender
from handlers.security import Keyring
from storage.types import utcnow

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WEBHOOK_PATH = "/zalo/oa/webhook"
SIGNATURE_HEADER = "X-ZEvent-Signature"
#: An event signed longer ago than this is a replay, not a retry.
REPLAY_WINDOW = timedelta(hours=1)

CITIZEN_EVENTS = frozenset(
    {
        "user_send_text",
        "user_send_image",
        "user_send_location",
        "user_send_file",
        "user_send_sticker",
        "user_send_gif",
        "user_send_audio",
        "user_send_video",
        "user_send_link",
        "follow",
    }
)


def _str(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def _attachments(message: dict[str, Any]) -> list[dict[str, Any]]:
    items = message.get("attachments")
    return [a for a in items if isinstance(a, dict)] if isinstance(items, list) else []


def _payload(attachment: dict[str, Any]) -> dict[str, Any]:
    payload = attachment.get("payload")
    return payload if isinstance(payload, dict) else {}


def _location(message: dict[str, Any]) -> GeoPoint | None:
    candidates = [_payload(a).get("coordinates") for a in _attachments(message)]
    candidates.append(message.get("location"))
    for item in candidates:
        if not isinstance(item, dict):
            continue
        try:
            lat, lon = float(item["latitude"]), float(item["longitude"])
        except (KeyError, TypeError, ValueError):
            continue
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            return GeoPoint(lat, lon)
    return None


def user_id_of(event: dict[str, Any]) -> str | None:
    holder = event.get("follower") if event.get("event_name") == "follow" else event.get("sender")
    return _str(holder.get("id")) if isinstance(holder, dict) else None


def message_id_of(event: dict[str, Any]) -> str | None:
    """``message.msg_id``; a follow (no message) is keyed by its user and timestamp."""
    name = event.get("event_name")
    if name not in CITIZEN_EVENTS:
        return None
    message = event.get("message")
    msg_id = _str(message.get("msg_id")) if isinstance(message, dict) else None
    if msg_id is not None:
        return msg_id
    user, timestamp = user_id_of(event), _str(event.get("timestamp"))
    return f"{name}:{user}:{timestamp}" if user and timestamp else None


def to_message(event: dict[str, Any]) -> Message | None:
    name = event.get("event_name")
    user_id, msg_id = user_id_of(event), message_id_of(event)
    if name not in CITIZEN_EVENTS or user_id is None or msg_id is None:
        return None
    who = Sender(ChannelName.ZALO_OA, user_id, user_id, None)
    update_id = update_id_for(ChannelName.ZALO_OA, msg_id)
    if name == "follow":
        return Message(update_id, who, text="/start", command="start")
    raw_message = event.get("message")
    message: dict[str, Any] = raw_message if isinstance(raw_message, dict) else {}
    text = message.get("text") if isinstance(message.get("text"), str) else None
    if name == "user_send_text":
        command = split_command(text or "")
        if command is not None:
            return Message(update_id, who, text=text, command=command[0], args=command[1])
        return Message(update_id, who, text=text)
    if name == "user_send_location":
        location = _location(message)
        return Message(update_id, who, location=location, unsupported=None if location else name)
    if name in ("user_send_image", "user_send_file"):
        attachments = []
        for item in _attachments(message):
            payload = _payload(item)
            url = _str(payload.get("url"))
            if url is None:
                continue
            if name == "user_send_image":
                attachments.append(Attachment("photo", url, None, "image/jpeg"))
            else:
                size = payload.get("size")
                attachments.append(
                    Attachment(
                        "document",
                        url,
                        int(size) if isinstance(size, int | str) and str(size).isdigit() else None,
                        None,
                        _str(payload.get("name")),
                    )
                )
        return Message(update_id, who, text=text, attachments=tuple(attachments))
    return Message(update_id, who, unsupported=str(name).removeprefix("user_send_"))


def image_mime(data: bytes) -> str:
    """The type of a cleaned image (tinbao re-encodes to JPEG, or PNG), read from its bytes."""
    return "image/png" if data.startswith(b"\x89PNG\r\n\x1a\n") else "image/jpeg"


class ZaloOAChannel(ZaloAdapter):
    """The Zalo Official Account as a citizen :class:`~bot.channel.Channel`."""

    channel_name = ChannelName.ZALO_OA

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
    ) -> None:
        if (
            settings.zalo_oa_app_id is None
            or settings.zalo_oa_secret_key is None
            or settings.zalo_app_secret is None
        ):
            raise ValueError("the Zalo OA settings are incomplete")
        self.settings = settings
        self.app_id = settings.zalo_oa_app_id
        self._session: aiohttp.ClientSession | None = None
        self.session_factory = session_factory
        self.keyring = keyring
        self.client: ZaloOAClient | None = None
        self.tokens: TokenStore | None = None
        inbox = Inbox(session_factory, keyring, ChannelName.ZALO_OA)
        super().__init__(dispatcher, inbox, NotStarted())

    def message_id(self, update: dict[str, Any]) -> str | None:
        return message_id_of(update)

    def to_message(self, update: dict[str, Any]) -> Message | None:
        return to_message(update)

    async def send_text(self, chat_id: str, text: str) -> None:
        if self.client is None:
            raise SendError("zalo_oa: not started")
        try:
            await self.client.send_text(chat_id, text)
        finally:
            self._note_token_failure()

    async def send_photo(self, chat_id: str, photo: bytes, caption: str) -> None:
        """Upload the image, then send it with its caption in one media-template message."""
        if self.client is None:
            raise SendError("zalo_oa: not started")
        try:
            await self.client.send_image(chat_id, photo, image_mime(photo), caption)
        finally:
            self._note_token_failure()

    def _note_token_failure(self) -> None:
        if self.tokens is not None and self.tokens.failure:
            self._state = f"failing: {self.tokens.failure}"

    def state(self) -> str:
        if self.tokens is not None and self.tokens.failure:
            return f"failing: {self.tokens.failure}"
        return self._state

    async def start(self) -> None:
        assert self.settings.zalo_app_secret is not None
        refresh = self.settings.zalo_oa_refresh_token
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.client = ZaloOAClient(
            self._session,
            api_url=self.settings.zalo_oa_api_url,
            oauth_url=self.settings.zalo_oauth_url,
            app_id=self.app_id,
            app_secret=self.settings.zalo_app_secret.get_secret_value(),
        )
        self.tokens = TokenStore(
            self.session_factory,
            self.keyring,
            app_id=self.app_id,
            initial_refresh_token=refresh.get_secret_value() if refresh is not None else None,
            refresher=self.client.refresh,
        )
        self.client.tokens = self.tokens
        self.fetcher = UrlFetcher(
            self._session,
            max_bytes=self.settings.zalo_media_max_bytes,
            timeout=self.settings.zalo_media_timeout,
        )
        self.start_purging()
        try:
            await self.tokens.access_token()
            self._state = "running: webhook"
        except TokenRefreshError as exc:
            self._state = f"failing: token refresh failing: {exc.reason}"
            log.warning("Zalo OA: no access token yet (%s)", exc.reason)

    async def stop(self) -> None:
        await self.stop_purging()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._state = "stopped"

    def webhook_routes(self) -> list[tuple[str, Handler]]:
        """The routes tinbao's web server adds for this channel."""
        return [(WEBHOOK_PATH, self.handle_webhook)]

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """Verify the signature over the raw body, refuse replays, store, answer at once."""
        raw = await request.read()
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: too deep
            event = None
        if not isinstance(event, dict):
            return web.Response(status=400, text="bad event")
        app_id, timestamp = _str(event.get("app_id")), _str(event.get("timestamp"))
        assert self.settings.zalo_oa_secret_key is not None
        given = request.headers.get(SIGNATURE_HEADER, "")
        if (
            app_id is None
            or timestamp is None
            or not given
            or not signature_ok(
                given, app_id, raw, timestamp, self.settings.zalo_oa_secret_key.get_secret_value()
            )
            or app_id != self.app_id
        ):
            log.warning("Zalo OA webhook: a request with a bad signature was refused")
            return web.Response(status=403, text="forbidden")
        if not _recent(timestamp):
            log.warning("Zalo OA webhook: an event outside the replay window was refused")
            return web.Response(status=403, text="stale")
        try:
            await self.accept(event)
        except SpoolError:  # not even written down: Zalo must deliver it again
            return web.Response(status=503, text="not stored")
        return web.Response(text="ok")


def _recent(timestamp: str) -> bool:
    try:
        value = float(timestamp)
    except ValueError:
        return False
    at = datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
    return abs(utcnow() - at) <= REPLAY_WINDOW
