"""Signing in and out, and the language switch."""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy import select, update

from admin.auth import SESSION_COOKIE
from admin.context import PREFIX, officer_of, panel_of, render, safe_next, state_of
from admin.params import text
from admin.security import set_language_cookie
from handlers.domain import LOCALES
from handlers.i18n import DEFAULT_LOCALE
from handlers.officers import Registry
from storage.models import Officer

log = logging.getLogger(__name__)


async def login_form(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    if state is not None and state.officer is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return render(request, "login.html", next=safe_next(request.query.get("next")))


async def login(request: web.Request) -> web.StreamResponse:
    """Record the attempt, commit, count, then (maybe) check the password off the loop."""
    panel = panel_of(request)
    form = await request.post()
    username = text(form, "username", limit=1024)[:64].strip()
    password = text(form, "password", limit=1024)
    target = safe_next(text(form, "next", limit=2048))
    address = panel.clients.address(request)
    factory = panel.runtime.session_factory
    async with factory() as db, db.begin():
        attempt = await panel.throttle.record(db, username, address)
    async with factory() as db:
        verdict = await panel.throttle.verdict(db, attempt)
        officer = (
            await db.scalar(select(Officer).where(Officer.username == username))
            if verdict.allowed and username
            else None
        )
    if not verdict.allowed:
        async with factory() as db, db.begin():
            await panel.throttle.forget(db, attempt)
        log.info("admin login throttled")
        response = render(
            request, "login.html", status=429, next=target, error="admin.login.throttled"
        )
        response.headers["Retry-After"] = str(verdict.retry_after)
        return response
    password_hash = officer.password_hash if officer is not None else None
    ok = await panel.passwords.verify(password_hash, password)
    if not ok or officer is None or not officer.active:
        log.info("admin login refused")
        return render(request, "login.html", status=401, next=target, error="admin.login.bad")
    async with factory() as db, db.begin():
        await panel.throttle.succeeded(db, attempt)
        signed_in = await Registry(db).by_id(officer.id)
        if signed_in is None or not signed_in.active:
            return render(request, "login.html", status=401, next=target, error="admin.login.bad")
        Registry(db).audit("signed_in", by=signed_in, via="web", subject=signed_in)
        generation = signed_in.session_generation
        password_hash = signed_in.password_hash
    log.info("admin login: officer %s", officer.id)
    state = state_of(request)
    if state is not None:
        state.session = panel.box.new(officer.id, password_hash, generation)
    raise web.HTTPSeeOther(target)


async def _end_sessions(request: web.Request, *, everywhere: bool) -> web.StreamResponse:
    """Bump the account's session generation: this cookie and every copy of it stop working."""
    panel = panel_of(request)
    officer = officer_of(request)
    async with panel.runtime.session_factory() as db, db.begin():
        await db.execute(
            update(Officer)
            .where(Officer.id == officer.id)
            .values(session_generation=Officer.session_generation + 1)
        )
        if everywhere:
            account = await Registry(db).by_id(officer.id)
            Registry(db).audit("signed_out_everywhere", by=account, via="web", subject=account)
    log.info("admin logout%s: officer %s", " everywhere" if everywhere else "", officer.id)
    state = state_of(request)
    if state is not None:
        state.logout = True
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    response.del_cookie(SESSION_COOKIE, path=PREFIX)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    return await _end_sessions(request, everywhere=False)


async def logout_everywhere(request: web.Request) -> web.StreamResponse:
    return await _end_sessions(request, everywhere=True)


async def switch_language(request: web.Request) -> web.StreamResponse:
    locale = request.query.get("l", DEFAULT_LOCALE)
    response = web.HTTPSeeOther(safe_next(request.query.get("next")))
    if locale in LOCALES:
        set_language_cookie(request, response, locale)
    raise response
