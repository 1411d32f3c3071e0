"""Submitting a report: one use case, with or without a conversation.

The chat calls it when a citizen confirms a draft; a web form calls it with a
:class:`~handlers.citizen.draft.DraftInput`, the sender's keyed hash, the locale and the contact
mode. Either way the sender's report allowance is checked, and the report, its media, its audit
event, the route back, the officers' outbox message and the sender's hit on the allowance are
written in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.citizen.base import RATE_REPORT
from handlers.citizen.draft import DraftInput
from handlers.domain import CONTACT_MODES, REPORT_KIND_EMERGENCY
from handlers.intake import AllowanceSpent, IntakeSettings, Origin, store_report
from handlers.security import Keyring, PinHasher, format_code
from storage.repositories import Allowance as SenderAllowance


@dataclass(frozen=True)
class Submitted:
    """A stored report as its sender sees it: the tracking code and the PIN (shown once)."""

    report_id: int
    code: str
    pin: str


class RateLimited(Exception):
    """The sender has filed their allowance of reports in the window."""

    def __init__(self, minutes: int) -> None:
        super().__init__(minutes)
        self.minutes = minutes


@dataclass(frozen=True)
class Allowance:
    limit: int = 5
    window: timedelta = timedelta(hours=1)


async def submit_report(
    session: AsyncSession,
    *,
    draft: dict[str, Any] | DraftInput,
    origin: Origin,
    contact_mode: str | None = None,
    keyring: Keyring,
    pins: PinHasher,
    intake: IntakeSettings,
    allowance: Allowance,
    now: datetime,
    pin: tuple[str, str] | None = None,
    rate_key: str | None = None,
) -> Submitted:
    """Store ``draft`` as a report of ``origin``'s sender; raises :class:`RateLimited`.

    Emergencies get twice the tip allowance: a real one must not be blocked by tips. The
    allowance counts under ``rate_key`` when given (the web: a keyed hash of the connection
    that expires), else under the sender's key.
    """
    rate_key = rate_key or origin.sender_key
    if isinstance(draft, DraftInput):
        mode = contact_mode if contact_mode in CONTACT_MODES else "none"
        stored_draft = draft.as_draft(mode)
    else:
        stored_draft = dict(draft)
        if contact_mode is not None:
            stored_draft["contact_mode"] = contact_mode
    kind = "emergency" if stored_draft.get("kind") == "emergency" else "tip"
    limit = allowance.limit * 2 if kind == REPORT_KIND_EMERGENCY else allowance.limit
    try:
        stored = await store_report(
            session,
            kind=kind,
            draft=stored_draft,
            origin=origin,
            keyring=keyring,
            pins=pins,
            settings=intake,
            now=now,
            pin=pin,
            allowance=SenderAllowance(RATE_REPORT, rate_key, allowance.window, limit),
        )
    except AllowanceSpent:
        raise RateLimited(int(allowance.window.total_seconds() // 60)) from None
    return Submitted(stored.report.id, format_code(stored.report.code), stored.pin)
