"""What the delivery worker handles: a due row, its resolved target, a claimed job, and the
signals between the scheduler and the senders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.delivery.leases import Claim


@dataclass(frozen=True)
class Target:
    """An officers' chat a row resolved to (a group, or a forum topic in one)."""

    chat_id: int
    thread_id: int | None
    name: str
    is_duty: bool

    @property
    def chat_key(self) -> str:
        return str(self.chat_id) if self.thread_id is None else f"{self.chat_id}/{self.thread_id}"

    @property
    def is_group(self) -> bool:
        return self.chat_id < 0


@dataclass
class Row:
    """A due outbox row as the scheduler sees it."""

    id: int
    kind: str
    destination: str
    status: str
    payload: dict[str, Any]
    report_id: int | None
    attempts: int
    priority: int
    urgent: bool
    cost: int
    created_at: datetime
    target: Target | None = None

    @property
    def partial(self) -> bool:
        return bool(self.payload.get("done"))


@dataclass
class Job:
    """A claimed row being sent."""

    row: Row
    target: Target
    claim: Claim
    #: Messages sent under this claim.
    sent_now: int = 0

    @property
    def payload(self) -> dict[str, Any]:
        """What the producer wrote, and the progress so far (``done``, ``msg``, ``sent``)."""
        return self.claim.payload

    @property
    def attempts(self) -> int:
        return self.claim.attempts

    @property
    def done(self) -> list[str]:
        done = self.payload.setdefault("done", [])
        assert isinstance(done, list)
        return done

    @property
    def sent(self) -> int:
        return int(self.payload.get("sent", 0))


class Blocked(Exception):
    """The row cannot go on now (budget, pause, stop); it goes back to the queue."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = max(0.0, delay)
        self.reason = reason


class RenderFailed(Exception):
    """A row's document could not be rendered (its cause attached): retried later with
    backoff, without pausing the chat (other rows to it go on)."""


class LeaseLost(Exception):
    """Another worker took the row over (our lease lapsed)."""


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
