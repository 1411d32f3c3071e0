"""The statistics pages: the month at a glance, the units table, the printable monthly report,
their charts and exports. Every view and export takes the same filters (unit, queue, category,
kind) on top of the viewer's scope."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

import admin.charts as charts
import admin.params as params
from admin.context import (
    PREFIX,
    Labels,
    locale_of,
    officer_of,
    panel_of,
    render,
    requires,
    scope_of,
)
from admin.exports import rows as export_rows
from admin.exports import to_csv, to_xlsx
from admin.params import BadParameter, integer
from admin.queries import Period
from admin.scope import in_queue
from admin.security import CSP_SVG
from handlers.domain import CATEGORIES, STATUSES
from storage.models import Report, Reward

from . import choropleth, pdf
from .queries import (
    Figures,
    combine,
    daily,
    figures,
    growth,
    month_key,
    monthly_series,
    period_months,
    previous,
    shift,
    unit_months,
    year_before,
)

log = logging.getLogger(__name__)

KINDS = ("tip", "emergency")
#: The notice's kinds of citizen-assisted arrest; every other category is "other".
ARREST_KINDS = ("theft", "robbery", "snatch_theft")
TOP = 10


@dataclass(frozen=True, slots=True)
class StatsFilter:
    unit: str | None = None
    queue: str | None = None
    category: str | None = None
    kind: str | None = None

    @classmethod
    def from_query(cls, request: web.Request) -> StatsFilter:
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


def _where(request: web.Request, filters: StatsFilter) -> ColumnElement[bool] | None:
    return combine(scope_of(request), filters.condition(request))


@dataclass(slots=True)
class Rewards:
    paid: int = 0
    paid_vnd: int = 0
    commendations: int = 0
    #: Commendations by kind (``individual``, ``collective``).
    commended: dict[str, int] = field(default_factory=dict)


async def rewards(
    session: AsyncSession, period: Period, where: ColumnElement[bool] | None
) -> Rewards:
    """Rewards paid (by payout date) and commendations (approved or paid, by decision date)."""
    paid = select(func.count(), func.coalesce(func.sum(Reward.amount_vnd), 0)).where(
        Reward.status == "paid", Reward.paid_at >= period.start, Reward.paid_at < period.end
    )
    commended = (
        select(Reward.commendation, func.count())
        .group_by(Reward.commendation)
        .where(Reward.commendation.is_not(None))
    ).where(
        Reward.status.in_(("approved", "paid")),
        Reward.decided_at >= period.start,
        Reward.decided_at < period.end,
    )
    if where is not None:
        paid = paid.select_from(Reward).join(Report, Report.id == Reward.report_id).where(where)
        commended = (
            commended.select_from(Reward).join(Report, Report.id == Reward.report_id).where(where)
        )
    count, total = (await session.execute(paid)).one()
    kinds = {str(kind): int(n) for kind, n in await session.execute(commended)}
    return Rewards(int(count), int(total), sum(kinds.values()), kinds)


def arrests_by_kind(fig: Figures) -> list[tuple[str, int]]:
    out = {key: 0 for key in (*ARREST_KINDS, "other")}
    for category, n in fig.assisted_by_category.items():
        out[category if category in ARREST_KINDS else "other"] += n
    return list(out.items())


HEADLINE = (
    ("received", "stats.head.received"),
    ("clarified", "stats.head.clarified"),
    ("handled", "stats.head.handled"),
    ("assisted", "stats.head.assisted"),
    ("emergencies", "stats.head.emergencies"),
    ("claim_median", "stats.head.claim"),
    ("ack_median", "stats.head.ack"),
)


async def _all(request: web.Request) -> dict[str, Any]:
    """Everything the statistics page shows, read in one session."""
    panel = panel_of(request)
    period = Period.parse(params.period(request.query))
    filters = StatsFilter.from_query(request)
    where = _where(request, filters)
    before, last_year = previous(period), year_before(period)
    async with panel.runtime.session_factory() as db:
        now = await figures(db, period_months(period), where)
        prev = await figures(db, period_months(before), where)
        # A year's "previous" is the year before: read once.
        then = prev if last_year == before else await figures(db, period_months(last_year), where)
        money = await rewards(db, period, where)
        last = period_months(period)[1]
        history = await unit_months(db, shift(last, -12), last, where)
    head = []
    for attr, label in HEADLINE:
        value, p, y = getattr(now, attr), getattr(prev, attr), getattr(then, attr)
        head.append((attr, label, value, growth(value, p), growth(value, y)))
    return {
        "period": period,
        "before": before,
        "last_year": last_year,
        "filters": filters,
        "fig": now,
        "head": head,
        "money": money,
        "units": unit_table(request, now, history, period),
    }


def unit_table(
    request: web.Request, fig: Figures, history: dict[str, dict[int, int]], period: Period
) -> list[tuple[str, int, float | None, float | None]]:
    """(unit, reports, its average over the 12 months before, change against that average)."""
    catalogue = panel_of(request).runtime.catalogue
    first, last = period_months(period)
    span = len(range(0, (last // 100 - first // 100) * 12 + last % 100 - first % 100 + 1))
    rows: list[tuple[str, int, float | None, float | None]] = []
    codes = {u.code for u in catalogue.units} | set(fig.by_unit)
    for code in codes:
        months = history.get(code, {})
        before = [months.get(shift(first, -i), 0) for i in range(1, 13)]
        average = sum(before) / 12 * span
        n = fig.by_unit.get(code, 0)
        rows.append((code, n, average, growth(n, average) if average else None))
    return rows


def _pct(value: float | None) -> str:
    if value is None:
        return "—"
    arrow = "▲" if value > 0 else ("▼" if value < 0 else "=")
    return f"{arrow} {abs(value):.0f} %"


def _context(request: web.Request, data: dict[str, Any]) -> dict[str, Any]:
    units = data["units"]
    ranked = sorted(units, key=lambda r: (-r[1], r[0]))
    movers = [r for r in units if r[3] is not None and r[2] >= 1]
    return {
        **data,
        "pct": _pct,
        "top": ranked[:TOP],
        "bottom": sorted(units, key=lambda r: (r[1], r[0]))[:TOP],
        "up": sorted((r for r in movers if (r[3] or 0) > 0), key=lambda r: -(r[3] or 0))[:5],
        "down": sorted((r for r in movers if (r[3] or 0) < 0), key=lambda r: r[3] or 0)[:5],
        "statuses": [
            (s, data["fig"].by_status[s]) for s in STATUSES if s in data["fig"].by_status
        ],
        "categories": sorted(data["fig"].by_category.items(), key=lambda kv: -kv[1]),
        "arrests": sorted(data["fig"].assisted_by_category.items(), key=lambda kv: -kv[1]),
        "arrest_kinds": arrests_by_kind(data["fig"]),
        "qs": data["filters"].query(period=data["period"].key),
        "choices": _choices(request),
        "has_map": _shapes(request) is not None,
    }


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
    labels = Labels(panel_of(request), locale_of(request))
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


async def chart_svg(
    db: AsyncSession,
    labels: Labels,
    which: str,
    period: Period,
    where: ColumnElement[bool] | None,
    shapes: choropleth.Shapes | None = None,
) -> bytes | None:
    """One of the statistics charts as SVG; None for an unknown one (or the map without
    boundaries)."""
    last = period_months(period)[1]
    if which in ("trend", "trend_category"):
        series = await monthly_series(db, last, 24, where)
        x = [f"{m % 100:02d}/{m // 100 % 100:02d}" for m in series.months]
        if which == "trend":
            lines = [(labels(f"stats.kind.{k}"), v) for k, v in series.by_kind.items()]
            title = labels("stats.chart.trend")
        else:
            top = sorted(series.by_category.items(), key=lambda kv: -sum(kv[1]))
            lines = [(labels.category(k), v) for k, v in top]
            title = labels("stats.chart.trend_category")
        return charts.line_chart(title, x, lines)
    if which == "daily":
        if period.month is None:
            series = await monthly_series(db, last, 12, where)
            items = [
                (f"{m % 100:02d}", sum(v[i] for v in series.by_kind.values()))
                for i, m in enumerate(series.months)
            ]
        else:
            items = [(f"{d.day}", n) for d, n in await daily(db, period, where)]
        return charts.bar_chart(
            f"{labels('stats.chart.daily')} — {period.label}", items, horizontal=False
        )
    if which not in ("map", "category", "unit", "status") or (which == "map" and shapes is None):
        return None
    fig = await figures(db, period_months(period), where)
    if which == "map":
        assert shapes is not None
        return choropleth.render(
            shapes,
            fig.by_unit,
            title=f"{labels('stats.map.title')} — {period.label}",
            name=labels.unit,
            no_reports=labels("stats.map.none"),
        )
    if which == "category":
        items = [
            (labels.category(k), v)
            for k, v in sorted(fig.by_category.items(), key=lambda kv: -kv[1])
        ]
        title = labels("admin.stats.by_category")
    elif which == "unit":
        items = [
            (labels.unit(k), v) for k, v in sorted(fig.by_unit.items(), key=lambda kv: -kv[1])[:25]
        ]
        title = labels("admin.stats.by_unit_top")
    else:
        items = [(labels.status(s), fig.by_status[s]) for s in STATUSES if s in fig.by_status]
        title = labels("admin.stats.by_status")
    return charts.bar_chart(f"{title} — {period.label}", items or [("—", 0)])


@requires("commander")
async def stats_chart(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    labels = Labels(panel, locale_of(request))
    period = Period.parse(params.period(request.query))
    where = _where(request, StatsFilter.from_query(request))
    async with panel.runtime.session_factory() as db:
        svg = await chart_svg(
            db, labels, request.match_info["which"], period, where, _shapes(request)
        )
    if svg is None:
        raise web.HTTPNotFound()
    response = web.Response(body=svg, content_type="image/svg+xml")
    response.headers["Content-Security-Policy"] = CSP_SVG
    return response


#: The charts of the printable report (the three that matter).
REPORT_CHARTS = ("trend", "daily", "category")


@requires("commander")
async def stats_report_pdf(request: web.Request) -> web.StreamResponse:
    """The printable report (a month or a year) as PDF: the same page, laid out for print."""
    panel = panel_of(request)
    data = _context(request, await _all(request))
    page = render(request, "stats_report.html", **data)
    assert page.text is not None
    labels = Labels(panel, locale_of(request))
    where = _where(request, data["filters"])
    resources = pdf.stylesheet(PREFIX)
    async with panel.runtime.session_factory() as db:
        for which in REPORT_CHARTS:
            svg = await chart_svg(db, labels, which, data["period"], where)
            assert svg is not None
            resources[f"{PREFIX}/stats/chart/{which}.svg"] = (svg, "image/svg+xml")
    body = await asyncio.to_thread(pdf.to_pdf, page.text, resources)
    log.info(
        "statistics %s printed as PDF by officer %s", data["period"].key, officer_of(request).id
    )
    response = web.Response(body=body, content_type="application/pdf")
    name = f"tinbao-report-{data['period'].key}.pdf"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@requires("commander")
async def stats_export(request: web.Request) -> web.StreamResponse:
    data = await _all(request)
    period, fig, money = data["period"], data["fig"], data["money"]
    labels = Labels(panel_of(request), locale_of(request))
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
