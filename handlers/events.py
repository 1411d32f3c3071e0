"""Plain domain events in, plain replies out.

The channel adapters in ``bot/`` (Telegram, the Zalo bot, the Zalo OA, the web page) translate
their updates into these objects at the edge. Nothing in ``handlers/`` sees a library type.

A :class:`Sender` carries the raw channel ids only so that the flow can derive the keyed hash
(HMAC) and encrypt the route back; they are never stored, logged or shown in clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AttachmentKind = Literal["photo", "video", "voice", "audio", "document", "animation", "video_note"]


@dataclass(frozen=True, slots=True)
class Sender:
    channel: str
    user_id: str
    chat_id: str
    language_code: str | None = None

    def __repr__(self) -> str:  # never print the ids, even by accident
        return f"Sender(channel={self.channel!r}, …)"


@dataclass(frozen=True, slots=True)
class GeoPoint:
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: AttachmentKind
    file_ref: str
    size: int | None = None
    mime: str | None = None
    file_name: str | None = None


@dataclass(frozen=True, slots=True)
class SharedContact:
    phone: str
    #: True when the shared contact is the sender's own (Telegram's contact button).
    is_own: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A message from a citizen in a private chat."""

    update_id: int
    sender: Sender
    text: str | None = None
    command: str | None = None
    args: str = ""
    location: GeoPoint | None = None
    attachments: tuple[Attachment, ...] = ()
    contact: SharedContact | None = None
    #: A kind of content the flow cannot use (``sticker``, ``poll``, ``dice``...).
    unsupported: str | None = None
    #: The channel's id of the bot message this one replies to (Telegram's swipe-to-reply),
    #: on channels that have reply-to; ``None`` otherwise.
    reply_to: str | None = None
    #: True when this is an edit of a message the citizen sent earlier.
    edited: bool = False
    #: The channel's id of this message (of the edited one, for an edit), where it has one.
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class ButtonPress:
    update_id: int
    sender: Sender
    data: str


Event = Message | ButtonPress


@dataclass(frozen=True, slots=True)
class Button:
    label: str
    data: str


@dataclass(frozen=True, slots=True)
class Keyboard:
    """A reply keyboard with at most one special request button."""

    request_location: str | None = None
    request_contact: str | None = None
    labels: tuple[str, ...] = ()


@dataclass(slots=True)
class Reply:
    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    keyboard: Keyboard | None = None
    remove_keyboard: bool = False
    #: A cleaned image (re-encoded bytes) sent with ``text`` as its caption: an officer's
    #: question may carry one. Each channel sends it its own way (``bot/delivery/citizens.py``).
    photo: bytes | None = None


@dataclass(slots=True)
class Outcome:
    """What the channel should do in answer to one event."""

    replies: list[Reply] = field(default_factory=list)
    #: The short notice on a button press (Telegram's answerCallbackQuery text).
    notice: str | None = None
    alert: bool = False
    #: Remove the buttons from the message whose button was pressed.
    clear_buttons: bool = False
    #: Earlier answers to this chat still wait in the outbox (the channel failed): these go
    #: behind them, through the outbox too, so that the citizen reads them in order.
    behind: bool = False
