"""Rewards in the chat: an officer proposes on a resolved report's card; a commander decides in
the rewards chat (never their own proposal), with a reason. Every step goes through
:class:`~handlers.report_actions.ReportActions`, as in the web panel.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from handlers.officer_events import OfficerAct, OfficerOutcome, OfficerPress
from handlers.officers import may
from handlers.report_actions import ActionError
from handlers.rewards import format_vnd
from handlers.security import format_code
from handlers.triage_base import TriageBase
from handlers.triage_notify import COMMENDATION_PRESSES
from storage.models import CardPost, Report, Reward


class RewardChat(TriageBase):
    async def _press_reward(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
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

    async def _reward_proposal(self, act: OfficerAct, report: Report, text: str) -> OfficerOutcome:
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

    async def _reward_press(self, act: OfficerAct, press: OfficerPress) -> OfficerOutcome:
        parts = press.data.split(":")
        if (
            len(parts) != 3
            or parts[1] not in ("ok", "no", *COMMENDATION_PRESSES)
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
        if not may(act.officer, "reward_decide", self.queue_key(report)):
            return self._deny(act)
        if act.officer is not None and reward.proposed_by_id == act.officer.id:
            return self._deny(act, "reward.four_eyes")
        if reward.status != "proposed":
            return self._deny(act, f"reward.already_{reward.status}")
        approve = parts[1] != "no"
        commendation = COMMENDATION_PRESSES.get(parts[1])
        await self._set_pending(
            act,
            {
                "action": "reward_decision",
                "report_id": report.id,
                "reward_id": reward.id,
                "approve": approve,
                "commendation": commendation,
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
        self, act: OfficerAct, report: Report, pending: dict[str, Any], text: str
    ) -> OfficerOutcome:
        try:
            reward = await self._actions(act).decide_reward(
                int(pending["reward_id"]),
                approve=bool(pending["approve"]),
                reason=text,
                commendation=pending.get("commendation"),
            )
        except ActionError as refused:
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
        done = "reward.approved_done" if reward.status == "approved" else "reward.rejected_done"
        self._say(act, self._t(done, **values), report_id=report.id)
        self._refresh(act, report)
        return act.outcome
