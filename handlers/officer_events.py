"""What reaches the officers' side and what it answers: plain events in, a plain outcome out.

Officers are not anonymous: their Telegram id is audited. Nothing here knows Telegram; the adapter
in ``bot/`` builds these events and renders the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.events import Attachment
from storage.models import Officer


@dataclass(frozen=True, slots=True)
class OfficerPress:
    """A button press in an officers' chat. Officers are not anonymous: their id is audited."""

    update_id: int
    channel: str
    chat_id: int
    thread_id: int | None
    message_id: int
    user_id: int
    user_name: str
    data: str


@dataclass(frozen=True, slots=True)
class OfficerMessage:
    """A message in an officers' chat that reached the bot (a command or a reply to it)."""

    update_id: int
    channel: str
    chat_id: int
    thread_id: int | None
    message_id: int
    user_id: int
    user_name: str
    text: str | None = None
    command: str | None = None
    args: str = ""
    reply_to_message_id: int | None = None
    reply_to_user_id: int | None = None
    reply_to_user_name: str | None = None
    reply_to_is_bot: bool = False
    #: A photo or file sent with the message (its caption is ``text``): a photo may go with a
    #: question for a tipster (:meth:`handlers.triage.Triage.prepare_photo`).
    attachment: Attachment | None = None


@dataclass(frozen=True, slots=True)
class CardRefresh:
    """Re-render a report's cards; ``mode`` shows a picker on the pressed card only."""

    report_id: int
    mode: str | None = None
    chat_id: int | None = None
    message_id: int | None = None


@dataclass(slots=True)
class OfficerOutcome:
    notice: str | None = None
    alert: bool = False
    refresh: list[CardRefresh] = field(default_factory=list)
    #: New text and buttons for the pressed message itself (paging a list).
    edit: tuple[str, list[list[dict[str, str]]]] | None = None


class DuplicateOfficerUpdate(Exception):
    pass


@dataclass
class OfficerAct:
    """One officer interaction being handled: its transaction, who, where, and the outcome."""

    session: AsyncSession
    officer: Officer | None
    channel: str
    chat_id: int
    thread_id: int | None
    outcome: OfficerOutcome = field(default_factory=OfficerOutcome)

    @property
    def chat_destination(self) -> str:
        suffix = f"/{self.thread_id}" if self.thread_id is not None else ""
        return f"chat:{self.chat_id}{suffix}"

    @property
    def actor(self) -> dict[str, Any]:
        return {"officer_id": self.officer.id if self.officer else None}
