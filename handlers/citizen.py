"""The citizen's conversation: a crime tip-off, a status check, language and help.

The flow is a small state machine whose state lives in the ``conversations`` table and is saved
on every step, so a restart or a second worker continues where the citizen stopped. See
``handlers/citizen_flow.mmd`` for the diagram.

Each event is handled inside the caller's transaction: the processed update id, the draft and,
on confirmation, the report with its media, audit event, contact route and outbox message are
committed together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from config.catalogue import Catalogue
from config.rewards import PayoutInstructions
from handlers import media as media_rules
from handlers.domain import (
    CATEGORIES,
    CONTACT_MODES,
    DEFAULT_CONTACT_MODE,
    LOCALES,
    OCCURRED,
    REPORT_KIND_EMERGENCY,
    REPORT_KIND_TIP,
)
from handlers.events import (
    Attachment,
    Button,
    ButtonPress,
    Event,
    Keyboard,
    Message,
    Outcome,
    Reply,
)
from handlers.i18n import pick_locale, t
from handlers.intake import (
    IntakeSettings,
    Origin,
    Stored,
    officers_destination,
    store_report,
)
from handlers.places import PlaceIndex, normalize
from handlers.rewards import Rewards, RewardSettings, format_claim_code, format_vnd
from handlers.security import (
    Keyring,
    PinHasher,
    format_code,
    new_pin,
    parse_code,
    parse_pin,
)
from handlers.text import clean_text, substance
from storage.models import ContactRoute, Conversation, RelayMessage, Report
from storage.repositories import (
    Conversations,
    Media,
    Outbox,
    RateLimits,
    Reports,
)
from storage.types import utcnow

log = logging.getLogger(__name__)

DESCRIPTION_MIN = 10
DESCRIPTION_MAX = 4000
SHORT_TEXT_MAX = 300
PLACE_QUERY_MAX = 100
SUMMARY_PREVIEW = 800


class State(StrEnum):
    IDLE = "idle"
    LANGUAGE = "language"
    CATEGORY = "category"
    PLACE = "place"
    WHEN = "when"
    WHEN_TEXT = "when_text"
    DESCRIPTION = "description"
    EVIDENCE = "evidence"
    CONTACT = "contact"
    CONTACT_PHONE = "contact_phone"
    SUMMARY = "summary"
    EDIT = "edit"
    STATUS_CODE = "status_code"
    STATUS_PIN = "status_pin"
    RELAY = "relay"
    RELAY_CODE = "relay_code"
    RELAY_PIN = "relay_pin"
    ACC_PLACE = "acc_place"
    ACC_INJURED = "acc_injured"
    ACC_PHOTO = "acc_photo"


#: The tip's steps, in order; editing one from the summary returns to the summary.
TIP_STEPS = (
    State.CATEGORY,
    State.PLACE,
    State.WHEN,
    State.DESCRIPTION,
    State.EVIDENCE,
    State.CONTACT,
    State.SUMMARY,
)
EDITABLE = {
    "category": State.CATEGORY,
    "place": State.PLACE,
    "when": State.WHEN,
    "description": State.DESCRIPTION,
    "evidence": State.EVIDENCE,
    "contact": State.CONTACT,
}
#: States that belong to a tip draft (as opposed to side trips like a status check).
EMERGENCY_STATES = frozenset({State.ACC_PLACE, State.ACC_INJURED, State.ACC_PHOTO})
DRAFT_STATES = frozenset(
    {*TIP_STEPS, State.WHEN_TEXT, State.CONTACT_PHONE, State.EDIT, *EMERGENCY_STATES}
)
#: Side trips that return to the draft (or the menu) when done or cancelled.
SIDE_TRIPS = frozenset(
    {
        State.STATUS_CODE,
        State.STATUS_PIN,
        State.LANGUAGE,
        State.RELAY,
        State.RELAY_CODE,
        State.RELAY_PIN,
    }
)
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

#: How many of a citizen's latest update ids are kept to recognise a duplicate delivery.
SEEN_UPDATES = 64
RATE_REPORT = "report"
RATE_PIN_SENDER = "pin_sender"
RATE_PIN_CODE = "pin_code"


class DuplicateUpdate(Exception):
    """This channel update was handled before; the caller rolls back and sends nothing."""


class MediaFetcher(Protocol):
    async def fetch(self, attachment: Attachment) -> bytes: ...


class Locator(Protocol):
    """Finds the unit whose area holds a point (operator-supplied geometry)."""

    def locate(self, latitude: float, longitude: float) -> str | None: ...


@dataclass(frozen=True)
class CitizenSettings:
    default_locale: str = "vi"
    draft_ttl: timedelta = timedelta(days=7)
    report_rate_limit: int = 5
    report_rate_window: timedelta = timedelta(hours=1)
    pin_attempts_per_code: int = 5
    pin_attempts_per_sender: int = 10
    pin_attempt_window: timedelta = timedelta(minutes=15)
    max_media: int = 10


#: What the read-only phase prepared: for each image in the message, the cleaned image or the
#: reason it was refused; under :data:`PREPARED_PIN`, a new PIN and its slow hash.
Prepared = dict[str, Any]
PREPARED_PIN = "_pin"
#: Presses that may store a report (their PIN is hashed before the write transaction).
SUBMITTING_PRESSES = frozenset({("sum", "ok"), ("acc", "send")})


@dataclass
class _Turn:
    """One event being handled: the conversation, its draft and the replies so far."""

    session: AsyncSession
    conversation: Conversation
    sender_key: str
    channel: str
    chat_id: str
    data: dict[str, Any]
    outcome: Outcome = field(default_factory=Outcome)
    now: datetime = field(default_factory=utcnow)
    #: A PIN and its hash made before the write transaction, if this event may submit.
    prepared_pin: tuple[str, str] | None = None

    @property
    def locale(self) -> str:
        return self.conversation.locale or "vi"

    @property
    def state(self) -> State:
        try:
            return State(self.conversation.state)
        except ValueError:
            return State.IDLE

    @state.setter
    def state(self, value: State) -> None:
        self.conversation.state = value.value

    @property
    def draft(self) -> dict[str, Any]:
        draft = self.data.get("draft")
        if not isinstance(draft, dict):
            draft = {}
            self.data["draft"] = draft
        return draft

    @property
    def has_draft(self) -> bool:
        return isinstance(self.data.get("draft"), dict)

    def say(self, key: str, **values: Any) -> Reply:
        reply = Reply(text=t(self.locale, key, **values))
        self.outcome.replies.append(reply)
        return reply

    def button(self, key: str, action: str, **values: Any) -> Button:
        return Button(
            label=t(self.locale, key, **values), data=f"{self.conversation.step}:{action}"
        )

    def drop_keyboard(self, reply: Reply) -> None:
        """Remove the reply keyboard with ``reply``, if one is showing."""
        if self.data.get("kb"):
            reply.remove_keyboard = True

    def notice(self, key: str, *, alert: bool = False, **values: Any) -> None:
        self.outcome.notice = t(self.locale, key, **values)
        self.outcome.alert = alert


class CitizenFlow:
    """The use case behind every message a citizen sends in a private chat."""

    def __init__(
        self,
        *,
        settings: CitizenSettings,
        keyring: Keyring,
        pins: PinHasher,
        catalogue: Catalogue,
        places: PlaceIndex,
        locator: Locator | None = None,
        intake: IntakeSettings | None = None,
        instructions: PayoutInstructions | None = None,
    ) -> None:
        self.settings = settings
        self.locator = locator
        self.intake = intake or IntakeSettings()
        self.instructions = instructions or PayoutInstructions()
        self.keyring = keyring
        self.pins = pins
        self.catalogue = catalogue
        self.places = places
        self._dummy_pin_hash: str | None = None

    # ------------------------------------------------------------------ the two phases

    @staticmethod
    def needs_preparing(event: Event) -> bool:
        """Whether :meth:`prepare` has work: media to fetch, or a press that may submit."""
        if isinstance(event, ButtonPress):
            parsed = _parse_button(event.data)
            return parsed is not None and (parsed[1], parsed[2]) in SUBMITTING_PRESSES
        return bool(event.attachments)

    async def prepare(
        self, session: AsyncSession, event: Event, fetcher: MediaFetcher
    ) -> Prepared:
        """Read-only phase, outside the write transaction: fetch and clean evidence images.

        Downloading happens here so that the write transaction stays short.
        """
        prepared: Prepared = {}
        if isinstance(event, ButtonPress) or (isinstance(event, Message) and event.attachments):
            # The slow PIN hash is done here too, for a press that may submit a report.
            parsed = _parse_button(event.data) if isinstance(event, ButtonPress) else None
            if parsed is not None and (parsed[1], parsed[2]) in SUBMITTING_PRESSES:
                pin = new_pin()
                prepared[PREPARED_PIN] = (pin, await asyncio.to_thread(self.pins.hash, pin))
        if not isinstance(event, Message) or not event.attachments:
            return prepared
        keys = self.keyring.sender_keys(event.sender.channel, event.sender.user_id)
        conversation = await Conversations(session).get_any(keys)
        if conversation is None or conversation.state not in (
            State.EVIDENCE,
            State.ACC_PHOTO,
            State.RELAY,
        ):
            return prepared
        if conversation.state == State.ACC_PHOTO:
            pin = new_pin()
            prepared[PREPARED_PIN] = (pin, await asyncio.to_thread(self.pins.hash, pin))
        for attachment in event.attachments[: self.settings.max_media]:
            if not _is_image(attachment):
                continue
            try:
                media_rules.check_declared_size(attachment.size)
                raw = await fetcher.fetch(attachment)
                prepared[attachment.file_ref] = await asyncio.to_thread(
                    media_rules.clean_image, raw
                )
            except media_rules.MediaRejected as exc:
                prepared[attachment.file_ref] = exc.reason
            except Exception:  # a failed download must not lose the draft
                log.warning("evidence download failed", exc_info=True)
                prepared[attachment.file_ref] = "download_failed"
        return prepared

    async def handle(
        self, session: AsyncSession, event: Event, prepared: Prepared | None = None
    ) -> Outcome:
        """Handle one event inside the caller's transaction and return what to send back."""
        sender = event.sender
        key, *previous = self.keyring.sender_keys(sender.channel, sender.user_id)
        locale = pick_locale(sender.language_code, self.settings.default_locale)
        conversation = await Conversations(session).get_or_create(key, locale, previous)
        # A citizen's updates are handled in order, one at a time (per chat), so the update ids
        # kept on the conversation are enough to drop a duplicate delivery: no extra statement.
        seen = list((conversation.data or {}).get("seen") or [])
        if event.update_id in seen:
            raise DuplicateUpdate(event.update_id)
        turn = _Turn(
            session=session,
            conversation=conversation,
            sender_key=key,
            channel=sender.channel,
            chat_id=sender.chat_id,
            data=dict(conversation.data or {}),
        )
        turn.data["seen"] = [*seen, event.update_id][-SEEN_UPDATES:]
        await self._expire_draft(turn)
        turn.prepared_pin = (prepared or {}).get(PREPARED_PIN)
        if isinstance(event, ButtonPress):
            await self._on_button(turn, event.data)
        else:
            await self._on_message(turn, event, prepared or {})
        self._save(turn)
        return turn.outcome

    # ------------------------------------------------------------------ persistence

    def _save(self, turn: _Turn) -> None:
        for reply in turn.outcome.replies:
            if reply.keyboard is not None:
                turn.data["kb"] = True
            elif reply.remove_keyboard:
                turn.data["kb"] = False
        conversation = turn.conversation
        conversation.data = turn.data
        flag_modified(conversation, "data")
        conversation.updated_at = turn.now
        conversation.expires_at = turn.now + self.settings.draft_ttl if turn.has_draft else None

    async def _expire_draft(self, turn: _Turn) -> None:
        expires = turn.conversation.expires_at
        if turn.has_draft and expires is not None and expires <= turn.now:
            await self._discard_draft(turn)
            turn.say("draft.expired")

    async def _discard_draft(self, turn: _Turn) -> None:
        draft = turn.data.pop("draft", None)
        turn.data.pop("resume", None)
        if isinstance(draft, dict):
            blob_ids = [m.get("blob_id") for m in draft.get("media", []) if m.get("blob_id")]
            await Media(turn.session).delete_blobs(blob_ids)
        turn.state = State.IDLE

    # ------------------------------------------------------------------ messages

    async def _on_message(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if message.command is not None:
            await self._on_command(turn, message.command, message.args)
            return
        handler = self._message_handlers.get(turn.state)
        if handler is None:
            self._show_menu(turn)
            return
        await handler(self, turn, message, prepared)

    async def _on_command(self, turn: _Turn, command: str, args: str) -> None:
        command = command.lower()
        if command == "start":
            self._greet(turn, args)
        elif command == "help":
            self._side_trip(turn)
            turn.say("help.text")
            await self._resume(turn)
        elif command in ("language", "ngonngu"):
            self._side_trip(turn)
            turn.state = State.LANGUAGE
            self._prompt(turn)
        elif command in ("cancel", "huy"):
            await self._cancel(turn)
        elif command in ("status", "tracuu"):
            await self._start_status(turn, args)
        elif command in ("report", "tip", "tobao", "baotin"):
            self._start_tip(turn)
        elif command in ("accident", "tainan", "capcuu"):
            self._accident(turn)
        elif command in ("add", "bosung"):
            await self._start_add(turn, args)
        else:
            turn.say("err.unknown_command")
            self._prompt(turn)

    def _greet(self, turn: _Turn, payload: str) -> None:
        turn.say("greet.intro")
        if not turn.data.get("warned"):
            turn.say("greet.false_report_warning")
            turn.data["warned"] = True
        preset = payload.strip()
        if preset.startswith("u_") and preset[2:] in self.catalogue.by_code:
            turn.data["preset_unit"] = preset[2:]
            turn.say("greet.preset_unit", unit=self.catalogue.by_code[preset[2:]].name)
        if turn.has_draft and turn.state in DRAFT_STATES:
            turn.say("greet.draft_waiting")
        self._show_menu(turn)

    def _show_menu(self, turn: _Turn) -> None:
        if turn.state not in DRAFT_STATES:
            turn.state = State.IDLE
        turn.conversation.step += 1
        rows = []
        if turn.has_draft:
            rows.append([turn.button("menu.continue", "m:tip")])
        else:
            rows.append([turn.button("menu.tip", "m:tip")])
        rows += [
            [turn.button("menu.accident", "m:acc")],
            [turn.button("menu.status", "m:status")],
            [turn.button("menu.language", "m:lang"), turn.button("menu.help", "m:help")],
        ]
        turn.say("menu.title").buttons = rows

    def _side_trip(self, turn: _Turn) -> None:
        """Remember where the draft stood before a status check, help or language change."""
        if turn.state in DRAFT_STATES and "resume" not in turn.data:
            turn.data["resume"] = turn.state.value

    async def _resume(self, turn: _Turn) -> None:
        resume = turn.data.pop("resume", None)
        if resume and turn.has_draft:
            turn.state = State(resume)
            turn.say("draft.resuming")
            self._prompt(turn)
        elif turn.state in DRAFT_STATES and turn.has_draft:
            self._prompt(turn)
        else:
            turn.state = State.IDLE
            self._show_menu(turn)

    async def _cancel(self, turn: _Turn) -> None:
        if turn.state in SIDE_TRIPS:
            for name in ("status_code", "relay", "relay_code"):
                turn.data.pop(name, None)
            turn.say("common.cancelled_step")
            await self._resume(turn)
            return
        if turn.has_draft:
            emergency = turn.draft.get("kind") == "emergency"
            await self._discard_draft(turn)
            turn.drop_keyboard(turn.say("acc.cancelled" if emergency else "tip.cancelled"))
            self._restore_stashed(turn)
        else:
            turn.state = State.IDLE
            turn.drop_keyboard(turn.say("common.nothing_to_cancel"))
        self._show_menu(turn)

    def _start_tip(self, turn: _Turn) -> None:
        if turn.has_draft and turn.state in DRAFT_STATES:
            turn.say("draft.resuming")
            self._prompt(turn)
            return
        if turn.has_draft and turn.data.get("resume"):
            turn.state = State(turn.data.pop("resume"))
            turn.say("draft.resuming")
            self._prompt(turn)
            return
        draft = turn.draft
        draft.clear()
        draft.update({"media": [], "contact_mode": DEFAULT_CONTACT_MODE})
        preset = turn.data.pop("preset_unit", None)
        if preset in self.catalogue.by_code:
            draft["unit_code"] = preset
            draft["unit_preset"] = True
        turn.state = State.CATEGORY
        self._prompt(turn)

    # ------------------------------------------------------------------ emergencies

    def _accident(self, turn: _Turn) -> None:
        """The emergency numbers come first, before any question."""
        turn.say("acc.numbers")
        if turn.has_draft and turn.draft.get("kind") == "emergency":
            turn.state = State(turn.data.pop("resume", None) or turn.state)
            if turn.state not in EMERGENCY_STATES:
                turn.state = State.ACC_PLACE
            self._prompt(turn)
            return
        self._stash_tip(turn)
        draft = turn.draft
        draft.clear()
        draft.update({"kind": "emergency", "media": [], "contact_mode": DEFAULT_CONTACT_MODE})
        preset = turn.data.pop("preset_unit", None)
        if preset in self.catalogue.by_code:
            draft["unit_code"] = preset
        turn.state = State.ACC_PLACE
        self._prompt(turn)

    def _stash_tip(self, turn: _Turn) -> None:
        """Keep an unfinished tip aside while an emergency is reported."""
        if turn.has_draft:
            state = turn.state.value if turn.state in DRAFT_STATES else turn.data.get("resume")
            turn.data["stashed"] = {"draft": turn.data.pop("draft"), "state": state}
        turn.data.pop("resume", None)

    def _restore_stashed(self, turn: _Turn) -> None:
        stashed = turn.data.pop("stashed", None)
        if isinstance(stashed, dict) and isinstance(stashed.get("draft"), dict):
            turn.data["draft"] = stashed["draft"]
            if stashed.get("state"):
                turn.data["resume"] = stashed["state"]

    async def _msg_acc_place(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        draft = turn.draft
        typed = normalize(clean_text(message.text or "")[:100])
        if typed and typed == normalize(t(turn.locale, "common.cancel")):
            await self._cancel(turn)
            return
        if message.location is not None:
            draft["latitude"] = message.location.latitude
            draft["longitude"] = message.location.longitude
            unit = self._locate(message.location.latitude, message.location.longitude)
            if unit is not None:
                draft["unit_code"] = unit
            turn.drop_keyboard(turn.say("acc.location_saved"))
        else:
            if self._wrong_type(turn, message, expects="place"):
                self._prompt(turn)
                return
            text = clean_text(message.text or "")
            if len(text) > SHORT_TEXT_MAX or substance(text) < 1:
                turn.say(
                    "err.too_long" if substance(text) else "err.no_words", limit=SHORT_TEXT_MAX
                )
                self._prompt(turn)
                return
            draft["place_text"] = text
            matches = self.places.search(text, limit=1)
            if matches and matches[0].score >= PLACE_MATCH_SURE:
                draft["unit_code"] = matches[0].code
            turn.drop_keyboard(turn.say("acc.place_saved"))
        turn.state = State.ACC_INJURED
        self._prompt(turn)

    async def _btn_acc_injured(self, turn: _Turn, arg: str) -> None:
        if arg not in INJURED:
            self._unknown_button(turn)
            return
        turn.draft["injured"], turn.draft["injured_count"] = INJURED[arg]
        turn.state = State.ACC_PHOTO
        self._prompt(turn)

    async def _msg_acc_photo(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        images = [a for a in message.attachments if _is_image(a)]
        if not images:
            if not self._wrong_type(turn, message, expects="photo"):
                turn.say("acc.photo_expected")
            self._prompt(turn)
            return
        cleaned = prepared.get(images[0].file_ref)
        if not isinstance(cleaned, media_rules.CleanImage):
            turn.say(_IMAGE_REFUSALS.get(str(cleaned), "ev.failed"))
            self._prompt(turn)
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
                "caption": clean_text(message.text or "")[:1000] or None,
            }
        ]
        await self._submit_emergency(turn)

    async def _btn_acc_send(self, turn: _Turn, arg: str) -> None:
        if arg != "send":
            self._unknown_button(turn)
            return
        await self._submit_emergency(turn)

    async def _submit_emergency(self, turn: _Turn) -> None:
        limits = RateLimits(turn.session)
        window = self.settings.report_rate_window
        # Emergencies get twice the tip allowance: a real one must not be blocked by tips.
        allowance = self.settings.report_rate_limit * 2
        if await limits.count(RATE_REPORT, turn.sender_key, window) >= allowance:
            turn.say("acc.rate_limited")
            self._prompt(turn)
            return
        stored = await self._store(turn, REPORT_KIND_EMERGENCY, turn.draft)
        limits.hit(RATE_REPORT, turn.sender_key)
        turn.data.pop("draft", None)
        turn.data.pop("resume", None)
        turn.state = State.IDLE
        reply = turn.say("acc.submitted", code=format_code(stored.report.code), pin=stored.pin)
        turn.drop_keyboard(reply)
        self._restore_stashed(turn)
        self._show_menu(turn)

    def _locate(self, latitude: float, longitude: float) -> str | None:
        if self.locator is None:
            return None
        unit = self.locator.locate(latitude, longitude)
        return unit if unit in self.catalogue.by_code else None

    # --- per-state message handlers -------------------------------------------------------

    async def _msg_idle(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if message.text and parse_code(message.text):
            await self._start_status(turn, message.text)
            return
        self._show_menu(turn)

    async def _msg_buttons_only(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if not self._wrong_type(turn, message, expects="button"):
            if turn.state is State.CATEGORY and message.text:
                chosen = self._category_from_text(turn, message.text)
                if chosen:
                    turn.draft["category"] = chosen
                    self._advance(turn, State.PLACE)
                    return
            turn.say("err.use_buttons")
        self._prompt(turn)

    async def _msg_place(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if message.location is not None:
            draft = turn.draft
            draft["latitude"] = message.location.latitude
            draft["longitude"] = message.location.longitude
            for name in ("unit_code", "place_unknown", "unit_preset"):
                draft.pop(name, None)
            unit = self._locate(message.location.latitude, message.location.longitude)
            if unit is not None:
                draft["unit_code"] = unit
                reply = turn.say("place.location_unit", name=self.catalogue.by_code[unit].name)
            else:
                reply = turn.say("place.location_saved")
            turn.drop_keyboard(reply)
            self._advance(turn, State.WHEN)
            return
        if self._wrong_type(turn, message, expects="place"):
            self._prompt(turn)
            return
        text = clean_text(message.text or "")
        if normalize(text) == normalize(t(turn.locale, "place.dont_know")):
            self._set_place_unknown(turn)
            return
        if len(text) > PLACE_QUERY_MAX:
            turn.say("err.too_long", limit=PLACE_QUERY_MAX)
            self._prompt(turn)
            return
        matches = self.places.search(text, limit=5) if substance(text) else []
        turn.conversation.step += 1
        if not matches:
            reply = turn.say("place.no_match", query=_quote(text))
            reply.buttons = [[turn.button("place.dont_know", "pl:none")]]
            return
        reply = turn.say("place.pick")
        reply.buttons = [[turn.button("place.match", f"u:{m.code}", name=m.name)] for m in matches]
        reply.buttons.append([turn.button("place.dont_know", "pl:none")])

    def _set_place_unknown(self, turn: _Turn) -> None:
        draft = turn.draft
        for name in ("unit_code", "latitude", "longitude", "unit_preset"):
            draft.pop(name, None)
        draft["place_unknown"] = True
        turn.drop_keyboard(turn.say("place.unknown_saved"))
        self._advance(turn, State.WHEN)

    async def _msg_when_text(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if self._wrong_type(turn, message, expects="text"):
            self._prompt(turn)
            return
        text = clean_text(message.text or "")
        if len(text) > SHORT_TEXT_MAX:
            turn.say("err.too_long", limit=SHORT_TEXT_MAX)
        elif substance(text) < 1:
            turn.say("err.no_words")
        else:
            turn.draft["occurred"] = "earlier"
            turn.draft["occurred_text"] = text
            self._advance(turn, State.DESCRIPTION)
            return
        self._prompt(turn)

    async def _msg_description(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if self._wrong_type(turn, message, expects="text"):
            self._prompt(turn)
            return
        text = clean_text(message.text or "")
        if len(text) > DESCRIPTION_MAX:
            turn.say("desc.too_long", limit=DESCRIPTION_MAX, length=len(text))
        elif len(text) < DESCRIPTION_MIN or substance(text) < 3:
            turn.say("desc.too_short", minimum=DESCRIPTION_MIN)
        else:
            turn.draft["description"] = text
            self._advance(turn, State.EVIDENCE)
            return
        self._prompt(turn)

    async def _msg_evidence(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if not message.attachments:
            text = normalize(clean_text(message.text or ""))
            if text and text in {normalize(t(loc, "ev.done_word")) for loc in LOCALES}:
                self._advance(turn, State.CONTACT)
                return
            if message.unsupported:
                turn.say("err.unsupported")
            elif message.location is not None:
                turn.say("ev.location_not_evidence")
            else:
                turn.say("ev.expecting_media")
            self._prompt(turn)
            return
        items: list[dict[str, Any]] = turn.draft.setdefault("media", [])
        caption = clean_text(message.text or "")[:1000] or None
        for attachment in message.attachments:
            if len(items) >= self.settings.max_media:
                turn.say("ev.limit", limit=self.settings.max_media)
                break
            if attachment.size is not None and attachment.size > media_rules.MAX_DOWNLOAD_BYTES:
                turn.say("ev.too_large", limit_mb=media_rules.MAX_DOWNLOAD_BYTES // (1024 * 1024))
                continue
            if _is_image(attachment):
                cleaned = prepared.get(attachment.file_ref)
                if not isinstance(cleaned, media_rules.CleanImage):
                    turn.say(_IMAGE_REFUSALS.get(str(cleaned), "ev.failed"))
                    continue
                blob = await Media(turn.session).add_blob(
                    content=cleaned.content, mime=cleaned.mime, sha256=cleaned.sha256
                )
                items.append(
                    {
                        "kind": "photo",
                        "blob_id": blob.id,
                        "mime": cleaned.mime,
                        "size": len(cleaned.content),
                        "caption": caption,
                    }
                )
            else:
                items.append(
                    {
                        "kind": attachment.kind,
                        "file_ref": attachment.file_ref,
                        "mime": attachment.mime,
                        "size": attachment.size,
                        "caption": caption,
                    }
                )
            caption = None
        turn.say("ev.received", count=len(items))
        self._prompt(turn)

    async def _msg_contact_phone(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if message.contact is not None:
            if not message.contact.is_own:
                turn.say("contact.not_own")
                self._prompt(turn)
                return
            phone = clean_text(message.contact.phone)[:32]
            turn.draft["contact_mode"] = "phone"
            turn.draft["phone"] = self.keyring.encrypt({"phone": phone})
            turn.drop_keyboard(turn.say("contact.phone_saved"))
            self._advance(turn, State.SUMMARY)
            return
        text = clean_text(message.text or "")
        if text and normalize(text) == normalize(t(turn.locale, "contact.back")):
            turn.drop_keyboard(turn.say("contact.back_done"))
            turn.state = State.CONTACT
            self._prompt(turn)
            return
        if not self._wrong_type(turn, message, expects="contact"):
            turn.say("contact.use_button")
        self._prompt(turn)

    async def _msg_status_code(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if self._wrong_type(turn, message, expects="text"):
            self._prompt(turn)
            return
        await self._start_status(turn, clean_text(message.text or ""), asked=True)

    async def _msg_status_pin(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        entered = self._read_pin(turn, message, "status_code")
        if entered is not None:
            await self._check_status(turn, *entered)

    def _read_pin(self, turn: _Turn, message: Message, code_key: str) -> tuple[str, str] | None:
        """The code remembered under ``code_key`` and the PIN typed; else say why, ask again."""
        if self._wrong_type(turn, message, expects="text"):
            self._prompt(turn)
            return None
        pin = parse_pin(clean_text(message.text or "")[:40])
        code = turn.data.get(code_key)
        if pin is None or not isinstance(code, str):
            turn.say("status.bad_pin")
            self._prompt(turn)
            return None
        return code, pin

    def _unknown_button(self, turn: _Turn) -> None:
        """A press this step cannot take (forged or garbled): say so, and ask again."""
        turn.notice("err.button_unknown", alert=True)
        self._prompt(turn)

    def _wrong_type(self, turn: _Turn, message: Message, *, expects: str) -> bool:
        """Answer content of the wrong kind; ``True`` when the message cannot be used."""
        if message.unsupported:
            turn.say("err.unsupported")
        elif message.location is not None:
            turn.say("err.location_not_expected")
        elif message.attachments:
            turn.say("err.media_not_expected")
        elif message.contact is not None and expects != "contact":
            turn.say("err.contact_not_expected")
        elif expects in ("text", "place") and not (message.text or "").strip():
            turn.say("err.text_expected")
        else:
            return False
        return True

    def _category_from_text(self, turn: _Turn, text: str) -> str | None:
        wanted = normalize(clean_text(text)[:100])
        if not wanted:
            return None
        for key in CATEGORIES:
            labels = {normalize(t(loc, f"cat.{key}")) for loc in LOCALES}
            if wanted in labels or wanted == key:
                return key
        return None

    # ------------------------------------------------------------------ buttons

    async def _on_button(self, turn: _Turn, data: str) -> None:
        parsed = _parse_button(data)
        if parsed is None:
            self._unknown_button(turn)
            return
        step, action, arg = parsed
        if action == "m":  # the menu works from any old message: it only navigates
            await self._on_menu(turn, arg)
            return
        if action == "rel":  # "Reply" under a question from the police, however old
            await self._start_relay(turn, arg)
            return
        if step != turn.conversation.step:
            turn.notice("err.button_stale", alert=True)
            return
        handler = self._button_handlers.get((turn.state, action))
        if handler is None:
            self._unknown_button(turn)
            return
        turn.outcome.clear_buttons = True
        await handler(self, turn, arg)

    async def _on_menu(self, turn: _Turn, arg: str) -> None:
        turn.outcome.clear_buttons = True
        if arg == "tip":
            self._start_tip(turn)
        elif arg == "acc":
            self._accident(turn)
        elif arg == "status":
            await self._start_status(turn, "")
        elif arg == "lang":
            self._side_trip(turn)
            turn.state = State.LANGUAGE
            self._prompt(turn)
        elif arg == "help":
            self._side_trip(turn)
            turn.say("help.text")
            await self._resume(turn)
        else:
            turn.outcome.clear_buttons = False
            self._unknown_button(turn)

    async def _btn_language(self, turn: _Turn, arg: str) -> None:
        if arg not in LOCALES:
            self._unknown_button(turn)
            return
        turn.conversation.locale = arg
        turn.say("lang.changed")
        await self._resume(turn)

    async def _btn_category(self, turn: _Turn, arg: str) -> None:
        if arg not in CATEGORIES:
            self._unknown_button(turn)
            return
        turn.draft["category"] = arg
        self._advance(turn, State.PLACE)

    async def _btn_unit(self, turn: _Turn, arg: str) -> None:
        unit = self.catalogue.by_code.get(arg)
        if unit is None:
            self._unknown_button(turn)
            return
        draft = turn.draft
        draft["unit_code"] = unit.code
        for name in ("place_unknown", "unit_preset"):
            draft.pop(name, None)
        turn.drop_keyboard(turn.say("place.saved", name=unit.name))
        self._advance(turn, State.WHEN)

    async def _btn_place(self, turn: _Turn, arg: str) -> None:
        if arg == "none":
            self._set_place_unknown(turn)
        elif arg == "keep" and turn.draft.get("unit_code"):
            self._advance(turn, State.WHEN)
        else:
            self._unknown_button(turn)

    async def _btn_when(self, turn: _Turn, arg: str) -> None:
        if arg not in OCCURRED:
            self._unknown_button(turn)
            return
        if arg == "earlier":
            turn.state = State.WHEN_TEXT
            self._prompt(turn)
            return
        turn.draft["occurred"] = arg
        turn.draft.pop("occurred_text", None)
        self._advance(turn, State.DESCRIPTION)

    async def _btn_evidence(self, turn: _Turn, arg: str) -> None:
        if arg == "done":
            self._advance(turn, State.CONTACT)
        elif arg == "clear":
            media = turn.draft.get("media", [])
            await Media(turn.session).delete_blobs(m.get("blob_id") for m in media)
            turn.draft["media"] = []
            turn.say("ev.cleared")
            self._prompt(turn)
        else:
            self._unknown_button(turn)

    async def _btn_contact(self, turn: _Turn, arg: str) -> None:
        if arg not in CONTACT_MODES:
            self._unknown_button(turn)
            return
        if arg == "phone":
            turn.state = State.CONTACT_PHONE
            self._prompt(turn)
            return
        turn.draft["contact_mode"] = arg
        turn.draft.pop("phone", None)
        self._advance(turn, State.SUMMARY)

    async def _btn_summary(self, turn: _Turn, arg: str) -> None:
        if arg == "ok":
            await self._submit(turn)
        elif arg == "edit":
            turn.state = State.EDIT
            self._prompt(turn)
        elif arg == "cancel":
            await self._cancel(turn)
        else:
            self._unknown_button(turn)

    async def _btn_edit(self, turn: _Turn, arg: str) -> None:
        target = EDITABLE.get(arg)
        if arg == "back":
            turn.state = State.SUMMARY
            self._prompt(turn)
        elif target is None:
            self._unknown_button(turn)
        else:
            turn.draft["editing"] = True
            turn.state = target
            self._prompt(turn)

    async def _btn_cancel(self, turn: _Turn, arg: str) -> None:
        await self._cancel(turn)

    _button_handlers: ClassVar[
        dict[tuple[State, str], Callable[[CitizenFlow, _Turn, str], Awaitable[None]]]
    ] = {
        (State.LANGUAGE, "lang"): _btn_language,
        (State.CATEGORY, "cat"): _btn_category,
        (State.PLACE, "u"): _btn_unit,
        (State.PLACE, "pl"): _btn_place,
        (State.WHEN, "when"): _btn_when,
        (State.EVIDENCE, "ev"): _btn_evidence,
        (State.CONTACT, "ctc"): _btn_contact,
        (State.SUMMARY, "sum"): _btn_summary,
        (State.EDIT, "edit"): _btn_edit,
        (State.ACC_INJURED, "inj"): _btn_acc_injured,
        (State.ACC_PHOTO, "acc"): _btn_acc_send,
        **dict.fromkeys([(state, "x") for state in DRAFT_STATES], _btn_cancel),
        (State.STATUS_CODE, "x"): _btn_cancel,
        (State.STATUS_PIN, "x"): _btn_cancel,
        (State.RELAY, "x"): _btn_cancel,
        (State.RELAY_CODE, "x"): _btn_cancel,
        (State.RELAY_PIN, "x"): _btn_cancel,
        (State.LANGUAGE, "x"): _btn_cancel,
    }

    # ------------------------------------------------------------------ prompts

    def _advance(self, turn: _Turn, next_state: State) -> None:
        if turn.draft.pop("editing", False) and next_state is not State.SUMMARY:
            next_state = State.SUMMARY
        turn.state = next_state
        self._prompt(turn)

    def _prompt(self, turn: _Turn) -> None:
        """Ask for what the current state needs; new buttons make older ones stale."""
        state = turn.state
        turn.conversation.step += 1
        cancel = [turn.button("common.cancel", "x")]
        if state is State.IDLE:
            turn.conversation.step -= 1
            self._show_menu(turn)
        elif state is State.LANGUAGE:
            turn.say("lang.ask").buttons = [
                [turn.button("lang.vi", "lang:vi"), turn.button("lang.en", "lang:en")]
            ]
        elif state is State.CATEGORY:
            buttons = [turn.button(f"cat.{key}", f"cat:{key}") for key in CATEGORIES]
            rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
            turn.say("tip.category.ask").buttons = [*rows, cancel]
        elif state is State.PLACE:
            self._prompt_place(turn, cancel)
        elif state is State.WHEN:
            turn.say("when.ask").buttons = [
                [turn.button("when.now", "when:now"), turn.button("when.today", "when:today")],
                [
                    turn.button("when.earlier", "when:earlier"),
                    turn.button("when.unknown", "when:unknown"),
                ],
                cancel,
            ]
        elif state is State.WHEN_TEXT:
            turn.say("when.ask_text").buttons = [cancel]
        elif state is State.DESCRIPTION:
            turn.say("desc.ask", minimum=DESCRIPTION_MIN, limit=DESCRIPTION_MAX).buttons = [cancel]
        elif state is State.EVIDENCE:
            count = len(turn.draft.get("media", []))
            rows = [[turn.button("ev.done" if count else "ev.skip", "ev:done")]]
            if count:
                rows.append([turn.button("ev.clear", "ev:clear")])
            turn.say("ev.ask", limit=self.settings.max_media).buttons = [*rows, cancel]
        elif state is State.CONTACT:
            current = turn.draft.get("contact_mode", DEFAULT_CONTACT_MODE)
            rows = [
                [
                    turn.button(
                        f"contact.{mode}", f"ctc:{mode}", mark="✓ " if mode == current else ""
                    )
                ]
                for mode in ("relay", "none", "phone")
            ]
            turn.say("contact.ask").buttons = [*rows, cancel]
        elif state is State.CONTACT_PHONE:
            reply = turn.say("contact.ask_phone")
            reply.keyboard = Keyboard(
                request_contact=t(turn.locale, "contact.share_button"),
                labels=(t(turn.locale, "contact.back"),),
            )
        elif state is State.SUMMARY:
            turn.say("summary.text", **self._summary_values(turn)).buttons = [
                [turn.button("summary.confirm", "sum:ok")],
                [
                    turn.button("summary.edit", "sum:edit"),
                    turn.button("common.cancel", "sum:cancel"),
                ],
            ]
        elif state is State.EDIT:
            turn.say("edit.ask").buttons = [
                [turn.button(f"edit.{name}", f"edit:{name}")] for name in EDITABLE
            ] + [[turn.button("edit.back", "edit:back")]]
        elif state is State.ACC_PLACE:
            turn.say("acc.ask_place").keyboard = Keyboard(
                request_location=t(turn.locale, "acc.share_location"),
                labels=(t(turn.locale, "common.cancel"),),
            )
        elif state is State.ACC_INJURED:
            turn.say("acc.ask_injured").buttons = [
                [turn.button("acc.inj_none", "inj:none")],
                [
                    turn.button("acc.inj_1", "inj:1"),
                    turn.button("acc.inj_2", "inj:2"),
                    turn.button("acc.inj_3", "inj:3"),
                ],
                [turn.button("acc.inj_unknown", "inj:unknown")],
            ]
        elif state is State.ACC_PHOTO:
            turn.say("acc.ask_photo").buttons = [[turn.button("acc.send_now", "acc:send")]]
        elif state is State.RELAY:
            relay = turn.data.get("relay") or {}
            key = "relay.add_ask" if relay.get("addition") else "relay.ask_answer"
            turn.say(key, code=format_code(str(relay.get("code", "")))).buttons = [cancel]
        elif state is State.RELAY_CODE:
            turn.say("relay.add_usage").buttons = [cancel]
        elif state is State.RELAY_PIN:
            code = format_code(str(turn.data.get("relay_code", "")))
            turn.say("relay.add_ask_pin", code=code).buttons = [cancel]
        elif state is State.STATUS_CODE:
            turn.say("status.ask_code").buttons = [cancel]
        elif state is State.STATUS_PIN:
            turn.say("status.ask_pin").buttons = [cancel]

    def _prompt_place(self, turn: _Turn, cancel: list[Button]) -> None:
        draft = turn.draft
        if draft.get("unit_preset") and draft.get("unit_code") in self.catalogue.by_code:
            name = self.catalogue.by_code[draft["unit_code"]].name
            turn.say("place.preset", name=name).buttons = [
                [turn.button("place.keep", "pl:keep")],
                [turn.button("place.dont_know", "pl:none")],
                cancel,
            ]
            return
        reply = turn.say("place.ask")
        reply.keyboard = Keyboard(
            request_location=t(turn.locale, "place.share_location"),
            labels=(t(turn.locale, "place.dont_know"),),
        )

    def _summary_values(self, turn: _Turn) -> dict[str, str]:
        draft = turn.draft
        loc = turn.locale
        category = draft.get("category")
        if draft.get("unit_code") in self.catalogue.by_code:
            place = self.catalogue.by_code[draft["unit_code"]].name
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
        media = draft.get("media", [])
        mode = draft.get("contact_mode", DEFAULT_CONTACT_MODE)
        return {
            "category": t(loc, f"cat.{category}") if category in CATEGORIES else "—",
            "place": place,
            "when": when,
            "description": description or "—",
            "evidence": t(loc, "summary.evidence_count", count=len(media)),
            "contact": t(loc, f"contact.{mode}", mark=""),
        }

    # ------------------------------------------------------------------ submit

    async def _submit(self, turn: _Turn) -> None:
        draft = turn.draft
        missing = [name for name in ("category", "description") if not draft.get(name)]
        if missing:
            turn.state = EDITABLE[missing[0]]
            turn.say("summary.missing")
            self._prompt(turn)
            return
        limits = RateLimits(turn.session)
        window = self.settings.report_rate_window
        if (
            await limits.count(RATE_REPORT, turn.sender_key, window)
            >= self.settings.report_rate_limit
        ):
            turn.say("tip.rate_limited", minutes=int(window.total_seconds() // 60))
            self._prompt(turn)
            return
        stored = await self._store(turn, REPORT_KIND_TIP, draft)
        limits.hit(RATE_REPORT, turn.sender_key)
        turn.data.pop("draft", None)
        turn.data.pop("resume", None)
        turn.state = State.IDLE
        reply = turn.say("tip.submitted", code=format_code(stored.report.code), pin=stored.pin)
        turn.drop_keyboard(reply)
        self._restore_stashed(turn)
        self._show_menu(turn)

    async def _store(self, turn: _Turn, kind: str, draft: dict[str, Any]) -> Stored:
        return await store_report(
            turn.session,
            kind=kind,
            draft=draft,
            origin=Origin(turn.sender_key, turn.channel, turn.chat_id, turn.locale),
            keyring=self.keyring,
            pins=self.pins,
            settings=self.intake,
            now=turn.now,
            pin=turn.prepared_pin,
        )

    # ------------------------------------------------------------------ status

    async def _start_status(self, turn: _Turn, args: str, *, asked: bool = False) -> None:
        if turn.state not in (State.STATUS_CODE, State.STATUS_PIN):
            self._side_trip(turn)
        parts = clean_text(args)[:80].split()
        code = parse_code("".join(parts[:-1])) if len(parts) >= 2 else None
        if code is not None and parse_pin(parts[-1]) is not None:
            await self._check_status(turn, code, parse_pin(parts[-1]) or "")
            return
        code = parse_code("".join(parts)) if parts else None
        if code is None:
            if asked or parts:
                turn.say("status.bad_code")
            turn.state = State.STATUS_CODE
        else:
            turn.data["status_code"] = code
            turn.state = State.STATUS_PIN
        self._prompt(turn)

    async def _check_status(self, turn: _Turn, code: str, pin: str) -> None:
        report = await self._verify_pin(turn, code, pin)
        turn.data.pop("status_code", None)
        if report is None:
            await self._resume(turn)
            return
        values = {
            "code": format_code(report.code),
            "status": t(turn.locale, f"status.{report.status}"),
            "received": report.created_at.strftime("%d/%m/%Y %H:%M UTC"),
        }
        reply = turn.say("status.line", **values)
        if report.status == "resolved" and report.outcome:
            reply.text += "\n" + t(turn.locale, f"outcome.citizen.{report.outcome}")
        await self._show_reward(turn, report)
        await self._resume(turn)

    async def _show_reward(self, turn: _Turn, report: Report) -> None:
        """The reward, for whoever proved the PIN: an approved one gets a fresh claim code."""
        rewards = Rewards(turn.session, keyring=self.keyring, settings=RewardSettings())
        reward = await rewards.active_for(report.id)
        if reward is None or reward.status not in ("approved", "paid"):
            return
        amount = format_vnd(reward.amount_vnd)
        if reward.status == "paid":
            turn.say("reward.citizen.paid", amount=amount)
            return
        claim = await rewards.issue_claim_code(reward)
        instructions = self.instructions.for_unit(report.unit_code) or t(
            turn.locale, "reward.citizen.default_instructions"
        )
        turn.say(
            "reward.citizen.approved",
            code=format_code(report.code),
            amount=amount,
            claim=format_claim_code(claim),
            instructions=instructions,
        )

    async def _verify_pin(self, turn: _Turn, code: str, pin: str) -> Report | None:
        """The report for ``code`` if ``pin`` is right; rate-limited per code and per sender."""
        limits = RateLimits(turn.session)
        window = self.settings.pin_attempt_window
        code_key = self.keyring.keyed_hash("code", code)
        if (
            await limits.count(RATE_PIN_SENDER, turn.sender_key, window)
            >= self.settings.pin_attempts_per_sender
            or await limits.count(RATE_PIN_CODE, code_key, window)
            >= self.settings.pin_attempts_per_code
        ):
            turn.say("status.locked", minutes=int(window.total_seconds() // 60))
            return None
        report = await Reports(turn.session).by_code(code)
        pin_hash = report.pin_hash if report is not None else await self._dummy_hash()
        valid = await asyncio.to_thread(self.pins.verify, pin_hash, pin)
        if report is None or not valid:
            limits.hit(RATE_PIN_SENDER, turn.sender_key)
            limits.hit(RATE_PIN_CODE, code_key)
            turn.say("status.wrong")
            return None
        return report

    # ------------------------------------------------------------------ relay

    async def _own_report(self, turn: _Turn, report_id: int) -> Report | None:
        """The report if this sender filed it (their keyed hash is on its contact route)."""
        route = await turn.session.scalar(
            select(ContactRoute).where(ContactRoute.report_id == report_id)
        )
        if route is None or route.sender_key != turn.sender_key:
            return None
        return await turn.session.get(Report, report_id)

    async def _start_relay(self, turn: _Turn, arg: str) -> None:
        report = (
            await self._own_report(turn, int(arg)) if arg.isdigit() and len(arg) <= 18 else None
        )
        if report is None:
            turn.notice("relay.not_yours", alert=True)
            return
        self._enter_relay(turn, report, addition=False)

    def _enter_relay(self, turn: _Turn, report: Report, *, addition: bool) -> None:
        if report.status in ("resolved", "rejected"):
            turn.say("relay.closed")
            return
        if turn.state not in (State.RELAY, State.RELAY_CODE, State.RELAY_PIN):
            self._side_trip(turn)
        turn.data["relay"] = {"report_id": report.id, "code": report.code, "addition": addition}
        turn.state = State.RELAY
        self._prompt(turn)

    async def _start_add(self, turn: _Turn, args: str) -> None:
        code = parse_code(clean_text(args)[:40]) if args.strip() else None
        if turn.state not in (State.RELAY, State.RELAY_CODE, State.RELAY_PIN):
            self._side_trip(turn)
        if code is None:
            if args.strip():
                turn.say("status.bad_code")
            turn.state = State.RELAY_CODE
            self._prompt(turn)
            return
        report = await Reports(turn.session).by_code(code)
        if report is not None and await self._own_report(turn, report.id) is not None:
            self._enter_relay(turn, report, addition=True)
            return
        # Not linked to this sender (no contact mode, or another account): the PIN decides.
        turn.data["relay_code"] = code
        turn.state = State.RELAY_PIN
        self._prompt(turn)

    async def _msg_relay_code(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        if self._wrong_type(turn, message, expects="text"):
            self._prompt(turn)
            return
        await self._start_add(turn, message.text or "")

    async def _msg_relay_pin(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        entered = self._read_pin(turn, message, "relay_code")
        if entered is None:
            return
        report = await self._verify_pin(turn, *entered)
        turn.data.pop("relay_code", None)
        if report is None:
            await self._resume(turn)
            return
        self._enter_relay(turn, report, addition=True)

    async def _msg_relay(self, turn: _Turn, message: Message, prepared: Prepared) -> None:
        relay = turn.data.get("relay")
        report = (
            await turn.session.get(Report, relay["report_id"]) if isinstance(relay, dict) else None
        )
        if report is None or not isinstance(relay, dict):
            turn.data.pop("relay", None)
            await self._resume(turn)
            return
        if report.status in ("resolved", "rejected"):
            turn.data.pop("relay", None)
            turn.say("relay.closed")
            await self._resume(turn)
            return
        item = RelayMessage(report_id=report.id, direction="to_officers")
        images = [a for a in message.attachments if _is_image(a)]
        if message.location is not None:
            item.latitude = message.location.latitude
            item.longitude = message.location.longitude
        elif images:
            cleaned = prepared.get(images[0].file_ref)
            if not isinstance(cleaned, media_rules.CleanImage):
                turn.say(_IMAGE_REFUSALS.get(str(cleaned), "ev.failed"))
                self._prompt(turn)
                return
            blob = await Media(turn.session).add_blob(
                content=cleaned.content, mime=cleaned.mime, sha256=cleaned.sha256
            )
            item.media_kind = "photo"
            item.blob_id = blob.id
            item.text = clean_text(message.text or "")[:1000] or None
        elif message.attachments or message.unsupported or message.contact is not None:
            turn.say("relay.expecting")
            self._prompt(turn)
            return
        else:
            text = clean_text(message.text or "")
            if not substance(text):
                turn.say("relay.expecting")
                self._prompt(turn)
                return
            if len(text) > DESCRIPTION_MAX:
                turn.say("err.too_long", limit=DESCRIPTION_MAX)
                self._prompt(turn)
                return
            item.text = text
        turn.session.add(item)
        await turn.session.flush()
        Outbox(turn.session).enqueue(
            kind="relay_to_officers",
            destination=await officers_destination(turn.session, report),
            payload={"relay_id": item.id, "addition": bool(relay.get("addition"))},
            report_id=report.id,
        ).priority = 6
        reports = Reports(turn.session)
        if report.status == "needs_info":
            reports.add_event(
                report,
                action="answered",
                actor_kind="citizen",
                from_status="needs_info",
                to_status="in_progress",
            )
            report.status = "in_progress"
            report.updated_at = turn.now
        else:
            reports.add_event(report, action="added_info", actor_kind="citizen")
        turn.data.pop("relay", None)
        turn.say("relay.sent", code=format_code(report.code))
        await self._resume(turn)

    async def _dummy_hash(self) -> str:
        if self._dummy_pin_hash is None:
            self._dummy_pin_hash = await asyncio.to_thread(self.pins.hash, "000000")
        return self._dummy_pin_hash

    _message_handlers: ClassVar[
        dict[State, Callable[[CitizenFlow, _Turn, Message, Prepared], Awaitable[None]]]
    ] = {
        State.IDLE: _msg_idle,
        State.LANGUAGE: _msg_buttons_only,
        State.CATEGORY: _msg_buttons_only,
        State.PLACE: _msg_place,
        State.WHEN: _msg_buttons_only,
        State.WHEN_TEXT: _msg_when_text,
        State.DESCRIPTION: _msg_description,
        State.EVIDENCE: _msg_evidence,
        State.CONTACT: _msg_buttons_only,
        State.CONTACT_PHONE: _msg_contact_phone,
        State.SUMMARY: _msg_buttons_only,
        State.EDIT: _msg_buttons_only,
        State.STATUS_CODE: _msg_status_code,
        State.STATUS_PIN: _msg_status_pin,
        State.RELAY: _msg_relay,
        State.RELAY_CODE: _msg_relay_code,
        State.RELAY_PIN: _msg_relay_pin,
        State.ACC_PLACE: _msg_acc_place,
        State.ACC_INJURED: _msg_buttons_only,
        State.ACC_PHOTO: _msg_acc_photo,
    }


_IMAGE_REFUSALS = {
    "too_large": "ev.too_large_image",
    "not_an_image": "ev.not_an_image",
    "unsupported_image": "ev.not_an_image",
    "image_too_big_dimensions": "ev.image_dimensions",
    "download_failed": "ev.failed",
}


def _is_image(attachment: Attachment) -> bool:
    if attachment.kind == "photo":
        return True
    return attachment.kind == "document" and media_rules.is_image_mime(
        attachment.mime, attachment.file_name
    )


def _parse_button(data: str) -> tuple[int, str, str] | None:
    """``"<step>:<action>[:<arg>]"`` → parts; ``None`` for anything else (forged, garbled)."""
    if not data or len(data) > 64 or not data.isascii():
        return None
    parts = data.split(":", 2)
    if len(parts) < 2 or not parts[0].isdigit() or len(parts[0]) > 9:
        return None
    action = parts[1]
    arg = parts[2] if len(parts) == 3 else ""
    if not action.isalnum():
        return None
    return int(parts[0]), action, arg


def _quote(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
