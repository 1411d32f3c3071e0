"""What every part of the officers' chat shares: answers to the pressed button, messages to the
chat through the outbox, the officer's pending typed answer, card refreshes, and the shared
:class:`~handlers.report_actions.ReportActions`.

What an officer is being asked is kept in the database (``conversations``, key
``o:<officer id>:<chat id>``), like a citizen's draft.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from sqlalchemy.orm.attributes import flag_modified

from handlers import outbox
from handlers.i18n import t
from handlers.officer_events import CardRefresh, OfficerAct, OfficerOutcome
from handlers.report_actions import ActionError, ReportActions
from handlers.triage_context import TriageContext
from handlers.triage_notify import PRIORITY_CHAT
from storage.models import CardPost, Conversation, Report
from storage.repositories import Conversations
from storage.types import utcnow


class TriageBase(TriageContext):
    def _t(self, key: str, **values: object) -> str:
        return t(self.locale, key, **values)

    def _deny(self, act: OfficerAct, key: str = "triage.not_permitted") -> OfficerOutcome:
        act.outcome.notice = self._t(key)
        act.outcome.alert = True
        return act.outcome

    def _notice(self, act: OfficerAct, key: str, **values: object) -> OfficerOutcome:
        act.outcome.notice = self._t(key, **values)
        return act.outcome

    def _deny_with(self, act: OfficerAct, key: str, **values: object) -> OfficerOutcome:
        act.outcome.notice = self._t(key, **values)
        act.outcome.alert = True
        return act.outcome

    def _say_denied(self, act: OfficerAct) -> OfficerOutcome:
        self._say(act, self._t("triage.not_permitted"))
        return act.outcome

    def _say(
        self,
        act: OfficerAct,
        text: str,
        *,
        report_id: int | None = None,
        force_reply: bool = False,
        buttons: list[list[dict[str, str]]] | None = None,
    ) -> None:
        """A message to the officers' chat, through the outbox (it counts in the group budget)."""
        outbox.enqueue(
            act.session,
            outbox.ChatTextPayload(text, force_reply, report_id, buttons),
            outbox.Destination.parse(act.chat_destination),
            report_id=report_id,
            priority=PRIORITY_CHAT,
        )

    async def _officer_state(self, act: OfficerAct) -> Conversation | None:
        if act.officer is None:
            return None
        key = f"o:{act.officer.id}:{act.chat_id}"
        return await Conversations(act.session).get_or_create(key, self.locale)

    async def _set_pending(self, act: OfficerAct, pending: dict[str, Any] | None) -> None:
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

    def _refresh(
        self,
        act: OfficerAct,
        report: Report,
        post: CardPost | None = None,
        mode: str | None = None,
    ) -> None:
        if mode is not None and post is not None:
            act.outcome.refresh.append(
                CardRefresh(report.id, mode, chat_id=post.chat_id, message_id=post.message_id)
            )
        else:
            act.outcome.refresh.append(CardRefresh(report.id))

    def _actions(self, act: OfficerAct) -> ReportActions:
        assert act.officer is not None
        return ReportActions(act.session, act.officer, self, via="chat")

    async def _act(
        self,
        act: OfficerAct,
        report: Report,
        work: Awaitable[object],
        notice: str,
        **values: object,
    ) -> OfficerOutcome:
        """Run a shared report action; a refusal becomes an alert, success a notice."""
        try:
            await work
        except ActionError as refused:
            return self._deny_with(act, refused.key, **refused.values)
        self._refresh(act, report)
        return self._notice(act, notice, **values)
