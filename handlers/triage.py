"""Officers at work in their queue chats: card actions, typed answers, commands.

Deny by default: a press or command from anyone who is not an active officer serving the
report's queue changes nothing, and they are told so. A press is honoured only on a card posted
for that very report in that very chat, so forged callback data changes nothing either. Every
change of state is one audit event (who, when, from, to, why), and the card is then re-rendered
in place.

Typed answers (a question for the tipster, a reason, a count, an earlier report's code) are
collected as replies to the bot's prompt; what an officer is being asked is kept in the database
(``conversations``, key ``o:<officer id>:<chat id>``), like a citizen's draft.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from config.queues import Queue, QueueMap
from config.rewards import PayoutInstructions
from handlers import card_actions, localtime
from handlers.card_actions import CLOSED_STATUSES
from handlers.domain import CATEGORIES, OUTCOMES, STATUSES
from handlers.i18n import t
from handlers.intake import PRIORITY_EMERGENCY
from handlers.officers import Registry, may
from handlers.report_actions import (
    PRIORITY_OPEN,
    QUESTION_MAX,
    REASON_MAX,
    ActionError,
    ReportActions,
    relay_problem,
)
from handlers.rewards import (
    RewardError,
    Rewards,
    RewardSettings,
    format_claim_code,
    format_vnd,
)
from handlers.security import Keyring, format_code, parse_code
from handlers.text import clean_text
from storage.models import (
    CardPost,
    Conversation,
    Officer,
    OutboxMessage,
    Report,
    Reward,
)
from storage.repositories import Conversations, Outbox, Reports, UpdateLog
from storage.types import utcnow

log = logging.getLogger(__name__)

PRIORITY_CHAT = 6
PAGE_SIZE = 10


@dataclass(frozen=True, slots=True)
class OfficerPress:
    """A button press in an officers' chat. Officers are not anonymous: their id is audited."""

    update_id: int
    channel: str
    chat_id: int
    thread_id: int | None
    message_id: int
    user_id: int
    user_name: str
    data: str


@dataclass(frozen=True, slots=True)
class OfficerMessage:
    """A message in an officers' chat that reached the bot (a command or a reply to it)."""

    update_id: int
    channel: str
    chat_id: int
    thread_id: int | None
    message_id: int
    user_id: int
    user_name: str
    text: str | None = None
    command: str | None = None
    args: str = ""
    reply_to_message_id: int | None = None
    reply_to_user_id: int | None = None
    reply_to_user_name: str | None = None
    reply_to_is_bot: bool = False


@dataclass(frozen=True, slots=True)
class CardRefresh:
    """Re-render a report's cards; ``mode`` shows a picker on the pressed card only."""

    report_id: int
    mode: str | None = None
    chat_id: int | None = None
    message_id: int | None = None


@dataclass(slots=True)
class OfficerOutcome:
    notice: str | None = None
    alert: bool = False
    refresh: list[CardRefresh] = field(default_factory=list)
    #: New text and buttons for the pressed message itself (paging a list).
    edit: tuple[str, list[list[dict[str, str]]]] | None = None


class DuplicateOfficerUpdate(Exception):
    pass


@dataclass
class _Act:
    """One officer interaction being handled."""

    session: AsyncSession
    officer: Officer | None
    channel: str
    chat_id: int
    thread_id: int | None
    outcome: OfficerOutcome = field(default_factory=OfficerOutcome)

    @property
    def chat_destination(self) -> str:
        suffix = f"/{self.thread_id}" if self.thread_id is not None else ""
        return f"chat:{self.chat_id}{suffix}"

    @property
    def actor(self) -> dict[str, Any]:
        return {"officer_id": self.officer.id if self.officer else None}


class Triage:
    def __init__(
        self,
        *,
        locale: str = "vi",
        queues: QueueMap | None = None,
        keyring: Keyring | None = None,
        rewards: RewardSettings | None = None,
        instructions: PayoutInstructions | None = None,
        rewards_chat: tuple[int, int | None] | None = None,
    ) -> None:
        self.locale = locale
        self.queues = queues or QueueMap()
        self.keyring = keyring
        self.reward_settings = rewards or RewardSettings()
        self.instructions = instructions or PayoutInstructions()
        #: Where rewards are decided; the duty queue when not configured.
        if rewards_chat is None and self.queues.duty is not None:
            rewards_chat = (self.queues.duty.chat_id, self.queues.duty.thread_id)
        self.rewards_chat = rewards_chat

    # ------------------------------------------------------------------ helpers

    def _t(self, key: str, **values: object) -> str:
        return t(self.locale, key, **values)

    def _deny(self, act: _Act, key: str = "triage.not_permitted") -> OfficerOutcome:
        act.outcome.notice = self._t(key)
        act.outcome.alert = True
        return act.outcome

    def _notice(self, act: _Act, key: str, **values: object) -> OfficerOutcome:
        act.outcome.notice = self._t(key, **values)
        return act.outcome

    def queue_of(self, report: Report) -> Queue | None:
        if report.queue_key:
            queue = self.queues.by_key(report.queue_key)
            if queue is not None:
                return queue
        return self.queues.resolve(report.unit_code)

    def _queue_key(self, report: Report) -> str | None:
        queue = self.queue_of(report)
        return queue.key if queue is not None else None

    def _say(
        self,
        act: _Act,
        text: str,
        *,
        report_id: int | None = None,
        force_reply: bool = False,
        buttons: list[list[dict[str, str]]] | None = None,
    ) -> None:
        """A message to the officers' chat, through the outbox (it counts in the group budget)."""
        row = Outbox(act.session).enqueue(
            kind="chat_text",
            destination=act.chat_destination,
            payload={
                "text": text,
                "force_reply": force_reply,
                "reply_to_report": report_id,
                "buttons": buttons,
            },
            report_id=report_id,
        )
        row.priority = PRIORITY_CHAT

    async def _officer_state(self, act: _Act) -> Conversation | None:
        if act.officer is None:
            return None
        key = f"o:{act.officer.id}:{act.chat_id}"
        return await Conversations(act.session).get_or_create(key, self.locale)

    async def _set_pending(self, act: _Act, pending: dict[str, Any] | None) -> None:
        state = await self._officer_state(act)
        if state is None:
            return
        data = dict(state.data or {})
        if pending is None:
            data.pop("pending", None)
        else:
            data["pending"] = pending
        state.data = data
        state.state = "pending" if pending else "idle"
        state.updated_at = utcnow()
        flag_modified(state, "data")

    # ------------------------------------------------------------------ presses

    async def handle_press(self, session: AsyncSession, press: OfficerPress) -> OfficerOutcome:
        if not await UpdateLog(session).claim(press.channel, press.update_id):
            raise DuplicateOfficerUpdate(press.update_id)
        officer = await Registry(session).by_telegram(press.user_id)
        act = _Act(session, officer, press.channel, press.chat_id, press.thread_id)
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
        queue_key = self._queue_key(report)
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

    def _refresh(
        self, act: _Act, report: Report, post: CardPost | None = None, mode: str | None = None
    ) -> None:
        if mode is not None and post is not None:
            act.outcome.refresh.append(
                CardRefresh(report.id, mode, chat_id=post.chat_id, message_id=post.message_id)
            )
        else:
            act.outcome.refresh.append(CardRefresh(report.id))

    def _actions(self, act: _Act) -> ReportActions:
        assert act.officer is not None
        return ReportActions(act.session, act.officer, self, via="chat")

    async def _act(
        self, act: _Act, report: Report, work: Awaitable[object], notice: str, **values: object
    ) -> OfficerOutcome:
        """Run a shared report action; a refusal becomes an alert, success a notice."""
        try:
            await work
        except ActionError as refused:
            return self._deny_with(act, refused.key, **refused.values)
        self._refresh(act, report)
        return self._notice(act, notice, **values)

    async def _press_ack(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        work = self._actions(act).acknowledge(report)
        return await self._act(act, report, work, "triage.acknowledged")

    async def _press_open(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        waiting = await act.session.scalar(
            select(OutboxMessage.id).where(
                OutboxMessage.report_id == report.id,
                OutboxMessage.kind == "report_card",
                OutboxMessage.destination == act.chat_destination,
                OutboxMessage.status.in_(("pending", "sending")),
            )
        )
        if waiting is not None:
            return self._notice(act, "triage.open_already")
        row = Outbox(act.session).enqueue(
            kind="report_card",
            destination=act.chat_destination,
            payload={"report_id": report.id},
            report_id=report.id,
        )
        row.priority = PRIORITY_EMERGENCY if report.kind == "emergency" else PRIORITY_OPEN
        Reports(act.session).add_event(
            report,
            action="opened",
            actor_kind="officer",
            actor_id=act.officer.id if act.officer else None,
        )
        return self._notice(act, "triage.opening", code=format_code(report.code))

    async def _press_claim(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        return await self._act(act, report, self._actions(act).claim(report), "triage.claimed")

    def _deny_with(self, act: _Act, key: str, **values: object) -> OfficerOutcome:
        act.outcome.notice = self._t(key, **values)
        act.outcome.alert = True
        return act.outcome

    async def _press_progress(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        work = self._actions(act).progress(report)
        return await self._act(act, report, work, "triage.in_progress")

    async def _press_ask(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        problem = await relay_problem(act.session, report)
        if problem:
            return self._deny(act, problem)
        await self._set_pending(act, {"action": "ask", "report_id": report.id})
        self._say(
            act,
            self._t("triage.prompt.ask", code=format_code(report.code)),
            report_id=report.id,
            force_reply=True,
        )
        return self._notice(act, "triage.prompt.sent")

    async def _press_transfer(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        self._refresh(act, report, post, mode="transfer")
        return self._notice(act, "triage.pick_queue")

    async def _press_transfer_to(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        target = self.queues.by_key(arg or "")
        if target is None:
            return self._deny(act, "triage.unknown_button")
        work = self._actions(act).transfer(report, target.key)
        return await self._act(act, report, work, "triage.transferred", queue=target.name)

    async def _press_resolve(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        self._refresh(act, report, post, mode="outcomes")
        return self._notice(act, "triage.pick_outcome")

    async def _press_outcome(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        if arg not in OUTCOMES or arg == "duplicate":
            return self._deny(act, "triage.unknown_button")
        await self._set_pending(
            act, {"action": "subjects", "report_id": report.id, "outcome": arg}
        )
        self._say(
            act,
            self._t(
                "triage.prompt.subjects",
                code=format_code(report.code),
                outcome=self._t(f"outcome.{arg}"),
            ),
            report_id=report.id,
            force_reply=True,
        )
        self._refresh(act, report)
        return self._notice(act, "triage.prompt.sent")

    async def _press_arrest(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        state = await self._officer_state(act)
        pending = (state.data or {}).get("pending") if state else None
        if (
            not isinstance(pending, dict)
            or pending.get("action") != "arrest"
            or pending.get("report_id") != report.id
            or arg not in ("y", "n")
        ):
            return self._deny(act, "triage.stale_button")
        await self._set_pending(act, None)
        work = self._actions(act).resolve(
            report, pending["outcome"], str(pending["subjects"]), arg == "y"
        )
        return await self._act(act, report, work, "triage.resolved")

    async def _press_reject(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        await self._set_pending(act, {"action": "reject", "report_id": report.id})
        self._say(
            act,
            self._t("triage.prompt.reject", code=format_code(report.code)),
            report_id=report.id,
            force_reply=True,
        )
        return self._notice(act, "triage.prompt.sent")

    async def _press_duplicate(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        await self._set_pending(act, {"action": "duplicate", "report_id": report.id})
        self._say(
            act,
            self._t("triage.prompt.duplicate", code=format_code(report.code)),
            report_id=report.id,
            force_reply=True,
        )
        self._refresh(act, report)
        return self._notice(act, "triage.prompt.sent")

    async def _press_back(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        self._refresh(act, report)
        return act.outcome

    # ------------------------------------------------------------------ messages

    async def handle_message(
        self, session: AsyncSession, message: OfficerMessage
    ) -> OfficerOutcome:
        if not await UpdateLog(session).claim(message.channel, message.update_id):
            raise DuplicateOfficerUpdate(message.update_id)
        registry = Registry(session)
        officer = await registry.by_telegram(message.user_id)
        act = _Act(session, officer, message.channel, message.chat_id, message.thread_id)
        queue = self.queues.by_chat(message.chat_id, message.thread_id)
        if message.command is not None:
            return await self._command(act, message, queue)
        if officer is None or not officer.active:
            return act.outcome  # members chatting among themselves: not the bot's business
        state = await self._officer_state(act)
        pending = (state.data or {}).get("pending") if state else None
        if isinstance(pending, dict) and message.reply_to_is_bot:
            return await self._answer_pending(act, message, pending)
        if message.reply_to_message_id is not None:
            post = await session.scalar(
                select(CardPost).where(
                    CardPost.chat_id == message.chat_id,
                    CardPost.message_id == message.reply_to_message_id,
                    CardPost.kind == "card",
                )
            )
            if post is not None and message.text:
                report = await session.get(Report, post.report_id)
                if report is not None:
                    return await self._relay_question(act, report, message.text)
        return act.outcome

    async def _answer_pending(
        self, act: _Act, message: OfficerMessage, pending: dict[str, Any]
    ) -> OfficerOutcome:
        report = await act.session.get(Report, pending.get("report_id"))
        if report is None:
            await self._set_pending(act, None)
            return act.outcome
        if not may(
            act.officer,
            _PENDING_PERMISSION.get(pending.get("action", ""), "view"),
            self._queue_key(report),
        ):
            await self._set_pending(act, None)
            self._say(act, self._t("triage.not_permitted"))
            return act.outcome
        action = pending.get("action")
        if report.status in CLOSED_STATUSES and action not in ("reward", "reward_decision"):
            await self._set_pending(act, None)
            self._say(act, self._t("triage.closed"), report_id=report.id)
            return act.outcome
        text = clean_text(message.text or "")
        action = pending.get("action")
        if action == "ask":
            await self._set_pending(act, None)
            return await self._relay_question(act, report, text)
        if action == "reject":
            try:
                await self._actions(act).reject(report, text)
            except ActionError:
                self._say(
                    act,
                    self._t("triage.prompt.reject_again", limit=REASON_MAX),
                    report_id=report.id,
                    force_reply=True,
                )
                return act.outcome
            await self._set_pending(act, None)
            self._refresh(act, report)
            self._say(
                act, self._t("triage.rejected", code=format_code(report.code)), report_id=report.id
            )
            return act.outcome
        if action == "reward":
            return await self._reward_proposal(act, report, text)
        if action == "reward_decision":
            return await self._reward_decision(act, report, pending, text)
        if action == "duplicate":
            try:
                await self._actions(act).resolve(report, "duplicate", "", False, text)
            except ActionError:
                self._say(
                    act,
                    self._t("triage.prompt.duplicate_again"),
                    report_id=report.id,
                    force_reply=True,
                )
                return act.outcome
            await self._set_pending(act, None)
            self._refresh(act, report)
            original = await act.session.get(Report, report.duplicate_of_id)
            self._say(
                act,
                self._t(
                    "triage.duplicate_done",
                    code=format_code(report.code),
                    original=format_code(original.code if original else "?"),
                ),
                report_id=report.id,
            )
            return act.outcome
        if action == "subjects":
            if not text.isascii() or not text.isdigit() or len(text) > 5:
                self._say(
                    act,
                    self._t("triage.prompt.subjects_again"),
                    report_id=report.id,
                    force_reply=True,
                )
                return act.outcome
            await self._set_pending(act, {**pending, "action": "arrest", "subjects": int(text)})
            self._say(
                act,
                self._t("triage.prompt.arrest", code=format_code(report.code)),
                report_id=report.id,
                buttons=[
                    [
                        {
                            "label": self._t("card.btn.yes"),
                            "data": card_actions.data("arr", report.id, "y"),
                        },
                        {
                            "label": self._t("card.btn.no"),
                            "data": card_actions.data("arr", report.id, "n"),
                        },
                    ]
                ],
            )
            return act.outcome
        await self._set_pending(act, None)
        return act.outcome

    async def _relay_question(self, act: _Act, report: Report, text: str) -> OfficerOutcome:
        try:
            await self._actions(act).ask(report, text)
        except ActionError as refused:
            if refused.key == "admin.error.question":
                await self._set_pending(act, {"action": "ask", "report_id": report.id})
                self._say(
                    act,
                    self._t("triage.prompt.ask_again", limit=QUESTION_MAX),
                    report_id=report.id,
                    force_reply=True,
                )
            else:
                self._say(act, self._t(refused.key, **refused.values), report_id=report.id)
            return act.outcome
        self._refresh(act, report)
        self._say(
            act,
            self._t("triage.question_sent", code=format_code(report.code)),
            report_id=report.id,
        )
        return act.outcome

    # ------------------------------------------------------------------ rewards

    def _rewards(self, session: AsyncSession) -> Rewards:
        if self.keyring is None:
            raise RuntimeError("the rewards need the keyring")
        return Rewards(session, keyring=self.keyring, settings=self.reward_settings)

    def _rewards_destination(self) -> str:
        if self.rewards_chat is None:
            return "duty"
        chat_id, thread_id = self.rewards_chat
        return f"chat:{chat_id}" + (f"/{thread_id}" if thread_id is not None else "")

    async def _press_reward(
        self, act: _Act, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        await self._set_pending(act, {"action": "reward", "report_id": report.id})
        self._say(
            act,
            self._t(
                "reward.prompt.propose",
                code=format_code(report.code),
                cap=format_vnd(self.reward_settings.cap_vnd),
            ),
            report_id=report.id,
            force_reply=True,
        )
        return self._notice(act, "triage.prompt.sent")

    async def _reward_proposal(self, act: _Act, report: Report, text: str) -> OfficerOutcome:
        amount_text, _, reason = text.partition(" ")
        try:
            reward = await self._actions(act).propose_reward(report, amount_text, reason)
        except ActionError as refused:
            again = refused.key in ("reward.bad_amount", "reward.bad_reason")
            self._say(
                act,
                self._t(refused.key, **refused.values),
                report_id=report.id,
                force_reply=again,
            )
            if not again:
                await self._set_pending(act, None)
            return act.outcome
        await self._set_pending(act, None)
        values = {"code": format_code(report.code), "amount": format_vnd(reward.amount_vnd)}
        self._say(act, self._t("reward.proposed_done", **values), report_id=report.id)
        self._refresh(act, report)
        return act.outcome

    def post_reward_proposal(
        self, session: AsyncSession, report: Report, reward: Reward, proposer: Officer
    ) -> None:
        """Put a new proposal before the commanders in the rewards chat, with its buttons."""
        values = {"code": format_code(report.code), "amount": format_vnd(reward.amount_vnd)}
        row = Outbox(session).enqueue(
            kind="chat_text",
            destination=self._rewards_destination(),
            payload={
                "text": self._t(
                    "reward.proposed_post",
                    reason=reward.reason,
                    officer=proposer.display_name,
                    **values,
                ),
                "force_reply": False,
                "reply_to_report": None,
                "buttons": [
                    [
                        {"label": self._t("reward.btn.approve"), "data": f"w:ok:{reward.id}"},
                        {"label": self._t("reward.btn.reject"), "data": f"w:no:{reward.id}"},
                    ]
                ],
            },
            report_id=report.id,
        )
        row.priority = PRIORITY_CHAT

    async def _reward_press(self, act: _Act, press: OfficerPress) -> OfficerOutcome:
        parts = press.data.split(":")
        if (
            len(parts) != 3
            or parts[1] not in ("ok", "no")
            or not parts[2].isdigit()
            or len(parts[2]) > 18
        ):
            return self._deny(act, "triage.unknown_button")
        reward = await act.session.get(Reward, int(parts[2]))
        if reward is None:
            return self._deny(act, "triage.unknown_button")
        post = await act.session.scalar(
            select(CardPost).where(
                CardPost.chat_id == press.chat_id,
                CardPost.message_id == press.message_id,
                CardPost.report_id == reward.report_id,
            )
        )
        if post is None or self.rewards_chat is None or press.chat_id != self.rewards_chat[0]:
            return self._deny(act, "reward.not_reward_chat")
        report = await act.session.get(Report, reward.report_id)
        assert report is not None
        if not may(act.officer, "reward_decide", self._queue_key(report)):
            return self._deny(act)
        if act.officer is not None and reward.proposed_by_id == act.officer.id:
            return self._deny(act, "reward.four_eyes")
        if reward.status != "proposed":
            return self._deny(act, f"reward.already_{reward.status}")
        approve = parts[1] == "ok"
        await self._set_pending(
            act,
            {
                "action": "reward_decision",
                "report_id": report.id,
                "reward_id": reward.id,
                "approve": approve,
            },
        )
        decision = self._t("reward.decision.approve" if approve else "reward.decision.reject")
        self._say(
            act,
            self._t(
                "reward.prompt.reason",
                decision=decision,
                code=format_code(report.code),
                amount=format_vnd(reward.amount_vnd),
            ),
            report_id=report.id,
            force_reply=True,
        )
        return self._notice(act, "triage.prompt.sent")

    async def _reward_decision(
        self, act: _Act, report: Report, pending: dict[str, Any], text: str
    ) -> OfficerOutcome:
        assert act.officer is not None
        rewards = self._rewards(act.session)
        try:
            reward = await rewards.decide(
                int(pending["reward_id"]),
                act.officer,
                approve=bool(pending["approve"]),
                reason=text,
                queue_key=self._queue_key(report),
            )
        except RewardError as refused:
            self._say(
                act,
                self._t(refused.key, **refused.values),
                report_id=report.id,
                force_reply=refused.key == "reward.bad_reason",
            )
            if refused.key != "reward.bad_reason":
                await self._set_pending(act, None)
            return act.outcome
        await self._set_pending(act, None)
        values = {"code": format_code(report.code), "amount": format_vnd(reward.amount_vnd)}
        if reward.status == "approved":
            self._say(act, self._t("reward.approved_done", **values), report_id=report.id)
            if report.contact_mode != "none":
                await self.notify_reward(act.session, report, reward)
        else:
            self._say(act, self._t("reward.rejected_done", **values), report_id=report.id)
        self._refresh(act, report)
        return act.outcome

    async def notify_reward(self, session: AsyncSession, report: Report, reward: Reward) -> None:
        """Tell the tipster of an approved reward, with a new one-time claim code.

        The code travels encrypted in the outbox row and is wiped once delivered; only its
        keyed hash stays in the database.
        """
        assert self.keyring is not None
        code = await self._rewards(session).issue_claim_code(reward)
        Outbox(session).enqueue(
            kind="citizen_message",
            destination=f"report:{report.id}",
            payload={
                "key": "reward.citizen.approved",
                "values": {
                    "code": format_code(report.code),
                    "amount": format_vnd(reward.amount_vnd),
                    "instructions": self.instructions.for_unit(report.unit_code)
                    or t(report.locale, "reward.citizen.default_instructions"),
                },
                "secret": self.keyring.encrypt({"claim": format_claim_code(code)}),
            },
            report_id=report.id,
        ).priority = PRIORITY_CHAT

    async def _cmd_payout(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        if act.officer is None or not act.officer.active:
            return self._say_denied(act)
        parts = message.args.split()
        if len(parts) < 2:
            self._say(act, self._t("reward.payout_usage"))
            return act.outcome
        claim, reference = parts[0], " ".join(parts[1:])
        try:
            reward = await self._actions(act).pay_reward(claim, reference)
        except ActionError as refused:
            self._say(act, self._t(refused.key, **refused.values))
            return act.outcome
        report = await act.session.get(Report, reward.report_id)
        assert report is not None
        self._say(
            act,
            self._t(
                "reward.paid_done",
                code=format_code(report.code),
                amount=format_vnd(reward.amount_vnd),
                reference=reference,
            ),
        )
        self._refresh(act, report)
        return act.outcome

    # ------------------------------------------------------------------ commands

    async def _command(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        command = (message.command or "").lower()
        handler = _COMMANDS.get(command)
        if handler is None:
            return act.outcome  # another bot's command, or a typo: stay quiet in groups
        anywhere = command == "payout" or (act.officer is not None and act.officer.role == "admin")
        if queue is None and not anywhere:
            if act.officer is not None and act.officer.active:
                self._say(act, self._t("triage.not_a_queue"))
            return act.outcome
        return await handler(self, act, message, queue)

    def _viewable_queue(self, act: _Act, queue: Queue | None) -> Queue | None:
        """This chat's queue if the officer may look at it; otherwise say why and ``None``."""
        queue = self._queue_or_say(act, queue)
        if queue is not None and not may(act.officer, "view", queue.key):
            self._say_denied(act)
            return None
        return queue

    def _queue_or_say(self, act: _Act, queue: Queue | None) -> Queue | None:
        if queue is None:
            self._say(act, self._t("triage.not_a_queue"))
        return queue

    async def _cmd_queue(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        queue = self._viewable_queue(act, queue)
        if queue is None:
            return act.outcome
        arg = message.args.strip()
        page = int(arg) if arg.isdigit() and len(arg) <= 6 else 1
        text, buttons = await self.queue_page(act.session, queue, page=max(page, 1), mine=None)
        self._say(act, text, buttons=buttons)
        return act.outcome

    def _say_denied(self, act: _Act) -> OfficerOutcome:
        self._say(act, self._t("triage.not_permitted"))
        return act.outcome

    async def queue_page(
        self, session: AsyncSession, queue: Queue, *, page: int, mine: Officer | None
    ) -> tuple[str, list[list[dict[str, str]]]]:
        """One page of a queue's open reports, oldest first, with paging buttons."""
        stmt = select(Report).where(Report.status.not_in(tuple(CLOSED_STATUSES)))
        if mine is not None:
            stmt = stmt.where(Report.assigned_officer_id == mine.id)
        else:
            stmt = stmt.where(self._in_queue(queue))
        total = await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(page, pages)
        rows = (
            await session.scalars(
                stmt.order_by(Report.created_at, Report.id)
                .offset((page - 1) * PAGE_SIZE)
                .limit(PAGE_SIZE)
            )
        ).all()
        title_key = "triage.mine_title" if mine is not None else "triage.queue_title"
        lines = [self._t(title_key, queue=queue.name, total=total, page=page, pages=pages)]
        for report in rows:
            kind = "🚑" if report.kind == "emergency" else "•"
            category = (
                self._t(f"cat.{report.category}")
                if report.category in CATEGORIES
                else self._t("officer.card.category_emergency")
            )
            lines.append(
                self._t(
                    "triage.queue_line",
                    mark=kind,
                    code=format_code(report.code),
                    category=category,
                    status=self._t(f"officer.status.{report.status}")
                    if report.status in STATUSES
                    else report.status,
                    received=localtime.format_short(report.created_at),
                )
            )
        if not rows:
            lines.append(self._t("triage.queue_empty"))
        scope = "m" if mine is not None else "q"
        nav = []
        if page > 1:
            nav.append({"label": self._t("triage.page_prev"), "data": f"q:{scope}:{page - 1}"})
        if page < pages:
            nav.append({"label": self._t("triage.page_next"), "data": f"q:{scope}:{page + 1}"})
        return "\n".join(lines), [nav] if nav else []

    def _in_queue(self, queue: Queue) -> Any:
        if queue.is_duty:
            queued = [u for q in self.queues.queues for u in q.units]
            unit_cond = (Report.unit_code.is_(None)) | (
                Report.unit_code.not_in(queued) if queued else True
            )
            return ((Report.queue_key.is_(None)) & unit_cond) | (Report.queue_key == "duty")
        return ((Report.queue_key.is_(None)) & Report.unit_code.in_(sorted(queue.units))) | (
            Report.queue_key == queue.key
        )

    async def _page_press(self, act: _Act, press: OfficerPress) -> OfficerOutcome:
        parts = press.data.split(":")
        queue = self.queues.by_chat(press.chat_id, press.thread_id)
        if (
            len(parts) != 3
            or parts[1] not in ("q", "m")
            or not parts[2].isdigit()
            or len(parts[2]) > 6
            or queue is None
        ):
            return self._deny(act, "triage.unknown_button")
        if not may(act.officer, "view", queue.key):
            return self._deny(act)
        mine = act.officer if parts[1] == "m" else None
        act.outcome.edit = await self.queue_page(act.session, queue, page=int(parts[2]), mine=mine)
        return act.outcome

    async def _cmd_mine(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        queue = self._queue_or_say(act, queue)
        if queue is None or act.officer is None:
            return self._say_denied(act) if queue is not None else act.outcome
        if not may(act.officer, "view", queue.key):
            return self._say_denied(act)
        text, buttons = await self.queue_page(act.session, queue, page=1, mine=act.officer)
        self._say(act, text, buttons=buttons)
        return act.outcome

    async def _cmd_report(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        code = parse_code(message.args)
        report = await Reports(act.session).by_code(code) if code else None
        if report is None:
            self._say(act, self._t("triage.no_such_report"))
            return act.outcome
        if not may(act.officer, "view", self._queue_key(report)):
            return self._say_denied(act)
        row = Outbox(act.session).enqueue(
            kind="report_card",
            destination=act.chat_destination,
            payload={"report_id": report.id},
            report_id=report.id,
        )
        row.priority = PRIORITY_OPEN
        return act.outcome

    async def _cmd_stats(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        queue = self._viewable_queue(act, queue)
        if queue is None:
            return act.outcome
        now = utcnow()
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        base = select(Report).where(self._in_queue(queue), Report.created_at >= start).subquery()
        by_status = (
            await act.session.execute(select(base.c.status, func.count()).group_by(base.c.status))
        ).all()
        by_category = (
            await act.session.execute(
                select(base.c.category, base.c.kind, func.count()).group_by(
                    base.c.category, base.c.kind
                )
            )
        ).all()
        total = sum(n for _, n in by_status)
        lines = [
            self._t(
                "triage.stats_title", queue=queue.name, month=start.strftime("%m/%Y"), total=total
            )
        ]
        for status, count in sorted(
            by_status, key=lambda r: STATUSES.index(r[0]) if r[0] in STATUSES else 99
        ):
            label = self._t(f"officer.status.{status}") if status in STATUSES else status
            lines.append(f"• {label}: {count}")
        lines.append(self._t("triage.stats_by_category"))
        for category, _kind, count in sorted(by_category, key=lambda r: -r[2]):
            label = (
                self._t(f"cat.{category}")
                if category in CATEGORIES
                else self._t("officer.card.category_emergency")
            )
            lines.append(f"• {label}: {count}")
        self._say(act, "\n".join(lines))
        return act.outcome

    async def _cmd_enrol(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        if not may(act.officer, "enrol", queue.key if queue else None):
            return self._say_denied(act)
        queue = self._queue_or_say(act, queue)
        if queue is None:
            return act.outcome
        args = message.args.split()
        role = (
            args[0].lower()
            if args and args[0].lower() in ("officer", "commander", "admin")
            else "officer"
        )
        target_id = message.reply_to_user_id
        name = message.reply_to_user_name or ""
        numeric = [a for a in args if a.lstrip("-").isdigit() and len(a) <= 18]
        if target_id is None and numeric:
            target_id = int(numeric[0])
            name = " ".join(a for a in args[1:] if not a.lstrip("-").isdigit()) or f"#{target_id}"
        if target_id is None or message.reply_to_is_bot:
            self._say(act, self._t("triage.enrol_usage"))
            return act.outcome
        officer = await Registry(act.session).enrol(
            telegram_user_id=target_id,
            display_name=name or f"#{target_id}",
            role=role,
            queue_key=queue.key,
            by=act.officer,
        )
        self._say(
            act,
            self._t(
                "triage.enrolled",
                name=officer.display_name,
                role=self._t(f"role.{role}"),
                queue=queue.name,
            ),
        )
        return act.outcome

    async def _cmd_revoke(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        if not may(act.officer, "revoke", queue.key if queue else None):
            return self._say_denied(act)
        target_id = message.reply_to_user_id
        text = message.args.strip()
        if target_id is None and text.lstrip("-").isdigit() and len(text) <= 18:
            target_id = int(message.args.strip())
        registry = Registry(act.session)
        officer = await registry.by_telegram(target_id) if target_id is not None else None
        if officer is None:
            self._say(act, self._t("triage.no_such_officer"))
            return act.outcome
        await registry.revoke(officer, by=act.officer, via="chat")
        self._say(act, self._t("triage.revoked", name=officer.display_name))
        return act.outcome

    async def _cmd_officers(
        self, act: _Act, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        queue = self._viewable_queue(act, queue)
        if queue is None:
            return act.outcome
        officers = await Registry(act.session).serving(queue.key)
        lines = [self._t("triage.officers_title", queue=queue.name)]
        lines += [f"• {o.display_name} ({self._t(f'role.{o.role}')})" for o in officers]
        self._say(act, "\n".join(lines))
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
_PENDING_PERMISSION = {
    "reward": "reward_propose",
    "reward_decision": "reward_decide",
    "ask": "ask",
    "reject": "reject",
    "duplicate": "duplicate",
    "subjects": "resolve",
    "arrest": "resolve",
}
_PRESS_HANDLERS = {
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
_COMMANDS = {
    "queue": Triage._cmd_queue,
    "mine": Triage._cmd_mine,
    "report": Triage._cmd_report,
    "stats": Triage._cmd_stats,
    "enrol": Triage._cmd_enrol,
    "enroll": Triage._cmd_enrol,
    "revoke": Triage._cmd_revoke,
    "officers": Triage._cmd_officers,
    "payout": Triage._cmd_payout,
}
