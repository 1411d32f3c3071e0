"""Short-lived signed links to an officer's photo, for the Zalo Bot Platform.

The Bot Platform's ``sendPhoto`` takes the image as a URL, which Zalo's servers fetch; it has no
upload. So a question's photo is offered for a short while at tinbao's own public address
(``TINBAO_PUBLIC_URL``):

    GET <public_url>/zalo/bot/photo/<sha256>/<expires>/<signature>

``sha256`` names the stored (already cleaned) image by its content; ``expires`` is a Unix time;
``signature`` is the keyring's keyed hash of both, so a link can be neither made up nor
stretched, and it stops working after :data:`LINK_SECONDS`. Only an image that an officer sent
to a tipster (a ``to_citizen`` relay message) is ever served, so a link cannot reach a tipster's
evidence. The link names nobody: the tipster's id never appears in it.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handlers.security import Keyring
from storage.models import MediaBlob, RelayMessage

PATH = "/zalo/bot/photo/{sha256}/{expires}/{signature}"
#: How long a link works: Zalo fetches the image while it handles ``sendPhoto``.
LINK_SECONDS = 3600
_SCOPE = "zalo-bot-photo"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class PhotoLinks:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        public_url: str | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.public_url = (public_url or "").rstrip("/") or None
        self.clock = clock

    @property
    def enabled(self) -> bool:
        """Links can be made only where tinbao has a public address."""
        return self.public_url is not None

    def link(self, sha256: str) -> str:
        """A link to the image whose content hashes to ``sha256``, valid :data:`LINK_SECONDS`."""
        if self.public_url is None:
            raise RuntimeError("TINBAO_PUBLIC_URL is not set")
        expires = int(self.clock()) + LINK_SECONDS
        signature = self.keyring.keyed_hash(_SCOPE, f"{sha256}:{expires}")
        return f"{self.public_url}/zalo/bot/photo/{sha256}/{expires}/{signature}"

    def valid(self, sha256: str, expires: str, signature: str) -> bool:
        if not _SHA256.fullmatch(sha256) or not expires.isdigit() or len(expires) > 12:
            return False
        if int(expires) < self.clock() or int(expires) > self.clock() + LINK_SECONDS + 60:
            return False
        given = signature.encode("utf-8", "surrogateescape")
        return any(
            hmac.compare_digest(given, expected.encode())
            for expected in self.keyring.keyed_hashes(_SCOPE, f"{sha256}:{expires}")
        )

    async def handle(self, request: web.Request) -> web.Response:
        """Serve the image, or 404 for any link that is not valid (never saying why)."""
        sha256 = request.match_info["sha256"]
        if not self.valid(sha256, request.match_info["expires"], request.match_info["signature"]):
            raise web.HTTPNotFound
        async with self.session_factory() as session:
            found = (
                await session.execute(
                    select(MediaBlob.mime, MediaBlob.content)
                    .join(RelayMessage, RelayMessage.blob_id == MediaBlob.id)
                    .where(MediaBlob.sha256 == sha256, RelayMessage.direction == "to_citizen")
                    .limit(1)
                )
            ).first()
        if found is None:
            raise web.HTTPNotFound
        mime, content = found
        return web.Response(
            body=content,
            content_type=mime,
            headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"},
        )
