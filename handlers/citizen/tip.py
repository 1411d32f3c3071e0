"""The crime tip-off: category, place, time, description, evidence, contact, summary.

One :class:`~handlers.citizen.core.Step` per state. Each step's prompt offers buttons; a typed
answer is read against them (see :mod:`handlers.citizen.answers`), and the free-text steps
(place, time, description) take the citizen's own words.
"""

from __future__ import annotations

from typing import Any

from handlers import media as media_rules
from handlers.citizen.base import (
    DRAFT_STATES,
    EDITABLE,
    IMAGE_REFUSALS,
    Prepared,
    State,
    Turn,
    quote,
)
from handlers.citizen.core import FlowCore, Step
from handlers.citizen.draft import (
    CAPTION_MAX,
    DESCRIPTION_MAX,
    DESCRIPTION_MIN,
    PLACE_QUERY_MAX,
    SHORT_TEXT_MAX,
    SUMMARY_PREVIEW,
    check_description,
    check_short_text,
)
from handlers.citizen.submit import Allowance, RateLimited, submit_report
from handlers.domain import CATEGORIES, CONTACT_MODES, DEFAULT_CONTACT_MODE, LOCALES, OCCURRED
from handlers.events import Keyboard, Message
from handlers.i18n import t
from handlers.intake import Origin
from handlers.places import normalize
from handlers.text import clean_text, substance
from storage.repositories import Media


def start_tip(flow: FlowCore, turn: Turn) -> None:
    if turn.has_draft and turn.state in DRAFT_STATES:
        turn.say("draft.resuming")
        flow.prompt(turn)
        return
    if turn.has_draft and turn.data.get("resume"):
        turn.state = State(turn.data.pop("resume"))
        turn.say("draft.resuming")
        flow.prompt(turn)
        return
    draft = turn.draft
    draft.clear()
    draft.update({"media": [], "contact_mode": DEFAULT_CONTACT_MODE})
    preset = turn.data.pop("preset_unit", None)
    if preset in flow.catalogue.by_code:
        draft["unit_code"] = preset
        draft["unit_preset"] = True
    turn.state = State.CATEGORY
    flow.prompt(turn)


class Category(Step):
    state = State.CATEGORY

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        buttons = [turn.button(f"cat.{key}", f"cat:{key}") for key in CATEGORIES]
        rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
        turn.say("tip.category.ask").buttons = [*rows, [turn.button("common.cancel", "x")]]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "cat" or arg not in CATEGORIES:
            return False
        turn.draft["category"] = arg
        flow.advance(turn, State.PLACE)
        return True

    async def on_text(self, flow: FlowCore, turn: Turn, text: str) -> bool:
        """A category named in the other language, or by its key."""
        wanted = normalize(text[:100])
        for key in CATEGORIES:
            labels = {normalize(t(loc, f"cat.{key}")) for loc in LOCALES}
            if wanted in labels or wanted == key:
                turn.draft["category"] = key
                flow.advance(turn, State.PLACE)
                return True
        return False


class Place(Step):
    state = State.PLACE
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        draft = turn.draft
        if draft.get("unit_preset") and draft.get("unit_code") in flow.catalogue.by_code:
            name = flow.catalogue.by_code[draft["unit_code"]].name
            turn.say("place.preset", name=name).buttons = [
                [turn.button("place.keep", "pl:keep")],
                [turn.button("place.dont_know", "pl:none")],
                [turn.button("common.cancel", "x")],
            ]
            return
        turn.say("place.ask").keyboard = Keyboard(
            request_location=t(turn.locale, "place.share_location"),
            labels=(t(turn.locale, "place.dont_know"),),
        )

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        draft = turn.draft
        if action == "u":
            unit = flow.catalogue.by_code.get(arg)
            if unit is None:
                return False
            draft["unit_code"] = unit.code
            for name in ("place_unknown", "unit_preset"):
                draft.pop(name, None)
            turn.drop_keyboard(turn.say("place.saved", name=unit.name))
            flow.advance(turn, State.WHEN)
            return True
        if action == "pl" and arg == "none":
            self.set_unknown(flow, turn)
            return True
        if action == "pl" and arg == "keep" and draft.get("unit_code"):
            flow.advance(turn, State.WHEN)
            return True
        return False

    def set_unknown(self, flow: FlowCore, turn: Turn) -> None:
        draft = turn.draft
        for name in ("unit_code", "latitude", "longitude", "unit_preset"):
            draft.pop(name, None)
        draft["place_unknown"] = True
        turn.drop_keyboard(turn.say("place.unknown_saved"))
        flow.advance(turn, State.WHEN)

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        if message.location is not None:
            draft = turn.draft
            draft["latitude"] = message.location.latitude
            draft["longitude"] = message.location.longitude
            for name in ("unit_code", "place_unknown", "unit_preset"):
                draft.pop(name, None)
            unit = flow.locate(message.location.latitude, message.location.longitude)
            if unit is not None:
                draft["unit_code"] = unit
                reply = turn.say("place.location_unit", name=flow.catalogue.by_code[unit].name)
            else:
                reply = turn.say("place.location_saved")
            turn.drop_keyboard(reply)
            flow.advance(turn, State.WHEN)
            return
        if flow.wrong_type(turn, message, expects="place"):
            flow.prompt(turn)
            return
        text = clean_text(message.text or "")
        if normalize(text) == normalize(t(turn.locale, "place.dont_know")):
            self.set_unknown(flow, turn)
            return
        if await flow.typed_choice(turn, text, fuzzy=False):
            return
        if len(text) > PLACE_QUERY_MAX:
            turn.say("err.too_long", limit=PLACE_QUERY_MAX)
            flow.prompt(turn)
            return
        matches = flow.places.search(text, limit=5) if substance(text) else []
        turn.conversation.step += 1
        dont_know = [turn.button("place.dont_know", "pl:none")]
        if not matches:
            turn.say("place.no_match", query=quote(text)).buttons = [dont_know]
            return
        reply = turn.say("place.pick")
        reply.buttons = [[turn.button("place.match", f"u:{m.code}", name=m.name)] for m in matches]
        reply.buttons.append(dont_know)


class When(Step):
    state = State.WHEN

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("when.ask").buttons = [
            [turn.button("when.now", "when:now"), turn.button("when.today", "when:today")],
            [
                turn.button("when.earlier", "when:earlier"),
                turn.button("when.unknown", "when:unknown"),
            ],
            [turn.button("common.cancel", "x")],
        ]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "when" or arg not in OCCURRED:
            return False
        if arg == "earlier":
            turn.state = State.WHEN_TEXT
            flow.prompt(turn)
            return True
        turn.draft["occurred"] = arg
        turn.draft.pop("occurred_text", None)
        flow.advance(turn, State.DESCRIPTION)
        return True

    async def on_text(self, flow: FlowCore, turn: Turn, text: str) -> bool:
        """A time in the citizen's own words ("tối qua khoảng 21 giờ") is kept as they wrote it."""
        return set_when_text(flow, turn, text, quiet=True)


def set_when_text(flow: FlowCore, turn: Turn, text: str, *, quiet: bool = False) -> bool:
    problem = check_short_text(text)
    if problem is not None:
        if quiet and problem == "err.no_words":
            return False
        turn.say(problem, limit=SHORT_TEXT_MAX)
        flow.prompt(turn)
        return True
    turn.draft["occurred"] = "earlier"
    turn.draft["occurred_text"] = text
    flow.advance(turn, State.DESCRIPTION)
    return True


class WhenText(Step):
    state = State.WHEN_TEXT
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("when.ask_text").buttons = [[turn.button("common.cancel", "x")]]

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        if flow.wrong_type(turn, message, expects="text"):
            flow.prompt(turn)
            return
        text = clean_text(message.text or "")
        if await flow.typed_choice(turn, text, fuzzy=False):
            return
        flow.remember_answer(turn, message, "occurred_text")
        set_when_text(flow, turn, text)


class Description(Step):
    state = State.DESCRIPTION
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("desc.ask", minimum=DESCRIPTION_MIN, limit=DESCRIPTION_MAX).buttons = [
            [turn.button("common.cancel", "x")]
        ]

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        if flow.wrong_type(turn, message, expects="text"):
            flow.prompt(turn)
            return
        text = clean_text(message.text or "")
        if await flow.typed_choice(turn, text, fuzzy=False):
            return
        problem = check_description(text)
        if problem is not None:
            turn.say(problem, limit=DESCRIPTION_MAX, length=len(text), minimum=DESCRIPTION_MIN)
            flow.prompt(turn)
            return
        turn.draft["description"] = text
        flow.remember_answer(turn, message, "description")
        flow.advance(turn, State.EVIDENCE)


class Evidence(Step):
    state = State.EVIDENCE

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        count = len(turn.draft.get("media", []))
        rows = [[turn.button("ev.done" if count else "ev.skip", "ev:done")]]
        if count:
            rows.append([turn.button("ev.clear", "ev:clear")])
        turn.say("ev.ask", limit=flow.settings.max_media).buttons = [
            *rows,
            [turn.button("common.cancel", "x")],
        ]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "ev" or arg not in ("done", "clear"):
            return False
        if arg == "done":
            flow.advance(turn, State.CONTACT)
            return True
        media = turn.draft.get("media", [])
        await Media(turn.session).delete_blobs(m.get("blob_id") for m in media)
        turn.draft["media"] = []
        turn.say("ev.cleared")
        flow.prompt(turn)
        return True

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        if message.attachments:
            await self.take_files(flow, turn, message, prepared)
            return
        if message.unsupported:
            turn.say("err.unsupported")
        elif message.location is not None:
            turn.say("ev.location_not_evidence")
        else:
            text = clean_text(message.text or "")
            if await flow.typed_choice(turn, text, fuzzy=True):
                return
            if substance(text):
                flow.miss(turn, text)
            turn.say("ev.expecting_media")
        flow.prompt(turn)

    async def take_files(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        items: list[dict[str, Any]] = turn.draft.setdefault("media", [])
        caption = clean_text(message.text or "")[:CAPTION_MAX] or None
        for attachment in message.attachments:
            if len(items) >= flow.settings.max_media:
                turn.say("ev.limit", limit=flow.settings.max_media)
                break
            if attachment.size is not None and attachment.size > media_rules.MAX_DOWNLOAD_BYTES:
                turn.say("ev.too_large", limit_mb=media_rules.MAX_DOWNLOAD_BYTES // (1024 * 1024))
                continue
            cleaned = prepared.get(attachment.file_ref)
            kind: str
            if isinstance(cleaned, media_rules.CleanFile):
                kind = attachment.kind if attachment.kind != "photo" else "document"
            elif isinstance(cleaned, media_rules.CleanImage):
                kind = "photo"
            else:  # refused, or never fetched: nothing uncleaned is kept by reference
                turn.say(IMAGE_REFUSALS.get(str(cleaned), "ev.failed"))
                continue
            blob = await Media(turn.session).add_blob(
                content=cleaned.content, mime=cleaned.mime, sha256=cleaned.sha256
            )
            items.append(
                {
                    "kind": kind,
                    "blob_id": blob.id,
                    "mime": cleaned.mime,
                    "size": len(cleaned.content),
                    "caption": caption,
                }
            )
            caption = None
        turn.say("ev.received", count=len(items))
        flow.prompt(turn)


class Contact(Step):
    state = State.CONTACT

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        current = turn.draft.get("contact_mode", DEFAULT_CONTACT_MODE)
        rows = [
            [turn.button(f"contact.{mode}", f"ctc:{mode}", mark="✓ " if mode == current else "")]
            for mode in ("relay", "none", "phone")
        ]
        turn.say("contact.ask").buttons = [*rows, [turn.button("common.cancel", "x")]]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "ctc" or arg not in CONTACT_MODES:
            return False
        if arg == "phone":
            turn.state = State.CONTACT_PHONE
            flow.prompt(turn)
            return True
        turn.draft["contact_mode"] = arg
        turn.draft.pop("phone", None)
        flow.advance(turn, State.SUMMARY)
        return True


class ContactPhone(Step):
    state = State.CONTACT_PHONE
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("contact.ask_phone").keyboard = Keyboard(
            request_contact=t(turn.locale, "contact.share_button"),
            labels=(t(turn.locale, "contact.back"),),
        )

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        if message.contact is not None:
            if not message.contact.is_own:
                turn.say("contact.not_own")
                flow.prompt(turn)
                return
            phone = clean_text(message.contact.phone)[:32]
            turn.draft["contact_mode"] = "phone"
            turn.draft["phone"] = flow.keyring.encrypt({"phone": phone})
            turn.drop_keyboard(turn.say("contact.phone_saved"))
            flow.advance(turn, State.SUMMARY)
            return
        text = clean_text(message.text or "")
        if text and normalize(text) == normalize(t(turn.locale, "contact.back")):
            turn.drop_keyboard(turn.say("contact.back_done"))
            turn.state = State.CONTACT
            flow.prompt(turn)
            return
        if text and await flow.typed_choice(turn, text, fuzzy=False):
            return
        if not flow.wrong_type(turn, message, expects="contact"):
            turn.say("contact.use_button")
        flow.prompt(turn)


class Summary(Step):
    state = State.SUMMARY

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("summary.text", **summary_values(flow, turn)).buttons = [
            [turn.button("summary.confirm", "sum:ok")],
            [turn.button("summary.edit", "sum:edit"), turn.button("common.cancel", "x")],
        ]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "sum":
            return False
        if arg == "ok":
            await submit_tip(flow, turn)
        elif arg == "edit":
            turn.state = State.EDIT
            flow.prompt(turn)
        elif arg == "cancel":  # the button of older summaries
            await flow.cancel(turn)
        else:
            return False
        return True


class Edit(Step):
    state = State.EDIT

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("edit.ask").buttons = [
            [turn.button(f"edit.{name}", f"edit:{name}")] for name in EDITABLE
        ] + [[turn.button("edit.back", "edit:back")]]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "edit":
            return False
        if arg == "back":
            turn.state = State.SUMMARY
            flow.prompt(turn)
            return True
        target = EDITABLE.get(arg)
        if target is None:
            return False
        turn.draft["editing"] = True
        turn.state = target
        flow.prompt(turn)
        return True


def summary_values(flow: FlowCore, turn: Turn) -> dict[str, str]:
    draft = turn.draft
    loc = turn.locale
    category = draft.get("category")
    if draft.get("unit_code") in flow.catalogue.by_code:
        place = flow.catalogue.by_code[draft["unit_code"]].name
    elif draft.get("latitude") is not None:
        place = t(loc, "summary.place_location")
    else:
        place = t(loc, "summary.place_unknown")
    occurred = draft.get("occurred", "unknown")
    when = t(loc, f"when.{occurred}")
    if occurred == "earlier" and draft.get("occurred_text"):
        when = f"{when}: {draft['occurred_text']}"
    description = draft.get("description", "")
    if len(description) > SUMMARY_PREVIEW:
        description = description[:SUMMARY_PREVIEW] + "…"
    mode = draft.get("contact_mode", DEFAULT_CONTACT_MODE)
    return {
        "category": t(loc, f"cat.{category}") if category in CATEGORIES else "—",
        "place": place,
        "when": when,
        "description": description or "—",
        "evidence": t(loc, "summary.evidence_count", count=len(draft.get("media", []))),
        "contact": t(loc, f"contact.{mode}", mark=""),
    }


async def submit_tip(flow: FlowCore, turn: Turn) -> None:
    missing = turn.typed_draft.missing()
    if missing:
        turn.state = EDITABLE[missing[0]]
        turn.say("summary.missing")
        flow.prompt(turn)
        return
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
    except RateLimited as exc:
        turn.say("tip.rate_limited", minutes=exc.minutes)
        flow.prompt(turn)
        return
    for name in ("draft", "resume", "last_answer"):
        turn.data.pop(name, None)
    turn.state = State.IDLE
    reply = turn.say("tip.submitted", code=submitted.code, pin=submitted.pin)
    turn.drop_keyboard(reply)
    flow.restore_stashed(turn)
    flow.show_menu(turn)


STEPS: tuple[Step, ...] = (
    Category(),
    Place(),
    When(),
    WhenText(),
    Description(),
    Evidence(),
    Contact(),
    ContactPhone(),
    Summary(),
    Edit(),
)
