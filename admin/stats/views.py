"""The statistics pages: the month at a glance, the units table, the printable monthly report,
their charts and exports. Every view and export takes the same filters (unit, queue, category,
kind) on top of the viewer's scope; what they show is read and laid out by
:mod:`admin.stats.report`."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

import admin.params as params
from admin.context import (
    labels_of,
    officer_of,
    panel_of,
    render,
    requires,
)
from admin.exports import rows as export_rows
from admin.exports import to_csv, to_xlsx
from admin.params import BadParameter, integer
from admin.queries import Period
from admin.security import CSP_SVG
from handlers.domain import CATEGORIES

from . import choropleth
from .filters import KINDS, StatsFilter, where_of
from .queries import month_key
from .report import arrests_by_kind, chart_svg, collect, file_name, report_pdf, shape

log = logging.getLogger(__name__)


async def _all(request: web.Request) -> dict[str, Any]:
    """Everything the statistics page shows, for the request's period and filters."""
    panel = panel_of(request)
    period = Period.parse(params.period(request.query))
    filters = StatsFilter.from_query(request)
    return await collect(
        panel.runtime.session_factory,
        panel.runtime.catalogue,
        period,
        filters,
        where_of(request, filters),
    )


def _context(request: web.Request, data: dict[str, Any]) -> dict[str, Any]:
    return {**shape(data), "choices": _choices(request), "has_map": _shapes(request) is not None}


def _shapes(request: web.Request) -> choropleth.Shapes | None:
    """The map's boundaries from ``TINBAO_GEOMETRY_FILE`` (None: no map)."""
    service = panel_of(request).runtime
    return choropleth.shapes_of(service.settings.geometry_file, service.catalogue.by_code)


def _choices(request: web.Request) -> dict[str, Any]:
    panel = panel_of(request)
    return {
        "units": [(u.code, u.name) for u in panel.runtime.catalogue.units],
        "queues": [(q.key, q.name) for q in panel.triage.queues.all_queues],
        "categories": [*CATEGORIES, "accident"],
        "kinds": KINDS,
    }


@requires("commander")
async def stats_page(request: web.Request) -> web.StreamResponse:
    return render(request, "stats.html", **_context(request, await _all(request)))


@requires("commander")
async def stats_report(request: web.Request) -> web.StreamResponse:
    return render(request, "stats_report.html", **_context(request, await _all(request)))


SORTS = ("name", "reports", "average", "change")


@requires("commander")
async def stats_units(request: web.Request) -> web.StreamResponse:
    data = _context(request, await _all(request))
    labels = labels_of(request)
    asked = request.query.get("sort", "")
    sort = asked if asked in SORTS else "reports"
    descending = request.query.get("dir", "desc") != "asc"
    keys = {
        "name": lambda r: labels.unit(r[0]).casefold(),
        "reports": lambda r: r[1],
        "average": lambda r: r[2] or 0.0,
        "change": lambda r: r[3] if r[3] is not None else float("-inf"),
    }
    rows = sorted(data["units"], key=keys[sort], reverse=descending)
    size = panel_of(request).settings.page_size
    pages = max(1, -(-len(rows) // size))
    try:  # ASCII digits only, 1 or more; anything else shows the first page
        page = min(integer(request.query.get("page", "1"), "page"), pages)
    except BadParameter:
        page = 1
    return render(
        request,
        "stats_units.html",
        **data,
        rows=rows[(page - 1) * size : page * size],
        sort=sort,
        descending=descending,
        page=page,
        pages=pages,
        offset=(page - 1) * size,
    )


@requires("commander")
async def stats_chart(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    period = Period.parse(params.period(request.query))
    where = where_of(request, StatsFilter.from_query(request))
    async with panel.runtime.session_factory() as db:
        svg = await chart_svg(
            db, labels_of(request), request.match_info["which"], period, where, _shapes(request)
        )
    if svg is None:
        raise web.HTTPNotFound()
    response = web.Response(body=svg, content_type="image/svg+xml")
    response.headers["Content-Security-Policy"] = CSP_SVG
    return response


@requires("commander")
async def stats_report_pdf(request: web.Request) -> web.StreamResponse:
    """The printable report (a month or a year) as PDF: the same page, laid out for print."""
    panel = panel_of(request)
    data = _context(request, await _all(request))
    page = render(request, "stats_report.html", **data)
    assert page.text is not None
    where = where_of(request, data["filters"])
    period = data["period"]
    body = await report_pdf(
        panel.runtime.session_factory, labels_of(request), page.text, period, where
    )
    log.info("statistics %s printed as PDF by officer %s", period.key, officer_of(request).id)
    response = web.Response(body=body, content_type="application/pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="{file_name(period)}"'
    return response


@requires("commander")
async def stats_export(request: web.Request) -> web.StreamResponse:
    data = await _all(request)
    period, fig, money = data["period"], data["fig"], data["money"]
    labels = labels_of(request)
    table = export_rows(
        fig,
        money,
        arrests_by_kind(fig),
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
        body, mime = to_csv(table, header), "text/csv"
    elif fmt == "xlsx":
        titles = {
            key: labels(f"admin.export.sheet.{key}")
            for key in ("total", "status", "category", "unit", "summary", "assisted_arrests")
        }
        titles["arrest_kinds"] = labels("stats.export.sheet.arrest_kinds")
        body = to_xlsx(table, header, sheet_titles=titles)
        mime = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    else:
        raise web.HTTPNotFound()
    log.info("statistics %s exported as %s by officer %s", period.key, fmt, officer_of(request).id)
    response = web.Response(body=body, content_type=mime)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/stats", stats_page)
    router.add_get("/stats/units", stats_units)
    router.add_get("/stats/report", stats_report)
    router.add_get("/stats/report.pdf", stats_report_pdf)
    router.add_get("/stats/chart/{which}.svg", stats_chart)
    router.add_get("/stats/export.{fmt}", stats_export)


_ = month_key  # re-exported for templates' period arithmetic
