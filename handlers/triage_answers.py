"""Typed answers in the officers' chat: a reply to the bot's prompt (a question for the tipster,
a reason, a count, an earlier report's code, a reward), or a reply to a card, which relays a
question to the tipster.

A question may carry a photo: the officer replies to the card (or to the question prompt) with
a photo and the question as its caption. The photo is fetched and cleaned of metadata by its
content, like all evidence, before the transaction (:meth:`TypedAnswers.prepare_photo`); it
reaches the tipster re-sent from the cleaned copy, through the outbox, with the question as its
caption and nothing about the officer (:meth:`~handlers.report_actions.ReportActions.ask`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeAlias

from handlers import card_actions
from handlers.card_actions import CLOSED_STATUSES
from handlers.citizen.base import MediaFetcher
from handlers.media import CleanImage, MediaRejected, check_declared_size, clean_evidence
from handlers.officer_events import OfficerAct, OfficerMessage, OfficerOutcome
from handlers.officers import may
from handlers.report_actions import QUESTION_MAX, REASON_MAX, ActionError
from handlers.security import format_code
from handlers.text import clean_text, substance
from handlers.triage_rewards import RewardChat
from storage.models import Report

log = logging.getLogger(__name__)

#: A photo sent with an officer's message: cleaned, or why not (``"download_failed"``,
#: ``"not_a_photo"`` or a :class:`~handlers.media.MediaRejected` reason), or none.
Photo: TypeAlias = CleanImage | str | None

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
    async def prepare_photo(self, message: OfficerMessage, fetcher: MediaFetcher | None) -> Photo:
        """The photo sent with a reply to the bot (to a card or a prompt), fetched and cleaned
        by its content; the reason as a string when it cannot be used; ``None`` without one.

        Only a reply to the bot can be a question, so nothing else is downloaded."""
        attachment = message.attachment
        if attachment is None or not message.reply_to_is_bot or fetcher is None:
            return None
        if attachment.kind not in ("photo", "document"):
            return "not_a_photo"
        try:
            check_declared_size(attachment.size)
            raw = await fetcher.fetch(attachment)
            cleaned = await asyncio.to_thread(clean_evidence, raw)
        except MediaRejected as refused:
            return refused.reason
        except Exception:  # a failed download: the officer is told, nothing is relayed
            log.warning("an officer's photo could not be downloaded", exc_info=True)
            return "download_failed"
        return cleaned if isinstance(cleaned, CleanImage) else "not_a_photo"

    async def _answer_pending(
        self,
        act: OfficerAct,
        message: OfficerMessage,
        pending: dict[str, Any],
        photo: Photo = None,
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
            return await self._relay_question(act, report, text, photo)
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

    async def _relay_question(
        self, act: OfficerAct, report: Report, text: str, photo: Photo = None
    ) -> OfficerOutcome:
        """Relay ``text`` (with ``photo``) to the tipster; say why not in the chat otherwise.

        A refused photo relays nothing (the question without its picture could mislead); a
        photo without words asks for the question, as its caption on the photo sent again."""
        if isinstance(photo, str):
            key = "triage.photo_failed" if photo == "download_failed" else "triage.photo_refused"
            self._say(act, self._t(key), report_id=report.id)
            return act.outcome
        if photo is not None and not substance(clean_text(text)):
            await self._set_pending(act, {"action": "ask", "report_id": report.id})
            self._say(
                act,
                self._t("triage.photo_needs_question", code=format_code(report.code)),
                report_id=report.id,
                force_reply=True,
            )
            return act.outcome
        await self._set_pending(act, None)
        try:
            await self._actions(act).ask(report, text, photo)
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
            self._t(
                "triage.question_photo_sent" if photo is not None else "triage.question_sent",
                code=format_code(report.code),
            ),
            report_id=report.id,
        )
        return act.outcome
