"""The buttons on a report card, by report state and by the picker being shown.

Callback data is ``r:<action>:<report id>[:<argument>]``, at most 64 bytes. The meaning of a
press is never trusted from the data alone: :mod:`handlers.triage` checks that the card was
posted for that report in that chat, and that the presser may act there.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.domain import OUTCOMES
from handlers.events import Button
from handlers.i18n import t

OPEN_STATUSES = frozenset({"new", "assigned", "in_progress", "needs_info", "acknowledged"})
CLOSED_STATUSES = frozenset({"resolved", "rejected"})

#: Picker modes a card can show instead of its actions.
MODES = ("outcomes", "transfer", "arrest")


def data(action: str, report_id: int, arg: str | None = None) -> str:
    value = f"r:{action}:{report_id}" + (f":{arg}" if arg is not None else "")
    if len(value.encode()) > 64:
        raise ValueError(f"callback data over 64 bytes: {value!r}")
    return value


REWARDABLE = frozenset({"clarified", "handled"})


def action_buttons(
    *,
    report_id: int,
    kind: str,
    status: str,
    locale: str,
    outcome: str | None = None,
    reward_status: str | None = None,
) -> list[list[Button]]:
    """The card's own actions for its current state."""

    def b(key: str, action: str) -> Button:
        return Button(t(locale, f"card.btn.{key}"), data(action, report_id))

    if status == "resolved" and outcome in REWARDABLE and reward_status in (None, "rejected"):
        return [[Button(t(locale, "reward.btn.propose"), data("rwd", report_id))]]
    if status in CLOSED_STATUSES:
        return []
    if kind == "emergency":
        if status == "new":
            return [[b("ack", "ack")], [b("resolve", "res"), b("ask", "ask")]]
        return [[b("resolve", "res"), b("ask", "ask")], [b("transfer", "xfer")]]
    first: list[Button] = []
    if status == "new":
        first.append(b("claim", "claim"))
    if status in ("assigned", "needs_info"):
        first.append(b("progress", "prog"))
    first += [b("ask", "ask"), b("transfer", "xfer")]
    return [first, [b("resolve", "res"), b("reject", "rej"), b("duplicate", "dup")]]


def picker_buttons(
    *, report_id: int, mode: str, locale: str, queues: Sequence[tuple[str, str]] = ()
) -> list[list[Button]]:
    """An outcome, transfer-target or yes/no picker, with a way back."""
    back = [Button(t(locale, "card.btn.back"), data("back", report_id))]
    if mode == "outcomes":
        rows = [
            [Button(t(locale, f"outcome.{o}"), data("out", report_id, o))]
            for o in OUTCOMES
            if o != "duplicate"
        ]
        rows.append([Button(t(locale, "outcome.duplicate"), data("dup", report_id))])
        return [*rows, back]
    if mode == "transfer":
        buttons = [Button(name, data("xto", report_id, key)) for key, name in queues]
        rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
        return [*rows, back]
    if mode == "arrest":
        return [
            [
                Button(t(locale, "card.btn.yes"), data("arr", report_id, "y")),
                Button(t(locale, "card.btn.no"), data("arr", report_id, "n")),
            ]
        ]
    raise ValueError(f"unknown picker mode {mode!r}")


def parse(value: str) -> tuple[str, int, str | None] | None:
    """``r:<action>:<id>[:<arg>]`` → parts; ``None`` for anything else (forged, garbled)."""
    if not value.isascii() or len(value) > 64:
        return None
    parts = value.split(":")
    if len(parts) not in (3, 4) or parts[0] != "r" or not parts[1].isalpha():
        return None
    if not parts[2].isdigit() or len(parts[2]) > 18:
        return None
    arg = parts[3] if len(parts) == 4 else None
    if arg is not None and not all(c.isalnum() or c in "-_" for c in arg):
        return None
    return parts[1], int(parts[2]), arg
