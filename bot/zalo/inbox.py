"""The redelivery keys of the Zalo channels.

Zalo retries slow deliveries (the OA webhook) and may hand a message out again. Updates come in
through the spool (:mod:`bot.spool`), which keeps and replays them; when the spool hands one
back it is claimed here: a row under a keyed hash of its message id, the update encrypted in it
(it carries the citizen's Zalo id) while it is handled. A second delivery of a message id already
handled is recognised by the unique key and dropped; one claimed and not finished (a crash in
between) is handled again. When handled, the payload is dropped and the key kept for a week.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from handlers.security import Keyring
from storage.db import writer
from storage.models import ZaloInbox
from storage.types import utcnow

log = logging.getLogger(__name__)

#: How long a handled message id is remembered to recognise a redelivery.
REMEMBER = timedelta(days=7)


def update_id_for(channel: str, message_id: str) -> int:
    """A stable positive 63-bit id for a Zalo message id (Zalo has no update ids)."""
    digest = hashlib.blake2b(f"{channel}:{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class Inbox:
    """The durable inbox of one Zalo channel."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        channel: str,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.channel = channel
        bind = session_factory.kw.get("bind")
        self._engine = bind if isinstance(bind, AsyncEngine) else None

    def _writer(self) -> contextlib.AbstractAsyncContextManager[object]:
        return writer(self._engine) if self._engine is not None else contextlib.nullcontext()

    def key(self, message_id: str) -> str:
        return self.keyring.keyed_hash("zalo-msg", f"{self.channel}:{message_id}")

    async def put(self, message_id: str, update: dict[str, Any]) -> int | None:
        """Store ``update``; its row id, or ``None`` when this message id was stored before."""
        row = ZaloInbox(
            channel=self.channel,
            msg_key=self.key(message_id),
            payload=self.keyring.encrypt(update),
            received_at=utcnow(),
        )
        try:
            async with self._writer(), self.session_factory() as session, session.begin():
                session.add(row)
        except IntegrityError:
            return None
        return row.id

    async def claim(self, message_id: str, update: dict[str, Any]) -> int | None:
        """The row to handle ``update`` under: a new one, or the one stored before and not
        handled yet (a crash between the two); ``None`` when it was handled already."""
        row_id = await self.put(message_id, update)
        if row_id is not None:
            return row_id
        async with self.session_factory() as session:
            found = await session.scalar(
                select(ZaloInbox.id).where(
                    ZaloInbox.msg_key == self.key(message_id), ZaloInbox.handled_at.is_(None)
                )
            )
        return int(found) if found is not None else None

    async def done(self, row_id: int) -> None:
        """Mark handled and drop the payload; the key stays to recognise a redelivery."""
        async with self._writer(), self.session_factory() as session, session.begin():
            await session.execute(
                update(ZaloInbox)
                .where(ZaloInbox.id == row_id)
                .values(payload=None, handled_at=utcnow())
            )

    async def purge(self) -> int:
        """Forget handled message ids older than :data:`REMEMBER`."""
        async with self._writer(), self.session_factory() as session, session.begin():
            result = await session.execute(
                delete(ZaloInbox).where(
                    ZaloInbox.channel == self.channel,
                    ZaloInbox.handled_at.is_not(None),
                    ZaloInbox.received_at < utcnow() - REMEMBER,
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)
