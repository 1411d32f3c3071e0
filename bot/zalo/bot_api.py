"""A client of the Zalo Bot Platform API (``https://bot-api.zaloplatforms.com/bot<token>/``).

Every method is ``POST <api_url><token>/<method>`` with a JSON body and answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": ..., "description": ...}``.
See ``docs/zalo.md`` for the facts and their sources. The token never reaches a log line: it
is part of the URL only, and aiohttp's errors are re-raised without the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp

from bot import metrics
from bot.channel import SendError

log = logging.getLogger(__name__)

#: ``getUpdates`` answers this when nothing arrived within its ``timeout``: not an error.
NO_UPDATE = 408
#: The longest text of one message.
MAX_TEXT = 2000
#: Methods that send to a citizen (counted in ``tinbao_sends_total{channel="zalo_bot"}``).
SENDING = frozenset({"sendMessage", "sendPhoto"})


class ZaloBotApiError(Exception):
    """The Bot API answered ``ok: false``, or could not be reached."""

    def __init__(self, error_code: int | None, description: str) -> None:
        super().__init__(f"{error_code}: {description}")
        self.error_code = error_code
        self.description = description


class ZaloBotClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        token: str,
        *,
        request_timeout: float = 10.0,
    ) -> None:
        self.session = session
        self._base = f"{api_url}{token}/"
        self.request_timeout = request_timeout

    def __repr__(self) -> str:  # the URL holds the token
        return "ZaloBotClient(…)"

    async def call(
        self, method: str, payload: dict[str, Any] | None = None, *, seconds: float | None = None
    ) -> Any:
        """Call ``method`` (waiting at most ``seconds``); its ``result``, or an error."""
        try:
            result = await self._call(method, payload, seconds)
        except ZaloBotApiError as exc:
            if method in SENDING:
                metrics.channel_send("zalo_bot", metrics.send_result(exc.error_code))
            raise
        if method in SENDING:
            metrics.channel_send("zalo_bot", "ok")
        return result

    async def _call(
        self, method: str, payload: dict[str, Any] | None, seconds: float | None
    ) -> Any:
        wait = aiohttp.ClientTimeout(total=seconds or self.request_timeout)
        try:
            async with self.session.post(
                self._base + method, json=payload or {}, timeout=wait
            ) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except TimeoutError:
            raise ZaloBotApiError(None, f"{method}: timed out") from None
        except aiohttp.ClientError as exc:
            raise ZaloBotApiError(None, f"{method}: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise ZaloBotApiError(status, f"{method}: HTTP {status}, not a JSON object")
        if body.get("ok") is True:
            return body.get("result")
        code = body.get("error_code")
        return_code = int(code) if isinstance(code, int | str) and str(code).isdigit() else status
        raise ZaloBotApiError(return_code, str(body.get("description") or f"HTTP {status}"))

    async def get_update(self, poll_seconds: int) -> Any | None:
        """One update by long polling, or ``None`` when none arrived in ``poll_seconds``."""
        try:
            return await self.call(
                "getUpdates", {"timeout": poll_seconds}, seconds=poll_seconds + 10
            )
        except ZaloBotApiError as exc:
            if exc.error_code == NO_UPDATE:
                return None
            raise

    async def send_message(self, chat_id: str, text: str) -> None:
        try:
            await self.call("sendMessage", {"chat_id": chat_id, "text": text})
        except ZaloBotApiError as exc:
            raise as_send_error(exc) from None

    async def send_photo(self, chat_id: str, photo_url: str, caption: str) -> None:
        """Send the image at ``photo_url`` (Zalo fetches it) with ``caption``."""
        payload = {"chat_id": chat_id, "photo": photo_url}
        if caption:
            payload["caption"] = caption
        try:
            await self.call("sendPhoto", payload)
        except ZaloBotApiError as exc:
            raise as_send_error(exc) from None

    async def send_chat_action(self, chat_id: str, action: str = "typing") -> None:
        # optional: a missing "typing…" must never stop the answer
        with contextlib.suppress(ZaloBotApiError):
            await self.call("sendChatAction", {"chat_id": chat_id, "action": action})

    async def set_webhook(self, url: str, secret_token: str) -> None:
        await self.call("setWebhook", {"url": url, "secret_token": secret_token})

    async def delete_webhook(self) -> None:
        await self.call("deleteWebhook")

    async def get_me(self) -> dict[str, Any]:
        result = await self.call("getMe")
        return result if isinstance(result, dict) else {}


def as_send_error(exc: ZaloBotApiError) -> SendError:
    """What the outbox should make of a failed send (``bot.channel.SendError``'s flags)."""
    code = exc.error_code
    if code == 429:
        return SendError(f"zalo_bot: rate limited ({exc.description})", retry_after=5.0)
    if code in (403, 404):
        return SendError(f"zalo_bot: chat unreachable ({code})", gone=True)
    if code is not None and 400 <= code < 500:
        return SendError(f"zalo_bot: refused ({code})", permanent=True)
    return SendError(f"zalo_bot: failed ({code}: {exc.description})")


async def sleep_backoff(delay: float) -> float:
    """Sleep ``delay`` seconds and return the next delay (doubling up to a minute)."""
    await asyncio.sleep(delay)
    return min(delay * 2, 60.0)
