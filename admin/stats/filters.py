"""The statistics' filters (unit, queue, category, kind), read from a request; every view,
chart, export and report applies them on top of the viewer's scope.

The panel's context (:mod:`admin.context`, with the login's argon2 and Jinja2) is imported when a
request is read: the worker's monthly report uses :class:`StatsFilter` without a request."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import ColumnElement

from admin.scope import in_queue
from handlers.domain import CATEGORIES
from storage.models import Report

from .queries import combine

KINDS = ("tip", "emergency")


@dataclass(frozen=True, slots=True)
class StatsFilter:
    unit: str | None = None
    queue: str | None = None
    category: str | None = None
    kind: str | None = None

    @classmethod
    def from_query(cls, request: web.Request) -> StatsFilter:
        from admin.context import panel_of

        q = request.query
        panel = panel_of(request)
        unit = q.get("unit") or None
        queue = q.get("queue") or None
        category = q.get("category") or None
        kind = q.get("kind") or None
        return cls(
            unit if unit and unit in panel.runtime.catalogue.by_code else None,
            queue if queue and panel.triage.queues.by_key(queue) is not None else None,
            category if category in (*CATEGORIES, "accident") else None,
            kind if kind in KINDS else None,
        )

    def condition(self, request: web.Request) -> ColumnElement[bool] | None:
        from admin.context import panel_of

        parts: list[ColumnElement[bool]] = []
        if self.unit:
            parts.append(Report.unit_code == self.unit)
        if self.queue:
            queue = panel_of(request).triage.queues.by_key(self.queue)
            if queue is not None:
                parts.append(in_queue(panel_of(request).triage.queues, queue))
        if self.category == "accident":
            parts.append(Report.kind == "emergency")
        elif self.category:
            parts.append((Report.category == self.category) & (Report.kind == "tip"))
        if self.kind:
            parts.append(Report.kind == self.kind)
        return combine(*parts)

    def query(self, **extra: str) -> str:
        values = {
            k: v
            for k, v in (
                ("unit", self.unit),
                ("queue", self.queue),
                ("category", self.category),
                ("kind", self.kind),
            )
            if v
        }
        values.update({k: v for k, v in extra.items() if v})
        return urlencode(values)


def where_of(request: web.Request, filters: StatsFilter) -> ColumnElement[bool] | None:
    """The viewer's scope and the filters, as one condition on reports."""
    from admin.context import scope_of

    return combine(scope_of(request), filters.condition(request))
