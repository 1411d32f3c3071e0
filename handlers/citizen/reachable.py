"""A tipster who writes is reachable again: routes marked unreachable are cleared and the
messages held for them are due at once.

The delivery (``bot/delivery/citizens.py``) holds a message when the channel says the tipster
cannot be reached for now (the Zalo OA's 7-day window closed, the OA unfollowed, the bot
blocked) and marks their contact routes. The tipster's next message, on the same channel and
account, proves the way back is open: it runs here, in the same transaction as the message,
and the commit wakes the delivery.
"""

from __future__ import annotations

from sqlalchemy import select, update

from handlers.citizen.base import Turn
from handlers.outbox import Kind, Status
from storage.db import enqueued
from storage.models import ContactRoute, OutboxMessage

#: Set on a tipster's conversation (``data``) by the delivery when it marks one of their routes
#: unreachable; only then does their next message look for held messages.
HELD_MARK = "held"


async def wake_held(turn: Turn) -> bool:
    """Clear this sender's unreachable routes and make their held messages due; ``True`` if
    there were any (then this message is not the answer to a question it has not seen)."""
    if not turn.data.pop(HELD_MARK, False):
        return False
    found = await turn.session.scalars(
        select(ContactRoute.report_id).where(
            ContactRoute.sender_key == turn.sender_key, ContactRoute.blocked_at.is_not(None)
        )
    )
    report_ids = list(found.all())
    if not report_ids:
        return False
    await turn.session.execute(
        update(ContactRoute)
        .where(ContactRoute.report_id.in_(report_ids))
        .values(blocked_at=None)
        .execution_options(synchronize_session=False)
    )
    await turn.session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.report_id.in_(report_ids),
            OutboxMessage.kind == Kind.CITIZEN_MESSAGE.value,
            OutboxMessage.status == Status.PENDING,
        )
        .values(next_attempt_at=turn.now, last_error=None)
        .execution_options(synchronize_session=False)
    )
    enqueued(turn.session).citizens = True  # held messages are due: wake the messenger
    return True
