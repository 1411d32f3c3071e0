"""Officers at work in their queue chats: the entry points for a button press and a message.

Deny by default: a press or command from anyone who is not an active officer serving the
report's queue changes nothing, and they are told so. A press is honoured only on a card posted
for that very report in that very chat, so forged callback data changes nothing either. Every
change of state is one audit event (who, when, from, to, why), made by
:class:`~handlers.report_actions.ReportActions`, and the card is then re-rendered in place.

The parts, one concern each: :mod:`handlers.triage_presses` (card buttons),
:mod:`handlers.triage_answers` (typed answers), :mod:`handlers.triage_rewards` (rewards),
:mod:`handlers.triage_commands` (commands), on :mod:`handlers.triage_base` (what they share) and
:mod:`handlers.triage_context` (queues, keyring, settings). The diagram is ``triage_flow.mmd``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers import card_actions
from handlers.card_actions import CLOSED_STATUSES
from handlers.officer_events import (
    CardRefresh,
    DuplicateOfficerUpdate,
    OfficerAct,
    OfficerMessage,
    OfficerOutcome,
    OfficerPress,
)
from handlers.officers import Registry, may
from handlers.triage_answers import Photo, TypedAnswers
from handlers.triage_commands import QueueCommands
from handlers.triage_context import TriageContext
from handlers.triage_notify import PRIORITY_CHAT
from handlers.triage_presses import CardPresses
from storage.models import CardPost, Report
from storage.repositories import UpdateLog

__all__ = [
    "PRIORITY_CHAT",
    "CardRefresh",
    "DuplicateOfficerUpdate",
    "OfficerMessage",
    "OfficerOutcome",
    "OfficerPress",
    "Triage",
    "TriageContext",
]

log = logging.getLogger(__name__)


class Triage(CardPresses, TypedAnswers, QueueCommands):
    """The officers' chat: presses and messages in, an :class:`OfficerOutcome` out."""

    async def handle_press(self, session: AsyncSession, press: OfficerPress) -> OfficerOutcome:
        if not await UpdateLog(session).claim(press.channel, press.update_id):
            raise DuplicateOfficerUpdate(press.update_id)
        officer = await Registry(session).by_telegram(press.user_id)
        act = OfficerAct(session, officer, press.channel, press.chat_id, press.thread_id)
        if press.data.startswith("q:"):
            return await self._page_press(act, press)
        if press.data.startswith("w:"):
            return await self._reward_press(act, press)
        parsed = card_actions.parse(press.data)
        if parsed is None:
            return self._deny(act, "triage.unknown_button")
        action, report_id, arg = parsed
        post = await session.scalar(
            select(CardPost).where(
                CardPost.chat_id == press.chat_id,
                CardPost.message_id == press.message_id,
                CardPost.report_id == report_id,
            )
        )
        report = await session.get(Report, report_id)
        if post is None or report is None:
            log.info("press %s refused: no card for report %s in that chat", action, report_id)
            return self._deny(act, "triage.not_here")
        if not post.active:
            return self._deny(act, "triage.stale_card")
        queue_key = self.queue_key(report)
        needed = "view" if action in ("open", "back") else _PRESS_PERMISSION.get(action, "view")
        if not may(officer, needed, queue_key):
            log.info("press %s on report %s refused: not permitted", action, report_id)
            return self._deny(act)
        handler = _PRESS_HANDLERS.get(action)
        if handler is None:
            return self._deny(act, "triage.unknown_button")
        if action not in ("open", "back", "rwd") and report.status in CLOSED_STATUSES:
            return self._deny(act, "triage.closed")
        outcome = await handler(self, act, report, arg, post)
        return outcome

    async def handle_message(
        self, session: AsyncSession, message: OfficerMessage, photo: Photo = None
    ) -> OfficerOutcome:
        """A command, a typed answer, or a reply to a card; ``photo`` is what
        :meth:`prepare_photo` made of a photo sent with it."""
        if not await UpdateLog(session).claim(message.channel, message.update_id):
            raise DuplicateOfficerUpdate(message.update_id)
        registry = Registry(session)
        officer = await registry.by_telegram(message.user_id)
        act = OfficerAct(session, officer, message.channel, message.chat_id, message.thread_id)
        queue = self.queues.by_chat(message.chat_id, message.thread_id)
        if message.command is not None:
            return await self._command(act, message, queue)
        if officer is None or not officer.active:
            return act.outcome  # members chatting among themselves: not the bot's business
        state = await self._officer_state(act)
        pending = (state.data or {}).get("pending") if state else None
        if isinstance(pending, dict) and message.reply_to_is_bot:
            return await self._answer_pending(act, message, pending, photo)
        if message.reply_to_message_id is not None:
            post = await session.scalar(
                select(CardPost).where(
                    CardPost.chat_id == message.chat_id,
                    CardPost.message_id == message.reply_to_message_id,
                    CardPost.kind == "card",
                )
            )
            if post is not None and (message.text or photo is not None):
                report = await session.get(Report, post.report_id)
                if report is not None:
                    return await self._relay_question(act, report, message.text or "", photo)
        return act.outcome


_PRESS_PERMISSION = {
    "ack": "claim",
    "claim": "claim",
    "prog": "progress",
    "ask": "ask",
    "xfer": "transfer",
    "xto": "transfer",
    "res": "resolve",
    "out": "resolve",
    "arr": "resolve",
    "rej": "reject",
    "dup": "duplicate",
    "rwd": "reward_propose",
}
PressHandler = Callable[
    ["Triage", OfficerAct, Report, str | None, CardPost], Awaitable[OfficerOutcome]
]
_PRESS_HANDLERS: dict[str, PressHandler] = {
    "ack": Triage._press_ack,
    "open": Triage._press_open,
    "claim": Triage._press_claim,
    "prog": Triage._press_progress,
    "ask": Triage._press_ask,
    "xfer": Triage._press_transfer,
    "xto": Triage._press_transfer_to,
    "res": Triage._press_resolve,
    "out": Triage._press_outcome,
    "arr": Triage._press_arrest,
    "rej": Triage._press_reject,
    "dup": Triage._press_duplicate,
    "back": Triage._press_back,
    "rwd": Triage._press_reward,
}
