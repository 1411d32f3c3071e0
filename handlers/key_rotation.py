"""Key rotation: every value encrypted under a previous key is re-encrypted under the current one.

What is encrypted is listed in :data:`ENCRYPTED_FIELDS`, one :class:`EncryptedField` per
(table, column), with a path for a value kept inside a JSON column (and an item key for a list
of sealed values there, as the web inbox keeps). A new table with a secret (a channel's stored
token, say) adds one line there, and ``tinbao keys rotate`` covers it.

The work is done in batches, each in the caller's transaction; the caller commits after each.
A value already under the current key is skipped, so an interrupted rotation is resumed by
running it again. :func:`check_readable` runs first and refuses, before anything changes, when
some value cannot be read with any configured key (a wrong or missing previous key).

Keyed hashes cannot be re-computed without what they hash, with one exception done here: the
route back holds the tipster's chat, so a route's ``sender_key`` is moved to the current key
when the previous key's hash of that chat matches it; a web route's inbox (a conversation
under that same hash) moves with it (:func:`move_inbox`). PIN hashes are wrapped under the
current key (:meth:`~handlers.security.PinHasher.rewrap`), so that they verify once the previous
key is removed. Drafts move on first touch (see ``Conversations.load``); rate-limit windows
restart. docs/operations.md says more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from handlers.channels import ChannelName
from handlers.security import PIN_WRAP_MAX_KEYS, Keyring, PinHasher
from storage.models import Base, ContactRoute, Conversation, Report
from storage.types import utcnow

BATCH_SIZE = 500
#: Where a web inbox keeps its sealed messages in its conversation's data (bot/web/inbox.py).
INBOX_FIELD = "inbox"
#: The most messages an inbox keeps (the oldest go first).
INBOX_LIMIT = 100


@dataclass(frozen=True)
class EncryptedField:
    """A column holding a Fernet token (or a JSON column holding one at ``path``)."""

    table: str
    column: str
    key: str = "id"
    path: tuple[str, ...] = ()
    #: Set when the value at ``path`` is a list of objects, each holding a token under this key.
    item: str | None = None

    @property
    def name(self) -> str:
        return ".".join(
            (self.table, self.column, *self.path, *((self.item,) if self.item else ()))
        )


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
    # A web tipster's inbox: each message from the police, sealed (bot/web/inbox.py).
    EncryptedField("conversations", "data", key="key", path=(INBOX_FIELD,), item="m"),
    # The Zalo OA's access and refresh tokens, and Zalo updates stored before they are handled.
    EncryptedField("zalo_tokens", "tokens", key="key"),
    EncryptedField("zalo_inbox", "payload"),
]


class UnreadableValue(RuntimeError):
    """A value no configured key can read; the message says which and what to do."""


def _table(field: EncryptedField) -> Table:
    return Base.metadata.tables[field.table]


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _tokens(value: Any, field: EncryptedField) -> list[str]:
    """Every token ``field`` names in one stored ``value``."""
    found = _at(value, field.path)
    if field.item is None:
        return [found] if isinstance(found, str) else []
    items = found if isinstance(found, list) else []
    return [
        i[field.item] for i in items if isinstance(i, dict) and isinstance(i.get(field.item), str)
    ]


def _replace(value: dict[str, Any], path: tuple[str, ...], new: Any) -> dict[str, Any]:
    copy = dict(value)
    if len(path) == 1:
        copy[path[0]] = new
    else:
        copy[path[0]] = _replace(dict(copy[path[0]]), path[1:], new)
    return copy


def _reencrypted(value: Any, field: EncryptedField, keyring: Keyring) -> tuple[Any, int]:
    """``value`` with each of its tokens under the current key, and how many changed."""

    def fresh(token: str) -> str:
        try:
            return keyring.reencrypt(token)
        except ValueError:
            raise UnreadableValue(
                f"a value in {field.name} cannot be read with any configured key; "
                "set TINBAO_PREVIOUS_SECRET_KEYS to the key it was written with."
            ) from None

    if field.item is None:
        token = _at(value, field.path) if field.path else value
        if not isinstance(token, str) or keyring.is_current(token):
            return value, 0
        return (_replace(value, field.path, fresh(token)) if field.path else fresh(token)), 1
    items, changed = [], 0
    for item in _at(value, field.path) or []:
        token = item.get(field.item) if isinstance(item, dict) else None
        if isinstance(token, str) and not keyring.is_current(token):
            item, changed = {**item, field.item: fresh(token)}, changed + 1
        items.append(item)
    return (_replace(value, field.path, items) if changed else value), changed


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
                tokens = _tokens(value, field) if field.path else [value]
                for token in tokens:
                    if keyring.is_current(token):
                        continue
                    try:
                        keyring.decrypt(token)
                    except ValueError:
                        raise _unreadable(field.name) from None
                    count += 1
        pending[field.name] = count
    pending[PIN_FIELD] = await _check_pins(session, keyring, batch)
    return pending


def _unreadable(name: str) -> UnreadableValue:
    return UnreadableValue(
        f"a value in {name} cannot be read with TINBAO_SECRET_KEY nor "
        "with any key in TINBAO_PREVIOUS_SECRET_KEYS: the previous key is wrong "
        "or missing. Nothing was changed; set TINBAO_PREVIOUS_SECRET_KEYS to "
        "the key the service used before, and run it again."
    )


#: How PIN hashes show in a rotation's counts.
PIN_FIELD = "reports.pin_hash"


async def _check_pins(session: AsyncSession, keyring: Keyring, batch: int) -> int:
    """How many PIN hashes a rotation will wrap; refuses one no configured key opens."""
    if len(keyring.previous_pin_keys) > PIN_WRAP_MAX_KEYS:
        raise UnreadableValue(
            f"TINBAO_PREVIOUS_SECRET_KEYS holds more than {PIN_WRAP_MAX_KEYS} keys: a PIN hash "
            "can carry at most that many. Nothing was changed; rotate from the last key or two "
            "the service used, and run it again."
        )
    pins = PinHasher.for_keyring(keyring)
    after, count = None, 0
    while rows := await _pin_rows(session, after, batch, lock=False):
        after = rows[-1][0]
        for _, pin_hash in rows:
            try:
                count += pins.rewrap(pin_hash) is not None
            except ValueError:
                raise _unreadable(PIN_FIELD) from None
    return count


async def _pin_rows(
    session: AsyncSession, after: int | None, batch: int, *, lock: bool
) -> list[tuple[int, str]]:
    stmt = select(Report.id, Report.pin_hash).order_by(Report.id).limit(batch)
    if after is not None:
        stmt = stmt.where(Report.id > after)
    if lock:
        stmt = stmt.with_for_update()
    return [(int(row[0]), str(row[1])) for row in (await session.execute(stmt)).all()]


async def rewrap_pins_batch(
    session: AsyncSession, keyring: Keyring, after: int | None, batch: int = BATCH_SIZE
) -> tuple[int | None, int, bool]:
    """Wrap one batch of PIN hashes under the current key: (last id, changed, more left)."""
    pins = PinHasher.for_keyring(keyring)
    rows = await _pin_rows(session, after, batch, lock=True)
    changed = 0
    for report_id, pin_hash in rows:
        try:
            wrapped = pins.rewrap(pin_hash)
        except ValueError:
            raise _unreadable(PIN_FIELD) from None
        if wrapped is not None:
            await session.execute(
                update(Report).where(Report.id == report_id).values(pin_hash=wrapped)
            )
            changed += 1
    last = rows[-1][0] if rows else after
    return last, changed, len(rows) == batch


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
        new_value, count = _reencrypted(value, field, keyring)
        if not count:
            continue
        values: dict[str, Any] = {field.column: new_value}
        if "version" in table.c:  # an optimistic-locked row: a concurrent writer retries
            values["version"] = table.c.version + 1
        await session.execute(update(table).where(table.c[field.key] == row_key).values(**values))
        changed += count
    last = rows[-1][0] if rows else after
    return last, changed, len(rows) == batch


async def rehash_routes_batch(
    session: AsyncSession, keyring: Keyring, after: int | None, batch: int = BATCH_SIZE
) -> tuple[int | None, int, bool]:
    """Move routes' ``sender_key`` to the current key where the route proves the old one, and
    a web route's inbox with it (also when an earlier rotation moved the route alone)."""
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
        if route.get("channel") == ChannelName.WEB and sender_key in (current, *previous):
            await move_inbox(session, current, previous)
    last = int(rows[-1][0]) if rows else after
    return last, changed, len(rows) == batch


async def move_inbox(session: AsyncSession, key: str, previous: list[str]) -> Conversation | None:
    """The web inbox under ``key``, with any kept under a ``previous`` key's hash moved into it
    (its messages merged in time order when both exist); ``None`` when there is none.

    The sealed messages move as they are: :data:`ENCRYPTED_FIELDS` re-encrypts them."""
    current = await session.get(Conversation, key)
    for old_key in previous:
        if current is None:
            moved = await session.execute(
                update(Conversation)
                .where(Conversation.key == old_key)
                .values(key=key, version=Conversation.version + 1)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount:  # type: ignore[attr-defined]
                current = await session.get(Conversation, key)
            continue
        old = await session.get(Conversation, old_key)
        if old is None:
            continue
        items = [
            *(current.data or {}).get(INBOX_FIELD, []),
            *(old.data or {}).get(INBOX_FIELD, []),
        ]
        items.sort(key=lambda item: str(item.get("at", "")) if isinstance(item, dict) else "")
        current.data = {**(current.data or {}), INBOX_FIELD: items[-INBOX_LIMIT:]}
        current.updated_at = utcnow()
        flag_modified(current, "data")
        await session.delete(old)
        await session.flush()
    return current
