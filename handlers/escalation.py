"""Timers that fire once: an unacknowledged emergency escalates, an unclaimed tip is recalled.

Timers are outbox rows of kind ``timer.*`` with a due time. The delivery worker claims a due row
(so it fires once, even with two processes or after a restart) and calls :meth:`Timers.fire` in
the same transaction that marks the row done. Acknowledging an emergency cancels its timer.

An unacknowledged emergency is escalated to the duty queue: its full card when it was posted to
a unit's own queue (the unit is reminded too), but only a short reminder, as a reply to the card
already there, when its card already sits in the duty queue (unit unknown, or a unit without a
queue): the duty officers are never shown the same report, and its photos, twice.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.outbox import (
    CardPayload,
    Destination,
    Kind,
    Priority,
    ReminderPayload,
    Status,
    TimerPayload,
    enqueue,
)
from storage.models import OutboxMessage, Report
from storage.repositories import Reports

log = logging.getLogger(__name__)


class UnitQueues(Protocol):
    @property
    def duty(self) -> Any: ...

    def for_unit(self, code: str | None) -> object | None: ...


class Timers:
    """What happens when a report's timer comes due."""

    def __init__(self, queues: UnitQueues | None = None) -> None:
        self.queues = queues

    def _has_own_queue(self, unit_code: str | None) -> bool:
        return self.queues is not None and self.queues.for_unit(unit_code) is not None

    async def fire(self, session: AsyncSession, row: OutboxMessage) -> None:
        report_id = TimerPayload.from_json(row.payload).report_id if row.payload else None
        report = await session.get(Report, report_id) if isinstance(report_id, int) else None
        if report is None:
            return
        if row.kind == Kind.TIMER_ESCALATE:
            await self._escalate(session, report)
        elif row.kind == Kind.TIMER_REMIND_UNCLAIMED:
            await self._remind_unclaimed(session, report)
        else:
            log.warning("unknown timer kind %s on outbox row %s", row.kind, row.id)

    async def _escalate(self, session: AsyncSession, report: Report) -> None:
        if report.status != "new":
            return  # acknowledged (or dealt with) in time
        unacknowledged = ReminderPayload(report_id=report.id, reason="unacknowledged")
        if not self._in_duty_queue(report):
            enqueue(
                session,
                CardPayload(report_id=report.id, header="escalated"),
                Destination.duty(),
                report_id=report.id,
                dedupe_key=f"escalate:{report.id}",
                priority=Priority.EMERGENCY,
            )
        # The unit's queue, or the duty queue whose card it answers (as a reply to that card).
        enqueue(
            session,
            unacknowledged,
            self._card_queue(report),
            report_id=report.id,
            dedupe_key=f"remind:ack:{report.id}",
            priority=Priority.EMERGENCY,
        )
        Reports(session).add_event(
            report, action="escalated", actor_kind="system", reason="not acknowledged in time"
        )
        log.info("emergency report %s escalated to the duty queue", report.id)

    def _in_duty_queue(self, report: Report) -> bool:
        """Its card went to the duty queue: no queue of its own serves its unit."""
        if report.queue_key:
            duty = self.queues.duty if self.queues is not None else None
            return duty is not None and report.queue_key == getattr(duty, "key", None)
        return not self._has_own_queue(report.unit_code)

    @staticmethod
    def _card_queue(report: Report) -> Destination:
        """Where the report's card was posted (a transfer names its queue)."""
        if report.queue_key:
            return Destination.for_queue(report.queue_key)
        return Destination.for_unit(report.unit_code)

    async def _remind_unclaimed(self, session: AsyncSession, report: Report) -> None:
        if report.status != "new":
            return
        enqueue(
            session,
            ReminderPayload(report_id=report.id, reason="unclaimed"),
            self._card_queue(report),
            report_id=report.id,
            dedupe_key=f"remind:claim:{report.id}",
        )
        Reports(session).add_event(
            report, action="reminded", actor_kind="system", reason="not claimed in time"
        )


async def cancel_timers(session: AsyncSession, report_id: int, kind: str) -> None:
    """Cancel a report's pending timers of ``kind`` (an acknowledgement stops escalation)."""
    await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.report_id == report_id,
            OutboxMessage.kind == kind,
            OutboxMessage.status == Status.PENDING,
        )
        .values(status=Status.CANCELLED)
    )
