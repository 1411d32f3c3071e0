"""The citizen conversation's vocabulary: its states, settings, one turn of it, and small helpers.

Every flow module (tip, accident, status, relay) builds on these; none of them imports another
flow module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import media as media_rules
from handlers.channels import Capabilities, capabilities
from handlers.citizen.draft import Draft
from handlers.events import Attachment, Button, Outcome, Reply
from handlers.i18n import t
from storage.repositories import ConversationState
from storage.types import utcnow


class State(StrEnum):
    IDLE = "idle"
    LANGUAGE = "language"
    CATEGORY = "category"
    PLACE = "place"
    WHEN = "when"
    WHEN_TEXT = "when_text"
    DESCRIPTION = "description"
    EVIDENCE = "evidence"
    CONTACT = "contact"
    CONTACT_PHONE = "contact_phone"
    SUMMARY = "summary"
    EDIT = "edit"
    STATUS_CODE = "status_code"
    STATUS_PIN = "status_pin"
    RELAY = "relay"
    RELAY_CODE = "relay_code"
    RELAY_PIN = "relay_pin"
    ACC_PLACE = "acc_place"
    ACC_INJURED = "acc_injured"
    ACC_PHOTO = "acc_photo"


#: The tip's steps, in order; editing one from the summary returns to the summary.
TIP_STEPS = (
    State.CATEGORY,
    State.PLACE,
    State.WHEN,
    State.DESCRIPTION,
    State.EVIDENCE,
    State.CONTACT,
    State.SUMMARY,
)
EDITABLE = {
    "category": State.CATEGORY,
    "place": State.PLACE,
    "when": State.WHEN,
    "description": State.DESCRIPTION,
    "evidence": State.EVIDENCE,
    "contact": State.CONTACT,
}
EMERGENCY_STATES = frozenset({State.ACC_PLACE, State.ACC_INJURED, State.ACC_PHOTO})
#: States that belong to a draft (as opposed to side trips like a status check).
DRAFT_STATES = frozenset(
    {*TIP_STEPS, State.WHEN_TEXT, State.CONTACT_PHONE, State.EDIT, *EMERGENCY_STATES}
)
#: Side trips that return to the draft (or the menu) when done or cancelled.
SIDE_TRIPS = frozenset(
    {
        State.STATUS_CODE,
        State.STATUS_PIN,
        State.LANGUAGE,
        State.RELAY,
        State.RELAY_CODE,
        State.RELAY_PIN,
    }
)
RELAY_STATES = frozenset({State.RELAY, State.RELAY_CODE, State.RELAY_PIN})

#: How many of a citizen's latest update ids are kept to recognise a duplicate delivery.
SEEN_UPDATES = 64
RATE_REPORT = "report"
RATE_PIN_SENDER = "pin_sender"
RATE_PIN_CODE = "pin_code"


class DuplicateUpdate(Exception):
    """This channel update was handled before; the caller rolls back and sends nothing."""


class MediaFetcher(Protocol):
    async def fetch(self, attachment: Attachment) -> bytes: ...


class Locator(Protocol):
    """Finds the unit whose area holds a point (operator-supplied geometry)."""

    def locate(self, latitude: float, longitude: float) -> str | None: ...


@dataclass(frozen=True)
class CitizenSettings:
    default_locale: str = "vi"
    draft_ttl: timedelta = timedelta(days=7)
    report_rate_limit: int = 5
    report_rate_window: timedelta = timedelta(hours=1)
    pin_attempts_per_code: int = 5
    pin_attempts_per_sender: int = 10
    pin_attempt_window: timedelta = timedelta(minutes=15)
    max_media: int = 10


#: What the read-only phase prepared: for each image in the message, the cleaned image or the
#: reason it was refused; under :data:`PREPARED_PIN`, a new PIN and its slow hash.
Prepared = dict[str, Any]
PREPARED_PIN = "_pin"
#: Presses that may store a report (their PIN is hashed before the write transaction).
SUBMITTING_PRESSES = frozenset({("sum", "ok"), ("acc", "send")})


@dataclass
class Turn:
    """One event being handled: the conversation, its draft and the replies so far."""

    session: AsyncSession
    conversation: ConversationState
    sender_key: str
    channel: str
    chat_id: str
    data: dict[str, Any]
    outcome: Outcome = field(default_factory=Outcome)
    now: datetime = field(default_factory=utcnow)
    #: A PIN and its hash made before the write transaction, if this event may submit.
    prepared_pin: tuple[str, str] | None = None
    #: This event was a typed answer that matched nothing (counted for the help line).
    missed: bool = False
    #: Messages held for this tipster were released by this event (they have not seen them).
    woke: bool = False

    @property
    def locale(self) -> str:
        return self.conversation.locale or "vi"

    @property
    def caps(self) -> Capabilities:
        return capabilities(self.channel)

    @property
    def state(self) -> State:
        try:
            return State(self.conversation.state)
        except ValueError:
            return State.IDLE

    @state.setter
    def state(self, value: State) -> None:
        self.conversation.state = value.value

    @property
    def draft(self) -> dict[str, Any]:
        """The draft's stored form (a JSON object); :attr:`typed_draft` reads it typed."""
        draft = self.data.get("draft")
        if not isinstance(draft, dict):
            draft = {}
            self.data["draft"] = draft
        return draft

    @property
    def typed_draft(self) -> Draft:
        return Draft(self.draft)

    @property
    def has_draft(self) -> bool:
        return isinstance(self.data.get("draft"), dict)

    @property
    def choices(self) -> list[list[Any]]:
        """The choices of the last prompt: ``[number, button data, label]`` each."""
        choices = self.data.get("choices")
        return choices if isinstance(choices, list) else []

    def say(self, key: str, **values: Any) -> Reply:
        reply = Reply(text=t(self.locale, key, **values))
        self.outcome.replies.append(reply)
        return reply

    def button(self, key: str, action: str, **values: Any) -> Button:
        return Button(
            label=t(self.locale, key, **values), data=f"{self.conversation.step}:{action}"
        )

    def drop_keyboard(self, reply: Reply) -> None:
        """Remove the reply keyboard with ``reply``, if one is showing."""
        if self.data.get("kb"):
            reply.remove_keyboard = True

    def notice(self, key: str, *, alert: bool = False, **values: Any) -> None:
        self.outcome.notice = t(self.locale, key, **values)
        self.outcome.alert = alert


IMAGE_REFUSALS = {
    "too_large": "ev.too_large_image",
    "not_an_image": "ev.not_an_image",
    "unsupported_image": "ev.not_an_image",
    "image_too_big_dimensions": "ev.image_dimensions",
    "download_failed": "ev.failed",
}


def is_image(attachment: Attachment) -> bool:
    if attachment.kind == "photo":
        return True
    return attachment.kind == "document" and media_rules.is_image_mime(
        attachment.mime, attachment.file_name
    )


def parse_button(data: str) -> tuple[int, str, str] | None:
    """``"<step>:<action>[:<arg>]"`` → parts; ``None`` for anything else (forged, garbled)."""
    if not data or len(data) > 64 or not data.isascii():
        return None
    parts = data.split(":", 2)
    if len(parts) < 2 or not parts[0].isdigit() or len(parts[0]) > 9:
        return None
    action = parts[1]
    arg = parts[2] if len(parts) == 3 else ""
    if not action.isalnum():
        return None
    return int(parts[0]), action, arg


def quote(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
