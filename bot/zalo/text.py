"""Plain-text messages for the Zalo channels, which have no buttons, no edits and 2,000 characters.

The neutral replies are rendered by :func:`handlers.render.render` (buttons become the numbered
list that typed answers are read by, keyboard labels words to type, long text split at the
channel's limit); here consecutive replies are joined into as few messages as fit, since every
Zalo message counts against the OA's quota and arrives as a separate bubble. A reply with an
image (an officer's photo) is a message of its own, its text as the caption when that is short
enough (:data:`CAPTION_MAX`; neither API documents a caption limit) and a text after it if not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from handlers.channels import Capabilities
from handlers.events import Reply
from handlers.render import render

#: The longest caption sent with an image; a longer text follows the image as its own message.
CAPTION_MAX = 1000


@dataclass(frozen=True)
class ZaloMessage:
    """One message to send: a text, or an image with its caption (maybe empty)."""

    text: str
    photo: bytes | None = None


def render_messages(replies: Sequence[Reply], capabilities: Capabilities) -> list[ZaloMessage]:
    """The messages to send for ``replies``: consecutive texts joined as far as they fit, an
    image on its own with its caption."""
    limit = capabilities.max_text
    messages: list[ZaloMessage] = []
    joinable = False  # the last message is a text more may be added to
    for reply in render(list(replies), capabilities):
        text = reply.text.strip()
        if reply.photo is not None:
            caption = text if len(text) <= CAPTION_MAX else ""
            messages.append(ZaloMessage(caption, reply.photo))
            joinable = False
            if caption or not text:
                continue
        if not text:
            continue
        if joinable and len(messages[-1].text) + 2 + len(text) <= limit:
            messages[-1] = ZaloMessage(f"{messages[-1].text}\n\n{text}")
        else:
            messages.append(ZaloMessage(text))
        joinable = True
    return messages


def render_texts(replies: Sequence[Reply], capabilities: Capabilities) -> list[str]:
    """The texts to send for ``replies`` (images left out): as few as fit, none longer than
    ``max_text``."""
    return [m.text for m in render_messages(replies, capabilities) if m.photo is None]
