"""An officer's actions on a report, channel-neutral: the chat and the web panel both call them.

Each action checks :func:`handlers.officers.may` on the report's queue and the state rules, writes
one audit event (action, actor ``officer`` with their id, from/to status, reason, data with the
channel it came through), tells the tipster through the outbox where their contact mode allows,
and cancels the timers it makes moot. Rewards go through :class:`handlers.rewards.Rewards`; a
proposal's post to the commanders and an approval's claim code through
:mod:`handlers.triage_notify`. What the actions need to know (the queue map, the keyring, the
reward settings) comes in a :class:`~handlers.triage_context.TriageContext`. Nothing here commits:
the caller does.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers import outbox
from handlers.card_actions import CLOSED_STATUSES
from handlers.domain import OUTCOMES
from handlers.escalation import cancel_timers
from handlers.i18n import t
from handlers.intake import (
    PRIORITY_EMERGENCY,
    TIMER_ESCALATE,
    TIMER_REMIND_UNCLAIMED,
    officers_destination,
)
from handlers.media import CleanImage
from handlers.officers import may
from handlers.rewards import RewardError, Rewards, format_vnd, parse_amount
from handlers.security import format_code, parse_code
from handlers.text import clean_text, substance
from handlers.triage_context import TriageContext
from handlers.triage_notify import notify_reward, post_reward_proposal
from storage.models import (
    CardPost,
    ContactRoute,
    Officer,
    OutboxMessage,
    RelayMessage,
    Report,
    Reward,
)
from storage.repositories import Media, Reports
from storage.types import utcnow

SUBJECTS_MAX = 99_999
QUESTION_MAX = 1000
REASON_MAX = 500
PRIORITY_OPEN = outbox.Priority.OPEN


async def relay_problem(session: AsyncSession, report: Report) -> str | None:
    """Why nothing can be relayed to the report's tipster (a catalogue key), or ``None``."""
    if report.contact_mode == "none":
        return "triage.no_relay"
    route = await session.scalar(select(ContactRoute).where(ContactRoute.report_id == report.id))
    if route is None:
        return "triage.no_relay"
    # A route marked unreachable (the bot blocked, the Zalo OA's 7-day window closed) is no
    # refusal: the delivery holds the question until the tipster writes again (``ask``).
    return None


class ActionError(Exception):
    """A refused action; ``key`` is the catalogue key of the message to show."""

    def __init__(self, key: str, **values: object) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


class ReportActions:
    """One officer's actions on reports, within the caller's transaction."""

    def __init__(
        self, session: AsyncSession, officer: Officer, context: TriageContext, *, via: str = "web"
    ) -> None:
        self.session = session
        self.officer = officer
        self.context = context
        self.via = via

    # ------------------------------------------------------------------ helpers

    def queue_key(self, report: Report) -> str | None:
        return self.context.queue_key(report)

    def allowed(self, action: str, report: Report) -> bool:
        return may(self.officer, action, self.queue_key(report))

    def _check(self, action: str, report: Report, *, open_only: bool = True) -> None:
        if not self.allowed(action, report):
            raise ActionError("triage.not_permitted")
        if open_only and report.status in CLOSED_STATUSES:
            raise ActionError("triage.closed")

    @property
    def _actor(self) -> dict[str, Any]:
        return {"officer_id": self.officer.id, "via": self.via}

    def _event(
        self,
        report: Report,
        action: str,
        *,
        to_status: str | None = None,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        from_status = report.status
        if to_status is not None:
            report.status = to_status
        report.updated_at = utcnow()
        Reports(self.session).add_event(
            report,
            action=action,
            actor_kind="officer",
            actor_id=self.officer.id,
            from_status=from_status,
            to_status=to_status,
            reason=reason,
            data=data,
        )

    def _notify_citizen(self, report: Report, key: str, **values: Any) -> None:
        if report.contact_mode == "none":
            return
        outbox.enqueue(
            self.session,
            outbox.CitizenPayload(key=key, values=values),
            outbox.Destination.citizen(report.id),
            report_id=report.id,
        )

    # ------------------------------------------------------------------ report actions

    async def acknowledge(self, report: Report) -> None:
        self._check("claim", report)
        if report.kind != "emergency":
            raise ActionError("triage.not_emergency")
        if report.status != "new":
            raise ActionError("triage.already_acknowledged")
        report.acknowledged_at = utcnow()
        self._event(report, "acknowledged", to_status="acknowledged", data=self._actor)
        await cancel_timers(self.session, report.id, TIMER_ESCALATE)
        self._notify_citizen(report, "notify.acknowledged", code=format_code(report.code))

    async def open_card(self, report: Report, destination: str) -> bool:
        """Post the report's card again in ``destination``; False if one is already on its way."""
        self._check("view", report, open_only=False)
        waiting = await self.session.scalar(
            select(OutboxMessage.id).where(
                OutboxMessage.report_id == report.id,
                OutboxMessage.kind == outbox.Kind.REPORT_CARD,
                OutboxMessage.destination == destination,
                OutboxMessage.status.in_(("pending", "sending")),
            )
        )
        if waiting is not None:
            return False
        outbox.enqueue(
            self.session,
            outbox.CardPayload(report_id=report.id),
            outbox.Destination.parse(destination),
            report_id=report.id,
            priority=PRIORITY_EMERGENCY if report.kind == "emergency" else PRIORITY_OPEN,
        )
        Reports(self.session).add_event(
            report, action="opened", actor_kind="officer", actor_id=self.officer.id
        )
        return True

    async def claim(self, report: Report) -> None:
        self._check("claim", report)
        if report.status != "new" and report.assigned_officer_id is not None:
            holder = await self.session.get(Officer, report.assigned_officer_id)
            raise ActionError(
                "triage.already_claimed", name=holder.display_name if holder else "?"
            )
        if report.status not in ("new", "needs_info"):
            raise ActionError("triage.wrong_state")
        report.assigned_officer_id = self.officer.id
        report.claimed_at = utcnow()
        self._event(report, "claimed", to_status="assigned", data=self._actor)
        await cancel_timers(self.session, report.id, TIMER_REMIND_UNCLAIMED)
        self._notify_citizen(report, "notify.assigned", code=format_code(report.code))

    async def progress(self, report: Report) -> None:
        self._check("progress", report)
        if report.status not in ("assigned", "needs_info"):
            raise ActionError("triage.wrong_state")
        if report.assigned_officer_id is None:
            report.assigned_officer_id = self.officer.id
        self._event(report, "in_progress", to_status="in_progress", data=self._actor)

    async def transfer(self, report: Report, target_key: str) -> None:
        self._check("transfer", report)
        target = self.context.queues.by_key(target_key)
        if target is None:
            raise ActionError("admin.error.unknown_queue")
        current = self.context.queue_of(report)
        if current is not None and target.key == current.key:
            raise ActionError("triage.same_queue")
        old_key = current.key if current else None
        report.queue_key = target.key
        report.assigned_officer_id = None
        status = (
            "acknowledged"
            if report.kind == "emergency" and report.status == "acknowledged"
            else "new"
        )
        self._event(
            report,
            "transferred",
            to_status=status,
            reason=f"{old_key} → {target.key}",
            data={**self._actor, "from": old_key, "to": target.key},
        )
        posts = (
            await self.session.scalars(
                select(CardPost).where(CardPost.report_id == report.id, CardPost.active.is_(True))
            )
        ).all()
        for old in posts:
            old.active = False
        outbox.enqueue(
            self.session,
            outbox.CardPayload(report_id=report.id, header="card.header.transferred"),
            outbox.Destination.for_queue(target.key),
            report_id=report.id,
            priority=PRIORITY_EMERGENCY if report.kind == "emergency" else PRIORITY_OPEN,
        )

    async def resolve(
        self,
        report: Report,
        outcome: str,
        subjects_text: str,
        assisted: bool,
        duplicate_text: str = "",
    ) -> None:
        needed = "duplicate" if outcome == "duplicate" else "resolve"
        self._check(needed, report)
        if outcome not in OUTCOMES:
            raise ActionError("admin.error.bad_outcome")
        duplicate_of: Report | None = None
        if outcome == "duplicate":
            code = parse_code(duplicate_text)
            duplicate_of = await Reports(self.session).by_code(code) if code else None
            # The same refusal whether the code is unknown, this very report, or a report the
            # officer may not see: the answer never confirms another unit's code.
            if (
                duplicate_of is None
                or duplicate_of.id == report.id
                or not self.allowed("view", duplicate_of)
            ):
                raise ActionError("admin.error.duplicate_code")
            subjects, assisted = 0, False
        else:
            text = subjects_text.strip() or "0"
            if not text.isascii() or not text.isdigit() or int(text) > SUBJECTS_MAX:
                raise ActionError("admin.error.subjects")
            subjects = int(text)
        report.outcome = outcome
        report.subjects_handled = subjects
        report.citizen_assisted_arrest = assisted
        report.resolved_at = utcnow()
        data: dict[str, Any] = {
            **self._actor,
            "outcome": outcome,
            "subjects_handled": subjects,
            "citizen_assisted_arrest": assisted,
        }
        if duplicate_of is not None:
            report.duplicate_of_id = duplicate_of.id
            data["duplicate_of"] = duplicate_of.code
        self._event(report, "resolved", to_status="resolved", reason=outcome, data=data)
        self._notify_citizen(report, f"outcome.citizen.{outcome}")

    async def reject(self, report: Report, reason: str) -> None:
        self._check("reject", report)
        text = clean_text(reason)
        if substance(text) < 3 or len(text) > REASON_MAX:
            raise ActionError("admin.error.reject_reason", limit=REASON_MAX)
        report.reject_reason = text
        self._event(report, "rejected", to_status="rejected", reason=text, data=self._actor)
        self._notify_citizen(report, "notify.rejected", code=format_code(report.code))

    async def relay_problem(self, report: Report) -> str | None:
        return await relay_problem(self.session, report)

    async def _unreachable(self, report: Report) -> bool:
        blocked = await self.session.scalar(
            select(ContactRoute.blocked_at).where(ContactRoute.report_id == report.id)
        )
        return blocked is not None

    async def ask(self, report: Report, question: str, photo: CleanImage | None = None) -> None:
        """Relay ``question`` (with a cleaned ``photo``) to the tipster. While they cannot be
        reached it is held, and the report's chat is told it goes out when they write again."""
        self._check("ask", report)
        problem = await self.relay_problem(report)
        if problem:
            raise ActionError(problem)
        text = clean_text(question)
        if not substance(text) or len(text) > QUESTION_MAX:
            raise ActionError("admin.error.question", limit=QUESTION_MAX)
        relay = RelayMessage(
            report_id=report.id, direction="to_citizen", officer_id=self.officer.id, text=text
        )
        if photo is not None:
            blob = await Media(self.session).add_blob(
                content=photo.content, mime=photo.mime, sha256=photo.sha256
            )
            relay.media_kind, relay.blob_id = "photo", blob.id
        if await self._unreachable(report):
            outbox.enqueue(
                self.session,
                outbox.ChatTextPayload(
                    text=t(self.context.locale, "held.question", code=format_code(report.code)),
                    reply_to_report=report.id,
                ),
                outbox.Destination.parse(await officers_destination(self.session, report)),
                report_id=report.id,
            )
        self.session.add(relay)
        await self.session.flush()
        outbox.enqueue(
            self.session,
            outbox.CitizenPayload(relay_id=relay.id),
            outbox.Destination.citizen(report.id),
            report_id=report.id,
        )
        to_status = "needs_info" if report.status in ("new", "assigned", "in_progress") else None
        data = {**self._actor, "photo": photo.sha256} if photo is not None else self._actor
        self._event(report, "asked", to_status=to_status, reason=text, data=data)

    # ------------------------------------------------------------------ rewards

    def rewards(self) -> Rewards:
        return self.context.rewards(self.session)

    async def propose_reward(self, report: Report, amount_text: str, reason: str) -> Reward:
        amount = parse_amount(amount_text)
        try:
            if amount is None:
                raise RewardError(
                    "reward.bad_amount", cap=format_vnd(self.context.reward_settings.cap_vnd)
                )
            reward = await self.rewards().propose(
                report, self.officer, amount, reason, queue_key=self.queue_key(report)
            )
        except RewardError as refused:
            raise ActionError(refused.key, **refused.values) from refused
        await self.session.flush()
        post_reward_proposal(self.session, self.context, report, reward, self.officer)
        return reward

    async def decide_reward(
        self, reward_id: int, *, approve: bool, reason: str, commendation: str | None = None
    ) -> Reward:
        reward = await self.session.get(Reward, reward_id)
        if reward is None:
            raise ActionError("reward.not_found")
        report = await self.session.get(Report, reward.report_id)
        assert report is not None
        try:
            reward = await self.rewards().decide(
                reward_id,
                self.officer,
                approve=approve,
                reason=reason,
                queue_key=self.queue_key(report),
                commendation=commendation,
            )
        except RewardError as refused:
            raise ActionError(refused.key, **refused.values) from refused
        if reward.status == "approved" and report.contact_mode != "none":
            await notify_reward(self.session, self.context, report, reward)
        return reward

    async def pay_reward(self, claim: str, reference: str) -> Reward:
        """Record a payout; raises after counting a wrong code, so the caller commits anyway."""
        try:
            reward = await self.rewards().pay(
                self.officer, claim, reference, queue_of=self.queue_key
            )
        except RewardError as refused:
            raise ActionError(refused.key, **refused.values) from refused
        report = await self.session.get(Report, reward.report_id)
        assert report is not None
        self._notify_citizen(report, "reward.citizen.paid", amount=format_vnd(reward.amount_vnd))
        return reward
