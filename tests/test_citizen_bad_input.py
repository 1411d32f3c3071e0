"""At every step, bad input gets a clear answer and the draft stays exactly as it was."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from handlers.citizen import State
from handlers.events import Attachment, GeoPoint
from storage.models import Conversation
from tests.driver import Citizen, citizen, label, sync_units

L = "vi"

#: How to reach each step from a fresh /start.
PATHS: dict[State, list[tuple[str, str]]] = {
    State.CATEGORY: [("press", "menu.tip")],
}
PATHS[State.PLACE] = [*PATHS[State.CATEGORY], ("press", "cat.theft")]
PATHS[State.WHEN] = [*PATHS[State.PLACE], ("say", "place.dont_know")]
PATHS[State.WHEN_TEXT] = [*PATHS[State.WHEN], ("press", "when.earlier")]
PATHS[State.DESCRIPTION] = [*PATHS[State.WHEN], ("press", "when.today")]
PATHS[State.EVIDENCE] = [*PATHS[State.DESCRIPTION], ("text", "Trộm xe máy trước cổng chợ")]
PATHS[State.CONTACT] = [*PATHS[State.EVIDENCE], ("press", "ev.skip")]
PATHS[State.CONTACT_PHONE] = [*PATHS[State.CONTACT], ("press", "contact.phone")]
PATHS[State.SUMMARY] = [*PATHS[State.CONTACT], ("press", "contact.none")]
PATHS[State.EDIT] = [*PATHS[State.SUMMARY], ("press", "summary.edit")]
PATHS[State.STATUS_CODE] = [("press", "menu.status")]


async def reach(c: Citizen, state: State) -> None:
    await c.command("start")
    for kind, value in PATHS[state]:
        if kind == "press":
            values = {"mark": ""} if value.startswith("contact.") else {}
            labels = [label(L, value, **values), label(L, value, mark="✓ ")]
            button = next(b for b in c.buttons() if b.label in labels)
            await c.press_data(button.data)
        elif kind == "say":
            await c.say(label(L, value))
        else:
            await c.say(value)


async def snapshot(session_factory) -> tuple[str, dict, int]:
    async with session_factory() as session:
        conversation = await session.scalar(select(Conversation))
        assert conversation is not None
        return conversation.state, conversation.data.get("draft", {}), conversation.step


BAD_INPUTS: dict[str, dict[str, object]] = {
    "sticker": {"unsupported": "sticker"},
    "long_text": {"text": "ơ" * 5000},
    "emoji_only": {"text": "😀🚓🔥"},
    "odd_unicode": {"text": "\u202e\u200b\u0000"},
    "location": {"location": GeoPoint(10.37, 105.43)},
    "photo_where_unexpected": {"attachments": (Attachment("photo", "P1", 10, "image/jpeg"),)},
}
#: Inputs that a step legitimately accepts, so they are not "bad" there.
ACCEPTED = {
    (State.PLACE, "location"),
    (State.EVIDENCE, "photo_where_unexpected"),
}
STEPS = [s for s in PATHS]


@pytest.fixture
async def session_factory(session_factory):
    await sync_units(session_factory)
    return session_factory


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("state", STEPS, ids=[s.value for s in STEPS])
async def test_bad_input_at_every_step(session_factory, state):
    c = citizen(session_factory, 4242)
    await reach(c, state)
    before_state, before_draft, _ = await snapshot(session_factory)
    assert before_state == state.value
    for name, fields in BAD_INPUTS.items():
        if (state, name) in ACCEPTED:
            continue
        outcome = await c.message(**fields)
        assert outcome is not None and outcome.replies, f"{state}/{name}: no answer"
        assert all(r.text.strip() for r in outcome.replies)
        after_state, after_draft, _ = await snapshot(session_factory)
        assert (after_state, after_draft) == (before_state, before_draft), f"{state}/{name}"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("state", STEPS, ids=[s.value for s in STEPS])
async def test_forged_and_twice_pressed_buttons_at_every_step(session_factory, state):
    c = citizen(session_factory, 4343)
    await reach(c, state)
    before = await snapshot(session_factory)
    _, _, step = before
    forged = [
        "",
        "garbage",
        "x" * 64,
        f"{step}:cat:nonexistent",
        f"{step}:u:99999",
        f"{step}:sum:ok'; DROP TABLE reports;--",
        f"{step}:lang:fr",
        f"{step}:zz:1",
        "-1:cat:drugs",
        "ñ:cat:drugs",
        f"{step + 1000}:sum:ok",
        f"{step}:m:evil",
        "0:rel:" + "9" * 40,
        "0:rel:-1",
    ]
    for data in forged:
        outcome = await c.press_data(data)
        assert outcome is not None and outcome.notice, f"{state}/{data!r}: no notice"
        after_state, after_draft, _ = await snapshot(session_factory)
        assert (after_state, after_draft) == before[:2], f"{state}/{data!r}"
        before = (after_state, after_draft, 0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_button_pressed_twice_acts_once(session_factory):
    c = citizen(session_factory, 4444)
    await reach(c, State.CATEGORY)
    button = c.button(label(L, "cat.drugs"))
    await c.press_data(button.data)
    state, draft, _ = await snapshot(session_factory)
    again = await c.press_data(button.data)
    assert again is not None and again.notice == label(L, "err.button_stale")
    assert (await snapshot(session_factory))[:2] == (state, draft)
    assert draft["category"] == "drugs" and state == State.PLACE
