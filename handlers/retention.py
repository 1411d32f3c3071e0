"""The retention policy: what is deleted from closed reports, and when.

:func:`apply_retention` does one batch of each item inside the caller's transaction and returns
the counts; the caller commits and calls again until nothing is left (``tinbao retention run``
and the worker's daily run do exactly that). Every batch that deletes anything writes one audit
event with the counts (never content), and each report touched gets a ``retention`` event in its
own history, so an officer sees why its evidence or route is gone.

A report is closed when its status is one of :data:`CLOSED_STATUSES`; it was closed at its last
event into such a status. A report whose reward is still proposed or approved keeps its route:
the claim code has to reach the tipster.

The delivery outbox is pruned in the same run, in its own batches (:data:`OUTBOX_BATCH_SIZE`):
rows that are over (:data:`SETTLED`: sent, folded into a digest, a fired or cancelled timer)
after ``outbox``, rows given up on (``failed``) after ``outbox_failed``, counted from the moment
the row was last due (``next_attempt_at``, and ``sent_at`` when it has one). A ``pending`` or
``sending`` row is never deleted. Why that is safe (dedupe keys, the flood budget, card edits, a
reply to a relayed question): docs/operations.md, "Retention".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.card_actions import CLOSED_STATUSES
from handlers.citizen.relay import SENT_MESSAGE_ID
from handlers.outbox import Kind, Status
from storage.models import (
    AuditEvent,
    ContactRoute,
    MediaBlob,
    OutboxMessage,
    RelayMessage,
    Report,
    ReportEvent,
    ReportMedia,
    Reward,
)

BATCH_SIZE = 500
TEXT_YEAR = timedelta(days=365)
#: Rewards still waiting for the tipster: their report keeps its route back.
OPEN_REWARD_STATUSES = ("proposed", "approved")
#: Outbox rows are small and deleted through an index: a batch of them is ten of the others, so
#: that a day's sent messages take one batch (and one audit event), not a dozen.
OUTBOX_BATCH_SIZE = 5000
#: Outbox rows that are over. ``failed`` (given up on) has its own limit; ``pending`` and
#: ``sending`` are never deleted.
SETTLED = (Status.SENT, Status.FOLDED, Status.DONE, Status.CANCELLED)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each item is kept; ``None`` means kept for good."""

    route_after_close: timedelta | None
    evidence_after_close: timedelta | None
    text_after_close: timedelta | None
    audit_events: timedelta | None
    #: Settled outbox rows (:data:`SETTLED`), after they were last due.
    outbox: timedelta | None = None
    #: Outbox rows given up on (``failed``).
    outbox_failed: timedelta | None = None

    @classmethod
    def from_days(
        cls,
        *,
        route_days: int,
        evidence_days: int,
        text_years: int,
        audit_days: int,
        outbox_days: int = 0,
        outbox_failed_days: int = 0,
    ) -> RetentionPolicy:
        """From the settings' numbers, where 0 means kept."""
        return cls(
            route_after_close=timedelta(days=route_days) if route_days else None,
            evidence_after_close=timedelta(days=evidence_days) if evidence_days else None,
            text_after_close=TEXT_YEAR * text_years if text_years else None,
            audit_events=timedelta(days=audit_days) if audit_days else None,
            outbox=timedelta(days=outbox_days) if outbox_days else None,
            outbox_failed=timedelta(days=outbox_failed_days) if outbox_failed_days else None,
        )


@dataclass(frozen=True)
class RetentionResult:
    """What one batch deleted: counts only."""

    routes: int = 0
    evidence_files: int = 0
    blobs: int = 0
    texts: int = 0
    audit_events: int = 0
    #: Settled outbox rows deleted.
    outbox: int = 0
    #: Failed outbox rows deleted.
    outbox_failed: int = 0

    @property
    def total(self) -> int:
        """Everything deleted but the blobs (which go only with an evidence file)."""
        return (
            self.routes
            + self.evidence_files
            + self.texts
            + self.audit_events
            + self.outbox
            + self.outbox_failed
        )

    def __add__(self, other: RetentionResult) -> RetentionResult:
        return RetentionResult(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _closed_at() -> ColumnElement[datetime]:
    """When the report was last closed (its last event into a closed status)."""
    return (
        select(func.max(ReportEvent.at))
        .where(ReportEvent.report_id == Report.id, ReportEvent.to_status.in_(CLOSED_STATUSES))
        .correlate(Report)
        .scalar_subquery()
    )


def _closed_before(cutoff: datetime) -> ColumnElement[bool]:
    return Report.status.in_(CLOSED_STATUSES) & (_closed_at() < cutoff)


async def _delete_routes(
    session: AsyncSession, cutoff: datetime, batch: int, touched: dict[int, dict[str, int]]
) -> int:
    waiting_reward = exists().where(
        Reward.report_id == Report.id, Reward.status.in_(OPEN_REWARD_STATUSES)
    )
    found = await session.execute(
        select(ContactRoute.id, ContactRoute.report_id)
        .join(Report, Report.id == ContactRoute.report_id)
        .where(_closed_before(cutoff), ~waiting_reward)
        .order_by(ContactRoute.id)
        .limit(batch)
    )
    rows = [(int(row[0]), int(row[1])) for row in found.all()]
    if rows:
        await session.execute(
            delete(ContactRoute).where(ContactRoute.id.in_([r[0] for r in rows]))
        )
    for _, report_id in rows:
        touched.setdefault(report_id, {})["route"] = 1
    return len(rows)


async def _delete_evidence(
    session: AsyncSession, cutoff: datetime, batch: int, touched: dict[int, dict[str, int]]
) -> tuple[int, int]:
    """Evidence files and the files a tipster sent in the relay; returns (files, blobs)."""
    blob_ids: set[int] = set()
    media = (
        await session.execute(
            select(ReportMedia.id, ReportMedia.report_id, ReportMedia.blob_id)
            .join(Report, Report.id == ReportMedia.report_id)
            .where(_closed_before(cutoff))
            .order_by(ReportMedia.id)
            .limit(batch)
        )
    ).all()
    if media:
        await session.execute(delete(ReportMedia).where(ReportMedia.id.in_([m[0] for m in media])))
    for _, report_id, blob_id in media:
        counts = touched.setdefault(int(report_id), {})
        counts["evidence"] = counts.get("evidence", 0) + 1
        if blob_id is not None:
            blob_ids.add(int(blob_id))
    relayed = (
        await session.execute(
            select(RelayMessage.id, RelayMessage.report_id, RelayMessage.blob_id)
            .join(Report, Report.id == RelayMessage.report_id)
            .where(
                _closed_before(cutoff),
                or_(RelayMessage.blob_id.is_not(None), RelayMessage.file_ref.is_not(None)),
            )
            .order_by(RelayMessage.id)
            .limit(batch)
        )
    ).all()
    if relayed:
        await session.execute(
            update(RelayMessage)
            .where(RelayMessage.id.in_([r[0] for r in relayed]))
            .values(blob_id=None, file_ref=None)
            .execution_options(synchronize_session=False)
        )
    for _, report_id, blob_id in relayed:
        counts = touched.setdefault(int(report_id), {})
        counts["evidence"] = counts.get("evidence", 0) + 1
        if blob_id is not None:
            blob_ids.add(int(blob_id))
    blobs = 0
    if blob_ids:
        still_used = select(ReportMedia.blob_id).where(ReportMedia.blob_id.in_(blob_ids))
        relay_used = select(RelayMessage.blob_id).where(RelayMessage.blob_id.in_(blob_ids))
        result = await session.execute(
            delete(MediaBlob).where(
                MediaBlob.id.in_(blob_ids),
                MediaBlob.id.not_in(still_used),
                MediaBlob.id.not_in(relay_used),
            )
        )
        blobs = int(result.rowcount or 0)  # type: ignore[attr-defined]
    return len(media) + len(relayed), blobs


async def _redact_texts(
    session: AsyncSession, cutoff: datetime, batch: int, touched: dict[int, dict[str, int]]
) -> int:
    """Free text of closed reports: description, place, time, relay messages, captions."""
    has_text = or_(
        Report.description.is_not(None),
        Report.place_text.is_not(None),
        Report.occurred_text.is_not(None),
        exists().where(RelayMessage.report_id == Report.id, RelayMessage.text.is_not(None)),
        exists().where(ReportMedia.report_id == Report.id, ReportMedia.caption.is_not(None)),
    )
    ids = list(
        (
            await session.scalars(
                select(Report.id)
                .where(_closed_before(cutoff), has_text)
                .order_by(Report.id)
                .limit(batch)
            )
        ).all()
    )
    if not ids:
        return 0
    await session.execute(
        update(Report)
        .where(Report.id.in_(ids))
        .values(description=None, place_text=None, occurred_text=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(RelayMessage)
        .where(RelayMessage.report_id.in_(ids))
        .values(text=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(ReportMedia)
        .where(ReportMedia.report_id.in_(ids))
        .values(caption=None)
        .execution_options(synchronize_session=False)
    )
    for report_id in ids:
        touched.setdefault(int(report_id), {})["text"] = 1
    return len(ids)


async def _delete_audit_events(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    ids = list(
        (
            await session.scalars(
                select(AuditEvent.id)
                .where(AuditEvent.at < cutoff)
                .order_by(AuditEvent.id)
                .limit(batch)
            )
        ).all()
    )
    if ids:
        await session.execute(delete(AuditEvent).where(AuditEvent.id.in_(ids)))
    return len(ids)


def _awaited_reply() -> ColumnElement[bool]:
    """A relayed question the tipster received while their route back exists: a reply to that
    message is their answer, and the report is found through this row
    (:func:`handlers.citizen.relay.replied_question`, which joins the route too)."""
    return and_(
        OutboxMessage.kind == Kind.CITIZEN_MESSAGE.value,
        OutboxMessage.payload[SENT_MESSAGE_ID].as_string().is_not(None),
        exists().where(ContactRoute.report_id == OutboxMessage.report_id),
    )


async def _prune_outbox(
    session: AsyncSession, cutoff: datetime, statuses: tuple[Status, ...], batch: int
) -> int:
    """Delete up to ``batch`` outbox rows in ``statuses`` last due before ``cutoff``.

    The ids come first, one query per status, each an index range scan on
    ``ix_outbox_status_due`` (``status``, ``next_attempt_at``) that stops at the batch's size;
    then one delete by primary key. (``DELETE ... WHERE id IN (SELECT ... LIMIT n)`` lets
    PostgreSQL plan a hash join over the whole table, a sequential scan for every batch.)
    """
    ids: list[int] = []
    for status in statuses:
        if len(ids) >= batch:
            break
        terms = [
            OutboxMessage.status == status.value,
            OutboxMessage.next_attempt_at < cutoff,
            or_(OutboxMessage.sent_at.is_(None), OutboxMessage.sent_at < cutoff),
        ]
        if status == Status.SENT:
            terms.append(~_awaited_reply())
        found = await session.scalars(
            select(OutboxMessage.id)
            .where(*terms)
            .order_by(OutboxMessage.next_attempt_at)
            .limit(batch - len(ids))
        )
        ids += found.all()
    if not ids:
        return 0
    result = await session.execute(
        delete(OutboxMessage)
        .where(OutboxMessage.id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def apply_retention(
    session: AsyncSession,
    policy: RetentionPolicy,
    *,
    now: datetime,
    via: str = "system",
    batch: int = BATCH_SIZE,
    outbox_batch: int = OUTBOX_BATCH_SIZE,
) -> RetentionResult:
    """Apply one batch of ``policy`` inside the caller's transaction; counts of what went.

    Call again (after committing) until :attr:`RetentionResult.total` is 0. A run with nothing
    to delete writes nothing, so running twice is a no-op. ``outbox_batch`` bounds each of the
    two outbox items (settled, failed).
    """
    touched: dict[int, dict[str, int]] = {}
    routes = evidence = blobs = texts = audit = 0
    if policy.audit_events is not None:
        # First, so this batch's own audit event is never among those deleted.
        audit = await _delete_audit_events(session, now - policy.audit_events, batch)
    if policy.route_after_close is not None:
        routes = await _delete_routes(session, now - policy.route_after_close, batch, touched)
    if policy.evidence_after_close is not None:
        evidence, blobs = await _delete_evidence(
            session, now - policy.evidence_after_close, batch, touched
        )
    if policy.text_after_close is not None:
        texts = await _redact_texts(session, now - policy.text_after_close, batch, touched)
    outbox = outbox_failed = 0
    if policy.outbox is not None:
        outbox = await _prune_outbox(session, now - policy.outbox, SETTLED, outbox_batch)
    if policy.outbox_failed is not None:
        outbox_failed = await _prune_outbox(
            session, now - policy.outbox_failed, (Status.FAILED,), outbox_batch
        )
    result = RetentionResult(
        routes=routes,
        evidence_files=evidence,
        blobs=blobs,
        texts=texts,
        audit_events=audit,
        outbox=outbox,
        outbox_failed=outbox_failed,
    )
    if result.total == 0:
        return result
    session.add_all(
        ReportEvent(
            report_id=report_id,
            at=now,
            actor_kind="system",
            action="retention",
            data=counts,
        )
        for report_id, counts in sorted(touched.items())
    )
    session.add(
        AuditEvent(
            at=now, via=via, action="retention", data={**result.as_dict(), "reports": len(touched)}
        )
    )
    await session.flush()
    return result
