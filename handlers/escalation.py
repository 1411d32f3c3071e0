"""Timers that fire once: an unacknowledged emergency escalates, an unclaimed tip is recalled.

Timers are outbox rows of kind ``timer.*`` with a due time. The delivery worker claims a due row
(so it fires once, even with two processes or after a restart) and calls :meth:`Timers.fire` in
the same transaction that marks the row done. Acknowledging an emergency cancels its timer.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.intake import (
    PRIORITY_EMERGENCY,
    TIMER_ESCALATE,
    TIMER_REMIND_UNCLAIMED,
    destination_for,
)
from storage.models import OutboxMessage, Report
from storage.repositories import Outbox, Reports

log = logging.getLogger(__name__)


class UnitQueues(Protocol):
    def for_unit(self, code: str | None) -> object | None: ...


class Timers:
    """What happens when a report's timer comes due."""

    def __init__(self, queues: UnitQueues | None = None) -> None:
        self.queues = queues

    def _has_own_queue(self, unit_code: str | None) -> bool:
        return self.queues is not None and self.queues.for_unit(unit_code) is not None

    async def fire(self, session: AsyncSession, row: OutboxMessage) -> None:
        report_id = row.payload.get("report_id")
        report = await session.get(Report, report_id) if isinstance(report_id, int) else None
        if report is None:
            return
        if row.kind == TIMER_ESCALATE:
            await self._escalate(session, report)
        elif row.kind == TIMER_REMIND_UNCLAIMED:
            await self._remind_unclaimed(session, report)
        else:
            log.warning("unknown timer kind %s on outbox row %s", row.kind, row.id)

    async def _escalate(self, session: AsyncSession, report: Report) -> None:
        if report.status != "new":
            return  # acknowledged (or dealt with) in time
        outbox = Outbox(session)
        card = outbox.enqueue(
            kind="report_card",
            destination="duty",
            payload={"report_id": report.id, "header": "escalated"},
            report_id=report.id,
            dedupe_key=f"escalate:{report.id}",
        )
        card.priority = PRIORITY_EMERGENCY
        if self._has_own_queue(report.unit_code):
            reminder = outbox.enqueue(
                kind="reminder",
                destination=destination_for(report.unit_code),
                payload={"report_id": report.id, "reason": "unacknowledged"},
                report_id=report.id,
                dedupe_key=f"remind:ack:{report.id}",
            )
            reminder.priority = PRIORITY_EMERGENCY
        Reports(session).add_event(
            report, action="escalated", actor_kind="system", reason="not acknowledged in time"
        )
        log.info("emergency report %s escalated to the duty queue", report.id)

    async def _remind_unclaimed(self, session: AsyncSession, report: Report) -> None:
        if report.status != "new":
            return
        Outbox(session).enqueue(
            kind="reminder",
            destination=destination_for(report.unit_code),
            payload={"report_id": report.id, "reason": "unclaimed"},
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
            OutboxMessage.status == "pending",
        )
        .values(status="cancelled")
    )
