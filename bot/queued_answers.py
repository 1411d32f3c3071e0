"""An answer the channel could not take at once waits in the outbox, in order.

The answer to a citizen's message is sent while their update is handled, tried again after a
429 or a passing error (:func:`bot.answers.patiently`). When it still fails, or when a send
timed out (the message may or may not have been delivered), what is left of the answer is
written here as a ``citizen_answer`` row (:class:`~handlers.outbox.AnswerPayload`) and sent by
the citizen messenger (:mod:`bot.delivery.citizens`): never dropped after one try.

- **No chat id at rest.** The row is addressed to ``answer:<keyed sender hash>``; the channel
  and chat travel encrypted in the payload (as a report's route back does) and are decrypted
  only to send. The mid-draft citizen has no report yet, so the row names none.
- **Order.** The citizen's conversation is marked in the same transaction
  (:data:`~handlers.citizen.queued.QUEUED_MARK`); while answers wait, the flow marks the next
  outcomes :attr:`~handlers.events.Outcome.behind` and the adapters queue them too, behind the
  earlier ones, and the messenger sends one chat's answers one at a time in id order. So a late
  prompt never lands after a newer one; it may land late, with the ones after it.
- **At least once.** A send that timed out is queued again (after ``settle`` seconds): in a
  citizen's private chat nothing keeps other bot messages out while it is in doubt, so the probe
  the officers' chats use (:mod:`bot.delivery.landing`) could adopt or alter another message.
  A prompt shown twice costs a line; a prompt lost leaves the citizen answering a question they
  never saw.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from handlers.citizen.queued import QUEUED_MARK
from handlers.events import Reply, Sender
from handlers.outbox import AnswerPayload, Destination, enqueue, reply_to_json
from handlers.security import Keyring
from storage.db import writer
from storage.models import Conversation
from storage.repositories import ConversationCache
from storage.types import utcnow

log = logging.getLogger(__name__)

#: Seconds before an answer whose send timed out is sent again (it may still be on its way).
SETTLE_SECONDS = 3.0


class AnswerQueue:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        *,
        cache: ConversationCache | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.cache = cache
        bind = session_factory.kw.get("bind")
        self._engine = bind if isinstance(bind, AsyncEngine) else None
        #: Called after a commit that queued answers (wakes the citizen messenger).
        self.after_commit: list[Callable[[], None]] = []
        #: Answers queued since start (tests, health).
        self.queued = 0

    async def enqueue(self, sender: Sender, replies: Sequence[Reply], *, delay: float = 0) -> bool:
        """Queue ``replies`` (as the channel would have sent them) for ``sender``'s chat;
        ``False`` when they could not be written (the database is down): then they are lost,
        and the log says so, without the chat."""
        if not replies:
            return True
        key = self.keyring.sender_key(sender.channel, sender.user_id)
        payload = AnswerPayload(
            route=self.keyring.encrypt({"channel": sender.channel, "chat_id": sender.chat_id}),
            replies=[reply_to_json(reply) for reply in replies],
        )
        lock = writer(self._engine) if self._engine is not None else contextlib.nullcontext()
        try:
            async with lock, self.session_factory() as session, session.begin():
                enqueue(
                    session,
                    payload,
                    Destination.answer(key),
                    due=utcnow() + timedelta(seconds=delay),
                )
                conversation = await session.get(Conversation, key)
                if conversation is not None and not (conversation.data or {}).get(QUEUED_MARK):
                    conversation.data = {**(conversation.data or {}), QUEUED_MARK: True}
        except Exception as exc:
            log.error("an answer to a citizen could not be queued (%s)", type(exc).__name__)
            return False
        finally:
            if self.cache is not None:  # the row changed: read it afresh next time
                self.cache.discard(key)
        self.queued += 1
        for callback in self.after_commit:
            callback()
        return True


__all__ = ["SETTLE_SECONDS", "AnswerQueue"]
