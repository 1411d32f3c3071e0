"""The web channel's sender: the anonymous inbox a tipster opens with their code and PIN.

The web cannot push a message to a browser, so a message to a web tipster (a question from the
police, a status change, a reward) is written into their inbox: the channel's conversation row,
keyed like every other citizen by a keyed hash of the channel and the inbox id. Each message is
encrypted with the service key; the status page decrypts them after the code and PIN are proven.
An officer's photo is kept as its content hash inside the sealed message (the image itself stays
in the media store, as the ``to_citizen`` relay message's blob); the status page serves it only
behind the proven PIN (``status_pages.status_photo``).
The inbox id itself is only ever stored inside the report's encrypted contact route.

A key rotation moves an inbox to the new key's hash and re-encrypts its messages
(``tinbao keys rotate``, :mod:`handlers.key_rotation`); until it has run, an inbox under the
previous key's hash is still read, and moved on the next message written into it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import SendError
from handlers.channels import CAPABILITIES, Capabilities, ChannelName
from handlers.events import Reply
from handlers.key_rotation import INBOX_FIELD, INBOX_LIMIT, move_inbox
from handlers.security import Keyring
from storage.models import Conversation
from storage.types import utcnow

INBOX_STATE = "web_inbox"


def new_inbox_id() -> str:
    return secrets.token_urlsafe(18)


def inbox_key(keyring: Keyring, inbox_id: str) -> str:
    """The conversation key of an inbox (and the sender key on its reports' routes)."""
    return keyring.sender_key(ChannelName.WEB, inbox_id)


@dataclass(frozen=True)
class InboxMessage:
    at: datetime
    text: str
    #: The sha256 of an officer's photo sent with the message, if any.
    photo: str | None = None


async def read_inbox(session: AsyncSession, keyring: Keyring, inbox_id: str) -> list[InboxMessage]:
    """The messages in an inbox, oldest first (also under a previous key's hash, during a key
    rotation; nothing is moved by a read)."""
    items: list[dict[str, str]] = []
    for key in keyring.sender_keys(ChannelName.WEB, inbox_id):
        row = await session.get(Conversation, key)
        if row is not None:
            items += (row.data or {}).get(INBOX_FIELD, [])
    items.sort(key=lambda item: str(item.get("at", "")) if isinstance(item, dict) else "")
    messages = []
    for item in items:
        try:
            sealed = keyring.decrypt(str(item["m"]))
            at = datetime.fromisoformat(str(item["at"]))
        except (KeyError, ValueError):
            continue
        photo = sealed.get("photo")
        messages.append(
            InboxMessage(
                at, str(sealed.get("text", "")), photo if isinstance(photo, str) else None
            )
        )
    return messages


class WebInbox:
    """The :class:`~bot.channel.Channel` of the web page: sending stores into the inbox."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.clock = clock
        self._state = "starting"

    @property
    def name(self) -> ChannelName:
        return ChannelName.WEB

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES[ChannelName.WEB]

    async def start(self) -> None:
        self._state = "running"

    async def stop(self) -> None:
        self._state = "stopped"

    def state(self) -> str:
        return self._state

    async def send(self, chat_id: str, replies: Sequence[Reply]) -> list[str]:
        """Append ``replies`` to inbox ``chat_id``, encrypted; :class:`SendError` if unusable.

        The page has no reply-to: no message id is kept."""
        if not chat_id or len(chat_id) > 64:
            raise SendError("not a web inbox id", permanent=True)
        try:
            async with self.session_factory() as session, session.begin():
                key, *previous = self.keyring.sender_keys(ChannelName.WEB, chat_id)
                row = await move_inbox(session, key, previous)
                if row is None:
                    row = Conversation(key=key, state=INBOX_STATE, data={}, locale=None)
                    session.add(row)
                now = self.clock()
                items = list((row.data or {}).get(INBOX_FIELD, []))
                for reply in replies:
                    if not reply.text and not reply.photo:
                        continue
                    message: dict[str, str] = {"text": reply.text}
                    if reply.photo:
                        # The image stays in the media store; the page asks for it by hash.
                        message["photo"] = hashlib.sha256(reply.photo).hexdigest()
                    sealed = self.keyring.encrypt(message)
                    items.append({"at": now.isoformat(), "m": sealed})
                row.data = {**(row.data or {}), INBOX_FIELD: items[-INBOX_LIMIT:]}
                row.updated_at = now
        except SendError:
            raise
        except Exception as exc:  # the database is down: the outbox retries later
            raise SendError(f"inbox not written: {type(exc).__name__}") from exc
        return []
