"""Messages the officer-side actions leave in the outbox for others to read: a reward proposal
before the commanders, and an approved reward's claim code for the tipster.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import outbox
from handlers.i18n import t
from handlers.rewards import format_claim_code, format_vnd
from handlers.security import format_code
from handlers.triage_context import TriageContext
from storage.models import Officer, Report, Reward

#: Outbox priority of messages in officers' chats.
PRIORITY_CHAT = outbox.Priority.CHAT

#: The rewards chat's approve buttons that carry a commendation: press code → kind.
COMMENDATION_PRESSES = {"oki": "individual", "okc": "collective"}


def post_reward_proposal(
    session: AsyncSession,
    context: TriageContext,
    report: Report,
    reward: Reward,
    proposer: Officer,
) -> None:
    """Put a new proposal before the commanders in the rewards chat, with its buttons."""
    locale = context.locale
    values = {"code": format_code(report.code), "amount": format_vnd(reward.amount_vnd)}
    outbox.enqueue(
        session,
        outbox.ChatTextPayload(
            text=t(
                locale,
                "reward.proposed_post",
                reason=reward.reason,
                officer=proposer.display_name,
                **values,
            ),
            buttons=[
                [
                    {"label": t(locale, "reward.btn.approve"), "data": f"w:ok:{reward.id}"},
                    {"label": t(locale, "reward.btn.reject"), "data": f"w:no:{reward.id}"},
                ],
                [
                    {
                        "label": t(locale, f"commendation.btn.{kind}"),
                        "data": f"w:{code}:{reward.id}",
                    }
                    for code, kind in COMMENDATION_PRESSES.items()
                ],
            ],
        ),
        outbox.Destination.parse(context.rewards_destination()),
        report_id=report.id,
        priority=PRIORITY_CHAT,
    )


async def notify_reward(
    session: AsyncSession, context: TriageContext, report: Report, reward: Reward
) -> None:
    """Tell the tipster of an approved reward, with a new one-time claim code.

    The code travels encrypted in the outbox row and is wiped once delivered; only its
    keyed hash stays in the database.
    """
    assert context.keyring is not None
    code = await context.rewards(session).issue_claim_code(reward)
    outbox.enqueue(
        session,
        outbox.CitizenPayload(
            key="reward.citizen.approved",
            values={
                "code": format_code(report.code),
                "amount": format_vnd(reward.amount_vnd),
                "instructions": context.instructions.for_unit(report.unit_code)
                or t(report.locale, "reward.citizen.default_instructions"),
            },
            secret=context.keyring.encrypt({"claim": format_claim_code(code)}),
        ),
        outbox.Destination.citizen(report.id),
        report_id=report.id,
        priority=PRIORITY_CHAT,
    )
