"""Downloads a citizen's image from the URL Zalo gives, with a size limit and a timeout.

The bytes then go through the same cleaning as Telegram's (re-encoded, no EXIF or GPS,
recognised by content) in the citizen flow; nothing here trusts the URL's name or type.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from handlers import media as media_rules
from handlers.events import Attachment

_CHUNK = 64 * 1024


class DownloadFailed(Exception):
    """The file could not be downloaded; the flow answers "download failed", the draft stays."""


class UrlFetcher:
    """A :class:`~handlers.citizen.MediaFetcher` for files that a Zalo API hands out by URL."""

    def __init__(self, session: aiohttp.ClientSession, *, max_bytes: int, timeout: float) -> None:
        self.session = session
        self.max_bytes = min(max_bytes, media_rules.MAX_DOWNLOAD_BYTES)
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def fetch(self, attachment: Attachment) -> bytes:
        url = attachment.file_ref
        if urlsplit(url).scheme not in ("http", "https"):
            raise DownloadFailed("not an http(s) URL")
        media_rules.check_declared_size(attachment.size)
        async with self.session.get(url, timeout=self.timeout, allow_redirects=True) as response:
            if response.status != 200:
                raise DownloadFailed(f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > self.max_bytes:
                raise media_rules.MediaRejected("too_large")
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > self.max_bytes:
                    raise media_rules.MediaRejected("too_large")
        return bytes(data)
