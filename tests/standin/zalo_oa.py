"""A stand-in for the Zalo Official Account API and its OAuth server over HTTP, reached through
``TINBAO_ZALO_OA_API_URL`` and ``TINBAO_ZALO_OAUTH_URL``.

* ``POST /v4/oa/access_token`` (header ``secret_key``, form ``app_id``, ``grant_type``,
  ``refresh_token``): each refresh token works once; the answer rotates both tokens and gives
  ``expires_in`` as a string, as Zalo does.
* ``POST /v3.0/oa/message/cs`` (header ``access_token``): ``-216`` for an unknown or revoked
  access token, ``-213`` when the user has unfollowed the OA, ``-230`` when the user has not
  written within 7 days; sends are recorded. An ``unfollow`` event closes the way, a ``follow``
  or any message from the user opens it again.
* ``POST /v2.0/oa/upload/image`` (header ``access_token``, multipart field ``file``): keeps
  the image and answers ``{"error": 0, "data": {"attachment_id"}}``; a ``cs`` message may then
  carry it in a ``template_type: media`` attachment (an unknown ``attachment_id`` is refused
  with ``-201``); the image is recorded with the send.
* :func:`signed` builds a webhook body and its ``X-ZEvent-Signature`` for tests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

APP_ID = "4321098765"
APP_SECRET = "app-secret-standin-0123456789"
OA_SECRET_KEY = "oa-secret-key-standin-9876543210"
FIRST_REFRESH_TOKEN = "refresh-0"
WINDOW_MS = 7 * 24 * 3600 * 1000


@dataclass
class OASend:
    user_id: str
    text: str
    error: int
    #: The uploaded image the message carried, if any.
    image: bytes | None = None


class ZaloOAStandIn:
    def __init__(self) -> None:
        self.refresh_tokens = {FIRST_REFRESH_TOKEN}
        self.access_tokens: set[str] = set()
        self.refreshes = 0
        self.sends: list[OASend] = []
        #: The last time (ms) each user wrote to the OA; the 7-day window runs from there.
        self.last_seen: dict[str, int] = {}
        #: Users who unfollowed the OA (``-213`` until they follow again).
        self.unfollowed: set[str] = set()
        #: Uploaded images by attachment id.
        self.uploads: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._counter = itertools.count(1)
        #: ``cs`` calls still to answer with a bad gateway (a proxy's HTML page, not JSON).
        self.failing_sends = 0
        #: ``cs`` calls answered that way.
        self.failed_sends = 0

    async def __aenter__(self) -> ZaloOAStandIn:
        app = web.Application()
        app.router.add_post("/v4/oa/access_token", self._token)
        app.router.add_post("/v3.0/oa/message/cs", self._cs)
        app.router.add_post("/v2.0/oa/upload/image", self._upload)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.headers.get("secret_key") != APP_SECRET or form.get("app_id") != APP_ID:
            return web.json_response({"error": -14002, "error_name": "Invalid app"})
        token = str(form.get("refresh_token") or "")
        if form.get("grant_type") != "refresh_token" or token not in self.refresh_tokens:
            return web.json_response({"error": -14014, "error_name": "Invalid refresh token"})
        self.refresh_tokens.discard(token)  # single use
        number = next(self._counter)
        access, refresh = f"access-{number}-{secrets.token_hex(4)}", f"refresh-{number}"
        self.refresh_tokens.add(refresh)
        self.access_tokens.add(access)
        self.refreshes += 1
        return web.json_response(
            {"access_token": access, "refresh_token": refresh, "expires_in": "90000"}
        )

    async def _cs(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.failing_sends > 0:
            self.failing_sends -= 1
            self.failed_sends += 1
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        user_id = str(body.get("recipient", {}).get("user_id", ""))
        message = body.get("message", {})
        text = str(message.get("text", ""))
        image, bad_attachment = self._attachment(message.get("attachment"))
        error = 0
        if request.headers.get("access_token") not in self.access_tokens:
            error = -216
        elif bad_attachment or not (1 if image is None else 0) <= len(text) <= 2000:
            error = -201
        elif user_id in self.unfollowed:
            error = -213
        elif time.time() * 1000 - self.last_seen.get(user_id, 0) > WINDOW_MS:
            error = -230
        self.sends.append(OASend(user_id, text, error, image))
        if error:
            return web.json_response({"error": error, "message": "refused"})
        return web.json_response(
            {"error": 0, "message": "Success", "data": {"message_id": f"m{len(self.sends)}"}}
        )

    def _attachment(self, attachment: Any) -> tuple[bytes | None, bool]:
        """The image a media template names, and whether the attachment is malformed."""
        if attachment is None:
            return None, False
        try:
            payload = attachment["payload"]
            assert attachment["type"] == "template" and payload["template_type"] == "media"
            (element,) = payload["elements"]
            assert element["media_type"] == "image"
            return self.uploads[str(element["attachment_id"])], False
        except (KeyError, TypeError, ValueError, AssertionError):
            return None, True

    async def _upload(self, request: web.Request) -> web.Response:
        if request.headers.get("access_token") not in self.access_tokens:
            return web.json_response({"error": -216, "message": "Access token is invalid"})
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return web.json_response({"error": -201, "message": "file is missing"})
        content = upload.file.read()
        if not content or not str(upload.content_type).startswith("image/"):
            return web.json_response({"error": -201, "message": "not an image"})
        attachment_id = f"att{len(self.uploads) + 1}-{secrets.token_hex(4)}"
        self.uploads[attachment_id] = content
        return web.json_response(
            {"error": 0, "message": "Success", "data": {"attachment_id": attachment_id}}
        )

    # ------------------------------------------------------------------ for tests

    def revoke_access_tokens(self) -> None:
        self.access_tokens.clear()

    def close_window(self, user_id: str) -> None:
        """The user last wrote eight days ago: the OA may not message them any more."""
        self.last_seen[user_id] = int(time.time() * 1000) - WINDOW_MS - 24 * 3600 * 1000

    def refused(self, user_id: str | None = None) -> list[OASend]:
        return [s for s in self.sends if s.error and user_id in (None, s.user_id)]

    def images(self, user_id: str | None = None) -> list[OASend]:
        """Messages that carried an uploaded image (and were accepted)."""
        return [
            s
            for s in self.sends
            if not s.error and s.image is not None and user_id in (None, s.user_id)
        ]

    def delivered(self, user_id: str | None = None) -> list[str]:
        return [s.text for s in self.sends if not s.error and user_id in (None, s.user_id)]

    def event(
        self, user_id: str, event_name: str, message: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A webhook event from ``user_id``; a citizen's event opens the 7-day window."""
        now = int(time.time() * 1000)
        if event_name.startswith("user_send_") or event_name == "follow":
            self.last_seen[user_id] = now
        if event_name == "follow":
            self.unfollowed.discard(user_id)
        elif event_name == "unfollow":
            self.unfollowed.add(user_id)
        event: dict[str, Any] = {
            "app_id": APP_ID,
            "event_name": event_name,
            "timestamp": str(now),
            "user_id_by_app": f"app{user_id}",
            **extra,
        }
        if event_name in ("follow", "unfollow"):
            event["follower"] = {"id": user_id}
        else:
            event["sender"] = {"id": user_id}
            event["recipient"] = {"id": "oa1"}
        if message is not None:
            event["message"] = {"msg_id": f"msg{next(self._counter)}", **message}
        return event


def signed(event: dict[str, Any], key: str = OA_SECRET_KEY) -> tuple[bytes, dict[str, str]]:
    """The raw body of ``event`` and the headers Zalo would send with it."""
    raw = json.dumps(event, ensure_ascii=False).encode()
    mac = hashlib.sha256(
        str(event["app_id"]).encode() + raw + str(event["timestamp"]).encode() + key.encode()
    ).hexdigest()
    return raw, {"X-ZEvent-Signature": f"mac={mac}", "Content-Type": "application/json"}
