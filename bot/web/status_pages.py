"""The status page: code and PIN (the chat's lockout), then the report as its tipster sees it.

A right PIN opens a short browser-session cookie (no Max-Age, gone when the browser closes; sealed
with the service key) that names the report. Behind it: the status line, the officers' messages
from the anonymous inbox, the reward claim code when one was approved, and a form to answer or
add evidence, which takes the chat's relay path to the officers.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.web.evidence import seal, take_evidence
from bot.web.forms import FIELD_MAX, Form, FormTooLarge, read_form, text
from bot.web.guard import FORM_LANG, csrf_ok, locale_of
from bot.web.inbox import read_inbox
from bot.web.site import DATABASE_ERRORS, database_failed, render, site_of
from handlers.channels import ChannelName
from handlers.citizen.draft import DESCRIPTION_MAX
from handlers.citizen.relay import CLOSED, pass_to_officers
from handlers.citizen.status import pin_report, reward_notice
from handlers.i18n import t
from handlers.localtime import format_datetime
from handlers.security import format_code, parse_code, parse_pin
from handlers.text import substance
from storage.models import ContactRoute, MediaBlob, RelayMessage, Report
from storage.repositories import RateLimits
from storage.types import utcnow

INBOX_COOKIE = "tb_inbox"
#: How long a proven PIN keeps the report open in this browser.
OPEN_FOR = 30 * 60
VIEW = "/status/report"
#: An officer's photo on the status page, by its content hash (behind the same cookie).
PHOTO = "/status/photo/{sha256}"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Answers (a message and its evidence count as one) one browser connection may send on one
#: report within :data:`ANSWER_WINDOW`: officers' groups are not to be flooded from the page.
RATE_ANSWER = "web_answer"
ANSWER_LIMIT = 20
ANSWER_WINDOW = timedelta(minutes=60)


async def status_form(request: web.Request) -> web.StreamResponse:
    return render(request, "status.html", values={}, errors={})


async def status_check(request: web.Request) -> web.StreamResponse:
    site = site_of(request)
    form = await read_form(request, max_total=64 * 1024, max_files=0)
    request[FORM_LANG] = form.get("lang")
    locale = locale_of(request, site.service.settings.default_locale)
    if not csrf_ok(request, form.get("csrf")):
        return render(request, "message.html", status=403, message="web.err.csrf")
    values = {"code": text(form, "code", 40)}
    errors: dict[str, str] = {}
    code = parse_code(values["code"])
    pin = parse_pin(text(form, "pin", 40))
    if code is None:
        errors["code"] = t(locale, "status.bad_code")
    if pin is None:
        errors["pin"] = t(locale, "status.bad_pin")
    if errors or code is None or pin is None:
        return render(request, "status.html", status=400, values=values, errors=errors)
    async with site.service.session_factory() as session, session.begin():
        report, refusal = await pin_report(
            site.service.flow, session, site.clients.key(request), code, pin
        )
    if report is None:
        window = site.service.settings.pin_attempt_window_minutes
        errors["pin"] = t(locale, refusal or "status.wrong", minutes=window)
        return render(request, "status.html", status=403, values=values, errors=errors)
    response = web.HTTPSeeOther(f"{VIEW}?lang={locale}")
    sealed = site.keyring.encrypt({"r": report.id, "x": int(time.time()) + OPEN_FOR})
    response.set_cookie(
        INBOX_COOKIE,
        sealed,
        path="/status",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def opened_report(request: web.Request, session: AsyncSession) -> Report | None:
    token = request.cookies.get(INBOX_COOKIE)
    if not token:
        return None
    try:
        data = site_of(request).keyring.decrypt(token)
    except ValueError:
        return None
    if int(data.get("x", 0)) < time.time() or not isinstance(data.get("r"), int):
        return None
    return await session.get(Report, data["r"])


async def status_view(request: web.Request) -> web.StreamResponse:
    site = site_of(request)
    locale = locale_of(request, site.service.settings.default_locale)
    async with site.service.session_factory() as session, session.begin():
        report = await opened_report(request, session)
        if report is None:
            raise web.HTTPSeeOther(f"/status?lang={locale}")
        return await show_report(request, session, report, locale)


async def show_report(
    request: web.Request,
    session: AsyncSession,
    report: Report,
    locale: str,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    message: str = "",
    media: list[dict[str, Any]] | None = None,
) -> web.Response:
    """The report as its tipster sees it, with the answer form (and what they typed in it)."""
    site = site_of(request)
    line = t(
        locale,
        "status.line",
        code=format_code(report.code),
        status=t(locale, f"status.{report.status}"),
        received=format_datetime(report.created_at),
    )
    outcome = (
        t(locale, f"outcome.citizen.{report.outcome}")
        if report.status == "resolved" and report.outcome
        else None
    )
    route = await session.scalar(select(ContactRoute).where(ContactRoute.report_id == report.id))
    messages = []
    if route is not None:
        target = site.keyring.decrypt(route.route)
        if target.get("channel") == ChannelName.WEB:
            messages = await read_inbox(session, site.keyring, str(target["chat_id"]))
    reward = await reward_notice(site.service.flow, session, report, locale)
    return render(
        request,
        "status_view.html",
        status=status,
        line=line,
        outcome=outcome,
        messages=[
            (format_datetime(m.at), m.text, PHOTO.format(sha256=m.photo) if m.photo else None)
            for m in messages
        ],
        reward=t(locale, reward[0], **reward[1]) if reward is not None else None,
        open=report.status not in CLOSED,
        needs_info=report.status == "needs_info",
        sent=request.query.get("sent") == "1",
        errors=errors or {},
        message=message,
        kept=seal(site.keyring, media or []),
        kept_count=len(media or []),
        max_media=site.service.settings.max_media_per_report,
        unavailable=False,
    )


def answer_not_stored(
    request: web.Request, locale: str, message: str, media: list[dict[str, Any]]
) -> web.Response:
    """The answer form again, as typed, when the database is down: the report itself cannot be
    read, so only the form and the form-level error are shown (status 503)."""
    site = site_of(request)
    return render(
        request,
        "status_view.html",
        status=503,
        line="",
        outcome=None,
        messages=[],
        reward=None,
        open=True,
        needs_info=False,
        sent=False,
        errors={"form": t(locale, "web.err.database")},
        message=message,
        kept=seal(site.keyring, media),
        kept_count=len(media),
        max_media=site.service.settings.max_media_per_report,
        unavailable=True,
    )


async def status_photo(request: web.Request) -> web.StreamResponse:
    """An officer's photo to the tipster of the report opened in this browser: only behind the
    proven PIN, only an image sent to this report's tipster (never evidence), never cached.
    Anything else is a 404 that says nothing."""
    sha256 = request.match_info["sha256"]
    if not _SHA256.fullmatch(sha256):
        raise web.HTTPNotFound
    site = site_of(request)
    async with site.service.session_factory() as session:
        report = await opened_report(request, session)
        if report is None:
            raise web.HTTPNotFound
        found = (
            await session.execute(
                select(MediaBlob.mime, MediaBlob.content)
                .join(RelayMessage, RelayMessage.blob_id == MediaBlob.id)
                .where(
                    MediaBlob.sha256 == sha256,
                    RelayMessage.report_id == report.id,
                    RelayMessage.direction == "to_citizen",
                )
                .limit(1)
            )
        ).first()
    if found is None:
        raise web.HTTPNotFound
    mime, content = found
    return web.Response(
        body=content,
        content_type=mime,
        headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"},
    )


async def status_add(request: web.Request) -> web.StreamResponse:
    """An answer to the officers, or more information and evidence: the chat's relay path."""
    site = site_of(request)
    settings = site.service.settings
    try:
        form = await read_form(
            request,
            max_total=settings.web_upload_max_mb * 1024 * 1024,
            max_files=settings.max_media_per_report,
        )
    except FormTooLarge:
        raise web.HTTPRequestEntityTooLarge(max_size=0, actual_size=0) from None
    request[FORM_LANG] = form.get("lang")
    locale = locale_of(request, settings.default_locale)
    if not csrf_ok(request, form.get("csrf")):
        return render(request, "message.html", status=403, message="web.err.csrf")
    message = text(form, "message", FIELD_MAX)
    media: list[dict[str, Any]] = []
    try:
        return await _add(request, form, locale, message, media)
    except DATABASE_ERRORS as exc:
        database_failed(request, exc)
        return answer_not_stored(request, locale, message, media)


async def _add(
    request: web.Request, form: Form, locale: str, message: str, media: list[dict[str, Any]]
) -> web.StreamResponse:
    """Check and store an answer; ``media`` is filled with the evidence kept, so that it is
    offered again if the database fails after it was stored."""
    site = site_of(request)
    settings = site.service.settings
    errors: dict[str, str] = {}
    if len(message) > DESCRIPTION_MAX:
        errors["message"] = t(locale, "err.too_long", limit=DESCRIPTION_MAX)
    media += await take_evidence(
        site.service.session_factory,
        site.keyring,
        form,
        locale=locale,
        limit=settings.max_media_per_report,
        errors=errors,
    )
    if not errors and not substance(message) and not media:
        errors["message"] = t(locale, "relay.expecting")
    async with site.service.session_factory() as session, session.begin():
        report = await opened_report(request, session)
        if report is None:
            raise web.HTTPSeeOther(f"/status?lang={locale}")
        if errors:
            return await show_report(
                request,
                session,
                report,
                locale,
                status=400,
                errors=errors,
                message=message,
                media=media,
            )
        if report.status in CLOSED:
            return render(request, "message.html", status=409, message="relay.closed")
        limits = RateLimits(session)
        rate_key = site.keyring.keyed_hash(RATE_ANSWER, f"{site.clients.key(request)}:{report.id}")
        if await limits.count(RATE_ANSWER, rate_key, ANSWER_WINDOW) >= ANSWER_LIMIT:
            minutes = int(ANSWER_WINDOW.total_seconds() // 60)
            return await show_report(
                request,
                session,
                report,
                locale,
                status=429,
                errors={"form": t(locale, "web.err.answer_rate_limited", minutes=minutes)},
                message=message,
                media=media,
            )
        limits.hit(RATE_ANSWER, rate_key)
        addition = report.status != "needs_info"
        now = utcnow()
        if substance(message):
            item = RelayMessage(report_id=report.id, direction="to_officers", text=message)
            await pass_to_officers(session, report, item, addition=addition, now=now)
            addition = True
        for image in media:
            item = RelayMessage(
                report_id=report.id,
                direction="to_officers",
                media_kind="photo",
                blob_id=image["blob_id"],
            )
            await pass_to_officers(session, report, item, addition=addition, now=now)
            addition = True
    site.kick()
    raise web.HTTPSeeOther(f"{VIEW}?lang={locale}&sent=1")
