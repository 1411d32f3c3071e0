"""A client of the Zalo Official Account API: customer-service messages and token refresh.

* ``POST <oa_api_url>/v3.0/oa/message/cs``, header ``access_token``, body
  ``{"recipient": {"user_id"}, "message": {"text"}}``; the answer is
  ``{"error": 0, "message": ..., "data": {"message_id"}}`` and a non-zero ``error`` fails.
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
from datetime import timedelta
from typing import Any

import aiohttp

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
    return hmac.compare_digest(given.strip().lower().encode(), expected.encode())


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
        if self.tokens is None:
            raise SendError("zalo_oa: no token store")
        payload = {"recipient": {"user_id": user_id}, "message": {"text": text}}
        try:
            token = await self.tokens.access_token()
        except TokenRefreshError as exc:
            raise SendError(f"zalo_oa: {exc.reason}") from None
        for attempt in (1, 2):
            code, body = await self._post_cs(token, payload)
            if code == 0:
                data = body.get("data")
                return str(data.get("message_id", "")) if isinstance(data, dict) else ""
            if code in TOKEN_ERRORS and attempt == 1:
                try:
                    token = (await self.tokens.refresh(stale=token)).access_token
                except TokenRefreshError as exc:
                    raise SendError(f"zalo_oa: {exc.reason}") from None
                continue
            raise send_error(code)
        raise AssertionError("unreachable")

    async def _post_cs(self, token: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            async with self.session.post(
                f"{self.api_url}/v3.0/oa/message/cs",
                json=payload,
                headers={"access_token": token},
                timeout=self.timeout,
            ) as response:
                status = response.status
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SendError(f"zalo_oa: unreachable ({type(exc).__name__})") from None
        if not isinstance(body, dict):
            raise SendError(f"zalo_oa: HTTP {status}, not a JSON object")
        try:
            return int(body.get("error", 0)), body
        except (TypeError, ValueError):
            raise SendError("zalo_oa: malformed answer") from None


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
