"""The traffic-accident emergency: the numbers first, then place, injured people, one photo.

Every step takes a typed answer as well as its buttons: "2 người bị thương", "không",
"bỏ qua".
"""

from __future__ import annotations

import re

from handlers import media as media_rules
from handlers.citizen.base import (
    EMERGENCY_STATES,
    IMAGE_REFUSALS,
    Prepared,
    State,
    Turn,
    is_image,
)
from handlers.citizen.core import FlowCore, Step
from handlers.citizen.draft import CAPTION_MAX, check_short_text
from handlers.citizen.submit import Allowance, RateLimited, submit_report
from handlers.domain import DEFAULT_CONTACT_MODE
from handlers.events import Keyboard, Message
from handlers.i18n import t
from handlers.intake import Origin
from handlers.places import fold
from handlers.text import clean_text
from storage.repositories import Media

#: Injured-people answers: button argument → (injured, approximate count).
INJURED = {
    "none": ("none", 0),
    "1": ("yes", 1),
    "2": ("yes", 2),
    "3": ("yes", 3),
    "unknown": ("unknown", None),
}
#: A typed accident place names a commune when a unit name is in it (not merely fuzzy).
PLACE_MATCH_SURE = 80.0
_COUNT = re.compile(r"\b(\d{1,3})\b")


def start_accident(flow: FlowCore, turn: Turn) -> None:
    """The emergency numbers come first, before any question."""
    turn.say("acc.numbers")
    if turn.has_draft and turn.draft.get("kind") == "emergency":
        turn.state = State(turn.data.pop("resume", None) or turn.state)
        if turn.state not in EMERGENCY_STATES:
            turn.state = State.ACC_PLACE
        flow.prompt(turn)
        return
    flow.stash_tip(turn)
    draft = turn.draft
    draft.clear()
    draft.update({"kind": "emergency", "media": [], "contact_mode": DEFAULT_CONTACT_MODE})
    preset = turn.data.pop("preset_unit", None)
    if preset in flow.catalogue.by_code:
        draft["unit_code"] = preset
    turn.state = State.ACC_PLACE
    flow.prompt(turn)


class AccidentPlace(Step):
    state = State.ACC_PLACE
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("acc.ask_place").keyboard = Keyboard(
            request_location=t(turn.locale, "acc.share_location"),
            labels=(t(turn.locale, "common.cancel"),),
        )

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        draft = turn.draft
        text = clean_text(message.text or "")
        if text and fold(text) == fold(t(turn.locale, "common.cancel")):
            await flow.cancel(turn)
            return
        if message.location is not None:
            draft["latitude"] = message.location.latitude
            draft["longitude"] = message.location.longitude
            unit = flow.locate(message.location.latitude, message.location.longitude)
            if unit is not None:
                draft["unit_code"] = unit
            turn.drop_keyboard(turn.say("acc.location_saved"))
        else:
            if flow.wrong_type(turn, message, expects="place"):
                flow.prompt(turn)
                return
            if await flow.typed_choice(turn, text, fuzzy=False):
                return
            problem = check_short_text(text)
            if problem is not None:
                turn.say(problem, limit=300)
                flow.prompt(turn)
                return
            draft["place_text"] = text
            flow.remember_answer(turn, message, "place_text")
            matches = flow.places.search(text, limit=1)
            if matches and matches[0].score >= PLACE_MATCH_SURE:
                draft["unit_code"] = matches[0].code
            turn.drop_keyboard(turn.say("acc.place_saved"))
        turn.state = State.ACC_INJURED
        flow.prompt(turn)


class AccidentInjured(Step):
    state = State.ACC_INJURED

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("acc.ask_injured").buttons = [
            [turn.button("acc.inj_none", "inj:none")],
            [
                turn.button("acc.inj_1", "inj:1"),
                turn.button("acc.inj_2", "inj:2"),
                turn.button("acc.inj_3", "inj:3"),
            ],
            [turn.button("acc.inj_unknown", "inj:unknown")],
        ]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "inj" or arg not in INJURED:
            return False
        self.set_injured(flow, turn, arg)
        return True

    def set_injured(self, flow: FlowCore, turn: Turn, arg: str) -> None:
        turn.draft["injured"], turn.draft["injured_count"] = INJURED[arg]
        turn.state = State.ACC_PHOTO
        flow.prompt(turn)

    async def on_text(self, flow: FlowCore, turn: Turn, text: str) -> bool:
        """A count in words ("2 người bị thương", "khoảng 5 người")."""
        found = _COUNT.search(text)
        if found is None:
            return False
        count = int(found.group(1))
        self.set_injured(flow, turn, "none" if count == 0 else str(min(count, 3)))
        return True


class AccidentPhoto(Step):
    state = State.ACC_PHOTO

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("acc.ask_photo").buttons = [[turn.button("acc.send_now", "acc:send")]]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "acc" or arg != "send":
            return False
        await submit_emergency(flow, turn)
        return True

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        images = [a for a in message.attachments if is_image(a)]
        if not images:
            if flow.wrong_type(turn, message, expects="button"):
                flow.prompt(turn)
                return
            text = clean_text(message.text or "")
            if await flow.typed_choice(turn, text, fuzzy=True):
                return
            flow.miss(turn, text)
            turn.say("acc.photo_expected")
            flow.prompt(turn)
            return
        cleaned = prepared.get(images[0].file_ref)
        if not isinstance(cleaned, media_rules.CleanImage):
            turn.say(IMAGE_REFUSALS.get(str(cleaned), "ev.failed"))
            flow.prompt(turn)
            return
        blob = await Media(turn.session).add_blob(
            content=cleaned.content, mime=cleaned.mime, sha256=cleaned.sha256
        )
        turn.draft["media"] = [
            {
                "kind": "photo",
                "blob_id": blob.id,
                "mime": cleaned.mime,
                "size": len(cleaned.content),
                "caption": clean_text(message.text or "")[:CAPTION_MAX] or None,
            }
        ]
        await submit_emergency(flow, turn)


async def submit_emergency(flow: FlowCore, turn: Turn) -> None:
    try:
        submitted = await submit_report(
            turn.session,
            draft=turn.draft,
            origin=Origin(turn.sender_key, turn.channel, turn.chat_id, turn.locale),
            keyring=flow.keyring,
            pins=flow.pins,
            intake=flow.intake,
            allowance=Allowance(flow.settings.report_rate_limit, flow.settings.report_rate_window),
            now=turn.now,
            pin=turn.prepared_pin,
        )
    except RateLimited:
        turn.say("acc.rate_limited")
        flow.prompt(turn)
        return
    for name in ("draft", "resume", "last_answer"):
        turn.data.pop(name, None)
    turn.state = State.IDLE
    reply = turn.say("acc.submitted", code=submitted.code, pin=submitted.pin)
    turn.drop_keyboard(reply)
    flow.restore_stashed(turn)
    flow.show_menu(turn)


STEPS: tuple[Step, ...] = (AccidentPlace(), AccidentInjured(), AccidentPhoto())
