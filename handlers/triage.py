"""Officers' presses on report cards in their queue chats.

This module holds the card actions of the routing stage: acknowledging an emergency and opening
a report from a digest. A press is honoured only on a card or digest that was posted for that very
report in that very chat, so forged callback data changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.escalation import cancel_timers
from handlers.i18n import t
from handlers.intake import PRIORITY_EMERGENCY, TIMER_ESCALATE
from storage.models import CardPost, OutboxMessage, Report
from storage.repositories import Outbox, Reports, UpdateLog
from storage.types import utcnow

log = logging.getLogger(__name__)

PRIORITY_OPEN = 5


@dataclass(frozen=True, slots=True)
class OfficerPress:
    """A button press in an officers' chat. Officers are not anonymous: their id is audited."""

    update_id: int
    channel: str
    chat_id: int
    thread_id: int | None
    message_id: int
    user_id: int
    user_name: str
    data: str


@dataclass(slots=True)
class OfficerOutcome:
    notice: str | None = None
    alert: bool = False
    #: Reports whose posted cards must be re-rendered and edited in place.
    refresh: list[int] = field(default_factory=list)


class DuplicateOfficerUpdate(Exception):
    pass


def parse_card_button(data: str) -> tuple[str, int] | None:
    """``"r:<action>:<report id>"`` → ``(action, id)``; ``None`` for anything else."""
    parts = data.split(":")
    if len(parts) != 3 or parts[0] != "r" or not parts[1].isalpha():
        return None
    if not parts[2].isascii() or not parts[2].isdigit() or len(parts[2]) > 18:
        return None
    return parts[1], int(parts[2])


class Triage:
    def __init__(self, *, locale: str = "vi") -> None:
        self.locale = locale

    def _out(self, key: str, *, alert: bool = False, **values: object) -> OfficerOutcome:
        return OfficerOutcome(notice=t(self.locale, key, **values), alert=alert)

    async def handle_press(self, session: AsyncSession, press: OfficerPress) -> OfficerOutcome:
        updates = UpdateLog(session)
        if await updates.seen(press.channel, press.update_id):
            raise DuplicateOfficerUpdate(press.update_id)
        updates.record(press.channel, press.update_id)
        parsed = parse_card_button(press.data)
        if parsed is None:
            return self._out("triage.unknown_button", alert=True)
        action, report_id = parsed
        post = await session.scalar(
            select(CardPost).where(
                CardPost.chat_id == press.chat_id,
                CardPost.message_id == press.message_id,
                CardPost.report_id == report_id,
            )
        )
        report = await session.get(Report, report_id)
        if post is None or report is None:
            log.info("press %s refused: no card for report %s in that chat", action, report_id)
            return self._out("triage.not_here", alert=True)
        if action == "ack" and post.kind == "card":
            return await self._acknowledge(session, press, report)
        if action == "open":
            return await self._open(session, press, report)
        return self._out("triage.unknown_button", alert=True)

    async def _acknowledge(
        self, session: AsyncSession, press: OfficerPress, report: Report
    ) -> OfficerOutcome:
        if report.kind != "emergency":
            return self._out("triage.not_emergency", alert=True)
        if report.status != "new":
            return self._out("triage.already_acknowledged", alert=True)
        now = utcnow()
        report.status = "acknowledged"
        report.acknowledged_at = now
        report.updated_at = now
        Reports(session).add_event(
            report,
            action="acknowledged",
            actor_kind="officer",
            from_status="new",
            to_status="acknowledged",
            data={"channel": press.channel, "user_id": press.user_id, "name": press.user_name},
        )
        await cancel_timers(session, report.id, TIMER_ESCALATE)
        outcome = self._out("triage.acknowledged")
        outcome.refresh.append(report.id)
        return outcome

    async def _open(
        self, session: AsyncSession, press: OfficerPress, report: Report
    ) -> OfficerOutcome:
        destination = f"chat:{press.chat_id}" + (
            f"/{press.thread_id}" if press.thread_id is not None else ""
        )
        waiting = await session.scalar(
            select(OutboxMessage.id).where(
                OutboxMessage.report_id == report.id,
                OutboxMessage.kind == "report_card",
                OutboxMessage.destination == destination,
                OutboxMessage.status.in_(("pending", "sending")),
            )
        )
        if waiting is not None:
            return self._out("triage.open_already")
        row = Outbox(session).enqueue(
            kind="report_card",
            destination=destination,
            payload={"report_id": report.id},
            report_id=report.id,
            dedupe_key=f"open:{report.id}:{press.chat_id}:{press.update_id}",
        )
        row.priority = PRIORITY_EMERGENCY if report.kind == "emergency" else PRIORITY_OPEN
        Reports(session).add_event(
            report,
            action="opened",
            actor_kind="officer",
            data={"channel": press.channel, "user_id": press.user_id, "name": press.user_name},
        )
        return self._out("triage.opening", code=report.code)
