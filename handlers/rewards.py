"""The reward workflow (docs/domain.md, "Reward workflow"): propose, decide, notify, pay once.

A channel-neutral service: the chat (``handlers/triage.py``) and the web panel call the same
methods. Every stage is an audit event on the report. Races are settled by the database: a
decision or a payout is one conditional ``UPDATE … WHERE status = …``, so two commanders
approving at once, or two payouts at once, leave exactly one effect.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.officers import may
from handlers.security import CODE_ALPHABET, Keyring
from storage.models import Officer, Report, Reward
from storage.repositories import RateLimits, Reports
from storage.types import utcnow

log = logging.getLogger(__name__)

REWARDABLE_OUTCOMES = frozenset({"clarified", "handled"})
CLAIM_CODE_LENGTH = 12  # 31**12 ≈ 2**59
RATE_CLAIM = "claim_guess"
REASON_MAX = 500


#: Kinds of commendation an approval may carry (the notice counts collectives and individuals).
COMMENDATIONS = ("individual", "collective")


class RewardError(Exception):
    """A refused step; ``key`` is the catalogue key of the message to show.

    A refusal changes nothing but may count a wrong claim code: the caller commits anyway.
    """

    def __init__(self, key: str, **values: object) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


@dataclass(frozen=True)
class RewardSettings:
    cap_vnd: int = 10_000_000
    claim_attempts: int = 5
    claim_window: timedelta = timedelta(minutes=15)


def new_claim_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CLAIM_CODE_LENGTH))


def format_claim_code(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def parse_claim_code(text: str) -> str | None:
    cleaned = "".join(ch for ch in text.upper() if ch not in " -_.\u00a0\t")
    if len(cleaned) != CLAIM_CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in cleaned):
        return None
    return cleaned


def parse_amount(text: str) -> int | None:
    """Whole VND: ``2000000``, ``2.000.000``, ``2,000,000`` or ``2 000 000`` (đ/VND allowed)."""
    cleaned = text.strip().lower().removesuffix("vnd").removesuffix("đ").removesuffix("d")
    digits = cleaned.replace(".", "").replace(",", "").replace(" ", "").replace("\u00a0", "")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 15:
        return None
    return int(digits)


def format_vnd(amount: int) -> str:
    return f"{amount:,}".replace(",", ".") + " ₫"


class Rewards:
    def __init__(
        self, session: AsyncSession, *, keyring: Keyring, settings: RewardSettings
    ) -> None:
        self.session = session
        self.keyring = keyring
        self.settings = settings

    def claim_hash(self, code: str) -> str:
        return self.keyring.keyed_hash("claim", code)

    async def active_for(self, report_id: int) -> Reward | None:
        return await self.session.scalar(
            select(Reward)
            .where(Reward.report_id == report_id, Reward.status != "rejected")
            .order_by(Reward.id.desc())
        )

    async def propose(
        self, report: Report, officer: Officer, amount: int, reason: str, *, queue_key: str | None
    ) -> Reward:
        if not may(officer, "reward_propose", queue_key):
            raise RewardError("triage.not_permitted")
        if report.status != "resolved" or report.outcome not in REWARDABLE_OUTCOMES:
            raise RewardError("reward.not_rewardable")
        if amount <= 0 or amount > self.settings.cap_vnd:
            raise RewardError("reward.bad_amount", cap=format_vnd(self.settings.cap_vnd))
        reason = reason.strip()
        if not reason or len(reason) > REASON_MAX:
            raise RewardError("reward.bad_reason", limit=REASON_MAX)
        if await self.active_for(report.id) is not None:
            raise RewardError("reward.already_active")
        reward = Reward(
            report_id=report.id,
            amount_vnd=amount,
            reason=reason,
            status="proposed",
            proposed_by_id=officer.id,
            proposed_at=utcnow(),
        )
        try:
            async with self.session.begin_nested():
                self.session.add(reward)
        except IntegrityError as exc:  # a concurrent proposal won
            raise RewardError("reward.already_active") from exc
        Reports(self.session).add_event(
            report,
            action="reward_proposed",
            actor_kind="officer",
            actor_id=officer.id,
            reason=reason,
            data={"reward_id": reward.id, "amount_vnd": amount},
        )
        return reward

    async def decide(
        self,
        reward_id: int,
        officer: Officer,
        *,
        approve: bool,
        reason: str,
        queue_key: str | None,
        commendation: str | None = None,
    ) -> Reward:
        """Approve or reject a proposal; exactly one decision wins a race. An approval may come
        with a commendation (:data:`COMMENDATIONS`)."""
        reward = await self.session.get(Reward, reward_id)
        if reward is None:
            raise RewardError("reward.not_found")
        if not may(officer, "reward_decide", queue_key):
            raise RewardError("triage.not_permitted")
        if reward.proposed_by_id == officer.id:
            raise RewardError("reward.four_eyes")
        reason = reason.strip()
        if not reason or len(reason) > REASON_MAX:
            raise RewardError("reward.bad_reason", limit=REASON_MAX)
        if reward.status != "proposed":
            raise RewardError(f"reward.already_{reward.status}")
        if commendation is not None and (commendation not in COMMENDATIONS or not approve):
            raise RewardError("commendation.bad")
        status = "approved" if approve else "rejected"
        now = utcnow()
        result = await self.session.execute(
            update(Reward)
            .where(Reward.id == reward_id, Reward.status == "proposed")
            .values(
                status=status,
                decided_by_id=officer.id,
                decided_at=now,
                decision_reason=reason,
                commendation=commendation,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            await self.session.refresh(reward)
            raise RewardError(f"reward.already_{reward.status}")
        await self.session.refresh(reward)
        report = await self.session.get(Report, reward.report_id)
        assert report is not None
        Reports(self.session).add_event(
            report,
            action=f"reward_{status}",
            actor_kind="officer",
            actor_id=officer.id,
            reason=reason,
            data={
                "reward_id": reward.id,
                "amount_vnd": reward.amount_vnd,
                **({"commendation": commendation} if commendation else {}),
            },
        )
        return reward

    async def issue_claim_code(self, reward: Reward) -> str:
        """A new one-time claim code for an approved reward; any earlier code stops working."""
        if reward.status != "approved":
            raise RewardError("reward.not_approved")
        code = new_claim_code()
        reward.claim_hash = self.claim_hash(code)
        await self.session.flush()
        return code

    async def pay(
        self,
        officer: Officer,
        claim_text: str,
        reference: str,
        *,
        queue_of: object = None,
    ) -> Reward:
        """Record the payout of the reward whose claim code is given; a code works once."""
        limits = RateLimits(self.session)
        guesser = self.keyring.keyed_hash("officer", str(officer.id))
        window = self.settings.claim_window
        if await limits.count(RATE_CLAIM, guesser, window) >= self.settings.claim_attempts:
            raise RewardError("reward.locked", minutes=int(window.total_seconds() // 60))
        reference = reference.strip()
        if not reference or len(reference) > 200:
            raise RewardError("reward.bad_reference")
        code = parse_claim_code(claim_text)
        reward = (
            await self.session.scalar(
                # The previous keys' hashes too: a reward approved before a key rotation.
                select(Reward).where(
                    Reward.claim_hash.in_(self.keyring.keyed_hashes("claim", code))
                )
            )
            if code
            else None
        )
        if reward is None:
            limits.hit(RATE_CLAIM, guesser)
            raise RewardError("reward.wrong_code")
        report = await self.session.get(Report, reward.report_id)
        assert report is not None
        queue_key = queue_of(report) if callable(queue_of) else None
        if not may(officer, "reward_payout", queue_key):
            raise RewardError("triage.not_permitted")
        if reward.status != "approved":
            raise RewardError(f"reward.already_{reward.status}")
        now = utcnow()
        result = await self.session.execute(
            update(Reward)
            .where(Reward.id == reward.id, Reward.status == "approved")
            .values(
                status="paid",
                paid_by_id=officer.id,
                paid_at=now,
                payout_reference=reference,
                claim_hash=None,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise RewardError("reward.already_paid")
        await self.session.refresh(reward)
        Reports(self.session).add_event(
            report,
            action="reward_paid",
            actor_kind="officer",
            actor_id=officer.id,
            reason=reference,
            data={"reward_id": reward.id, "amount_vnd": reward.amount_vnd},
        )
        return reward
