"""Key rotation: every value encrypted under a previous key is re-encrypted under the current one.

What is encrypted is listed in :data:`ENCRYPTED_FIELDS`, one :class:`EncryptedField` per
(table, column), with a path for a value kept inside a JSON column. A new table with a secret
(a channel's stored token, say) adds one line there, and ``tinbao keys rotate`` covers it.

The work is done in batches, each in the caller's transaction; the caller commits after each.
A value already under the current key is skipped, so an interrupted rotation is resumed by
running it again. :func:`check_readable` runs first and refuses, before anything changes, when
some value cannot be read with any configured key (a wrong or missing previous key).

Keyed hashes cannot be re-computed without what they hash, with one exception done here: the
route back holds the tipster's chat, so a route's ``sender_key`` is moved to the current key
when the previous key's hash of that chat matches it. Drafts move on first touch (see
``Conversations.load``); rate-limit windows restart. docs/operations.md says more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.security import Keyring
from storage.models import Base, ContactRoute

BATCH_SIZE = 500


@dataclass(frozen=True)
class EncryptedField:
    """A column holding a Fernet token (or a JSON column holding one at ``path``)."""

    table: str
    column: str
    key: str = "id"
    path: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return ".".join((self.table, self.column, *self.path))


#: Everything tinbao encrypts. Add a line for each new encrypted column.
ENCRYPTED_FIELDS: list[EncryptedField] = [
    EncryptedField("contact_routes", "route"),
    EncryptedField("contact_routes", "phone"),
    # A reward's claim code, until it is delivered to the tipster.
    EncryptedField("outbox", "payload", path=("secret",)),
    # The route of an answer waiting in the outbox (bot/queued_answers.py).
    EncryptedField("outbox", "payload", path=("route",)),
    # A phone number left in a draft that is not yet submitted.
    EncryptedField("conversations", "data", key="key", path=("draft", "phone")),
    # The Zalo OA's access and refresh tokens, and Zalo updates stored before they are handled.
    EncryptedField("zalo_tokens", "tokens", key="key"),
    EncryptedField("zalo_inbox", "payload"),
]


class UnreadableValue(RuntimeError):
    """A value no configured key can read; the message says which and what to do."""


def _table(field: EncryptedField) -> Table:
    return Base.metadata.tables[field.table]


def _get(value: Any, path: tuple[str, ...]) -> str | None:
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if isinstance(value, str) else None


def _replace(value: dict[str, Any], path: tuple[str, ...], token: str) -> dict[str, Any]:
    copy = dict(value)
    if len(path) == 1:
        copy[path[0]] = token
    else:
        copy[path[0]] = _replace(dict(copy[path[0]]), path[1:], token)
    return copy


async def _rows(
    session: AsyncSession, field: EncryptedField, after: Any, batch: int, *, lock: bool
) -> list[tuple[Any, Any]]:
    table = _table(field)
    key, column = table.c[field.key], table.c[field.column]
    stmt = select(key, column).where(column.is_not(None)).order_by(key).limit(batch)
    if after is not None:
        stmt = stmt.where(key > after)
    if lock:
        stmt = stmt.with_for_update()
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def check_readable(
    session: AsyncSession, keyring: Keyring, batch: int = BATCH_SIZE
) -> dict[str, int]:
    """How many values of each field are still under a previous key; refuses unreadable ones."""
    pending: dict[str, int] = {}
    for field in ENCRYPTED_FIELDS:
        after: Any = None
        count = 0
        while rows := await _rows(session, field, after, batch, lock=False):
            after = rows[-1][0]
            for _, value in rows:
                token = _get(value, field.path) if field.path else value
                if token is None or keyring.is_current(token):
                    continue
                try:
                    keyring.decrypt(token)
                except ValueError:
                    raise UnreadableValue(
                        f"a value in {field.name} cannot be read with TINBAO_SECRET_KEY nor "
                        "with any key in TINBAO_PREVIOUS_SECRET_KEYS: the previous key is wrong "
                        "or missing. Nothing was changed; set TINBAO_PREVIOUS_SECRET_KEYS to "
                        "the key the service used before, and run it again."
                    ) from None
                count += 1
        pending[field.name] = count
    return pending


async def reencrypt_batch(
    session: AsyncSession,
    keyring: Keyring,
    field: EncryptedField,
    after: Any,
    batch: int = BATCH_SIZE,
) -> tuple[Any, int, bool]:
    """Re-encrypt one batch of ``field`` after key ``after``: (last key, changed, more left)."""
    table = _table(field)
    rows = await _rows(session, field, after, batch, lock=True)
    changed = 0
    for row_key, value in rows:
        token = _get(value, field.path) if field.path else value
        if token is None or keyring.is_current(token):
            continue
        try:
            fresh = keyring.reencrypt(token)
        except ValueError:
            raise UnreadableValue(
                f"a value in {field.name} cannot be read with any configured key; "
                "set TINBAO_PREVIOUS_SECRET_KEYS to the key it was written with."
            ) from None
        new_value = _replace(value, field.path, fresh) if field.path else fresh
        values: dict[str, Any] = {field.column: new_value}
        if "version" in table.c:  # an optimistic-locked row: a concurrent writer retries
            values["version"] = table.c.version + 1
        await session.execute(update(table).where(table.c[field.key] == row_key).values(**values))
        changed += 1
    last = rows[-1][0] if rows else after
    return last, changed, len(rows) == batch


async def rehash_routes_batch(
    session: AsyncSession, keyring: Keyring, after: int | None, batch: int = BATCH_SIZE
) -> tuple[int | None, int, bool]:
    """Move routes' ``sender_key`` to the current key where the route proves the old one."""
    stmt = (
        select(ContactRoute.id, ContactRoute.sender_key, ContactRoute.route)
        .order_by(ContactRoute.id)
        .limit(batch)
        .with_for_update()
    )
    if after is not None:
        stmt = stmt.where(ContactRoute.id > after)
    rows = (await session.execute(stmt)).all()
    changed = 0
    for row_id, sender_key, token in rows:
        try:
            route = keyring.decrypt(token)
        except ValueError:
            continue  # check_readable refused these before anything changed
        current, *previous = keyring.sender_keys(str(route.get("channel")), str(route["chat_id"]))
        if sender_key != current and sender_key in previous:
            await session.execute(
                update(ContactRoute).where(ContactRoute.id == row_id).values(sender_key=current)
            )
            changed += 1
    last = int(rows[-1][0]) if rows else after
    return last, changed, len(rows) == batch
