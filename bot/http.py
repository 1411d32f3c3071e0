"""A python-telegram-bot request backend on aiohttp (cheaper in CPU per call than httpx).

``AiohttpRequest`` implements ``telegram.request.BaseRequest`` the way PTB's own
``HTTPXRequest`` (``telegram/request/_httpxrequest.py``, PTB 22.8) does, so ``Bot`` and
``Application`` behave the same whichever backend they are given:

* Bodies are encoded like httpx encodes them for PTB: ``application/x-www-form-urlencoded``
  from ``RequestData.json_parameters`` (every value a string), or, when
  ``RequestData.contains_files``, ``multipart/form-data`` with the parameters as plain fields
  first and then one file part per entry of ``RequestData.multipart_data`` (part name,
  ``filename``, ``Content-Type`` = the ``InputFile``'s mimetype), with httpx's HTML5 escaping of
  names and filenames (raw UTF-8, ``"`` -> ``%22``). A request without parameters has no body.
* Timeouts: each argument equal to ``BaseRequest.DEFAULT_NONE`` means "this instance's
  default", ``None`` means "no timeout". The default write timeout of a request that uploads
  files is ``media_write_timeout`` instead of ``write_timeout``.
* Errors: any timeout raises ``telegram.error.TimedOut`` (one opening the connection says
  ``Connect timeout``, one waiting for the pool ``Pool timeout``: nothing was sent; any other
  may have reached Telegram); a failure to connect raises ``telegram.error.NetworkError``
  (nothing was sent), and every other ``aiohttp.ClientError`` (the connection reset or closed
  after the request went out, a broken answer) raises :class:`ConnectionLost`, a
  ``NetworkError`` that says the request may have been carried out; the aiohttp exception is
  chained as ``__cause__``. HTTP error statuses are returned, and ``BaseRequest`` turns them
  into ``BadRequest``/``Forbidden``/``RetryAfter``/... as usual.

How httpx's four timeouts map onto aiohttp, which has different knobs:

* ``read_timeout`` -> ``ClientTimeout.sock_read``: the longest wait for the next bytes of the
  response. Like httpx (and unlike a total timeout) it starts once the request body is written
  and restarts with every chunk received, so long polling works: for ``getUpdates`` PTB passes
  ``read_timeout`` = the request's default + the poll ``timeout``.
* ``connect_timeout`` -> ``ClientTimeout.connect`` and ``sock_connect``: opening a new
  connection (name resolution, TCP connect, TLS handshake).
* ``pool_timeout``: aiohttp can only bound "wait for a pool slot + open the connection"
  together, so the pool is enforced here: at most ``connection_pool_size`` requests run at once
  (a semaphore, and the connector has the same limit), and a request that finds them all busy
  waits at most ``pool_timeout`` for one to finish, then raises ``TimedOut`` saying it was not
  sent (as ``HTTPXRequest`` does).
* ``write_timeout``: aiohttp has none, so it is enforced here: a body larger than
  ``_TIMED_WRITE_MIN`` is handed to aiohttp in 64 KiB pieces and each piece must be accepted by
  the socket (aiohttp drains its buffer) within the write timeout, much as httpx bounds each
  socket write. Smaller bodies fit in the socket buffer at once: aiohttp never waits while
  writing them, so there is nothing to time out (httpx behaves the same in practice).

Not carried over from ``HTTPXRequest``: ``http_version`` (aiohttp speaks HTTP/1.1 only),
``socket_options``, ``proxy``/``httpx_kwargs``; and proxy environment variables
(``HTTPS_PROXY``...) are ignored, while httpx honours them by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
from typing import Final
from urllib.parse import urlencode

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput, UploadFileDict
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

from bot import metrics

__all__ = ["AiohttpRequest", "ConnectionLost"]


class ConnectionLost(NetworkError):
    """The connection broke after the request went out (reset, closed, a truncated answer):
    Telegram may have carried it out although no answer came, as after a read time-out.
    python-telegram-bot passes a ``TelegramError`` through as it is, so callers see this type."""


log = logging.getLogger(__name__)

#: Bodies up to this size are passed to aiohttp whole (it never waits while writing them).
_TIMED_WRITE_MIN: Final = 32 * 1024
#: Piece size for bodies written under a write timeout (httpx streams files in 64 KiB too).
_WRITE_CHUNK: Final = 64 * 1024
#: aiohttp treats a 0 second timeout as "no timeout"; PTB/httpx mean "fail at once".
_MIN_TIMEOUT: Final = 0.001

_FORM_TYPE: Final = "application/x-www-form-urlencoded"
_FORM_HEADERS: Final = {"Content-Type": _FORM_TYPE}

# httpx's HTML5 form escaping for multipart names and filenames (httpx/_multipart.py).
_HTML5_ESCAPES: Final = {'"': "%22", "\\": "\\\\"} | {
    chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B
}
_HTML5_ESCAPE_RE: Final = re.compile("|".join(re.escape(c) for c in _HTML5_ESCAPES))


def _form_param(name: str, value: str) -> bytes:
    escaped = _HTML5_ESCAPE_RE.sub(lambda m: _HTML5_ESCAPES[m.group(0)], value)
    return f'{name}="{escaped}"'.encode()


def _encode_multipart(fields: dict[str, str], files: UploadFileDict) -> tuple[bytes, str]:
    """``multipart/form-data`` body and content type, laid out as httpx lays them out."""
    boundary = os.urandom(16).hex()
    delimiter = f"--{boundary}\r\n".encode("ascii")
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks += (
            delimiter,
            b"Content-Disposition: form-data; ",
            _form_param("name", name),
            b"\r\n\r\n",
            value.encode(),
            b"\r\n",
        )
    for name, (filename, content, mimetype) in files.items():
        chunks += (delimiter, b"Content-Disposition: form-data; ", _form_param("name", name))
        if filename:
            chunks += (b"; ", _form_param("filename", filename))
        chunks += (b"\r\nContent-Type: ", mimetype.encode(), b"\r\n\r\n")
        if isinstance(content, bytes):
            chunks.append(content)
        else:  # an open file (InputFile(read_file_handle=False)); httpx rewinds it too
            with contextlib.suppress(AttributeError, OSError):
                content.seek(0)
            chunks.append(content.read())
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class _TimedBody(aiohttp.Payload):
    """A bytes body written in pieces, each of which must be sent within ``write_timeout``."""

    def __init__(self, value: bytes, write_timeout: float | None) -> None:
        super().__init__(value)  # the Content-Type is a header of the request
        self._size = len(value)
        self._write_timeout = write_timeout

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        timeout = self._write_timeout
        for start in range(0, len(view), _WRITE_CHUNK):
            async with asyncio.timeout(timeout):
                await writer.write(view[start : start + _WRITE_CHUNK])
        # Leave nothing for aiohttp's own write_eof() drain to wait on without a timeout.
        async with asyncio.timeout(timeout):
            await writer.drain()


def _positive(value: float | None) -> float | None:
    return None if value is None else max(value, _MIN_TIMEOUT)


@functools.lru_cache(maxsize=64)
def _client_timeout(read: float | None, connect: float | None) -> aiohttp.ClientTimeout:
    connect = _positive(connect)
    return aiohttp.ClientTimeout(
        total=None, connect=connect, sock_connect=connect, sock_read=_positive(read)
    )


class AiohttpRequest(BaseRequest):
    """``telegram.request.BaseRequest`` on one ``aiohttp.ClientSession``; see the module doc.

    Args:
        connection_pool_size: Most connections open at once (``TCPConnector(limit=...)``).
        read_timeout: Default seconds to wait for (the next part of) the response.
        write_timeout: Default seconds for each write of the request body.
        connect_timeout: Default seconds to open a connection.
        pool_timeout: Default seconds to wait for a free connection of the pool.
        media_write_timeout: Like ``write_timeout``, the default for requests uploading files.
    """

    __slots__ = (
        "_connect_timeout",
        "_connection_pool_size",
        "_media_write_timeout",
        "_pool_timeout",
        "_read_timeout",
        "_session",
        "_slots",
        "_write_timeout",
    )

    def __init__(
        self,
        *,
        connection_pool_size: int = 256,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        if connection_pool_size < 1:
            raise ValueError("connection_pool_size must be at least 1")
        self._connection_pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(connection_pool_size)

    @property
    def read_timeout(self) -> float | None:
        """The default read timeout (``read_timeout`` given to the constructor)."""
        return self._read_timeout

    async def initialize(self) -> None:
        """Create the session (again, after ``shutdown``); a no-op while it is open."""
        if self._session is not None and not self._session.closed:
            return
        self._slots = asyncio.Semaphore(self._connection_pool_size)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connection_pool_size),
            timeout=_client_timeout(self._read_timeout, self._connect_timeout),
            headers={"User-Agent": self.USER_AGENT},
            # like httpx, no Content-Type on a request without a body
            skip_auto_headers=("Content-Type",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def shutdown(self) -> None:
        """Close the session and its connections; a no-op when already shut down."""
        session, self._session = self._session, None
        if session is None or session.closed:
            log.debug("This AiohttpRequest is already shut down. Returning.")
            return
        await session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """See ``BaseRequest.do_request``."""
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")

        # DEFAULT_NONE: this instance's default; None: no timeout.
        if isinstance(read_timeout, DefaultValue):
            read_timeout = self._read_timeout
        if isinstance(connect_timeout, DefaultValue):
            connect_timeout = self._connect_timeout
        if isinstance(pool_timeout, DefaultValue):
            pool_timeout = self._pool_timeout
        timeout = _client_timeout(read_timeout, connect_timeout)

        data: bytes | aiohttp.Payload | None = None
        headers: dict[str, str] | None = None
        if request_data is not None:
            fields = request_data.json_parameters
            if request_data.contains_files:
                if isinstance(write_timeout, DefaultValue):
                    write_timeout = self._media_write_timeout
                body, content_type = _encode_multipart(fields, request_data.multipart_data)
                data, headers = _TimedBody(body, write_timeout), {"Content-Type": content_type}
            elif fields:
                body = urlencode(fields).encode("ascii")
                if len(body) <= _TIMED_WRITE_MIN:
                    data, headers = body, _FORM_HEADERS
                else:
                    if isinstance(write_timeout, DefaultValue):
                        write_timeout = self._write_timeout
                    data, headers = _TimedBody(body, write_timeout), _FORM_HEADERS

        slots = self._slots
        if slots.locked():  # every connection is busy: wait for one, at most pool_timeout
            try:
                async with asyncio.timeout(_positive(pool_timeout)):
                    await slots.acquire()
            except TimeoutError as err:
                raise TimedOut(
                    message=(
                        "Pool timeout: All connections in the connection pool are occupied. "
                        "Request was *not* sent to Telegram. Consider adjusting the connection "
                        "pool size or the pool timeout."
                    )
                ) from err
        else:
            await slots.acquire()  # returns at once
        try:
            async with session.request(
                method, url, data=data, headers=headers, timeout=timeout
            ) as response:
                body = await response.read()
                metrics.bot_api_call(url, response.status)
                return response.status, body
        except aiohttp.ConnectionTimeoutError as err:  # no connection: nothing was sent
            metrics.bot_api_call(url, None)
            raise TimedOut(
                message="Connect timeout: no connection to Telegram. Request was *not* sent."
            ) from err
        except TimeoutError as err:  # also aiohttp's ServerTimeoutError family
            metrics.bot_api_call(url, None)
            raise TimedOut from err
        except aiohttp.ClientConnectorError as err:  # no connection: nothing was sent
            metrics.bot_api_call(url, None)
            raise NetworkError(f"aiohttp.{err.__class__.__name__}: {err}") from err
        except aiohttp.ClientError as err:  # lost after the request went out, or a bad answer
            metrics.bot_api_call(url, None)
            raise ConnectionLost(f"aiohttp.{err.__class__.__name__}: {err}") from err
        finally:
            slots.release()
