"""The buttons on a report card: claim, acknowledge, progress, ask, transfer, resolve (outcome,
counts, assisted arrest), reject, duplicate, re-open. Each state change is a
:class:`~handlers.report_actions.ReportActions` call; a prompt for a typed answer is left pending.
"""

from __future__ import annotations

from handlers.domain import OUTCOMES
from handlers.officer_events import OfficerAct, OfficerOutcome
from handlers.report_actions import ActionError, relay_problem
from handlers.security import format_code
from handlers.triage_base import TriageBase
from storage.models import CardPost, Report


class CardPresses(TriageBase):
    async def _press_ack(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        work = self._actions(act).acknowledge(report)
        return await self._act(act, report, work, "triage.acknowledged")

    async def _press_open(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        try:
            opened = await self._actions(act).open_card(report, act.chat_destination)
        except ActionError as refused:
            return self._deny_with(act, refused.key, **refused.values)
        if not opened:
            return self._notice(act, "triage.open_already")
        return self._notice(act, "triage.opening", code=format_code(report.code))

    async def _press_claim(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        return await self._act(act, report, self._actions(act).claim(report), "triage.claimed")

    async def _press_progress(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        work = self._actions(act).progress(report)
        return await self._act(act, report, work, "triage.in_progress")

    async def _press_ask(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
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
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        self._refresh(act, report, post, mode="transfer")
        return self._notice(act, "triage.pick_queue")

    async def _press_transfer_to(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        target = self.queues.by_key(arg or "")
        if target is None:
            return self._deny(act, "triage.unknown_button")
        work = self._actions(act).transfer(report, target.key)
        return await self._act(act, report, work, "triage.transferred", queue=target.name)

    async def _press_resolve(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        self._refresh(act, report, post, mode="outcomes")
        return self._notice(act, "triage.pick_outcome")

    async def _press_outcome(
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
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
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
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
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
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
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
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
        self, act: OfficerAct, report: Report, arg: str | None, post: CardPost
    ) -> OfficerOutcome:
        self._refresh(act, report)
        return act.outcome
