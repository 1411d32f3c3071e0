"""Officers and units: the registry (enrol, revoke), the unit list and its QR posters."""

from __future__ import annotations

import logging
from typing import Any

import segno
from aiohttp import web
from sqlalchemy import select

import admin.params as params
from admin.context import PREFIX, Panel, officer_of, panel_of, render, requires
from admin.security import CSP_SVG
from handlers.officers import ROLES, Registry, may
from storage.models import Officer

log = logging.getLogger(__name__)


@requires("commander")
async def officers_page(request: web.Request) -> web.StreamResponse:
    return await _officers_view(request)


async def _officers_view(request: web.Request, error: str | None = None) -> web.StreamResponse:
    panel = panel_of(request)
    async with panel.runtime.session_factory() as db:
        officers = (
            await db.scalars(
                select(Officer).order_by(Officer.active.desc(), Officer.role, Officer.display_name)
            )
        ).all()
    queues = panel.triage.queues
    return render(
        request,
        "officers.html",
        status=400 if error else 200,
        officers=officers,
        queues=queues.all_queues,
        roles=ROLES,
        error=error,
        done=request.query.get("done") == "1",
        can_enrol=may(officer_of(request), "enrol", None),
    )


@requires("admin")
async def officer_enrol(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    form = await request.post()
    try:
        user_id = params.integer(
            params.text(form, "telegram_user_id", limit=32).strip(),
            "telegram_user_id",
            high=params.MAX_TELEGRAM_USER_ID,
        )
        role = params.text(form, "role", limit=16)
        queue_key = params.text(form, "queue", limit=64)
        name = params.text(form, "name", limit=200).strip()
    except params.BadParameter:
        return await _officers_view(request, error="admin.error.enrol")
    if role not in ROLES or not name:
        return await _officers_view(request, error="admin.error.enrol")
    if queue_key != "*" and panel.triage.queues.by_key(queue_key) is None:
        return await _officers_view(request, error="admin.error.unknown_queue")
    if not may(officer, "enrol", queue_key):
        return await _officers_view(request, error="triage.not_permitted")
    async with panel.runtime.session_factory() as db, db.begin():
        enrolled = await Registry(db).enrol(
            telegram_user_id=user_id,
            display_name=name,
            role=role,
            queue_key=queue_key,
            by=await Registry(db).by_id(officer.id),
            via="web",
        )
        enrolled_id = enrolled.id
    log.info("officer %s enrolled in %s by officer %s (web)", enrolled_id, queue_key, officer.id)
    raise web.HTTPSeeOther(f"{PREFIX}/officers?done=1")


@requires("admin")
async def officer_revoke(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    target_id = params.path_id(request.match_info, "officer_id")
    if target_id == officer.id:
        return await _officers_view(request, error="admin.error.revoke_self")
    async with panel.runtime.session_factory() as db, db.begin():
        registry = Registry(db)
        target = await registry.by_id(target_id)
        if target is None:
            raise web.HTTPNotFound()
        await registry.revoke(target, by=await registry.by_id(officer.id), via="web")
    log.info("officer %s revoked by officer %s (web)", target_id, officer.id)
    raise web.HTTPSeeOther(f"{PREFIX}/officers?done=1")


def deep_link(panel: Panel, code: str) -> str | None:
    name = panel.bot_username()
    return f"https://t.me/{name}?start=u_{code}" if name else None


@requires("commander")
async def units_page(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    queues = panel.triage.queues
    units = [(u, queues.resolve(u.code)) for u in panel.runtime.catalogue.units]
    return render(
        request,
        "units.html",
        units=units,
        queues=queues.all_queues,
        bot=panel.bot_username(),
    )


def _unit_or_404(panel: Panel, code: str) -> Any:
    entry = panel.runtime.catalogue.by_code.get(code)
    if entry is None:
        raise web.HTTPNotFound()
    return entry


@requires("commander")
async def unit_poster(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    entry = _unit_or_404(panel, request.match_info["code"])
    public = (panel.runtime.settings.public_url or "").rstrip("/")
    web_link = f"{public}/?u={entry.code}" if public else None
    return render(
        request, "poster.html", unit=entry, link=deep_link(panel, entry.code), web_link=web_link
    )


@requires("commander")
async def unit_qr(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    entry = _unit_or_404(panel, request.match_info["code"])
    link = deep_link(panel, entry.code)
    if link is None:
        raise web.HTTPNotFound()
    svg = segno.make(link, error="m").svg_inline(scale=8, border=2)
    response = web.Response(
        text='<?xml version="1.0" encoding="UTF-8"?>\n' + svg, content_type="image/svg+xml"
    )
    response.headers["Content-Security-Policy"] = CSP_SVG
    return response
