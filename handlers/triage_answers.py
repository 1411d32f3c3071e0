"""Typed answers in the officers' chat: a reply to the bot's prompt (a question for the tipster,
a reason, a count, an earlier report's code, a reward), or a reply to a card, which relays a
question to the tipster.
"""

from __future__ import annotations

from typing import Any

from handlers import card_actions
from handlers.card_actions import CLOSED_STATUSES
from handlers.officer_events import OfficerAct, OfficerMessage, OfficerOutcome
from handlers.officers import may
from handlers.report_actions import QUESTION_MAX, REASON_MAX, ActionError
from handlers.security import format_code
from handlers.text import clean_text
from handlers.triage_rewards import RewardChat
from storage.models import Report

#: The permission each pending typed answer needs when it arrives.
PENDING_PERMISSION = {
    "reward": "reward_propose",
    "reward_decision": "reward_decide",
    "ask": "ask",
    "reject": "reject",
    "duplicate": "duplicate",
    "subjects": "resolve",
    "arrest": "resolve",
}


class TypedAnswers(RewardChat):
    async def _answer_pending(
        self, act: OfficerAct, message: OfficerMessage, pending: dict[str, Any]
    ) -> OfficerOutcome:
        report = await act.session.get(Report, pending.get("report_id"))
        if report is None:
            await self._set_pending(act, None)
            return act.outcome
        if not may(
            act.officer,
            PENDING_PERMISSION.get(pending.get("action", ""), "view"),
            self.queue_key(report),
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

    async def _relay_question(self, act: OfficerAct, report: Report, text: str) -> OfficerOutcome:
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
