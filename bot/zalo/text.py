"""Plain-text messages for the Zalo channels, which have no buttons, no edits and 2,000 characters.

The neutral replies are rendered by :func:`handlers.render.render` (buttons become the numbered
list that typed answers are read by, keyboard labels words to type, long text split at the
channel's limit); here consecutive replies are joined into as few messages as fit, since every
Zalo message counts against the OA's quota and arrives as a separate bubble.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.channels import Capabilities
from handlers.events import Reply
from handlers.render import render


def render_texts(replies: Sequence[Reply], capabilities: Capabilities) -> list[str]:
    """The messages to send for ``replies``: as few as fit, none longer than ``max_text``."""
    limit = capabilities.max_text
    messages: list[str] = []
    for reply in render(list(replies), capabilities):
        text = reply.text.strip()
        if not text:
            continue
        if messages and len(messages[-1]) + 2 + len(text) <= limit:
            messages[-1] = f"{messages[-1]}\n\n{text}"
        else:
            messages.append(text)
    return messages
