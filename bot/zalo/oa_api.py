"""A client of the Zalo Official Account API: customer-service messages and token refresh.

* ``POST <oa_api_url>/v3.0/oa/message/cs``, header ``access_token``, body
  ``{"recipient": {"user_id"}, "message": {"text"}}``; the answer is
  ``{"error": 0, "message": ..., "data": {"message_id"}}`` and a non-zero ``error`` fails.
* An image: ``POST <oa_api_url>/v2.0/oa/upload/image`` (multipart field ``file``, header
  ``access_token``) answers ``{"error": 0, "data": {"attachment_id"}}``; then a ``cs`` message
  with ``text`` and an ``attachment`` of ``template_type: media`` naming that id.
* ``POST <oauth_url>/v4/oa/access_token``, header ``secret_key: <app secret>``, form
  ``app_id``, ``grant_type=refresh_token``, ``refresh_token``; the answer holds
  ``access_token``, ``refresh_token`` and ``expires_in`` (seconds, possibly a string).
* Webhook signature: ``X-ZEvent-Signature`` = ``"mac=" + sha256_hex(app_id + raw body +
  timestamp + OA secret key)``.

See ``docs/zalo.md`` for the sources. No user id reaches a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp

from bot import metrics
from bot.channel import SendError
from bot.zalo.oa_tokens import TokenPair, TokenRefreshError, TokenStore
from storage.types import utcnow

log = logging.getLogger(__name__)

MAX_TEXT = 2000
#: Invalid or expired access token: refresh once, then retry.
TOKEN_ERRORS = frozenset({-216, -220})
RATE_LIMITED = -32
#: The user has not written within 7 days (-230, -232) or does not follow the OA (-213).
UNREACHABLE = frozenset({-230, -232, -213})


def signature(app_id: str, body: bytes, timestamp: str, oa_secret_key: str) -> str:
    """The ``X-ZEvent-Signature`` value Zalo sends with ``body``."""
    digest = hashlib.sha256(
        app_id.encode() + body + timestamp.encode() + oa_secret_key.encode()
    ).hexdigest()
    return f"mac={digest}"


def signature_ok(given: str, app_id: str, body: bytes, timestamp: str, key: str) -> bool:
    expected = signature(app_id, body, timestamp, key)
    given_bytes = given.strip().lower().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given_bytes, expected.encode())


class ZaloOAClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_url: str,
        oauth_url: str,
        app_id: str,
        app_secret: str,
        request_timeout: float = 10.0,
    ) -> None:
        self.session = session
        self.api_url = api_url.rstrip("/")
        self.oauth_url = oauth_url.rstrip("/")
        self.app_id = app_id
        self._app_secret = app_secret
        self.timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.tokens: TokenStore | None = None

    def __repr__(self) -> str:
        return "ZaloOAClient(…)"

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Spend ``refresh_token`` for a new pair (a :data:`~bot.zalo.oa_tokens.Refresher`)."""
        form = {
            "app_id": self.app_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }
        try:
            pair = await self._refresh(form)
        except TokenRefreshError:
            metrics.token_refresh("zalo_oa", ok=False)
            raise
        metrics.token_refresh("zalo_oa", ok=True)
        return pair

    async def _refresh(self, form: dict[str, str]) -> TokenPair:
        try:
            async with self.session.post(
                f"{self.oauth_url}/v4/oa/access_token",
                data=form,
                headers={"secret_key": self._app_secret},
                timeout=self.timeout,
            ) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenRefreshError(f"unreachable ({type(exc).__name__})", refused=False) from None
        if not isinstance(body, dict):
            raise TokenRefreshError("not a JSON object", refused=False)
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if not access or not refresh:
            code = body.get("error", body.get("error_name", "?"))
            raise TokenRefreshError(f"error {code}", refused=True)
        try:
            seconds = int(float(body.get("expires_in") or 90000))
        except (TypeError, ValueError):
            seconds = 90000
        return TokenPair(str(access), str(refresh), utcnow() + timedelta(seconds=seconds))

    async def send_text(self, user_id: str, text: str) -> str:
        """Send ``text``; Zalo's message id. Raises :class:`SendError`."""
        payload = {"recipient": {"user_id": user_id}, "message": {"text": text}}
        body = await self._with_token(lambda token: self._post_cs(token, payload))
        data = body.get("data")
        return str(data.get("message_id", "")) if isinstance(data, dict) else ""

    async def send_image(self, user_id: str, image: bytes, mime: str, text: str) -> str:
        """Upload ``image`` (``/v2.0/oa/upload/image``), then send it in a media template with
        ``text``; Zalo's message id. Raises :class:`SendError`."""
        uploaded = await self._with_token(lambda token: self._upload(token, image, mime))
        data = uploaded.get("data")
        attachment_id = data.get("attachment_id") if isinstance(data, dict) else None
        if not attachment_id:
            raise SendError("zalo_oa: the image upload gave no attachment_id")
        element = {"media_type": "image", "attachment_id": str(attachment_id)}
        message: dict[str, Any] = {
            "attachment": {
                "type": "template",
                "payload": {"template_type": "media", "elements": [element]},
            }
        }
        if text:
            message["text"] = text
        payload = {"recipient": {"user_id": user_id}, "message": message}
        body = await self._with_token(lambda token: self._post_cs(token, payload))
        sent = body.get("data")
        return str(sent.get("message_id", "")) if isinstance(sent, dict) else ""

    async def _with_token(
        self, call: Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]
    ) -> dict[str, Any]:
        """``call`` with the access token; on ``-216``/``-220`` refresh once and call again.
        The answer's body when Zalo said ``error: 0``; else :class:`SendError`."""
        if self.tokens is None:
            raise SendError("zalo_oa: no token store")
        try:
            token = await self.tokens.access_token()
        except TokenRefreshError as exc:
            raise SendError(f"zalo_oa: {exc.reason}") from None
        for attempt in (1, 2):
            code, body = await call(token)
            if code == 0:
                return body
            if code in TOKEN_ERRORS and attempt == 1:
                try:
                    token = (await self.tokens.refresh(stale=token)).access_token
                except TokenRefreshError as exc:
                    raise SendError(f"zalo_oa: {exc.reason}") from None
                continue
            raise send_error(code)
        raise AssertionError("unreachable")

    async def _post_cs(self, token: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self._post(f"{self.api_url}/v3.0/oa/message/cs", token, json=payload)

    async def _upload(self, token: str, image: bytes, mime: str) -> tuple[int, dict[str, Any]]:
        form = aiohttp.FormData()
        extension = "png" if mime == "image/png" else "jpg"
        form.add_field("file", image, filename=f"image.{extension}", content_type=mime)
        return await self._post(f"{self.api_url}/v2.0/oa/upload/image", token, data=form)

    async def _post(self, url: str, token: str, **body: Any) -> tuple[int, dict[str, Any]]:
        """One call; counted in ``tinbao_sends_total{channel="zalo_oa"}`` by its result."""
        status: int | None = None
        try:
            async with self.session.post(
                url, headers={"access_token": token}, timeout=self.timeout, **body
            ) as response:
                status = response.status
                answer = await response.json(content_type=None)
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
            code = int(answer.get("error", 0))
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.channel_send("zalo_oa", "error")
            raise SendError(f"zalo_oa: unreachable ({type(exc).__name__})") from None
        except (TypeError, ValueError):
            failed = status is not None and status >= 300
            metrics.channel_send("zalo_oa", metrics.send_result(status) if failed else "error")
            raise SendError(f"zalo_oa: HTTP {status}, not a Zalo answer") from None
        metrics.channel_send("zalo_oa", _result(code))
        return code, answer


def _result(code: int) -> str:
    """A Zalo OA error code as a ``tinbao_sends_total`` result."""
    if code == 0:
        return "ok"
    return "429" if code == RATE_LIMITED else "4xx"


def send_error(code: int) -> SendError:
    """What the outbox should make of Zalo's error ``code`` (logged by code, never by user)."""
    if code == RATE_LIMITED:
        return SendError("zalo_oa: rate limited (-32)", retry_after=30.0)
    if code in UNREACHABLE:
        return SendError(f"zalo_oa: the citizen cannot be reached now ({code})", gone=True)
    if code in TOKEN_ERRORS:
        return SendError(f"zalo_oa: access token refused after a refresh ({code})")
    log.warning("Zalo OA refused a message with error %d", code)
    return SendError(f"zalo_oa: refused ({code})", permanent=True)
