"""What every officer-side use case needs to know: the queue map, the keyring, the reward
settings and where rewards are decided. A small object the chat (:mod:`handlers.triage`) and the
shared actions (:mod:`handlers.report_actions`) both take, so neither imports the other.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from config.queues import Queue, QueueMap
from config.rewards import PayoutInstructions
from handlers.rewards import Rewards, RewardSettings
from handlers.security import Keyring
from storage.models import Report


class TriageContext:
    def __init__(
        self,
        *,
        locale: str = "vi",
        queues: QueueMap | None = None,
        keyring: Keyring | None = None,
        rewards: RewardSettings | None = None,
        instructions: PayoutInstructions | None = None,
        rewards_chat: tuple[int, int | None] | None = None,
    ) -> None:
        self.locale = locale
        # Never ``queues or QueueMap()``: a map holding only the duty queue is a working map.
        self.queues = queues if queues is not None else QueueMap()
        self.keyring = keyring
        self.reward_settings = rewards or RewardSettings()
        self.instructions = instructions or PayoutInstructions()
        #: Where rewards are decided; the duty queue when not configured.
        if rewards_chat is None and self.queues.duty is not None:
            rewards_chat = (self.queues.duty.chat_id, self.queues.duty.thread_id)
        self.rewards_chat = rewards_chat

    def queue_of(self, report: Report) -> Queue | None:
        """The report's queue: where it was transferred, else its unit's, else the duty queue."""
        if report.queue_key:
            queue = self.queues.by_key(report.queue_key)
            if queue is not None:
                return queue
        return self.queues.resolve(report.unit_code)

    def queue_key(self, report: Report) -> str | None:
        queue = self.queue_of(report)
        return queue.key if queue is not None else None

    def rewards_destination(self) -> str:
        """The outbox destination of the rewards chat (the duty queue's when not configured)."""
        if self.rewards_chat is None:
            return "duty"
        chat_id, thread_id = self.rewards_chat
        return f"chat:{chat_id}" + (f"/{thread_id}" if thread_id is not None else "")

    def rewards(self, session: AsyncSession) -> Rewards:
        if self.keyring is None:
            raise RuntimeError("the rewards need the keyring")
        return Rewards(session, keyring=self.keyring, settings=self.reward_settings)
