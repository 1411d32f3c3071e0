"""Who sees which reports in the panel.

Officers and commanders see the reports of the queues they serve (their ``officer_scopes``),
resolved through the same :class:`~config.queues.QueueMap` as the chat: the list, a report with
its tipster's phone and media, the statistics and the audit log. Only a scope of ``*`` (every
queue) or the admin role sees every report. Acting on a report is decided separately, report by
report, by :func:`handlers.officers.may`.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, false, or_

from config.queues import QueueMap
from handlers.officers import ALL_QUEUES, rank
from handlers.queue_scope import in_queue
from storage.models import Officer

__all__ = ["in_queue", "sees_all", "visible", "visible_units"]

SEES_ALL_FROM = "admin"


def sees_all(officer: Officer) -> bool:
    """Admins, and whoever serves every queue (``*``); a commander of some queues does not."""
    keys = {scope.queue_key for scope in officer.scopes}
    return rank(officer.role) >= rank(SEES_ALL_FROM) or ALL_QUEUES in keys


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
