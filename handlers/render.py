"""One neutral reply, rendered for a channel's capabilities.

The flows produce :class:`~handlers.events.Reply` objects as if every channel had everything.
:func:`render` turns them into what one channel can show:

- inline buttons are kept where the channel has them; elsewhere they become a numbered list at
  the end of the text (the same numbers a typed answer is read by: see :func:`number_buttons`);
- a reply keyboard is dropped where the channel has none, its plain labels listed as words the
  citizen can type;
- a text longer than the channel's limit is split at line or word breaks, and the buttons go
  with the last part; an image (``Reply.photo``) with the first.
"""

from __future__ import annotations

from handlers.channels import Capabilities
from handlers.events import Button, Reply

#: The number a way-out button (cancel) is read by, on every channel.
WAY_OUT_NUMBER = 0
#: The action of a way-out button (``"<step>:x"``).
WAY_OUT_ACTION = "x"


def is_way_out(button: Button) -> bool:
    parts = button.data.split(":")
    return len(parts) >= 2 and parts[1] == WAY_OUT_ACTION


def number_buttons(buttons: list[list[Button]]) -> list[tuple[int, Button]]:
    """Each button with its number: 1, 2, ... in reading order, and 0 for the way out."""
    numbered: list[tuple[int, Button]] = []
    number = 0
    for row in buttons:
        for button in row:
            if is_way_out(button):
                numbered.append((WAY_OUT_NUMBER, button))
            else:
                number += 1
                numbered.append((number, button))
    return numbered


def numbered_text(buttons: list[list[Button]]) -> str:
    """The choices as lines of text, ``"1. Label"``, the way out last."""
    numbered = number_buttons(buttons)
    ordered = [item for item in numbered if item[0] != WAY_OUT_NUMBER]
    ordered += [item for item in numbered if item[0] == WAY_OUT_NUMBER]
    return "\n".join(f"{number}. {button.label}" for number, button in ordered)


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut at a line break or a space.

    A line break is preferred only in the second half of a part: one early on (a heading's)
    would leave a short first part and one message more than needed."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", limit // 2, limit + 1)
        if cut <= 0:  # else the last space or line break
            cut = max(rest.rfind(" ", 0, limit + 1), rest.rfind("\n", 0, limit + 1))
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    parts.append(rest)
    return [part for part in parts if part] or [""]


def render(replies: list[Reply], caps: Capabilities) -> list[Reply]:
    """The replies as ``caps``'s channel can show them (see the module docstring)."""
    rendered: list[Reply] = []
    for reply in replies:
        text = reply.text
        buttons = reply.buttons
        keyboard = reply.keyboard
        remove_keyboard = reply.remove_keyboard
        if buttons and not caps.buttons:
            text = f"{text}\n\n{numbered_text(buttons)}"
            buttons = []
        if not caps.reply_keyboard:
            if keyboard is not None and keyboard.labels:
                text = f"{text}\n" + "\n".join(f"• {label}" for label in keyboard.labels)
            keyboard = None
            remove_keyboard = False
        parts = split_text(text, caps.max_text)
        rendered.extend(Reply(text=part) for part in parts[:-1])
        rendered.append(
            Reply(
                text=parts[-1],
                buttons=buttons,
                keyboard=keyboard,
                remove_keyboard=remove_keyboard,
            )
        )
        # An image goes with the first part (its caption); the rest follows as text.
        rendered[len(rendered) - len(parts)].photo = reply.photo
    return rendered
