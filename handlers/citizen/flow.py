"""The entry point of the citizen side: one event in, what to send back out.

The flow is a small state machine whose state lives in the ``conversations`` table and is saved
on every step, so a restart or a second worker continues where the citizen stopped. Each state
is one :class:`~handlers.citizen.core.Step` in the flow modules (menu, tip, accident, status,
relay); ``handlers/citizen_flow.mmd`` draws them.

Each event is handled inside the caller's transaction: the processed update id, the draft and,
on confirmation, the report with its media, audit event, contact route and outbox message are
committed together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import media as media_rules
from handlers.citizen.accident import STEPS as ACCIDENT_STEPS
from handlers.citizen.accident import start_accident
from handlers.citizen.answers import record
from handlers.citizen.base import (
    DRAFT_STATES,
    PREPARED_PIN,
    SEEN_UPDATES,
    SIDE_TRIPS,
    SUBMITTING_PRESSES,
    DuplicateUpdate,
    MediaFetcher,
    Prepared,
    State,
    Turn,
    parse_button,
)
from handlers.citizen.core import FlowCore, Step
from handlers.citizen.draft import check_description, check_short_text
from handlers.citizen.menu import STEPS as MENU_STEPS
from handlers.citizen.queued import answers_waiting
from handlers.citizen.reachable import wake_held
from handlers.citizen.relay import (
    RELAY_STATES,
    answer_out_of_turn,
    hint_pending,
    pending_question,
    replied_question,
    start_add,
    start_relay,
)
from handlers.citizen.relay import STEPS as RELAY_STEPS
from handlers.citizen.status import STEPS as STATUS_STEPS
from handlers.citizen.status import start_status, typed_status
from handlers.citizen.tip import STEPS as TIP_STEPS
from handlers.citizen.tip import start_tip
from handlers.events import ButtonPress, Event, Message, Outcome
from handlers.i18n import pick_locale
from handlers.security import new_pin
from handlers.text import clean_text
from storage.repositories import Conversations
from storage.types import utcnow

log = logging.getLogger(__name__)

#: The draft fields a citizen may correct by editing the message that gave them.
_EDIT_CHECKS = {
    "description": check_description,
    "occurred_text": check_short_text,
    "place_text": check_short_text,
}
#: States where a message is read as evidence or a photo (the read-only phase fetches it).
_MEDIA_STATES = (State.EVIDENCE, State.ACC_PHOTO, State.RELAY)


class CitizenFlow(FlowCore):
    """The use case behind every message a citizen sends in a private chat."""

    steps: Mapping[State, Step] = {
        step.state: step
        for step in (*MENU_STEPS, *TIP_STEPS, *ACCIDENT_STEPS, *STATUS_STEPS, *RELAY_STEPS)
    }

    # ------------------------------------------------------------------ the two phases

    def needs_preparing(self, event: Event) -> bool:
        """Whether :meth:`prepare` has work: media to fetch, or a press that may submit (only
        with a slow PIN hash; a keyed one is made in the write transaction)."""
        if isinstance(event, ButtonPress):
            if not self.pins.slow:
                return False
            parsed = parse_button(event.data)
            return parsed is not None and (parsed[1], parsed[2]) in SUBMITTING_PRESSES
        return bool(event.attachments)

    async def prepare(
        self, session: AsyncSession, event: Event, fetcher: MediaFetcher
    ) -> Prepared:
        """Read-only phase, outside the write transaction: fetch and clean evidence images,
        and hash a new PIN for a press that may submit a report (it is slow on purpose).

        A typed confirmation hashes its PIN when the report is stored instead.
        """
        prepared: Prepared = {}
        if isinstance(event, ButtonPress):
            parsed = parse_button(event.data)
            if parsed is not None and (parsed[1], parsed[2]) in SUBMITTING_PRESSES:
                prepared[PREPARED_PIN] = await self._new_pin()
            return prepared
        if not event.attachments:
            return prepared
        key = self.keyring.sender_key(event.sender.channel, event.sender.user_id)
        locale = pick_locale(event.sender.language_code, self.settings.default_locale)
        # Read only: a draft under a previous key (a key rotation) moves at handle() instead.
        conversation = await Conversations(session, self.conversation_cache).load(
            key, locale, utcnow()
        )
        if conversation.new:
            return prepared
        # A reply to a relayed question carries its photo whatever the state.
        if conversation.state not in _MEDIA_STATES and event.reply_to is None:
            return prepared
        if conversation.state == State.ACC_PHOTO:
            prepared[PREPARED_PIN] = await self._new_pin()
        for attachment in event.attachments[: self.settings.max_media]:
            try:  # every file is fetched and recognised by its content, never its declared type
                media_rules.check_declared_size(attachment.size)
                raw = await fetcher.fetch(attachment)
                prepared[attachment.file_ref] = await asyncio.to_thread(
                    media_rules.clean_evidence, raw
                )
            except media_rules.MediaRejected as exc:
                prepared[attachment.file_ref] = exc.reason
            except Exception:  # a failed download must not lose the draft
                log.warning("evidence download failed", exc_info=True)
                prepared[attachment.file_ref] = "download_failed"
        return prepared

    async def _new_pin(self) -> tuple[str, str]:
        pin = new_pin()
        if not self.pins.slow:
            return pin, self.pins.hash(pin)
        return pin, await asyncio.to_thread(self.pins.hash, pin)

    async def handle(
        self, session: AsyncSession, event: Event, prepared: Prepared | None = None
    ) -> Outcome:
        """Handle one event inside the caller's transaction and return what to send back."""
        sender = event.sender
        key, *previous = self.keyring.sender_keys(sender.channel, sender.user_id)
        locale = pick_locale(sender.language_code, self.settings.default_locale)
        now = utcnow()
        conversations = Conversations(session, self.conversation_cache)
        conversation = await conversations.load(key, locale, now, previous)
        # A citizen's updates are handled in order, one at a time (per chat), so the update ids
        # kept on the conversation are enough to drop a duplicate delivery: no extra statement.
        seen = list((conversation.data or {}).get("seen") or [])
        if event.update_id in seen:
            raise DuplicateUpdate(event.update_id)
        turn = Turn(
            session=session,
            conversation=conversation,
            sender_key=key,
            channel=sender.channel,
            chat_id=sender.chat_id,
            data=dict(conversation.data or {}),
            now=now,
        )
        turn.data["seen"] = [*seen, event.update_id][-SEEN_UPDATES:]
        await self._expire_draft(turn)
        turn.woke = await wake_held(turn)
        turn.prepared_pin = (prepared or {}).get(PREPARED_PIN)
        if isinstance(event, ButtonPress):
            await self.press(turn, event.data)
        else:
            await self._on_message(turn, event, prepared or {})
        turn.outcome.behind = await answers_waiting(turn)
        self._save(turn)
        await conversations.save(conversation, now)
        return turn.outcome

    # ------------------------------------------------------------------ persistence

    def _save(self, turn: Turn) -> None:
        for reply in turn.outcome.replies:
            if reply.keyboard is not None:
                turn.data["kb"] = True
            elif reply.remove_keyboard:
                turn.data["kb"] = False
        if turn.outcome.replies:
            # The choices a typed answer is read against: those of the last prompt.
            buttons = next((r.buttons for r in reversed(turn.outcome.replies) if r.buttons), [])
            turn.data["choices"] = record(buttons)
        if not turn.missed:
            turn.data.pop("misses", None)
        conversation = turn.conversation
        conversation.data = turn.data
        conversation.expires_at = turn.now + self.settings.draft_ttl if turn.has_draft else None

    async def _expire_draft(self, turn: Turn) -> None:
        expires = turn.conversation.expires_at
        if turn.has_draft and expires is not None and expires <= turn.now:
            await self.discard_draft(turn)
            turn.say("draft.expired")

    # ------------------------------------------------------------------ messages

    async def _on_message(self, turn: Turn, message: Message, prepared: Prepared) -> None:
        if message.edited:
            self._on_edit(turn, message)
            return
        turn.data.pop("edit_told", None)
        if message.command is not None:
            await self._on_command(turn, message.command, message.args)
            return
        if (status_args := typed_status(message.text)) is not None:
            await start_status(self, turn, status_args)
            return
        if message.reply_to is not None and turn.caps.reply_to:
            report = await replied_question(turn, message.reply_to)
            if report is not None:
                await answer_out_of_turn(self, turn, report, message, prepared)
                return
        if not turn.caps.reply_to and turn.state not in RELAY_STATES:
            if turn.state in DRAFT_STATES:
                await hint_pending(turn)
            elif not turn.woke and (report := await pending_question(turn)) is not None:
                await answer_out_of_turn(self, turn, report, message, prepared)
                return
        await self.steps[turn.state].on_message(self, turn, message, prepared)

    def _on_edit(self, turn: Turn, message: Message) -> None:
        """An edit of the last answer replaces it in an open draft; any other edit is not
        seen, and the citizen is told so once."""
        last: Any = turn.data.get("last_answer")
        name = last.get("field") if isinstance(last, dict) else None
        if (
            turn.has_draft
            and isinstance(last, dict)
            and message.message_id is not None
            and last.get("message_id") == message.message_id
            and name in _EDIT_CHECKS
            and name in turn.draft
        ):
            text = clean_text(message.text or "")
            problem = _EDIT_CHECKS[name](text)
            if problem is not None:
                turn.say(problem, limit=len(text), length=len(text), minimum=10)
                turn.say("answers.edit_kept")
                return
            turn.draft[name] = text
            turn.say("answers.edit_replaced")
            if turn.state in DRAFT_STATES:
                self.prompt(turn)
            return
        if not turn.data.get("edit_told"):
            turn.data["edit_told"] = True
            turn.say("answers.edit_not_seen")

    async def _on_command(self, turn: Turn, command: str, args: str) -> None:
        command = command.lower()
        if command == "start":
            self._greet(turn, args)
        elif command == "help":
            self.side_trip(turn)
            turn.say("help.text")
            await self.resume(turn)
        elif command in ("language", "ngonngu"):
            self.side_trip(turn)
            turn.state = State.LANGUAGE
            self.prompt(turn)
        elif command in ("cancel", "huy"):
            await self.cancel(turn)
        elif command in ("status", "tracuu"):
            await start_status(self, turn, args)
        elif command in ("report", "tip", "tobao", "baotin"):
            start_tip(self, turn)
        elif command in ("accident", "tainan", "capcuu"):
            start_accident(self, turn)
        elif command in ("add", "bosung"):
            await start_add(self, turn, args)
        else:
            turn.say("err.unknown_command")
            self.prompt(turn)

    def _greet(self, turn: Turn, payload: str) -> None:
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
        self.show_menu(turn)

    # ------------------------------------------------------------------ buttons

    async def press(self, turn: Turn, data: str) -> None:
        parsed = parse_button(data)
        if parsed is None:
            self.unknown_button(turn)
            return
        step, action, arg = parsed
        if action == "m":  # the menu works from any old message: it only navigates
            await self._on_menu(turn, arg)
            return
        if action == "rel":  # "Reply" under a question from the police, however old
            await start_relay(self, turn, arg)
            return
        if step != turn.conversation.step:
            turn.notice("err.button_stale", alert=True)
            return
        if action == "x" and turn.state in DRAFT_STATES | SIDE_TRIPS:
            turn.outcome.clear_buttons = True
            await self.cancel(turn)
            return
        turn.outcome.clear_buttons = True
        if not await self.steps[turn.state].on_button(self, turn, action, arg):
            turn.outcome.clear_buttons = False
            self.unknown_button(turn)

    async def _on_menu(self, turn: Turn, arg: str) -> None:
        turn.outcome.clear_buttons = True
        if arg == "tip":
            start_tip(self, turn)
        elif arg == "acc":
            start_accident(self, turn)
        elif arg == "status":
            await start_status(self, turn, "")
        elif arg == "lang":
            self.side_trip(turn)
            turn.state = State.LANGUAGE
            self.prompt(turn)
        elif arg == "help":
            self.side_trip(turn)
            turn.say("help.text")
            await self.resume(turn)
        else:
            turn.outcome.clear_buttons = False
            self.unknown_button(turn)
