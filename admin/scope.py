"""Who sees which reports in the panel.

Officers see the reports of the queues they serve (their ``officer_scopes``), resolved through
the same :class:`~config.queues.QueueMap` as the chat; commanders and admins see every report.
Acting on a report is decided separately, report by report, by :func:`handlers.officers.may`.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, false, or_

from config.queues import Queue, QueueMap
from handlers.officers import ALL_QUEUES, rank
from storage.models import Officer, Report

SEES_ALL_FROM = "commander"


def sees_all(officer: Officer) -> bool:
    keys = {scope.queue_key for scope in officer.scopes}
    return rank(officer.role) >= rank(SEES_ALL_FROM) or ALL_QUEUES in keys


def in_queue(queues: QueueMap, queue: Queue) -> ColumnElement[bool]:
    """Reports whose effective queue is ``queue`` (a transfer's queue, else the unit's)."""
    if queue.is_duty:
        queued = sorted({u for q in queues.queues for u in q.units})
        unit_cond: ColumnElement[bool] = Report.unit_code.is_(None)
        if queued:
            unit_cond = unit_cond | Report.unit_code.not_in(queued)
        return (Report.queue_key.is_(None) & unit_cond) | (Report.queue_key == queue.key)
    return (Report.queue_key.is_(None) & Report.unit_code.in_(sorted(queue.units))) | (
        Report.queue_key == queue.key
    )


def visible(officer: Officer, queues: QueueMap) -> ColumnElement[bool] | None:
    """A condition on :class:`Report` for what ``officer`` may see; None when it is everything."""
    if sees_all(officer):
        return None
    keys = {scope.queue_key for scope in officer.scopes}
    parts = [in_queue(queues, q) for q in queues.all_queues if q.key in keys]
    return or_(*parts) if parts else false()


def visible_units(officer: Officer, queues: QueueMap, all_codes: list[str]) -> list[str] | None:
    """The unit codes an officer's filters offer; None for all."""
    if sees_all(officer):
        return None
    keys = {scope.queue_key for scope in officer.scopes}
    codes: set[str] = set()
    for queue in queues.all_queues:
        if queue.key not in keys:
            continue
        codes |= set(queues.units_without_queue(all_codes)) if queue.is_duty else queue.units
    return sorted(codes)
