"""What the delivery worker handles: the due rows (:func:`due_rows`), each resolved to its
target chat (:func:`resolve`), a claimed job, and the signals between the scheduler and the
senders."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.selectable import FromClause

from bot.delivery.leases import Claim, claimable
from config.queues import QueueMap
from handlers.domain import REPORT_KIND_EMERGENCY
from handlers.outbox import OFFICER_KINDS, Destination, Kind, Priority, Status, Where
from storage.models import CardPost, OutboxMessage, Report, ReportMedia
from storage.types import UTCDateTime

#: ``priority`` at or above which a row is urgent (an emergency's card, its reminder); an
#: emergency's row enqueued lower is raised to it when claimed.
EMERGENCY_PRIORITY: Final = int(Priority.EMERGENCY)
_OFFICER_KIND_NAMES: Final = tuple(kind.value for kind in OFFICER_KINDS)


@dataclass(frozen=True)
class Target:
    """An officers' chat a row resolved to (a group, or a forum topic in one)."""

    chat_id: int
    thread_id: int | None
    name: str
    is_duty: bool

    @property
    def chat_key(self) -> str:
        return str(self.chat_id) if self.thread_id is None else f"{self.chat_id}/{self.thread_id}"

    @property
    def is_group(self) -> bool:
        return self.chat_id < 0


@dataclass
class Row:
    """A due outbox row as the scheduler sees it."""

    id: int
    kind: str
    destination: str
    status: str
    payload: dict[str, Any]
    report_id: int | None
    attempts: int
    priority: int
    urgent: bool
    cost: int
    created_at: datetime
    target: Target | None = None

    @property
    def partial(self) -> bool:
        return bool(self.payload.get("done"))

    @property
    def in_doubt(self) -> bool:
        """A send of it timed out and may have landed, or its worker died while sending it:
        it goes before anything else to its chat (:mod:`bot.delivery.landing`)."""
        return "unsure" in self.payload or self.status == "sending"


@dataclass
class Job:
    """A claimed row being sent."""

    row: Row
    target: Target
    claim: Claim
    #: Messages sent under this claim.
    sent_now: int = 0
    #: Message ids the Bot API gave back since the last record (for the chat's mark).
    fresh_ids: list[int] = field(default_factory=list)
    #: How many of them the record being written raises the mark to.
    noting: int = 0
    #: The group's messages in the window (all, tips) as the claim saw them: what the first
    #: part is admitted on, instead of reading them again.
    usage: tuple[int, int] | None = None
    #: The row is recorded as sent.
    finished: bool = False

    @property
    def payload(self) -> dict[str, Any]:
        """What the producer wrote, and the progress so far (``done``, ``msg``, ``sent``)."""
        return self.claim.payload

    @property
    def attempts(self) -> int:
        return self.claim.attempts

    @property
    def done(self) -> list[str]:
        done = self.payload.setdefault("done", [])
        assert isinstance(done, list)
        return done

    @property
    def sent(self) -> int:
        return int(self.payload.get("sent", 0))


class Blocked(Exception):
    """The row cannot go on now (budget, pause, stop); it goes back to the queue."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = max(0.0, delay)
        self.reason = reason


class RenderFailed(Exception):
    """A row's document could not be rendered (its cause attached): retried later with
    backoff, without pausing the chat (other rows to it go on)."""


class LeaseLost(Exception):
    """Another worker took the row over (our lease lapsed)."""


def resolve(queue_map: QueueMap, destination: str) -> Target | None:
    """The chat ``destination`` goes to; ``None`` when no queue serves it (no duty queue).

    Raises ``ValueError`` for a destination that cannot be parsed or is not an officers' chat.
    """
    where = Destination.parse(destination)
    queue = None
    if where.where == Where.DUTY:
        queue = queue_map.duty
    elif where.where == Where.UNIT:
        queue = queue_map.resolve(where.unit)
    elif where.where == Where.QUEUE:
        assert where.queue is not None
        queue = queue_map.by_key(where.queue)
    elif where.where == Where.CHAT:
        assert where.chat_id is not None
        chat_id, thread_id = where.chat_id, where.thread_id
        known = queue_map.by_chat(chat_id, thread_id)
        duty = queue_map.duty
        is_duty = duty is not None and (duty.chat_id, duty.thread_id) == (chat_id, thread_id)
        name = known.name if known is not None else (where.chat_key or "")
        return Target(chat_id, thread_id, name, is_duty)
    else:
        raise ValueError(f"not an officers' destination: {destination!r}")
    if queue is None:
        return None
    return Target(queue.chat_id, queue.thread_id, queue.name, queue.is_duty)


_OUTBOX: Final = cast(Table, OutboxMessage.__table__)
#: Built once: an alias's columns are copied when it is made (a millisecond each time).
_WAITING: Final = _OUTBOX.alias("waiting")
_LEASED: Final = _OUTBOX.alias("leased")


@functools.cache
def _scan_statement() -> Select[Any]:
    """:func:`due_rows`'s statement, built once (a millisecond and more each time), with the
    parameters ``scan_now`` and ``scan_limit``."""
    now = bindparam("scan_now", type_=UTCDateTime())
    emergency = and_(
        Report.kind == REPORT_KIND_EMERGENCY, OutboxMessage.priority < EMERGENCY_PRIORITY
    )
    priority = case((emergency, EMERGENCY_PRIORITY), else_=OutboxMessage.priority)
    media = (
        select(func.count(ReportMedia.id))
        .where(ReportMedia.report_id == OutboxMessage.report_id)
        .correlate(OutboxMessage)
        .scalar_subquery()
    )
    found = (
        select(
            OutboxMessage.id,
            OutboxMessage.kind,
            OutboxMessage.destination,
            OutboxMessage.status,
            OutboxMessage.payload,
            OutboxMessage.report_id,
            OutboxMessage.attempts,
            OutboxMessage.created_at,
            priority.label("effective_priority"),
            Report.kind.label("report_kind"),
            Report.latitude,
            Report.longitude,
            media.label("media"),
        )
        .outerjoin(Report, Report.id == OutboxMessage.report_id)
        .where(claimable(now), OutboxMessage.kind.in_(_OFFICER_KIND_NAMES))
        .order_by(priority.desc(), OutboxMessage.id)
        .limit(bindparam("scan_limit", type_=Integer()))
        .subquery("due")
    )
    waiting, leased = _WAITING, _LEASED
    next_due = (
        select(func.min(waiting.c.next_attempt_at))
        .where(
            waiting.c.status == Status.PENDING,
            waiting.c.next_attempt_at > now,
            waiting.c.kind.in_(_OFFICER_KIND_NAMES),
        )
        .scalar_subquery()
    )
    next_lapse = (
        select(func.min(leased.c.claimed_until))
        .where(leased.c.status == Status.SENDING, leased.c.kind.in_(_OFFICER_KIND_NAMES))
        .scalar_subquery()
    )
    # One row of moments, joined to the due rows (none: one row of NULLs).
    moments = select(next_due.label("next_due"), next_lapse.label("next_lapse")).subquery(
        "moments"
    )
    return (
        select(moments, found)
        .select_from(moments.outerjoin(found, true()))
        .order_by(found.c.effective_priority.desc(), found.c.id)
    )


@dataclass
class Scan:
    """What one look at the outbox found: the due rows, and when to look again."""

    rows: list[Row]
    #: The first pending row due after the look, and the first lease to lapse (a row another
    #: worker is sending): the moments to look again at the latest.
    next_due: datetime | None = None
    next_lapse: datetime | None = None


async def due_rows(session: AsyncSession, now: datetime, scan_limit: int) -> Scan:
    """The officers' rows that may be claimed now, most urgent first (at most ``scan_limit``);
    an emergency's row counts as urgent whatever priority it was enqueued with. And, in the
    same statement, when the next rows fall due and the first lease lapses."""
    stmt = _scan_statement()
    scan = Scan(rows=[])
    result = await session.execute(stmt, {"scan_now": now, "scan_limit": scan_limit})
    for r in result:
        scan.next_due, scan.next_lapse = r.next_due, r.next_lapse
        if r.id is None:
            continue
        payload = dict(r.payload or {})
        urgent = (
            r.report_kind == REPORT_KIND_EMERGENCY or r.effective_priority >= EMERGENCY_PRIORITY
        )
        cost = 1
        if r.kind == Kind.REPORT_CARD:
            has_pin = r.latitude is not None and r.longitude is not None
            total = 1 + int(has_pin) + int(r.media or 0)
            cost = max(1, total - int(payload.get("sent", 0)))
        scan.rows.append(
            Row(
                id=r.id,
                kind=r.kind,
                destination=r.destination,
                status=r.status,
                payload=payload,
                report_id=r.report_id,
                attempts=r.attempts,
                priority=int(r.effective_priority),
                urgent=urgent,
                cost=cost,
                created_at=r.created_at,
            )
        )
    return scan


def posting(
    settled: FromClause, postgres: bool, post: CardPost, report_ids: Sequence[int]
) -> Insert:
    """Records where a card or digest was posted (``post``, one row per report), with the
    settle of its row and only if it took effect (:data:`bot.delivery.leases.After`)."""
    rows = [
        select(
            literal(report_id, BigInteger),
            literal(post.channel, String()),
            literal(post.chat_id, BigInteger),
            literal(post.thread_id, BigInteger),
            literal(post.message_id, BigInteger),
            literal(post.kind, String()),
            literal(True),
            literal(post.created_at, UTCDateTime()),
        )
        .select_from(settled)
        .where(settled.c.id.is_not(None))  # (SQLite needs a WHERE before ON CONFLICT)
        for report_id in report_ids
    ]
    columns = [
        "report_id",
        "channel",
        "chat_id",
        "thread_id",
        "message_id",
        "kind",
        "active",
        "created_at",
    ]
    insert = (pg_insert if postgres else sqlite_insert)(CardPost)
    source = rows[0] if len(rows) == 1 else union_all(*rows)
    return insert.from_select(columns, source).on_conflict_do_nothing()


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
