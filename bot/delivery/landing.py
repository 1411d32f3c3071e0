"""Did a send that timed out land? Finding out before sending it again.

A send whose answer never came (a read time-out) may have created the message: Telegram has no
idempotency key, so sending it again could post a card twice. Before a part is sent again after
such a time-out (or after its worker died mid-send), the messages above the highest id the bot
knows in that chat are probed with a no-op edit of their keyboard (``editMessageReplyMarkup``
with the part's own markup). Telegram answers, for that id:

- ``Bad Request: message is not modified`` — a message of the bot's with that very markup;
- ``Bad Request: message can't be edited`` — someone else's message (an officer's, a service
  message), or one of the bot's that Telegram never lets a bot edit (sent with ``force_reply``);
- ``Bad Request: message to edit not found`` — no message (never was, or deleted).

PTB raises each as :class:`telegram.error.BadRequest` with the text after ``Bad Request: ``.

What makes this safe is an invariant, not the probe: **every bot message in an officers' chat
is known, except the one in doubt.** The delivery keeps it:

- one sender at a time per chat across processes (:func:`claim_terms`: a row is claimed only
  while no other row of its chat is ``sending``, live or lapsed; PostgreSQL claims of one chat
  take turns on an advisory lock);
- every message id the Bot API gives back is recorded in ``chat_marks`` in the commit that
  records the part (:func:`marking`);
- a row in doubt holds its chat (``chat_marks.unsure_row_id``) until it is resolved, and a row
  whose worker died mid-send stays ``sending`` until it is taken over and resolved first.

So a bot message above the mark can only be the part in doubt, and the probe adopts it: the part
is recorded as sent with that message id and not sent again. When the mark is unknown (a chat
the delivery has not sent to since this table exists), nothing is probed and the part is sent
again, as before.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Final, cast

from sqlalchemy import BigInteger, Table, and_, case, exists, func, literal, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause
from telegram import Bot, InlineKeyboardMarkup, Message
from telegram.error import BadRequest

from handlers.outbox import Status
from storage.models import ChatMark, OutboxMessage
from storage.types import UTCDateTime, utcnow

log = logging.getLogger(__name__)

#: Consecutive "message to edit not found" that end a probe (a deleted message leaves a gap).
PROBE_MISSES: Final = 3
#: The most ids one probe looks at above the mark (officers may have written in between).
PROBE_LIMIT: Final = 60
#: The payload key of a part in doubt: ``{"part": <name or null>, "after": <mark or null>}``.
UNSURE: Final = "unsure"
#: High bits of the advisory-lock keys of per-chat claims ("od"), apart from bot.ordering's.
CLAIM_LOCK_CLASS: Final = 0x6F64


def claim_lock_key(chat_id: int) -> int:
    """A signed 64-bit advisory-lock key for claims of ``chat_id``'s rows."""
    digest = int.from_bytes(hashlib.sha256(f"claim/{chat_id}".encode()).digest()[:6], "big")
    return (CLAIM_LOCK_CLASS << 48) | digest


def in_chat(column: Any, chat_id: int) -> ColumnElement[bool]:
    """``chat_key`` names ``chat_id`` or one of its forum topics."""
    return or_(column == str(chat_id), column.like(f"{chat_id}/%"))


_OUTBOX: Final = cast(Table, OutboxMessage.__table__)
_MARKS: Final = cast(Table, ChatMark.__table__)
#: Built once: an alias's columns are copied when it is made (a millisecond each time).
_OTHER: Final = _OUTBOX.alias("other")
_DOUBT: Final = _OUTBOX.alias("doubt")


def claim_terms(chat_id: int, row_id: int) -> ColumnElement[bool]:
    """What must hold for ``row_id`` to be claimed for ``chat_id``: no other row of the chat is
    being sent (a lapsed one is taken over first), and no other row is in doubt there."""
    other, doubt = _OTHER, _DOUBT
    busy = exists().where(
        other.c.id != row_id,
        other.c.status == Status.SENDING,
        in_chat(other.c.chat_key, chat_id),
    )
    gated = exists().where(
        _MARKS.c.chat_id == chat_id,
        _MARKS.c.unsure_row_id.is_not(None),
        _MARKS.c.unsure_row_id != row_id,
        exists().where(
            doubt.c.id == _MARKS.c.unsure_row_id,
            doubt.c.status.in_((Status.PENDING, Status.SENDING)),
        ),
    )
    return and_(~busy, ~gated)


async def last_known(session: AsyncSession, chat_id: int) -> int | None:
    """The highest message id the bot knows in ``chat_id``; ``None`` when it knows none."""
    found = await session.scalar(
        select(ChatMark.last_message_id).where(ChatMark.chat_id == chat_id)
    )
    return int(found) if found else None


def marking(
    settled: FromClause,
    postgres: bool,
    *,
    chat_id: int,
    row_id: int,
    ids: Sequence[int],
    unsure: dict[str, Any] | None,
) -> Insert:
    """The statement that goes with the record of a row's progress, if it took effect
    (``settled`` has its id; :data:`bot.delivery.leases.After`): raise the chat's mark to the
    ids the Bot API gave back, and hold the chat for the row while it is in doubt (or free
    it)."""
    highest = max(ids, default=0)
    if unsure is not None:
        row: Any = row_id
        after: Any = unsure.get("after")
    else:  # free the chat if this row held it
        row = case((ChatMark.unsure_row_id == row_id, None), else_=ChatMark.unsure_row_id)
        after = case((ChatMark.unsure_row_id == row_id, None), else_=ChatMark.unsure_after)
    source = select(
        literal(chat_id, BigInteger),
        literal(highest, BigInteger),
        literal(row_id if unsure is not None else None, BigInteger),
        literal(unsure.get("after") if unsure is not None else None, BigInteger),
        literal(utcnow(), UTCDateTime()),
    ).where(settled.c.id.is_not(None))  # (SQLite needs a WHERE before ON CONFLICT)
    insert = (pg_insert if postgres else sqlite_insert)(ChatMark).from_select(
        ["chat_id", "last_message_id", "unsure_row_id", "unsure_after", "updated_at"],
        source.select_from(settled),
    )
    greatest = func.greatest if postgres else func.max
    return insert.on_conflict_do_update(
        index_elements=[ChatMark.chat_id],
        set_={
            "last_message_id": greatest(ChatMark.last_message_id, literal(highest, BigInteger)),
            "unsure_row_id": row,
            "unsure_after": after,
            "updated_at": insert.excluded.updated_at,
        },
    )


def message_ids(result: object) -> list[int]:
    """The ids of the messages a Bot API call gave back (one, or an album's)."""
    items = result if isinstance(result, tuple | list) else (result,)
    return [item.message_id for item in items if isinstance(item, Message)]


async def landed(
    bot: Bot,
    chat_id: int,
    after: int,
    *,
    markup: InlineKeyboardMarkup | None,
    expect: int,
) -> list[int]:
    """The ids of the bot's messages above ``after`` (at most ``expect``), probed with a no-op
    edit to ``markup``. Raises what the Bot API raises besides the three answers above (a
    network error, a 5xx, a chat that is gone): the part stays in doubt."""
    found: list[int] = []
    misses = 0
    message_id = after
    while len(found) < expect and misses < PROBE_MISSES and message_id - after < PROBE_LIMIT:
        message_id += 1
        try:
            await bot.edit_message_reply_markup(
                chat_id=chat_id, message_id=message_id, reply_markup=markup
            )
        except BadRequest as exc:
            text = exc.message.lower()
            if "not modified" in text:
                found.append(message_id)
                misses = 0
            elif "to edit not found" in text or "message_id_invalid" in text:
                misses += 1
            elif "can't be edited" in text:
                misses = 0
            else:
                raise
        else:
            # The bot's own message with another keyboard: by the invariant it is the part in
            # doubt, rendered again since (a report's state moved on); it shows the current one.
            log.info(
                "chat %s: message %d had another keyboard; now the current one",
                chat_id,
                message_id,
            )
            found.append(message_id)
            misses = 0
    return found


__all__ = [
    "PROBE_LIMIT",
    "PROBE_MISSES",
    "UNSURE",
    "claim_lock_key",
    "claim_terms",
    "in_chat",
    "landed",
    "last_known",
    "marking",
    "message_ids",
]
