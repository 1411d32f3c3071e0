"""Storing a confirmed report: one transaction for the report, its media, its first audit
event, the encrypted route back to the tipster, the officers' outbox message and its timers.

The caller owns the session and commits; nothing here commits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.domain import DEFAULT_CONTACT_MODE, REPORT_KIND_EMERGENCY
from handlers.outbox import CardPayload, Destination, Kind, Priority, TimerPayload, outbox_row
from handlers.security import Keyring, PinHasher, new_pin, new_tracking_code
from storage.models import Base, CardPost, Report, ReportMedia
from storage.repositories import Allocated, Allowance, RateLimits, Reports

log = logging.getLogger(__name__)

# Kept for the modules that import them from here; the contract is ``handlers.outbox``.
PRIORITY_EMERGENCY = int(Priority.EMERGENCY)
PRIORITY_TIP = int(Priority.TIP)
TIMER_ESCALATE = Kind.TIMER_ESCALATE.value
TIMER_REMIND_UNCLAIMED = Kind.TIMER_REMIND_UNCLAIMED.value


@dataclass(frozen=True)
class IntakeSettings:
    emergency_ack_timeout: timedelta = timedelta(minutes=3)
    tip_claim_reminder: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class Origin:
    """Where a report came from: the keyed hash of its sender and the route back."""

    sender_key: str
    channel: str
    chat_id: str
    locale: str


class AllowanceSpent(Exception):
    """The sender has filed their allowance of reports in the window: nothing was written."""


@dataclass(frozen=True)
class Stored:
    report: Report
    pin: str


def destination_for(unit_code: str | None) -> str:
    return str(Destination.for_unit(unit_code))


async def officers_destination(session: AsyncSession, report: Report) -> str:
    """Where officers follow this report now: the chat of its active card, else its queue."""
    post = await session.scalar(
        select(CardPost)
        .where(
            CardPost.report_id == report.id,
            CardPost.kind == "card",
            CardPost.active.is_(True),
        )
        .order_by(CardPost.id.desc())
    )
    if post is not None:
        return str(Destination.chat(post.chat_id, post.thread_id))
    if report.queue_key:
        return str(Destination.for_queue(report.queue_key))
    return destination_for(report.unit_code)


async def store_report(
    session: AsyncSession,
    *,
    kind: str,
    draft: dict[str, Any],
    origin: Origin,
    keyring: Keyring,
    pins: PinHasher,
    settings: IntakeSettings,
    now: datetime,
    pin: tuple[str, str] | None = None,
    allowance: Allowance | None = None,
) -> Stored:
    """Write a confirmed draft as a report, with everything that must land with it; when the
    sender has an ``allowance``, raises :class:`AllowanceSpent` if it is used up, and counts
    a hit against it with the report.

    The report gets its id first (with the allowance checked); its rows are then built here
    and written together (:meth:`~storage.repositories.Reports.store`: one statement on
    PostgreSQL)."""
    reports = Reports(session)
    if pin is not None:
        plain_pin, pin_hash = pin
    else:
        if pins.slow and allowance is not None:  # no slow hash for a sender over the allowance
            hits = await RateLimits(session).count(
                allowance.scope, allowance.key, allowance.window
            )
            if hits >= allowance.limit:
                raise AllowanceSpent()
        plain_pin = new_pin()
        pin_hash = (
            await asyncio.to_thread(pins.hash, plain_pin) if pins.slow else pins.hash(plain_pin)
        )
    mode = draft.get("contact_mode", DEFAULT_CONTACT_MODE)
    emergency = kind == REPORT_KIND_EMERGENCY
    report = Report(
        code=new_tracking_code(),
        kind=kind,
        category=draft.get("category"),
        unit_code=draft.get("unit_code"),
        latitude=draft.get("latitude"),
        longitude=draft.get("longitude"),
        place_text=draft.get("place_text"),
        occurred=draft.get("occurred", "now" if emergency else "unknown"),
        occurred_text=draft.get("occurred_text"),
        description=draft.get("description"),
        injured=draft.get("injured"),
        injured_count=draft.get("injured_count"),
        contact_mode=mode,
        pin_hash=pin_hash,
        locale=origin.locale,
        channel=origin.channel,
        status="new",
        created_at=now,
        updated_at=now,
    )
    while (allocated := await reports.allocate(report, allowance)) != Allocated.OK:
        if allocated == Allocated.SPENT:
            raise AllowanceSpent()
        report.code = new_tracking_code()
    items = draft.get("media", [])
    rows: list[Base] = [
        ReportMedia(
            report_id=report.id,
            position=position,
            kind=item["kind"],
            mime=item.get("mime"),
            size=item.get("size"),
            file_ref=item.get("file_ref"),
            blob_id=item.get("blob_id"),
            caption=item.get("caption"),
        )
        for position, item in enumerate(items)
    ]
    rows.append(
        reports.event(
            report,
            action="submitted",
            actor_kind="citizen",
            to_status="new",
            data={"kind": kind, "media": len(items), "contact_mode": mode},
        )
    )
    if mode in ("relay", "phone"):
        rows.append(
            reports.contact_route(
                report,
                sender_key=origin.sender_key,
                route=keyring.encrypt({"channel": origin.channel, "chat_id": origin.chat_id}),
                phone=draft.get("phone") if mode == "phone" else None,
            )
        )
    rows.append(
        outbox_row(
            CardPayload(report_id=report.id),
            Destination.for_unit(report.unit_code),
            report_id=report.id,
            dedupe_key=f"card:{report.id}",
            priority=Priority.EMERGENCY if emergency else Priority.TIP,
        )
    )
    if emergency:
        timer, due = Kind.TIMER_ESCALATE, now + settings.emergency_ack_timeout
    else:
        timer, due = Kind.TIMER_REMIND_UNCLAIMED, now + settings.tip_claim_reminder
    rows.append(
        outbox_row(
            TimerPayload(report_id=report.id),
            Destination.timer(),
            kind=timer,
            report_id=report.id,
            dedupe_key=f"{timer}:{report.id}",
            due=due,
        )
    )
    if allowance is not None:
        rows.append(RateLimits.hit_row(allowance.scope, allowance.key))
    await reports.store(report, rows)
    log.info("report %s stored (%s, unit %s)", report.id, kind, report.unit_code)
    return Stored(report, plain_pin)
