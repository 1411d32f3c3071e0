"""A stand-in for the Zalo Bot Platform API over HTTP, reached through ``TINBAO_ZALO_BOT_API_URL``.

``getUpdates`` hands out one queued update per call, as ``{"ok": true, "result": {...}}``, or
answers ``{"ok": false, "error_code": 408}`` when none arrives within the call's ``timeout``.
``sendMessage`` refuses text outside 1-2,000 characters; every call is recorded. Images that a
citizen "sends" are served from ``/files/<name>`` so the service downloads them by URL.
``sendPhoto`` takes ``photo`` as a URL and, as Zalo does, fetches it: a link that does not
answer 200 with an image is refused (400); the fetched bytes are kept in :attr:`photos`.
:meth:`fail_next` answers the next calls of a method with an error (a 5xx by default), recorded
like any call.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

DEFAULT_TOKEN = "1234567890:zalo-standin-secret"


@dataclass
class ZaloCall:
    method: str
    params: dict[str, Any]
    answer: dict[str, Any]


@dataclass
class SentPhoto:
    chat_id: str
    url: str
    content: bytes
    caption: str


class ZaloBotStandIn:
    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.calls: list[ZaloCall] = []
        self.updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.files: dict[str, bytes] = {}
        self.webhook: dict[str, Any] | None = None
        self.timeouts = 0
        #: Images delivered by ``sendPhoto``, as fetched from their URL.
        self.photos: list[SentPhoto] = []
        self._ids = itertools.count(1)
        #: Errors to answer next, by method: (HTTP status, calls left).
        self._failures: dict[str, list[int]] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ server

    async def __aenter__(self) -> ZaloBotStandIn:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._method)
        app.router.add_get("/files/{name}", self._file)
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
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        return f"{self.root_url}/bot"

    async def _file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/jpeg")

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        try:
            params = json.loads(await request.read() or b"{}")
        except ValueError:
            params = None
        if not isinstance(params, dict):
            return web.json_response({"ok": False, "error_code": 400, "description": "bad JSON"})
        failing = self._failures.get(method)
        if failing is not None and failing[1] > 0:
            failing[1] -= 1
            status = failing[0]
            answer = {"ok": False, "error_code": status, "description": "Internal Server Error"}
            self.calls.append(ZaloCall(method, params, answer))
            return web.json_response(answer, status=status)
        if method == "getUpdates":
            answer = await self._get_updates(params)
        elif method == "sendPhoto" and not await self._fetch_photo(params):
            answer = {"ok": False, "error_code": 400, "description": "photo cannot be fetched"}
            self.calls.append(ZaloCall(method, params, answer))
        else:
            answer = self._answer(method, params)
            self.calls.append(ZaloCall(method, params, answer))
            async with self._changed:
                self._changed.notify_all()
        return web.json_response(answer)

    async def _fetch_photo(self, params: dict[str, Any]) -> bool:
        url = params.get("photo")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return False
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as response:
                content = await response.read()
                ok = response.status == 200 and response.content_type.startswith("image/")
        except aiohttp.ClientError:
            return False
        if ok:
            caption = params.get("caption")
            self.photos.append(
                SentPhoto(str(params.get("chat_id")), url, content, str(caption or ""))
            )
        return ok

    async def _get_updates(self, params: dict[str, Any]) -> dict[str, Any]:
        timeout = float(params.get("timeout") or 30)
        try:
            update = await asyncio.wait_for(self.updates.get(), timeout)
        except TimeoutError:
            self.timeouts += 1
            return {"ok": False, "error_code": 408, "description": "Request timeout"}
        return {"ok": True, "result": update}

    def _answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method in ("sendMessage", "sendPhoto"):
            if not params.get("chat_id"):
                return {"ok": False, "error_code": 400, "description": "chat_id is required"}
            text = params.get("text" if method == "sendMessage" else "caption")
            if method == "sendMessage" and not (isinstance(text, str) and 1 <= len(text) <= 2000):
                return {"ok": False, "error_code": 400, "description": "text must be 1-2000"}
            return {
                "ok": True,
                "result": {
                    "message_id": f"sent{next(self._ids)}",
                    "date": int(time.time() * 1000),
                },
            }
        if method == "setWebhook":
            secret = str(params.get("secret_token") or "")
            if not params.get("url") or not 8 <= len(secret) <= 256:
                return {"ok": False, "error_code": 400, "description": "bad webhook"}
            self.webhook = params
            return {"ok": True, "result": {"url": params["url"], "updated_at": 0}}
        if method == "deleteWebhook":
            self.webhook = None
            return {"ok": True, "result": {"url": "", "updated_at": 0}}
        if method == "sendChatAction":
            return {"ok": True}
        if method == "getMe":
            return {"ok": True, "result": {"id": "1234567890", "account_name": "bot.standin"}}
        return {"ok": False, "error_code": 404, "description": f"no method {method}"}

    # ------------------------------------------------------------------ for tests

    def fail_next(self, method: str, count: int = 1, status: int = 500) -> None:
        """Answer the next ``count`` calls of ``method`` with HTTP ``status``."""
        self._failures[method] = [status, count]

    def sent(self, chat_id: str | None = None) -> list[str]:
        """Texts sent with ``sendMessage`` (to ``chat_id``)."""
        return [
            c.params["text"]
            for c in self.calls
            if c.method == "sendMessage"
            and c.answer.get("ok")
            and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    async def wait_sent(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.sent()) >= count)


class ZaloUser:
    """A citizen on the Zalo bot, making updates in either documented shape."""

    def __init__(self, user_id: str, display_name: str = "Nguyễn Văn A") -> None:
        self.user_id = user_id
        self.display_name = display_name
        self._ids = itertools.count(1)

    def _message(self, **fields: Any) -> dict[str, Any]:
        return {
            "from": {"id": self.user_id, "display_name": self.display_name, "is_bot": False},
            "chat": {"id": self.user_id, "chat_type": "PRIVATE"},
            "message_id": f"{self.user_id}m{next(self._ids)}",
            "date": int(time.time() * 1000),
            **fields,
        }

    def text(self, text: str, *, event_name: bool = True) -> dict[str, Any]:
        update: dict[str, Any] = {"message": self._message(text=text)}
        if event_name:
            update["event_name"] = "message.text.received"
        return update

    def image(self, url: str, caption: str | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"photo_url": url}
        if caption:
            fields["caption"] = caption
        return {"event_name": "message.image.received", "message": self._message(**fields)}

    def sticker(self) -> dict[str, Any]:
        return {"event_name": "message.sticker.received", "message": self._message(sticker="x")}


async def post_webhook(url: str, body: Any, secret: str | None) -> int:
    headers = {"X-Bot-Api-Secret-Token": secret} if secret is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=json.dumps(body).encode(), headers=headers) as response,
    ):
        return response.status
