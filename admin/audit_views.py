"""The audit log: what happened to reports, and who enrolled or revoked whom."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select

import admin.params as params
from admin.context import PREFIX, officer_names, officer_of, panel_of, render, requires, scope_of
from admin.queries import AuditFilter, audit_page
from handlers.officers import may
from handlers.security import parse_code
from storage.models import AuditEvent, Officer, ReportEvent


@requires("commander")
async def audit(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    q = request.query
    code_text = params.text(q, "code", limit=64).strip()
    filters = AuditFilter(
        action=params.text(q, "action", limit=64).strip() or None,
        actor_id=params.optional_id(q, "actor"),
        actor_kind=params.choice(q, "kind", ("citizen", "officer", "system")),
        code=(parse_code(code_text) or "-") if code_text else None,
        date_from=params.optional_date(q, "from"),
        date_to=params.optional_date(q, "to"),
    )
    before = params.optional_id(q, "before")
    async with panel.runtime.session_factory() as db:
        rows, next_id = await audit_page(
            db,
            filters,
            scope_of(request),
            before_id=before,
            size=panel.settings.page_size,
        )
        registry_events = (
            await db.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(50))
        ).all()
        names = await officer_names(
            db,
            {e.actor_id for e, _ in rows if e.actor_id}
            | {a for e in registry_events for a in (e.actor_id, e.subject_id) if a},
        )
        actions = (await db.scalars(select(ReportEvent.action).group_by(ReportEvent.action))).all()
        people = (
            await db.execute(
                select(Officer.id, Officer.display_name).order_by(Officer.display_name)
            )
        ).all()
    keep = {k: v for k, v in q.items() if k != "before" and v}
    next_url = f"{PREFIX}/audit?" + urlencode({**keep, "before": next_id}) if next_id else None
    return render(
        request,
        "audit.html",
        rows=rows,
        names=names,
        query=q,
        actions=sorted(actions),
        people=people,
        next_url=next_url,
        registry_events=registry_events if may(officer_of(request), "enrol", None) else [],
    )
