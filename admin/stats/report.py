"""What the statistics page and the printable report show, read and laid out without a request:
the panel's views use it, and so does the worker that posts the monthly report to the duty chat
(:class:`MonthlyReports`, a :class:`handlers.outbox.DocumentRenderer`).

The worker builds :class:`MonthlyReports` at start-up but prints a report once a month: the
templates (Jinja2 and the panel's context), the charts (pygal, lxml) and the map (shapely,
numpy) are imported when a report or a chart is drawn, not with this module."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin.labels import Labels
from admin.queries import Period
from config.catalogue import Catalogue
from config.queues import QueueMap
from handlers.domain import STATUSES
from handlers.outbox import Document, DocumentPayload
from handlers.stats_schedule import MONTHLY_REPORT
from storage.models import Report, Reward

from . import choropleth
from .filters import StatsFilter
from .queries import (
    Figures,
    daily,
    figures,
    growth,
    monthly_series,
    period_months,
    previous,
    shift,
    unit_months,
    year_before,
)

if TYPE_CHECKING:
    import jinja2

#: The notice's kinds of citizen-assisted arrest; every other category is "other".
ARREST_KINDS = ("theft", "robbery", "snatch_theft")
TOP = 10
#: The charts of the printable report (the three that matter).
REPORT_CHARTS = ("trend", "daily", "category")


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


async def collect(
    session_factory: async_sessionmaker[AsyncSession],
    catalogue: Catalogue,
    period: Period,
    filters: StatsFilter,
    where: ColumnElement[bool] | None,
) -> dict[str, Any]:
    """Everything the statistics page and the report show, read in one session."""
    before, last_year = previous(period), year_before(period)
    async with session_factory() as db:
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
        "units": unit_table(catalogue, now, history, period),
    }


def unit_table(
    catalogue: Catalogue, fig: Figures, history: dict[str, dict[int, int]], period: Period
) -> list[tuple[str, int, float | None, float | None]]:
    """(unit, reports, its average over the 12 months before, change against that average)."""
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


def pct(value: float | None) -> str:
    if value is None:
        return "—"
    arrow = "▲" if value > 0 else ("▼" if value < 0 else "=")
    return f"{arrow} {abs(value):.0f} %"


def shape(data: dict[str, Any]) -> dict[str, Any]:
    """:func:`collect`'s figures as the templates read them (rankings, movers, lists)."""
    units = data["units"]
    ranked = sorted(units, key=lambda r: (-r[1], r[0]))
    movers = [r for r in units if r[3] is not None and r[2] >= 1]
    return {
        **data,
        "pct": pct,
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
    }


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
    import admin.charts as charts

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


async def report_pdf(
    session_factory: async_sessionmaker[AsyncSession],
    labels: Labels,
    html: str,
    period: Period,
    where: ColumnElement[bool] | None,
) -> bytes:
    """The printable report page ``html`` as PDF, its charts drawn for ``period`` and handed to
    WeasyPrint in memory (in a thread: it takes a second or two of CPU)."""
    from admin.context import PREFIX

    drawn: dict[str, tuple[bytes, str]] = {}
    async with session_factory() as db:
        for which in REPORT_CHARTS:
            svg = await chart_svg(db, labels, which, period, where)
            assert svg is not None
            drawn[f"{PREFIX}/stats/chart/{which}.svg"] = (svg, "image/svg+xml")
    return await asyncio.to_thread(_to_pdf, html, drawn)


def _to_pdf(html: str, drawn: dict[str, tuple[bytes, str]]) -> bytes:
    # WeasyPrint takes a second and 40 MB to import: only in a process that prints a report.
    from admin.context import PREFIX

    from . import pdf

    return pdf.to_pdf(html, {**pdf.stylesheet(PREFIX), **drawn})


def file_name(period: Period) -> str:
    return f"tinbao-report-{period.key}.pdf"


class MonthlyReports:
    """The scheduled monthly report (a ``document`` outbox row naming ``stats_report`` and a
    month) as the PDF a commander prints from the panel: the whole province, no filter, in the
    row's locale. Rendered when the row is sent, from the rollups, so the row holds no file."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        catalogue: Catalogue,
        queues: QueueMap,
        env: jinja2.Environment | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.catalogue = catalogue
        self.queues = queues
        self._env = env

    @property
    def env(self) -> jinja2.Environment:
        """The panel's templates, loaded on the first report."""
        if self._env is None:
            from admin.context import template_env

            self._env = template_env()
        return self._env

    async def render(self, payload: DocumentPayload, locale: str) -> Document:
        if payload.document != MONTHLY_REPORT:
            raise LookupError(f"no such document: {payload.document!r}")
        period = Period.parse(payload.period)
        if period.key != payload.period:
            raise LookupError(f"not a period: {payload.period!r}")
        labels = Labels(payload.locale or locale, self.catalogue, self.queues)
        data = shape(
            await collect(self.session_factory, self.catalogue, period, StatsFilter(), None)
        )
        from admin.context import page_globals

        html = self.env.get_template("stats_report.html").render(**page_globals(labels), **data)
        content = await report_pdf(self.session_factory, labels, html, period, None)
        caption = labels(
            "stats.scheduled.caption", period=period.label, received=data["fig"].received
        )
        return Document(content, file_name(period), caption)
