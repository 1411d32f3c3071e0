"""Commands in an officers' chat: ``/queue`` and ``/mine`` (paged), ``/report CODE``, ``/stats``,
``/officers``; admins' ``/enrol`` and ``/revoke``; ``/payout CLAIM-CODE REFERENCE``.

The duty queue is a queue like any other: every command works in its chat.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from config.queues import Queue
from handlers import localtime, outbox
from handlers.card_actions import CLOSED_STATUSES
from handlers.domain import CATEGORIES, STATUSES
from handlers.officer_events import OfficerAct, OfficerMessage, OfficerOutcome, OfficerPress
from handlers.officers import Registry, may
from handlers.queue_scope import in_queue
from handlers.report_actions import PRIORITY_OPEN, ActionError
from handlers.rewards import format_vnd
from handlers.security import format_code, parse_code
from handlers.triage_base import TriageBase
from storage.models import Officer, Report
from storage.repositories import Reports

PAGE_SIZE = 10


class QueueCommands(TriageBase):
    async def _command(
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
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

    def _viewable_queue(self, act: OfficerAct, queue: Queue | None) -> Queue | None:
        """This chat's queue if the officer may look at it; otherwise say why and ``None``."""
        queue = self._queue_or_say(act, queue)
        if queue is not None and not may(act.officer, "view", queue.key):
            self._say_denied(act)
            return None
        return queue

    def _queue_or_say(self, act: OfficerAct, queue: Queue | None) -> Queue | None:
        if queue is None:
            self._say(act, self._t("triage.not_a_queue"))
        return queue

    async def _cmd_queue(
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        queue = self._viewable_queue(act, queue)
        if queue is None:
            return act.outcome
        arg = message.args.strip()
        page = int(arg) if arg.isdigit() and len(arg) <= 6 else 1
        text, buttons = await self.queue_page(act.session, queue, page=max(page, 1), mine=None)
        self._say(act, text, buttons=buttons)
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
        return in_queue(self.queues, queue)

    async def _page_press(self, act: OfficerAct, press: OfficerPress) -> OfficerOutcome:
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
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
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
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        code = parse_code(message.args)
        report = await Reports(act.session).by_code(code) if code else None
        if report is None:
            self._say(act, self._t("triage.no_such_report"))
            return act.outcome
        if not may(act.officer, "view", self.queue_key(report)):
            return self._say_denied(act)
        outbox.enqueue(
            act.session,
            outbox.CardPayload(report_id=report.id),
            outbox.Destination.parse(act.chat_destination),
            report_id=report.id,
            priority=PRIORITY_OPEN,
        )
        return act.outcome

    async def _cmd_stats(
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        queue = self._viewable_queue(act, queue)
        if queue is None:
            return act.outcome
        # This month in Vietnam's time (the database keeps UTC).
        start = localtime.local_midnight(localtime.today().replace(day=1))
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
                "triage.stats_title",
                queue=queue.name,
                month=localtime.format_month(start),
                total=total,
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
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
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
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
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
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
    ) -> OfficerOutcome:
        queue = self._viewable_queue(act, queue)
        if queue is None:
            return act.outcome
        officers = await Registry(act.session).serving(queue.key)
        lines = [self._t("triage.officers_title", queue=queue.name)]
        lines += [f"• {o.display_name} ({self._t(f'role.{o.role}')})" for o in officers]
        self._say(act, "\n".join(lines))
        return act.outcome

    async def _cmd_payout(
        self, act: OfficerAct, message: OfficerMessage, queue: Queue | None
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


_COMMANDS = {
    "queue": QueueCommands._cmd_queue,
    "mine": QueueCommands._cmd_mine,
    "report": QueueCommands._cmd_report,
    "stats": QueueCommands._cmd_stats,
    "enrol": QueueCommands._cmd_enrol,
    "enroll": QueueCommands._cmd_enrol,
    "revoke": QueueCommands._cmd_revoke,
    "officers": QueueCommands._cmd_officers,
    "payout": QueueCommands._cmd_payout,
}
