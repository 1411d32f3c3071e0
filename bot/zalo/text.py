"""Renders neutral replies as plain text for channels without buttons (both Zalo channels).

A stop-gap until the shared ``handlers/render.py`` lands: buttons become a numbered list in the
text (the number is what the citizen types), reply-keyboard labels a bulleted list (the label is
what the citizen types), consecutive replies are joined while they fit, and a text longer than
the channel's limit is split, at a paragraph, line or word boundary where one is near.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.channels import Capabilities
from handlers.events import Reply

#: A cut is moved back to a boundary only if that keeps at least this share of the piece.
_MIN_FILL = 0.5


def reply_text(reply: Reply, capabilities: Capabilities) -> str:
    """One reply's text with its choices written out, for a channel that cannot show them."""
    lines = [reply.text]
    if reply.buttons and not capabilities.buttons:
        labels = [button.label for row in reply.buttons for button in row]
        lines.append("\n".join(f"{number}. {label}" for number, label in enumerate(labels, 1)))
    keyboard = reply.keyboard
    if keyboard is not None and keyboard.labels and not capabilities.reply_keyboard:
        lines.append("\n".join(f"• {label}" for label in keyboard.labels))
    return "\n\n".join(line for line in lines if line)


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at a boundary where possible."""
    if limit < 1:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = -1
        for separator in ("\n\n", "\n", " "):
            position = window.rfind(separator)
            if position >= limit * _MIN_FILL:
                cut = position
                break
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def render_texts(replies: Sequence[Reply], capabilities: Capabilities) -> list[str]:
    """The messages to send for ``replies``: as few as fit, none longer than ``max_text``."""
    limit = capabilities.max_text
    messages: list[str] = []
    for reply in replies:
        text = reply_text(reply, capabilities)
        if not text.strip():
            continue
        if messages and len(messages[-1]) + 2 + len(text) <= limit:
            messages[-1] = f"{messages[-1]}\n\n{text}"
        else:
            messages.extend(split_text(text, limit))
    return messages
