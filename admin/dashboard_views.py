"""The panel's landing page: this month's figures at a glance (the statistics pages are in
:mod:`admin.stats`)."""

from __future__ import annotations

import logging

from aiohttp import web

from admin.context import panel_of, render, scope_of
from admin.queries import Period, stats
from handlers.domain import STATUSES

log = logging.getLogger(__name__)


async def dashboard(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    period = Period.parse(None)
    scope = scope_of(request)
    async with panel.runtime.session_factory() as db:
        figures = await stats(db, period, scope)
    top_units = sorted(figures.by_unit.items(), key=lambda kv: -kv[1])[:15]
    return render(
        request,
        "dashboard.html",
        stats=figures,
        statuses=[(s, figures.by_status[s]) for s in STATUSES if s in figures.by_status],
        categories=sorted(figures.by_category.items(), key=lambda kv: -kv[1]),
        units=top_units,
    )
