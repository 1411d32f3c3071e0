"""Reports: the list with its filters, a report's page and actions, and its evidence."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import admin.params as params
from admin.context import (
    PREFIX,
    officer_names,
    officer_of,
    panel_of,
    refusal_status,
    render,
    scope_of,
)
from admin.queries import ReportFilter, report_page
from admin.scope import sees_all, visible_units
from handlers.card_actions import CLOSED_STATUSES
from handlers.domain import CATEGORIES, OUTCOMES, STATUSES
from handlers.media import MAX_DOWNLOAD_BYTES, CleanImage, MediaRejected, clean_evidence
from handlers.officers import may
from handlers.report_actions import ActionError
from handlers.report_actions import ReportActions as WebTriage
from handlers.rewards import REWARDABLE_OUTCOMES
from handlers.security import parse_code
from storage.models import (
    ContactRoute,
    MediaBlob,
    RelayMessage,
    Report,
    ReportEvent,
    ReportMedia,
    Reward,
)

log = logging.getLogger(__name__)

#: The longest text a report form field may carry (the actions apply their own, lower limits).
FIELD_LIMIT = 4000
#: The question form, which may carry a photo: its body may be as large as the photo the
#: cleaner accepts, plus the form's fields (``admin.security.LARGE_BODIES``).
ASK_PATH = re.compile(rf"^{PREFIX}/reports/[^/]+/ask$")
ASK_MAX_BODY = MAX_DOWNLOAD_BYTES + 64 * 1024


def _report_filter(request: web.Request) -> ReportFilter:
    q = request.query
    emergency = params.choice(q, "emergency", ("1", "0"))
    code_text = params.text(q, "code", limit=64).strip()
    units = panel_of(request).runtime.catalogue.by_code
    return ReportFilter(
        status=params.choice(q, "status", STATUSES),
        unit=params.choice(q, "unit", units),
        category=params.choice(q, "category", CATEGORIES),
        date_from=params.optional_date(q, "from"),
        date_to=params.optional_date(q, "to"),
        emergency=None if emergency is None else emergency == "1",
        code=(parse_code(code_text) or "-") if code_text else None,
    )


async def reports(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    filters = _report_filter(request)
    async with panel.runtime.session_factory() as db:
        rows, cursor = await report_page(
            db,
            filters,
            scope_of(request),
            after=params.cursor(request.query),
            size=panel.settings.page_size,
        )
    keep = {k: v for k, v in request.query.items() if k != "after" and v}
    next_url = f"{PREFIX}/reports?" + urlencode({**keep, "after": cursor}) if cursor else None
    first_url = f"{PREFIX}/reports?" + urlencode(keep) if "after" in request.query else None
    codes = [u.code for u in panel.runtime.catalogue.units]
    allowed = visible_units(officer_of(request), panel.triage.queues, codes)
    return render(
        request,
        "reports.html",
        rows=rows,
        query=request.query,
        next_url=next_url,
        first_url=first_url,
        statuses=STATUSES,
        categories=CATEGORIES,
        units=allowed if allowed is not None else codes,
    )


async def _visible_report(request: web.Request, db: AsyncSession) -> Report:
    code = parse_code(request.match_info["code"][:64])
    report = await db.scalar(select(Report).where(Report.code == code)) if code else None
    if report is None:
        raise web.HTTPNotFound()
    officer = officer_of(request)
    queue_key = WebTriage(db, officer, panel_of(request).triage).queue_key(report)
    if not sees_all(officer) and not may(officer, "view", queue_key):
        raise web.HTTPNotFound()
    return report


async def report_detail(
    request: web.Request, *, error: str | None = None, values: dict[str, Any] | None = None
) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    async with panel.runtime.session_factory() as db:
        report = await _visible_report(request, db)
        web_triage = WebTriage(db, officer, panel.triage)
        media = (
            await db.scalars(
                select(ReportMedia)
                .where(ReportMedia.report_id == report.id)
                .order_by(ReportMedia.position)
            )
        ).all()
        events = (
            await db.scalars(
                select(ReportEvent)
                .where(ReportEvent.report_id == report.id)
                .order_by(ReportEvent.id)
            )
        ).all()
        thread = (
            await db.scalars(
                select(RelayMessage)
                .where(RelayMessage.report_id == report.id)
                .order_by(RelayMessage.created_at, RelayMessage.id)
            )
        ).all()
        rewards = (
            await db.scalars(
                select(Reward).where(Reward.report_id == report.id).order_by(Reward.id)
            )
        ).all()
        actor_ids = {e.actor_id for e in events if e.actor_id is not None}
        actor_ids |= {m.officer_id for m in thread if m.officer_id is not None}
        if report.assigned_officer_id:
            actor_ids.add(report.assigned_officer_id)
        names = await officer_names(db, actor_ids)
        relay_problem = await web_triage.relay_problem(report)
        closed = report.status in CLOSED_STATUSES
        can = {
            action: web_triage.allowed(action, report) and not closed
            for action in ("claim", "progress", "transfer", "resolve", "reject", "ask")
        }
        active_reward = next((r for r in rewards if r.status != "rejected"), None)
        can["reward"] = (
            web_triage.allowed("reward_propose", report)
            and report.status == "resolved"
            and report.outcome in REWARDABLE_OUTCOMES
            and active_reward is None
        )
        can["ask"] = can["ask"] and relay_problem is None
        current_queue = web_triage.queue_key(report)
        phone = None
        if report.contact_mode == "phone" and panel.runtime.keyring is not None:
            # The one identifying detail officers may see: a number the tipster chose to leave.
            route = await db.scalar(
                select(ContactRoute).where(ContactRoute.report_id == report.id)
            )
            if route is not None and route.phone:
                phone = panel.runtime.keyring.decrypt(route.phone).get("phone")
    return render(
        request,
        "report.html",
        status=refusal_status(error),
        report=report,
        media=media,
        events=events,
        thread=thread,
        rewards=rewards,
        names=names,
        can=can,
        relay_problem=relay_problem,
        phone=phone,
        queues=[q for q in panel.triage.queues.all_queues if q.key != current_queue],
        current_queue=current_queue,
        outcomes=OUTCOMES,
        error=error,
        error_values=values or {},
        done=request.query.get("done") == "1",
    )


async def report_action(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    action = request.match_info["action"]
    form = await request.post()

    def field(name: str) -> str:
        return params.text(form, name, limit=FIELD_LIMIT)

    photo: CleanImage | None = None
    if action == "ask":
        try:
            photo = await question_photo(form.get("photo"))
        except MediaRejected:
            return await report_detail(request, error="admin.error.photo")
    report_id: int | None = None
    try:
        async with panel.runtime.session_factory() as db, db.begin():
            report = await _visible_report(request, db)
            report_id = report.id
            work = WebTriage(db, officer, panel.triage)
            if action == "claim":
                await work.claim(report)
            elif action == "ack":
                await work.acknowledge(report)
            elif action == "progress":
                await work.progress(report)
            elif action == "transfer":
                await work.transfer(report, field("queue"))
            elif action == "resolve":
                await work.resolve(
                    report,
                    field("outcome"),
                    field("subjects"),
                    field("arrest") == "1",
                    field("duplicate_of"),
                )
            elif action == "reject":
                await work.reject(report, field("reason"))
            elif action == "ask":
                await work.ask(report, field("question"), photo)
            elif action == "reward":
                await work.propose_reward(report, field("amount"), field("reason"))
            else:
                raise web.HTTPNotFound()
    except ActionError as refused:
        return await report_detail(request, error=refused.key, values=refused.values)
    log.info("web action %s on report %s by officer %s", action, report_id, officer.id)
    if report_id is not None:
        await panel.runtime.report_changed(report_id)
    raise web.HTTPSeeOther(f"{PREFIX}/reports/{request.match_info['code']}?done=1")


async def media(request: web.Request) -> web.StreamResponse:
    """Evidence bytes (already cleaned of metadata), for those who may see the report."""
    panel = panel_of(request)
    officer = officer_of(request)
    media_id = params.path_id(request.match_info, "media_id")
    async with panel.runtime.session_factory() as db:
        item = await db.get(ReportMedia, media_id)
        report = await db.get(Report, item.report_id) if item is not None else None
        if item is None or report is None or item.blob_id is None:
            raise web.HTTPNotFound()
        queue_key = WebTriage(db, officer, panel.triage).queue_key(report)
        if not sees_all(officer) and not may(officer, "view", queue_key):
            raise web.HTTPNotFound()
        row = (
            await db.execute(
                select(MediaBlob.mime, MediaBlob.content).where(MediaBlob.id == item.blob_id)
            )
        ).first()
    if row is None:
        raise web.HTTPNotFound()
    mime, content = str(row[0]), bytes(row[1])
    inline = mime in ("image/jpeg", "image/png", "image/webp", "image/gif")
    response = web.Response(
        body=content, content_type=mime if inline else "application/octet-stream"
    )
    response.headers["Content-Disposition"] = (
        "inline" if inline else f'attachment; filename="evidence-{media_id}"'
    )
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


async def question_photo(upload: object) -> CleanImage | None:
    """The photo chosen on the question form, cleaned of metadata by its content like all
    evidence; ``None`` when none was chosen; :class:`MediaRejected` when it is not a usable
    image (another kind of file is refused too)."""
    if not isinstance(upload, web.FileField):
        return None
    data = upload.file.read(MAX_DOWNLOAD_BYTES + 1)
    if not data:
        return None  # the field left empty: browsers send an empty part
    cleaned = await asyncio.to_thread(clean_evidence, data)
    if not isinstance(cleaned, CleanImage):
        raise MediaRejected("not_an_image")
    return cleaned
