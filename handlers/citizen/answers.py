"""Typed answers: what a citizen types at a step that offers choices.

A prompt's choices are kept on the conversation as they were rendered (number, button data,
label). A typed answer picks one of them by:

1. its number (``"2"``), as :func:`handlers.render.number_buttons` numbers them, ``0`` being
   the way out;
2. its words, with or without accents, in any case, with small typos
   (:func:`handlers.places.pick_label`);
3. the obvious words for yes, no, skip, done and cancel in Vietnamese and English
   (``answers.words.*`` in the catalogue), for the choices that mean them.

A typed answer then goes through the very same handling as a press of that button.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from handlers.domain import LOCALES
from handlers.events import Button
from handlers.i18n import t
from handlers.places import fold, pick_label
from handlers.render import WAY_OUT_NUMBER, number_buttons

#: What typing "0" or a cancel word means, whatever the step offers.
WAY_OUT = "way_out"
KINDS = ("yes", "no", "skip", "done", "cancel")

#: Which plain words each choice answers to, by its action (``"<action>:<arg>"``).
MEANINGS: dict[str, tuple[str, ...]] = {
    "x": ("cancel",),
    "sum:ok": ("yes", "done"),
    "ev:done": ("done", "skip", "no"),
    "acc:send": ("skip", "no", "done", "yes"),
    "pl:keep": ("yes",),
    "pl:none": ("skip",),
    "when:unknown": ("skip",),
    "inj:none": ("no",),
    "inj:unknown": ("skip",),
    "ctc:none": ("no",),
    "edit:back": ("done",),
}


@cache
def words(kind: str) -> frozenset[str]:
    """The folded words meaning ``kind`` (yes, no...), in every locale."""
    found: set[str] = set()
    for locale in LOCALES:
        found.update(fold(word) for word in t(locale, f"answers.words.{kind}").split("|"))
    return frozenset(word for word in found if word)


def record(buttons: list[list[Button]]) -> list[list[Any]]:
    """The choices to keep for the next typed answer: ``[number, data, label]`` each."""
    return [[number, button.data, button.label] for number, button in number_buttons(buttons)]


def _meaning(data: str) -> tuple[str, ...]:
    parts = data.split(":", 1)
    return MEANINGS.get(parts[1] if len(parts) == 2 else "", ())


def pick(text: str, choices: Iterable[list[Any]], *, fuzzy: bool = True) -> str | None:
    """The button data ``text`` chooses, :data:`WAY_OUT`, or ``None`` when it names none.

    With ``fuzzy=False`` (a step that also takes free text) only a number, the way out and a
    label typed in full are read as a choice; anything else is the step's own free text.
    """
    options = [c for c in choices if isinstance(c, list) and len(c) == 3]
    folded = fold(text)
    if not folded:
        return None
    if folded.isdigit():
        number = int(folded)
        if number == WAY_OUT_NUMBER:
            return WAY_OUT
        return next((str(c[1]) for c in options if c[0] == number), None)
    if folded in words("cancel"):
        return WAY_OUT
    exact = [str(c[1]) for c in options if fold(str(c[2])) == folded]
    if len(exact) == 1:
        return exact[0]
    if not fuzzy:
        return None
    for kind in KINDS:
        if folded in words(kind):
            meant = [str(c[1]) for c in options if kind in _meaning(str(c[1]))]
            if len(meant) == 1:
                return meant[0]
    index = pick_label(text, [str(c[2]) for c in options])
    return str(options[index][1]) if index is not None else None
