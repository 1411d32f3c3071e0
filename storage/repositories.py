"""Repositories: typed queries over one :class:`AsyncSession`.

The caller owns the session and its transaction. Nothing here commits; at most it flushes, so
that a report, its media, its audit event and its outbox message land in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
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

#: Set in ``session.info`` when a transaction enqueued an outbox message.
OUTBOX_ENQUEUED = "outbox_enqueued"


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


class Conversations:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key: str) -> Conversation | None:
        return await self.session.get(Conversation, key)

    async def get_any(self, keys: Sequence[str]) -> Conversation | None:
        """The conversation under the first of ``keys`` that has one (read-only)."""
        for key in keys:
            conversation = await self.get(key)
            if conversation is not None:
                return conversation
        return None

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

    async def expired_drafts(self, now: datetime, limit: int = 500) -> Sequence[Conversation]:
        result = await self.session.scalars(
            select(Conversation)
            .where(Conversation.expires_at.is_not(None), Conversation.expires_at < now)
            .limit(limit)
        )
        return result.all()


class RateLimits:
    """Sliding-window counters under hashed keys."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count(self, scope: str, key: str, window: timedelta) -> int:
        since = utcnow() - window
        total = await self.session.scalar(
            select(func.count())
            .select_from(RateHit)
            .where(RateHit.scope == scope, RateHit.key == key, RateHit.at >= since)
        )
        return int(total or 0)

    def hit(self, scope: str, key: str) -> None:
        self.session.add(RateHit(scope=scope, key=key, at=utcnow()))

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
        event = ReportEvent(
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
        self.session.add(event)
        return event

    def add_contact_route(
        self, report: Report, *, sender_key: str, route: str, phone: str | None
    ) -> ContactRoute:
        contact = ContactRoute(
            report_id=report.id, sender_key=sender_key, route=route, phone=phone
        )
        self.session.add(contact)
        return contact

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
        # Tells the caller, after its commit, that there is something to deliver.
        self.session.info[OUTBOX_ENQUEUED] = True
        message = OutboxMessage(
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
        self.session.add(message)
        return message


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
