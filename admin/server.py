"""Serving the web application with bounds: header and idle timeouts, a body timeout (in
:func:`admin.security.edge`), a body size cap and a cap on open connections.

aiohttp closes a connection that has not sent a complete request head within its
``keepalive_timeout`` (counted from the connection's start, and between two requests), so that
one setting is the header read timeout. Beyond ``max_connections`` open connections, a new one
is answered ``503`` and closed at once, before any of its bytes are read.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
    b"Retry-After: 5\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    header_timeout: float = 15.0
    max_connections: int = 512
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_BUSY)
        transport.close()


class Served:
    """A running server; :meth:`stop` closes the listener, then the application."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self.runner = runner
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        await self.runner.cleanup()


async def serve(
    app: web.Application, host: str, port: int, limits: ServerLimits | None = None
) -> Served:
    limits = limits or ServerLimits()
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=limits.header_timeout,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )
    await runner.setup()
    handlers = runner.server
    assert handlers is not None
    refused = 0

    def protocol() -> asyncio.BaseProtocol:
        nonlocal refused
        if len(handlers.connections) >= limits.max_connections:
            refused += 1
            if refused % 100 == 1:
                log.warning(
                    "web server: %d open connections, refusing more", limits.max_connections
                )
            return _Refuse()
        return handlers()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, reuse_address=True, backlog=512)
    return Served(runner, server)
