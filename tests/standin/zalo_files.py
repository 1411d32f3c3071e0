"""A stand-in for the file host Zalo hands a citizen's image out from (the ``photo_url`` of a
Zalo bot update, the ``payload.url`` of an OA ``user_send_image`` event), over HTTP.

Each file is served under ``/f/<name>`` with the type it is given (by default ``image/jpeg``,
whatever the bytes are), as a CDN would; how it is served can be chosen per file:

* ``"sized"`` (default): one answer with a ``Content-Length``;
* ``"unsized"``: streamed in small chunks without a ``Content-Length`` (so only the bytes that
  arrive tell the size);
* ``"stalled"``: the headers and the first kilobyte, then nothing until the stand-in closes
  (a download that hangs).

Every request is counted in :attr:`requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

Serving = Literal["sized", "unsized", "stalled"]


@dataclass
class _File:
    content: bytes
    content_type: str
    serving: Serving


class ZaloFileHost:
    def __init__(self) -> None:
        self._files: dict[str, _File] = {}
        self.requests: Counter[str] = Counter()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def __aenter__(self) -> ZaloFileHost:
        app = web.Application()
        app.router.add_get("/f/{name}", self._serve)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()  # a stalled download ends
        if self._runner is not None:
            await self._runner.cleanup()

    def add(
        self,
        name: str,
        content: bytes,
        *,
        content_type: str = "image/jpeg",
        serving: Serving = "sized",
    ) -> str:
        """Host ``content`` as ``name``; its URL."""
        self._files[name] = _File(content, content_type, serving)
        return f"http://127.0.0.1:{self._port}/f/{name}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[name] += 1
        found = self._files.get(name)
        if found is None:
            return web.Response(status=404)
        if found.serving == "sized":
            return web.Response(body=found.content, content_type=found.content_type)
        response = web.StreamResponse(headers={"Content-Type": found.content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if found.serving == "stalled":
            await response.write(found.content[:1024])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), 120)
            return response
        for start in range(0, len(found.content), 4096):
            await response.write(found.content[start : start + 4096])
        await response.write_eof()
        return response
