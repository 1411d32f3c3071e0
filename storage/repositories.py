"""Repositories: typed queries over one :class:`AsyncSession`.

The caller owns the session and its transaction. Nothing here commits; at most it flushes, so
that a report, its media, its audit event and its outbox message land in one transaction.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnDefault, Table, delete, exists, func, insert, literal, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.selectable import ScalarSelect

from storage.db import (
    OUTBOX_CHANNEL,
    OUTBOX_ENQUEUED,
    OUTBOX_NOTIFIED,
    WRITTEN_UNFLUSHED,
    begin_lone_write,
    enqueued,
    lone_write_done,
    outbox_payload,
)
from storage.models import (
    Base,
    ContactRoute,
    Conversation,
    MediaBlob,
    OutboxMessage,
    ProcessedUpdate,
    RateHit,
    RelayMessage,
    Report,
    ReportEvent,
    ReportMedia,
    Unit,
)
from storage.types import utcnow

if TYPE_CHECKING:
    from config.catalogue import Catalogue

#: In ``session.info``: conversation states written by the transaction, for the cache once it
#: has committed (:func:`publish_conversations`).
CONVERSATIONS_WRITTEN = "conversations_written"


_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
_CONVERSATION_COLUMNS = (
    _CONVERSATIONS.c.locale,
    _CONVERSATIONS.c.state,
    _CONVERSATIONS.c.data,
    _CONVERSATIONS.c.step,
    _CONVERSATIONS.c.version,
    _CONVERSATIONS.c.created_at,
    _CONVERSATIONS.c.expires_at,
)


def column_values(row: Base) -> dict[str, Any]:
    """The column values of a new ORM object as its flush would write them: those set on it,
    and the Python-side defaults of the others (server-side ones are left to the server)."""
    state = row.__dict__
    values: dict[str, Any] = {}
    for attribute in sa_inspect(type(row)).column_attrs:
        column = attribute.columns[0]
        if attribute.key in state:
            values[column.key] = state[attribute.key]
        elif isinstance(column.default, ColumnDefault):
            default = column.default
            values[column.key] = default.arg(None) if default.is_callable else default.arg
    return values


class UpdateLog:
    """Which channel updates were already handled."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, channel: str, update_id: int) -> bool:
        """Record the update as handled in one statement; ``False`` if it already was."""
        dialect = self.session.bind.dialect.name if self.session.bind is not None else ""
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(ProcessedUpdate)
            .values(channel=channel, update_id=update_id, processed_at=utcnow())
            .on_conflict_do_nothing()
            .returning(ProcessedUpdate.update_id)
        )
        return (await self.session.execute(statement)).first() is not None

    async def purge_before(self, moment: datetime) -> int:
        result = await self.session.execute(
            delete(ProcessedUpdate).where(ProcessedUpdate.processed_at < moment)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


@dataclass(slots=True, eq=False)
class ConversationState:
    """A citizen's conversation as the hot path reads and writes it (no ORM object).

    ``version`` is the row's version when it was read; :meth:`Conversations.save` writes only
    if the row still has it. ``new``: there was no row yet.
    """

    key: str
    locale: str | None
    state: str
    data: dict[str, Any]
    step: int
    version: int
    created_at: datetime
    expires_at: datetime | None
    new: bool = False


class ConversationCache:
    """The conversations this process wrote last, so that a step costs one conditional write.

    An entry is a committed row as this process wrote it (JSON text, so that no caller shares
    its dicts). It is only a guess: the write that follows checks the version, and a row that
    another process (or the draft sweeper) changed since fails that check, is dropped from here
    and read again. At most ``limit`` entries are kept, least recently used out first.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ConversationState | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        locale, state, data, step, version, created_at, expires_at = entry
        return ConversationState(
            key, locale, state, json.loads(data), step, version, created_at, expires_at
        )

    def put(self, conversation: ConversationState) -> None:
        self._entries[conversation.key] = (
            conversation.locale,
            conversation.state,
            json.dumps(conversation.data, ensure_ascii=False, separators=(",", ":")),
            conversation.step,
            conversation.version,
            conversation.created_at,
            conversation.expires_at,
        )
        self._entries.move_to_end(conversation.key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def publish_conversations(session: AsyncSession) -> None:
    """After a commit: the conversations the transaction wrote become the cached ones."""
    for cache, conversation in session.info.pop(CONVERSATIONS_WRITTEN, ()):
        cache.put(conversation)


def forget_conversations(session: AsyncSession) -> None:
    """After a rollback: nothing the transaction wrote may reach the cache."""
    session.info.pop(CONVERSATIONS_WRITTEN, None)


class Conversations:
    def __init__(self, session: AsyncSession, cache: ConversationCache | None = None) -> None:
        self.session = session
        self.cache = cache

    async def load(
        self, key: str, locale: str, now: datetime, previous: Sequence[str] = ()
    ) -> ConversationState:
        """The conversation under ``key`` (from the cache if this process wrote it last), or
        a new idle one; a Core statement, no ORM identity map.

        During a key rotation a conversation still under one of the ``previous`` keys' hashes
        moves to ``key`` here, at the step it was at (one extra statement, on a miss only)."""
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        query = select(*_CONVERSATION_COLUMNS).where(_CONVERSATIONS.c.key == key)
        row = (await self.session.execute(query)).first()
        for old in previous if row is None else ():
            moved = await self.session.execute(
                update(_CONVERSATIONS).where(_CONVERSATIONS.c.key == old).values(key=key)
            )
            if moved.rowcount:  # type: ignore[attr-defined]
                row = (await self.session.execute(query)).first()
                break
        if row is None:
            return ConversationState(key, locale, "idle", {}, 0, 0, now, None, new=True)
        return ConversationState(
            key,
            row.locale,
            row.state,
            dict(row.data or {}),
            int(row.step or 0),
            int(row.version or 0),
            row.created_at,
            row.expires_at,
        )

    async def save(self, conversation: ConversationState, now: datetime) -> None:
        """One statement: insert a new conversation, or update it if its version is still the
        one that was read. Raises :class:`StaleDataError` (the caller rolls back and runs the
        event again, reading afresh) if another writer got there first."""
        values = {
            "locale": conversation.locale,
            "state": conversation.state,
            "data": conversation.data,
            "step": conversation.step,
            "updated_at": now,
            "expires_at": conversation.expires_at,
        }
        # Most steps change nothing but the conversation: then this statement is the whole
        # transaction, and on PostgreSQL it runs alone in one round trip (storage.db). It is the
        # step's last statement (CitizenFlow.handle), so nothing follows it outside the
        # transaction; anything that tried would raise.
        lone = await begin_lone_write(self.session)
        if conversation.new:
            # A second writer inserting the same key fails on the primary key (IntegrityError).
            await self.session.execute(
                insert(_CONVERSATIONS).values(
                    key=conversation.key, version=1, created_at=conversation.created_at, **values
                )
            )
            version = 1
        else:
            version = conversation.version + 1
            result = await self.session.execute(
                update(_CONVERSATIONS)
                .where(
                    _CONVERSATIONS.c.key == conversation.key,
                    _CONVERSATIONS.c.version == conversation.version,
                )
                .values(version=version, **values)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                if self.cache is not None:
                    self.cache.discard(conversation.key)
                raise StaleDataError(f"conversation changed since version {conversation.version}")
        if lone:
            lone_write_done(self.session)
        if self.cache is not None:
            written = ConversationState(
                conversation.key,
                conversation.locale,
                conversation.state,
                conversation.data,
                conversation.step,
                version,
                conversation.created_at,
                conversation.expires_at,
            )
            self.session.info.setdefault(CONVERSATIONS_WRITTEN, []).append((self.cache, written))

    async def get(self, key: str) -> Conversation | None:
        return await self.session.get(Conversation, key)

    async def get_or_create(
        self, key: str, locale: str, previous: Sequence[str] = ()
    ) -> Conversation:
        """``key``'s conversation; one under a ``previous`` key (a key rotation) moves here."""
        conversation = await self.get(key)
        for old in previous if conversation is None else ():
            moved = await self.session.execute(
                update(Conversation)
                .where(Conversation.key == old)
                .values(key=key, version=Conversation.version + 1)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount:  # type: ignore[attr-defined]
                conversation = await self.get(key)
                break
        if conversation is None:
            conversation = Conversation(key=key, locale=locale, state="idle", data={}, step=0)
            self.session.add(conversation)
        return conversation


@dataclass(frozen=True)
class Allowance:
    """At most ``limit`` hits under ``scope`` and ``key`` in the last ``window``."""

    scope: str
    key: str
    window: timedelta
    limit: int


class Allocated(Enum):
    """What :meth:`Reports.allocate` did."""

    OK = "ok"
    TAKEN = "taken"  # the report's code is another's
    SPENT = "spent"  # the sender has used up the allowance


class RateLimits:
    """Sliding-window counters under hashed keys."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count(self, scope: str, key: str, window: timedelta) -> int:
        total = await self.session.scalar(select(self.counting(Allowance(scope, key, window, 0))))
        return int(total or 0)

    @staticmethod
    def counting(allowance: Allowance) -> ScalarSelect[int]:
        """The hits counted against ``allowance``, as a subquery."""
        since = utcnow() - allowance.window
        return (
            select(func.count())
            .select_from(RateHit)
            .where(
                RateHit.scope == allowance.scope, RateHit.key == allowance.key, RateHit.at >= since
            )
            .scalar_subquery()
        )

    def hit(self, scope: str, key: str) -> None:
        self.session.add(self.hit_row(scope, key))

    @staticmethod
    def hit_row(scope: str, key: str) -> RateHit:
        """A hit, not added (for :meth:`Reports.store`)."""
        return RateHit(scope=scope, key=key, at=utcnow())

    async def clear(self, scope: str, key: str) -> None:
        await self.session.execute(
            delete(RateHit).where(RateHit.scope == scope, RateHit.key == key)
        )

    async def purge_before(self, moment: datetime) -> int:
        result = await self.session.execute(delete(RateHit).where(RateHit.at < moment))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class Media:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_blob(self, *, content: bytes, mime: str, sha256: str) -> MediaBlob:
        blob = MediaBlob(content=content, mime=mime, sha256=sha256, size=len(content))
        self.session.add(blob)
        await self.session.flush()
        return blob

    async def blob_content(self, blob_id: int) -> bytes | None:
        return await self.session.scalar(select(MediaBlob.content).where(MediaBlob.id == blob_id))

    async def delete_blobs(self, blob_ids: Iterable[int | None]) -> None:
        ids = [i for i in blob_ids if i is not None]
        if not ids:
            return
        used = select(ReportMedia.blob_id).where(ReportMedia.blob_id.in_(ids))
        relayed = select(RelayMessage.blob_id).where(RelayMessage.blob_id.in_(ids))
        await self.session.execute(
            delete(MediaBlob).where(
                MediaBlob.id.in_(ids), MediaBlob.id.not_in(used), MediaBlob.id.not_in(relayed)
            )
        )

    async def delete_orphan_blobs(self, created_before: datetime) -> int:
        used = select(ReportMedia.blob_id).where(ReportMedia.blob_id.is_not(None))
        # A tipster's photo in the relay is kept as long as its message.
        relayed = select(RelayMessage.blob_id).where(RelayMessage.blob_id.is_not(None))
        result = await self.session.execute(
            delete(MediaBlob).where(
                MediaBlob.created_at < created_before,
                MediaBlob.id.not_in(used),
                MediaBlob.id.not_in(relayed),
            )
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class Reports:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def code_taken(self, code: str) -> bool:
        found = await self.session.scalar(select(Report.id).where(Report.code == code))
        return found is not None

    async def by_code(self, code: str) -> Report | None:
        return await self.session.scalar(select(Report).where(Report.code == code))

    @property
    def batched(self) -> bool:
        """On PostgreSQL a report is given its id first (:meth:`allocate`) and written with
        everything that goes with it in one statement (:meth:`store`)."""
        return self.session.get_bind().dialect.name == "postgresql"

    async def allocate(self, report: Report, allowance: Allowance | None = None) -> Allocated:
        """Give ``report`` its id, unless its code is taken (pick another code and call again)
        or the sender has used up their ``allowance``.

        PostgreSQL: the id is taken from the table's sequence, the code checked and the
        sender's hits counted in one statement; nothing is written yet (:meth:`store` writes
        it). SQLite: the hits are counted, the code is checked, and the report added and
        flushed for its id."""
        counted = RateLimits.counting(allowance) if allowance is not None else literal(0)
        taken = exists().where(Report.code == report.code)
        if self.batched:
            next_id = func.nextval(func.pg_get_serial_sequence("reports", "id"))
            found = (await self.session.execute(select(next_id, taken, counted))).one()
            if allowance is not None and int(found[2]) >= allowance.limit:
                return Allocated.SPENT
            if found[1]:
                return Allocated.TAKEN
            report.id = int(found[0])
            return Allocated.OK
        found = (await self.session.execute(select(taken, counted))).one()
        if allowance is not None and int(found[1]) >= allowance.limit:
            return Allocated.SPENT
        if found[0]:
            return Allocated.TAKEN
        self.session.add(report)
        await self.session.flush()
        return Allocated.OK

    async def store(self, report: Report, rows: Sequence[Base]) -> None:
        """Write ``report`` (given its id by :meth:`allocate`) and the new ``rows`` that go
        with it (its media, event, route back, outbox rows, a rate-limit hit).

        PostgreSQL: one statement, whatever the tables (a data-modifying CTE per table; the
        foreign keys are checked at its end), so the report's row, and the statistics row its
        trigger updates and holds locked until the commit, are written last but for the
        conversation; with the outbox notification when outbox rows are among them. SQLite:
        added to the session (the ORM writes them at the next flush)."""
        for row in rows:
            if isinstance(row, OutboxMessage):
                enqueued(self.session).add(row.kind, row.next_attempt_at)
        if not self.batched:
            self.session.add_all(rows)
            return
        # A CTE per row (a multi-row VALUES is compiled afresh each time, one row's is cached),
        # with anonymous binds (the tables share column names: kind, report_id, created_at).
        writes = []
        for index, row in enumerate((report, *rows)):
            table = cast(Table, row.__table__)
            values = {k: literal(v, table.c[k].type) for k, v in column_values(row).items()}
            writes.append(insert(table).values(values).cte(f"add_{index}"))
        payload = outbox_payload(self.session) if self.session.info.get(OUTBOX_ENQUEUED) else None
        head = func.pg_notify(OUTBOX_CHANNEL, payload) if payload else literal(True)
        await self.session.execute(select(head).add_cte(*writes))
        self.session.info.setdefault(WRITTEN_UNFLUSHED, []).extend((report, *rows))
        if payload:  # (sent again at the commit if more is enqueued after)
            self.session.info[OUTBOX_NOTIFIED] = payload

    async def add(self, report: Report, media: Sequence[ReportMedia]) -> Report:
        self.session.add(report)
        await self.session.flush()
        for position, item in enumerate(media):
            item.report_id = report.id
            item.position = position
            self.session.add(item)
        return report

    def add_event(
        self,
        report: Report,
        *,
        action: str,
        actor_kind: str,
        actor_id: int | None = None,
        from_status: str | None = None,
        to_status: str | None = None,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> ReportEvent:
        event = self.event(
            report,
            action=action,
            actor_kind=actor_kind,
            actor_id=actor_id,
            from_status=from_status,
            to_status=to_status,
            reason=reason,
            data=data,
        )
        self.session.add(event)
        return event

    @staticmethod
    def event(
        report: Report,
        *,
        action: str,
        actor_kind: str,
        actor_id: int | None = None,
        from_status: str | None = None,
        to_status: str | None = None,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> ReportEvent:
        """An audit event of ``report``, not added (for :meth:`store`)."""
        return ReportEvent(
            report_id=report.id,
            actor_kind=actor_kind,
            actor_id=actor_id,
            action=action,
            from_status=from_status,
            to_status=to_status,
            reason=reason,
            data=data,
            at=utcnow(),
        )

    def add_contact_route(
        self, report: Report, *, sender_key: str, route: str, phone: str | None
    ) -> ContactRoute:
        contact = self.contact_route(report, sender_key=sender_key, route=route, phone=phone)
        self.session.add(contact)
        return contact

    @staticmethod
    def contact_route(
        report: Report, *, sender_key: str, route: str, phone: str | None
    ) -> ContactRoute:
        """The route back to ``report``'s tipster, not added (for :meth:`store`)."""
        return ContactRoute(report_id=report.id, sender_key=sender_key, route=route, phone=phone)

    async def events(self, report_id: int) -> Sequence[ReportEvent]:
        result = await self.session.scalars(
            select(ReportEvent).where(ReportEvent.report_id == report_id).order_by(ReportEvent.id)
        )
        return result.all()


class Outbox:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def enqueue(
        self,
        *,
        kind: str,
        destination: str,
        payload: dict[str, Any],
        report_id: int | None = None,
        dedupe_key: str | None = None,
        due: datetime | None = None,
        priority: int = 0,
    ) -> OutboxMessage:
        """Add a row in the caller's transaction. The typed way in is
        :func:`handlers.outbox.enqueue`; this is its storage half."""
        message = self.row(
            kind=kind,
            destination=destination,
            payload=payload,
            report_id=report_id,
            dedupe_key=dedupe_key,
            due=due,
            priority=priority,
        )
        self.session.add(message)
        # Tells the caller, after its commit, that there is something to deliver.
        enqueued(self.session).add(message.kind, message.next_attempt_at)
        return message

    @staticmethod
    def row(
        *,
        kind: str,
        destination: str,
        payload: dict[str, Any],
        report_id: int | None = None,
        dedupe_key: str | None = None,
        due: datetime | None = None,
        priority: int = 0,
    ) -> OutboxMessage:
        """An outbox row, not added (for :meth:`Reports.store`)."""
        return OutboxMessage(
            kind=kind,
            destination=destination,
            payload=payload,
            report_id=report_id,
            dedupe_key=dedupe_key,
            next_attempt_at=due or utcnow(),
            status="pending",
            priority=priority,
            attempts=0,
            message_count=0,
        )

    async def enqueue_absent(
        self,
        *,
        kind: str,
        destination: str,
        payload: dict[str, Any],
        dedupe_key: str,
        due: datetime | None = None,
        priority: int = 0,
    ) -> bool:
        """Add a row unless one with ``dedupe_key`` exists (``ON CONFLICT DO NOTHING``: two
        transactions at once add one); True when added."""
        now = utcnow()
        dialect = self.session.get_bind().dialect.name
        insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
        result = await self.session.execute(
            insert_(OutboxMessage)
            .values(
                kind=kind,
                destination=destination,
                payload=payload,
                dedupe_key=dedupe_key,
                status="pending",
                attempts=0,
                next_attempt_at=due or now,
                created_at=now,
                priority=priority,
                message_count=0,
            )
            .on_conflict_do_nothing()
        )
        added = bool(getattr(result, "rowcount", 0))
        if added:
            enqueued(self.session).add(kind, due or now)
        return added


class Units:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, code: str) -> Unit | None:
        return await self.session.get(Unit, code)

    async def sync(self, catalogue: Catalogue) -> int:
        """Upsert the catalogue; units missing from it are marked inactive, never deleted."""
        existing = {u.code: u for u in (await self.session.scalars(select(Unit))).all()}
        seen: set[str] = set()
        for entry in catalogue.units:
            code = entry.code
            seen.add(code)
            unit = existing.get(code)
            if unit is None:
                unit = Unit(code=code)
                self.session.add(unit)
            unit.name = entry.name
            unit.division_type = entry.division_type
            unit.codename = entry.codename
            unit.province_code = catalogue.province_code
            unit.active = True
        for code, unit in existing.items():
            if code not in seen:
                unit.active = False
        await self.session.flush()
        return len(seen)
