"""The monthly statistics report, posted by itself: on the first of each month (local time,
``TINBAO_TIMEZONE``) the month before's report goes to the duty chat, or the chat
``TINBAO_STATS_REPORT_CHAT`` names, as a PDF through the outbox.

How it is kept exactly once:

* one ``timer.monthly_report`` outbox row per month, ``dedupe_key = timer:monthly_report:<month>``,
  due at local midnight on the first of the month after. The worker's start (and its maintenance
  every 15 minutes) adds the current month's with ``INSERT ... ON CONFLICT DO NOTHING``
  (:meth:`MonthlyReportSchedule.ensure`), so restarts and several workers add it once;
* the timer worker fires a due row once across processes, in the transaction that marks it
  ``done`` (:mod:`bot.delivery.timers`). Firing (:meth:`MonthlyReportSchedule.fire`) adds, in
  that transaction, the ``document`` row for that month (``dedupe_key =
  document:stats_report:<month>``: one posting per month whatever happens) and the next month's
  timer;
* a worker that was down at midnight finds the timer overdue when it is back and fires it then;
  down for longer, each missed month's timer fires in turn (each adds the next, already due).

The ``document`` row names the report and its month, not the file: the delivery worker renders
the PDF when it sends it (:class:`handlers.outbox.DocumentRenderer`), so the row stays a few
bytes, and a send that fails is retried like any other. Turned off, a timer that comes due posts
nothing and the chain stops; turned on again, the next start adds the current month's.
"""

from __future__ import annotations

import logging
from datetime import date, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import localtime
from handlers.outbox import (
    Destination,
    DocumentPayload,
    MonthlyReportTimerPayload,
    enqueue_once,
)
from storage.models import OutboxMessage

log = logging.getLogger(__name__)

#: The document the schedule posts (``DocumentPayload.document``).
MONTHLY_REPORT = "stats_report"


def destination_of(setting: str) -> Destination | None:
    """``TINBAO_STATS_REPORT_CHAT``: ``duty`` (the default), ``off``, or a chat id with an
    optional forum topic (``-1001234567890`` or ``-1001234567890/42``). ``ValueError`` else."""
    value = setting.strip().lower()
    if value in ("", "off", "none", "0"):
        return None
    if value == "duty":
        return Destination.duty()
    chat, _, thread = value.partition("/")
    try:
        return Destination.chat(int(chat), int(thread) if thread else None)
    except ValueError:
        raise ValueError(
            f"TINBAO_STATS_REPORT_CHAT {setting!r}: expected duty, off, or a chat id such as "
            "-1001234567890 (with /<topic id> for a forum topic)"
        ) from None


def month_of(moment: datetime) -> str:
    """The local month of ``moment`` (``2026-05``)."""
    local = localtime.to_local(moment)
    return f"{local.year:04d}-{local.month:02d}"


def month_after(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def due_after(period: str) -> datetime:
    """Local midnight on the first of the month after ``period``, in UTC."""
    following = month_after(period)
    return localtime.local_midnight(date(int(following[:4]), int(following[5:7]), 1))


class MonthlyReportSchedule:
    """Keeps the chain of monthly timers, and turns a fired one into the month's posting."""

    def __init__(self, destination: Destination | None, locale: str) -> None:
        self.destination = destination
        self.locale = locale

    @property
    def enabled(self) -> bool:
        return self.destination is not None

    async def ensure(self, session: AsyncSession, now: datetime) -> bool:
        """The current month's timer, unless it is there (or the schedule is off); in the
        caller's transaction. True when added."""
        if not self.enabled:
            return False
        return await self._timer(session, month_of(now))

    async def _timer(self, session: AsyncSession, period: str) -> bool:
        return await enqueue_once(
            session,
            MonthlyReportTimerPayload(period=period),
            Destination.timer(),
            dedupe_key=f"timer:monthly_report:{period}",
            due=due_after(period),
        )

    async def fire(self, session: AsyncSession, row: OutboxMessage) -> None:
        """The month of ``row`` is over: its report goes out, and the next month's timer is set
        (in the transaction that fires ``row``)."""
        period = MonthlyReportTimerPayload.from_json(row.payload).period
        if self.destination is None:
            log.info("monthly statistics report for %s not posted: turned off", period)
            return
        added = await enqueue_once(
            session,
            DocumentPayload(document=MONTHLY_REPORT, period=period, locale=self.locale),
            self.destination,
            dedupe_key=f"document:{MONTHLY_REPORT}:{period}",
            due=row.next_attempt_at,  # due since the timer was (the worker's clock)
        )
        await self._timer(session, month_after(period))
        if added:
            log.info("monthly statistics report for %s queued for %s", period, self.destination)


__all__ = [
    "MONTHLY_REPORT",
    "MonthlyReportSchedule",
    "destination_of",
    "due_after",
    "month_after",
    "month_of",
]
