"""The panel's landing page: this month's figures at a glance (the statistics pages are in
:mod:`admin.stats`), read from the statistics rollups as they are: within the statistics
pages' time at any number of reports."""

from __future__ import annotations

import logging

from aiohttp import web

from admin.context import panel_of, render, scope_of
from admin.queries import Durations, Period, Stats
from admin.stats.queries import Figures, figures, period_months
from handlers.domain import STATUSES

log = logging.getLogger(__name__)


async def dashboard(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    period = Period.parse(None)
    scope = scope_of(request)
    async with panel.runtime.session_factory() as db:
        month = as_stats(period, await figures(db, period_months(period), scope))
    top_units = sorted(month.by_unit.items(), key=lambda kv: -kv[1])[:15]
    return render(
        request,
        "dashboard.html",
        stats=month,
        statuses=[(s, month.by_status[s]) for s in STATUSES if s in month.by_status],
        categories=sorted(month.by_category.items(), key=lambda kv: -kv[1]),
        units=top_units,
    )


def as_stats(period: Period, fig: Figures) -> Stats:
    """The rollup's figures in the shape the dashboard's cards and tables show (times are the
    histogram's interpolated median and 90th percentile, as on the statistics page)."""
    return Stats(
        period,
        total=fig.received,
        by_status=dict(fig.by_status),
        by_category=dict(fig.by_category),
        by_unit=dict(fig.by_unit),
        claim=Durations(fig.claim_count, fig.claim_median, fig.claim_p90),
        acknowledge=Durations(fig.ack_count, fig.ack_median, fig.ack_p90),
    )
