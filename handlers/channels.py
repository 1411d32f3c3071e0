"""The citizen channels and what each can show: one vocabulary for the flows and the adapters.

A flow produces one neutral :class:`~handlers.events.Reply`; each channel renders it its own way
(buttons where it has them, else a numbered list in the text; long text split at the channel's
limit; a new message where it cannot edit one). The flows read a channel's capabilities only where
the conversation itself differs, for example a relayed question on a channel with no reply-to.

These are domain facts (``docs/domain.md``, "Channels for citizens"), so they live
here and not in an adapter. The officers' side always stays in Telegram.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ChannelName(StrEnum):
    """A citizen channel, as stored on a contact route and named by a :class:`Sender`."""

    TELEGRAM = "telegram"
    ZALO_BOT = "zalo_bot"
    ZALO_OA = "zalo_oa"
    WEB = "web"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a channel can show a citizen."""

    #: Inline buttons under a message (Telegram's inline keyboard).
    buttons: bool
    #: A reply keyboard of labels under the input field.
    reply_keyboard: bool
    #: A button that asks for the device's location (Telegram: private chats only).
    location_request: bool
    #: A button that shares the citizen's own phone number.
    contact_request: bool
    #: Photos can be sent to the citizen.
    photos_out: bool
    #: The longest text of one message, in characters.
    max_text: int
    #: A sent message can be edited (else the next step is sent as a new message).
    edits: bool
    #: The citizen can answer a given message by replying to (quoting) it.
    reply_to: bool
    #: The citizen reads the channel's messages on the status page, behind their code and PIN
    #: (the web's anonymous inbox). That page shows an approved reward's claim code itself, and
    #: issues a new one each time, so a claim code inside a message there would be a stale one.
    status_page: bool = False


CAPABILITIES: dict[ChannelName, Capabilities] = {
    ChannelName.TELEGRAM: Capabilities(
        buttons=True,
        reply_keyboard=True,
        location_request=True,
        contact_request=True,
        photos_out=True,
        max_text=4096,
        edits=True,
        reply_to=True,
    ),
    ChannelName.ZALO_BOT: Capabilities(
        buttons=False,
        reply_keyboard=False,
        location_request=False,
        contact_request=False,
        photos_out=True,
        max_text=2000,
        edits=False,
        reply_to=False,
    ),
    ChannelName.ZALO_OA: Capabilities(
        buttons=False,
        reply_keyboard=False,
        location_request=False,
        contact_request=False,
        photos_out=True,
        max_text=2000,
        edits=False,
        reply_to=False,
    ),
    ChannelName.WEB: Capabilities(
        buttons=True,
        reply_keyboard=False,
        location_request=True,
        contact_request=False,
        photos_out=True,
        max_text=20000,
        edits=False,
        reply_to=False,
        status_page=True,
    ),
}


def capabilities(channel: str) -> Capabilities:
    """A channel's capabilities; an unknown name gets the plainest (text only, 2,000 chars)."""
    try:
        return CAPABILITIES[ChannelName(channel)]
    except ValueError:
        return CAPABILITIES[ChannelName.ZALO_BOT]
