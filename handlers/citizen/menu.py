"""The menu (idle) and the language choice."""

from __future__ import annotations

from handlers.citizen.base import Prepared, State, Turn
from handlers.citizen.core import FlowCore, Step
from handlers.citizen.status import start_status
from handlers.domain import LOCALES
from handlers.events import Message
from handlers.security import parse_code
from handlers.text import clean_text


class Idle(Step):
    """Nothing under way: the menu. A typed tracking code starts a status check."""

    state = State.IDLE

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        flow.show_menu(turn)

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        text = clean_text(message.text or "")
        if text and parse_code(text):
            await start_status(flow, turn, text)
            return
        if (
            text
            and not message.attachments
            and message.location is None
            and await flow.typed_choice(turn, text, fuzzy=True)
        ):
            return
        if text:
            flow.miss(turn, text)
        flow.show_menu(turn)


class Language(Step):
    state = State.LANGUAGE

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("lang.ask").buttons = [
            [turn.button("lang.vi", "lang:vi"), turn.button("lang.en", "lang:en")]
        ]

    async def on_button(self, flow: FlowCore, turn: Turn, action: str, arg: str) -> bool:
        if action != "lang" or arg not in LOCALES:
            return False
        turn.conversation.locale = arg
        turn.say("lang.changed")
        await flow.resume(turn)
        return True


STEPS: tuple[Step, ...] = (Idle(), Language())
