"""Answers that wait in the outbox: a citizen's next answers go behind them, in order.

When the channel cannot take the answer to a citizen's message (it still fails after the
retries of ``bot/answers.py``, or a send timed out), the answer waits in the outbox
(``citizen_answer`` rows under ``answer:<sender key>``, ``bot/queued_answers.py``) and the
citizen's conversation gets :data:`QUEUED_MARK`. Only then does their next message look for
waiting answers (no query on every step): while some wait, the new answers queue behind them
(:attr:`~handlers.events.Outcome.behind`), so that a late prompt never arrives after a newer
one; once none wait, the mark goes and answers are sent directly again.
"""

from __future__ import annotations

from sqlalchemy import select

from handlers.citizen.base import Turn
from handlers.outbox import Destination, Kind, Status
from storage.models import OutboxMessage

#: Set on a citizen's conversation (``data``) when an answer to them is queued.
QUEUED_MARK = "queued"


async def answers_waiting(turn: Turn) -> bool:
    """Whether answers to this citizen still wait in the outbox; clears the mark when none do."""
    if not turn.data.get(QUEUED_MARK):
        return False
    waiting = await turn.session.scalar(
        select(OutboxMessage.id)
        .where(
            OutboxMessage.kind == Kind.CITIZEN_ANSWER.value,
            OutboxMessage.destination == str(Destination.answer(turn.sender_key)),
            OutboxMessage.status.in_((Status.PENDING, Status.SENDING)),
        )
        .limit(1)
    )
    if waiting is None:
        turn.data.pop(QUEUED_MARK, None)
        return False
    return True
