"""What every citizen flow shares: a step's shape, and the moves between steps.

A :class:`Step` is one state of the conversation: it holds its prompt, its reading of a typed
answer and its button handling. :class:`FlowCore` holds the moves every flow makes: ask the
current step, advance, cancel, take a side trip and come back, read a typed answer against
the offered choices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from config.catalogue import Catalogue
from config.rewards import PayoutInstructions
from handlers.citizen.answers import WAY_OUT, pick
from handlers.citizen.base import (
    DRAFT_STATES,
    SIDE_TRIPS,
    CitizenSettings,
    Locator,
    Prepared,
    State,
    Turn,
    quote,
)
from handlers.events import Button, Message
from handlers.intake import IntakeSettings
from handlers.places import PlaceIndex
from handlers.render import numbered_text
from handlers.security import Keyring, PinHasher
from handlers.text import clean_text
from storage.repositories import ConversationCache, Media


class Step(ABC):
    """One state of the conversation. Subclasses set :attr:`state` and override the hooks."""

    state: ClassVar[State]
    #: Typed text at this step is read against the offered choices (a miss asks again).
    #: ``False``: the step takes free text, and only a number or a full label is a choice.
    choices_only: ClassVar[bool] = True

    @abstractmethod
    def prompt(self, flow: FlowCore, turn: Turn) -> None: ...

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        """Handle a press (or a typed choice); ``False`` when this step has no such button."""
        return False

    async def on_text(self, flow: FlowCore, turn: Turn, text: str) -> bool:
        """Typed text that named no choice; ``True`` when the step could use it."""
        return False

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        """A message at this step; by default a typed answer to the offered choices."""
        await flow.typed_answer(turn, message, self)


class FlowCore(ABC):
    """The shared moves of the citizen flows; :class:`~handlers.citizen.flow.CitizenFlow`
    adds the entry points and registers every step."""

    steps: Mapping[State, Step]

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
        conversation_cache: ConversationCache | None = None,
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
        #: The conversations this process wrote last (each step checks the row's version).
        self.conversation_cache = conversation_cache or ConversationCache()

    # ------------------------------------------------------------------ moving between steps

    def prompt(self, turn: Turn) -> None:
        """Ask for what the current state needs; new buttons make older ones stale."""
        if turn.state is State.IDLE:
            self.show_menu(turn)
            return
        turn.conversation.step += 1
        self.steps[turn.state].prompt(self, turn)

    def advance(self, turn: Turn, next_state: State) -> None:
        if turn.draft.pop("editing", False) and next_state is not State.SUMMARY:
            next_state = State.SUMMARY
        turn.state = next_state
        self.prompt(turn)

    def show_menu(self, turn: Turn) -> None:
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

    def side_trip(self, turn: Turn) -> None:
        """Remember where the draft stood before a status check, help or language change."""
        if turn.state in DRAFT_STATES and "resume" not in turn.data:
            turn.data["resume"] = turn.state.value

    async def resume(self, turn: Turn) -> None:
        resume = turn.data.pop("resume", None)
        if resume and turn.has_draft:
            turn.state = State(resume)
            turn.say("draft.resuming")
            self.prompt(turn)
        elif turn.state in DRAFT_STATES and turn.has_draft:
            self.prompt(turn)
        else:
            turn.state = State.IDLE
            self.show_menu(turn)

    async def cancel(self, turn: Turn) -> None:
        if turn.state in SIDE_TRIPS:
            for name in ("status_code", "relay", "relay_code"):
                turn.data.pop(name, None)
            turn.say("common.cancelled_step")
            await self.resume(turn)
            return
        if turn.has_draft:
            emergency = turn.draft.get("kind") == "emergency"
            await self.discard_draft(turn)
            turn.drop_keyboard(turn.say("acc.cancelled" if emergency else "tip.cancelled"))
            self.restore_stashed(turn)
        else:
            turn.state = State.IDLE
            turn.drop_keyboard(turn.say("common.nothing_to_cancel"))
        self.show_menu(turn)

    async def discard_draft(self, turn: Turn) -> None:
        draft = turn.data.pop("draft", None)
        turn.data.pop("resume", None)
        turn.data.pop("last_answer", None)
        if isinstance(draft, dict):
            blob_ids = [m.get("blob_id") for m in draft.get("media", []) if m.get("blob_id")]
            await Media(turn.session).delete_blobs(blob_ids)
        turn.state = State.IDLE

    def stash_tip(self, turn: Turn) -> None:
        """Keep an unfinished tip aside while an emergency is reported."""
        if turn.has_draft:
            state = turn.state.value if turn.state in DRAFT_STATES else turn.data.get("resume")
            turn.data["stashed"] = {"draft": turn.data.pop("draft"), "state": state}
        turn.data.pop("resume", None)

    def restore_stashed(self, turn: Turn) -> None:
        stashed = turn.data.pop("stashed", None)
        if isinstance(stashed, dict) and isinstance(stashed.get("draft"), dict):
            turn.data["draft"] = stashed["draft"]
            if stashed.get("state"):
                turn.data["resume"] = stashed["state"]

    def locate(self, latitude: float, longitude: float) -> str | None:
        if self.locator is None:
            return None
        unit = self.locator.locate(latitude, longitude)
        return unit if unit in self.catalogue.by_code else None

    # ------------------------------------------------------------------ presses and answers

    @abstractmethod
    async def press(self, turn: Turn, data: str) -> None:
        """A button press, or a typed answer that named a button (overridden by the flow)."""
        ...

    def unknown_button(self, turn: Turn) -> None:
        """A press this step cannot take (forged or garbled): say so, and ask again."""
        turn.notice("err.button_unknown", alert=True)
        self.prompt(turn)

    async def typed_choice(self, turn: Turn, text: str, *, fuzzy: bool) -> bool:
        """Act on ``text`` if it names one of the offered choices or the way out."""
        data = pick(text, turn.choices, fuzzy=fuzzy)
        if data is None:
            return False
        if data == WAY_OUT:
            await self.cancel(turn)
        else:
            await self.press(turn, data)
        return True

    async def typed_answer(self, turn: Turn, message: Message, step: Step) -> None:
        """A typed answer at a step that offers choices: a choice, the step's own reading of
        free text, or a miss that shows the choices again."""
        if self.wrong_type(turn, message, expects="button"):
            self.prompt(turn)
            return
        text = clean_text(message.text or "")
        if await self.typed_choice(turn, text, fuzzy=True):
            return
        if await step.on_text(self, turn, text):
            return
        self.miss(turn, text)
        self.prompt(turn)

    def miss(self, turn: Turn, text: str) -> None:
        """Say what was not understood, with the numbered choices; after the second miss in a
        row, a short help line and the way out."""
        turn.missed = True
        misses = int(turn.data.get("misses") or 0) + 1
        turn.data["misses"] = misses
        reply = turn.say("answers.not_understood", text=quote(text or "…", 40))
        if turn.caps.buttons and turn.choices:
            # Where the choices are not numbered in the prompt itself, list them here.
            rows = [[_as_button(c)] for c in turn.choices if isinstance(c, list) and len(c) == 3]
            reply.text += "\n" + numbered_text(rows)
        if misses >= 2:
            turn.say("answers.help")

    def wrong_type(self, turn: Turn, message: Message, *, expects: str) -> bool:
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

    def remember_answer(self, turn: Turn, message: Message, name: str) -> None:
        """Note the message that gave the draft's ``name``, so an edit of it can replace it."""
        if message.message_id is not None:
            turn.data["last_answer"] = {"message_id": message.message_id, "field": name}


def _as_button(choice: list[object]) -> Button:
    return Button(label=str(choice[2]), data=str(choice[1]))
