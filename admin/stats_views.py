"""The statistics views: the dashboard's figures, the statistics page, its charts and the
CSV/XLSX exports. The figures themselves come from :mod:`admin.queries`."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

import admin.params as params
from admin.charts import bar_chart
from admin.context import Labels, locale_of, officer_of, panel_of, render, requires, scope_of
from admin.exports import rows as export_rows
from admin.exports import to_csv, to_xlsx
from admin.queries import Period, stats, summary
from admin.security import CSP_SVG
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


async def _period_figures(request: web.Request) -> tuple[Period, Any, Any]:
    panel = panel_of(request)
    period = Period.parse(params.period(request.query))
    scope = scope_of(request)
    async with panel.runtime.session_factory() as db:
        figures = await stats(db, period, scope)
        notice = await summary(db, period, scope)
    return period, figures, notice


@requires("commander")
async def stats_page(request: web.Request) -> web.StreamResponse:
    period, figures, notice = await _period_figures(request)
    return render(
        request,
        "stats.html",
        period=period,
        stats=figures,
        summary=notice,
        statuses=[(s, figures.by_status[s]) for s in STATUSES if s in figures.by_status],
        categories=sorted(figures.by_category.items(), key=lambda kv: -kv[1]),
        units=sorted(figures.by_unit.items(), key=lambda kv: -kv[1]),
        arrests=sorted(notice.assisted_arrests.items(), key=lambda kv: -kv[1]),
    )


@requires("commander")
async def stats_chart(request: web.Request) -> web.StreamResponse:
    period, figures, _ = await _period_figures(request)
    labels = Labels(panel_of(request), locale_of(request))
    which = request.match_info["which"]
    if which == "category":
        items = [
            (labels.category(k), v)
            for k, v in sorted(figures.by_category.items(), key=lambda kv: -kv[1])
        ]
        title = labels("admin.stats.by_category")
    elif which == "unit":
        items = [
            (labels.unit(k), v)
            for k, v in sorted(figures.by_unit.items(), key=lambda kv: -kv[1])[:25]
        ]
        title = labels("admin.stats.by_unit_top")
    elif which == "status":
        items = [
            (labels.status(s), figures.by_status[s]) for s in STATUSES if s in figures.by_status
        ]
        title = labels("admin.stats.by_status")
    else:
        raise web.HTTPNotFound()
    svg = bar_chart(f"{title} — {period.label}", items or [("—", 0)])
    response = web.Response(body=svg, content_type="image/svg+xml")
    response.headers["Content-Security-Policy"] = CSP_SVG
    return response


@requires("commander")
async def stats_export(request: web.Request) -> web.StreamResponse:
    period, figures, notice = await _period_figures(request)
    labels = Labels(panel_of(request), locale_of(request))
    data = export_rows(
        figures,
        notice,
        t=labels,
        unit_name=labels.unit,
        category=labels.category,
        status=labels.status,
    )
    header = (
        labels("admin.export.section"),
        labels("admin.export.key"),
        labels("admin.export.label"),
        labels("admin.export.value"),
    )
    fmt = request.match_info["fmt"]
    name = f"tinbao-{period.key}"
    if fmt == "csv":
        body, mime = to_csv(data, header), "text/csv"
    elif fmt == "xlsx":
        titles = {
            key: labels(f"admin.export.sheet.{key}")
            for key in ("total", "status", "category", "unit", "summary", "assisted_arrests")
        }
        body = to_xlsx(data, header, sheet_titles=titles)
        mime = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    else:
        raise web.HTTPNotFound()
    log.info("statistics %s exported as %s by officer %s", period.key, fmt, officer_of(request).id)
    response = web.Response(body=body, content_type=mime)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response
