"""Render a neutral :class:`~handlers.events.Reply` for a channel's capabilities.

Used where ``handlers/render.py`` (the citizen side's renderer) is not there to use: the
citizen messenger renders what it sends. Buttons become a numbered list in the text on a channel
without buttons (a typed number answers them), a reply keyboard's labels likewise, and a text
longer than the channel's limit is split at a line or word boundary (the buttons go with the
last part).
"""

from __future__ import annotations

from handlers.channels import Capabilities
from handlers.events import Reply


def numbered(labels: list[str]) -> str:
    return "\n".join(f"{n}. {label}" for n, label in enumerate(labels, start=1))


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at a newline or a space when
    there is one in the second half of a piece."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", limit // 2, limit)
        if cut < 0:
            cut = rest.rfind(" ", limit // 2, limit)
        if cut < 0:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    pieces.append(rest)
    return pieces


def render(reply: Reply, caps: Capabilities) -> list[Reply]:
    """``reply`` as the messages a channel with ``caps`` can show."""
    text = reply.text
    buttons = reply.buttons
    keyboard = reply.keyboard
    labels: list[str] = []
    if buttons and not caps.buttons:
        labels += [button.label for row in buttons for button in row]
        buttons = []
    if keyboard is not None and not caps.reply_keyboard:
        labels += list(keyboard.labels)
        keyboard = None
    if labels:
        text = f"{text}\n\n{numbered(labels)}" if text else numbered(labels)
    pieces = split_text(text, max(1, caps.max_text))
    out = [Reply(text=piece) for piece in pieces[:-1]]
    out.append(
        Reply(
            text=pieces[-1],
            buttons=buttons,
            keyboard=keyboard,
            remove_keyboard=reply.remove_keyboard and caps.reply_keyboard,
        )
    )
    return out


def render_all(replies: list[Reply], caps: Capabilities) -> list[Reply]:
    return [part for reply in replies for part in render(reply, caps)]
