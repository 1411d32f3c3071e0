"""The officers' and commanders' web panel, mounted at ``/admin`` (server-rendered, no JS needed).

Security in one place, as middlewares of the panel's sub-application:

* every response carries a strict Content-Security-Policy (no inline script or style),
  ``X-Frame-Options: DENY``, ``nosniff``, ``no-referrer`` and ``no-store``;
* a session is a sealed cookie (:mod:`admin.auth`); every page but the login form, the
  language switch and the static files needs one, and the account must still be active with
  the same password;
* every POST carries the session's CSRF token (compared in constant time) or gets 403;
* Jinja2 escapes everything (autoescape on for every template).

Pages by role: officers work on the reports of the queues they serve and the rewards there;
commanders also see the statistics, exports, posters and the audit log, limited to their queues
unless they serve ``*`` (:mod:`admin.scope`); only admins see everything, and enrol and revoke.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
import segno
from aiohttp import web
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from admin.auth import (
    CSRF_FIELD,
    LANG_COOKIE,
    SESSION_COOKIE,
    LoginThrottle,
    Session,
    SessionBox,
    constant_equal,
    verify_password,
)
from admin.queries import (
    EMERGENCY_CATEGORY,
    AuditFilter,
    Period,
    ReportFilter,
    audit_page,
    decode_cursor,
    local_time,
    report_page,
    stats,
)
from admin.scope import sees_all, visible, visible_units
from admin.settings import AdminSettings
from handlers.card_actions import CLOSED_STATUSES
from handlers.domain import CATEGORIES, LOCALES, OUTCOMES, STATUSES
from handlers.i18n import DEFAULT_LOCALE, catalogue, t
from handlers.officers import ROLES, Registry, may, rank
from handlers.report_actions import ActionError
from handlers.report_actions import ReportActions as WebTriage
from handlers.rewards import REWARDABLE_OUTCOMES, format_vnd
from handlers.security import format_code, parse_code
from handlers.triage import CardRefresh, Triage
from storage.models import (
    AuditEvent,
    ContactRoute,
    MediaBlob,
    Officer,
    RelayMessage,
    Report,
    ReportEvent,
    ReportMedia,
    Reward,
)

if TYPE_CHECKING:
    from bot.runtime import Service

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PREFIX = "/admin"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: For SVG images served on their own: pygal's inline styles, and nothing else.
CSP_SVG = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Panel:
    service: Service
    settings: AdminSettings
    box: SessionBox
    throttle: LoginThrottle
    env: jinja2.Environment

    @property
    def triage(self) -> Triage:
        return self.service.dispatcher.triage


PANEL_KEY: web.AppKey[Panel] = web.AppKey("admin_panel", Panel)


@dataclass
class RequestState:
    """This request's session and signed-in account (None before login)."""

    session: Session
    officer: Officer | None = None
    logout: bool = False


STATE_KEY: web.RequestKey[RequestState] = web.RequestKey("admin_state", RequestState)


def state_of(request: web.Request) -> RequestState | None:
    return request.get(STATE_KEY)


# --------------------------------------------------------------------------- helpers


def panel_of(request: web.Request) -> Panel:
    return request.config_dict[PANEL_KEY]


def officer_of(request: web.Request) -> Officer:
    state = state_of(request)
    officer = state.officer if state is not None else None
    if officer is None:
        raise web.HTTPFound(f"{PREFIX}/login")
    return officer


def locale_of(request: web.Request) -> str:
    value = request.cookies.get(LANG_COOKIE, DEFAULT_LOCALE)
    return value if value in LOCALES else DEFAULT_LOCALE


def safe_next(value: str | None) -> str:
    """Only a path inside the panel: no open redirect."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


class Labels:
    """Labels for templates and exports, in one locale."""

    def __init__(self, panel: Panel, locale: str) -> None:
        self.panel = panel
        self.locale = locale

    def __call__(self, key: str, **values: Any) -> str:
        return t(self.locale, key, **values)

    def status(self, key: str) -> str:
        return self(f"officer.status.{key}") if key in STATUSES else key

    def category(self, key: str | None) -> str:
        if key == EMERGENCY_CATEGORY:
            return self("admin.cat.accident")
        return self(f"cat.{key}") if key in CATEGORIES else self("cat.other")

    def outcome(self, key: str | None) -> str:
        return self(f"outcome.{key}") if key in OUTCOMES else (key or "")

    def role(self, key: str) -> str:
        return self(f"role.{key}") if key in ROLES else key

    def unit(self, code: str | None) -> str:
        if not code:
            return self("admin.unit.none")
        entry = self.panel.service.catalogue.by_code.get(code)
        return entry.name if entry else code

    def queue(self, key: str | None) -> str:
        queue = self.panel.triage.queues.by_key(key) if key else None
        return queue.name if queue else (key or "")

    def action(self, key: str) -> str:
        name = f"admin.action.{key}"
        return self(name) if name in catalogue(self.locale) else key

    def duration(self, seconds: float | None) -> str:
        if seconds is None:
            return "—"
        minutes = round(seconds / 60)
        if minutes < 60:
            return self("admin.duration.minutes", m=minutes)
        return self("admin.duration.hours", h=minutes // 60, m=minutes % 60)


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    panel = panel_of(request)
    locale = locale_of(request)
    state = state_of(request)
    page = panel.env.get_template(template).render(
        _=Labels(panel, locale),
        locale=locale,
        officer=state.officer if state is not None else None,
        csrf=state.session.csrf if state is not None else "",
        csrf_field=CSRF_FIELD,
        path=request.path_qs,
        prefix=PREFIX,
        fmt_time=local_time,
        fmt_code=format_code,
        fmt_vnd=format_vnd,
        rank=rank,
        **context,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def refusal_status(error: str | None) -> int:
    """200 without an error; 403 for a permission refusal; 409 for any other refusal."""
    if error is None:
        return 200
    return 403 if error == "triage.not_permitted" else 409


def requires(role: str) -> Callable[[Handler], Handler]:
    """Deny by default: the signed-in account's role must reach ``role``."""

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            officer = officer_of(request)
            if rank(officer.role) < rank(role):
                return render(request, "error.html", status=403, message="admin.error.forbidden")
            return await handler(request)

        checked.__name__ = handler.__name__
        return checked

    return wrap


def scope_of(request: web.Request) -> ColumnElement[bool] | None:
    return visible(officer_of(request), panel_of(request).triage.queues)


def parse_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


async def after_change(panel: Panel, report_id: int) -> None:
    """What the chat does after a committed action: re-render the cards, deliver the outbox."""
    service = panel.service
    try:
        telegram = service.telegram
        cards = getattr(telegram, "cards", None) if telegram is not None else None
        if cards is not None:
            await cards.refresh(CardRefresh(report_id))
        if service.delivery is not None:
            service.delivery.kick()
    except Exception:
        log.exception("cards of report %s not refreshed after a web action", report_id)


# --------------------------------------------------------------------------- middlewares


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _harden(response)
        raise
    _harden(response)
    return response


def _harden(response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")


PUBLIC = (f"{PREFIX}/login", f"{PREFIX}/lang", f"{PREFIX}/static/")


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    panel = panel_of(request)
    session = panel.box.open(request.cookies.get(SESSION_COOKIE))
    officer: Officer | None = None
    if session is not None and session.officer_id is not None:
        async with panel.service.session_factory() as db:
            officer = await Registry(db).by_id(session.officer_id)
            if (
                officer is None
                or not officer.active
                or not officer.password_hash
                or not constant_equal(
                    panel.box.password_tag(officer.password_hash), session.password_tag
                )
            ):
                officer, session = None, None
    if request.path.startswith(f"{PREFIX}/static/"):
        return await handler(request)
    if session is None:
        session = panel.box.new(None)
    state = RequestState(session, officer)
    request[STATE_KEY] = state
    public = any(request.path.startswith(p) for p in PUBLIC)
    if officer is None and not public:
        response: web.StreamResponse = web.HTTPSeeOther(
            f"{PREFIX}/login?" + urlencode({"next": request.path_qs})
        )
    elif request.method == "POST" and not await _csrf_ok(request, session):
        response = render(request, "error.html", status=403, message="admin.error.csrf")
    else:
        try:
            response = await handler(request)
        except web.HTTPRedirection as redirect:
            response = redirect
    if not state.logout:
        set_session_cookie(request, response, panel, state.session)
    if isinstance(response, web.HTTPException) and response.status >= 300:
        raise response
    return response


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    return isinstance(sent, str) and constant_equal(sent, session.csrf)


def set_session_cookie(
    request: web.Request, response: web.StreamResponse, panel: Panel, session: Session
) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        panel.box.seal(session),
        path=PREFIX,
        httponly=True,
        secure=request.secure,
        samesite="Strict",
        max_age=int(panel.box.idle.total_seconds()),
    )


# --------------------------------------------------------------------------- login


async def login_form(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    if state is not None and state.officer is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return render(request, "login.html", next=safe_next(request.query.get("next")))


async def login(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    form = await request.post()
    username = str(form.get("username", ""))[:64].strip()
    password = str(form.get("password", ""))[:1024]
    target = safe_next(str(form.get("next", "")))
    address = request.remote or "unknown"
    async with panel.service.session_factory() as db, db.begin():
        if await panel.throttle.blocked(db, username, address):
            log.info("admin login throttled")
            return render(
                request, "login.html", status=429, next=target, error="admin.login.throttled"
            )
        officer = await db.scalar(select(Officer).where(Officer.username == username))
        ok = verify_password(officer.password_hash if officer else None, password)
        if not ok or officer is None or not officer.active:
            panel.throttle.failed(db, username, address)
            log.info("admin login refused")
            return render(request, "login.html", status=401, next=target, error="admin.login.bad")
        await panel.throttle.succeeded(db, username)
        Registry(db).audit("signed_in", by=officer, via="web", subject=officer)
    log.info("admin login: officer %s", officer.id)
    state = state_of(request)
    if state is not None:
        state.session = panel.box.new(officer.id, officer.password_hash)
    raise web.HTTPSeeOther(target)


async def logout(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    if state is not None:
        state.logout = True
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    response.del_cookie(SESSION_COOKIE, path=PREFIX)
    raise response


async def switch_language(request: web.Request) -> web.StreamResponse:
    locale = request.query.get("l", DEFAULT_LOCALE)
    response = web.HTTPSeeOther(safe_next(request.query.get("next")))
    if locale in LOCALES:
        response.set_cookie(
            LANG_COOKIE,
            locale,
            path=PREFIX,
            httponly=True,
            secure=request.secure,
            samesite="Strict",
            max_age=365 * 24 * 3600,
        )
    raise response


# --------------------------------------------------------------------------- dashboard


async def dashboard(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    period = Period.parse(None)
    scope = scope_of(request)
    async with panel.service.session_factory() as db:
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


# --------------------------------------------------------------------------- reports


def _report_filter(request: web.Request) -> ReportFilter:
    q = request.query
    emergency = {"1": True, "0": False}.get(q.get("emergency", ""))
    code_text = q.get("code", "").strip()
    return ReportFilter(
        status=q.get("status") if q.get("status") in STATUSES else None,
        unit=q.get("unit") or None,
        category=q.get("category") if q.get("category") in CATEGORIES else None,
        date_from=parse_date(q.get("from")),
        date_to=parse_date(q.get("to")),
        emergency=emergency,
        code=(parse_code(code_text) or "-") if code_text else None,
    )


async def reports(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    filters = _report_filter(request)
    async with panel.service.session_factory() as db:
        rows, cursor = await report_page(
            db,
            filters,
            scope_of(request),
            after=decode_cursor(request.query.get("after")),
            size=panel.settings.page_size,
        )
    keep = {k: v for k, v in request.query.items() if k != "after" and v}
    next_url = f"{PREFIX}/reports?" + urlencode({**keep, "after": cursor}) if cursor else None
    first_url = f"{PREFIX}/reports?" + urlencode(keep) if "after" in request.query else None
    codes = [u.code for u in panel.service.catalogue.units]
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
    code = parse_code(request.match_info["code"])
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
    async with panel.service.session_factory() as db:
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
        names = await _officer_names(db, actor_ids)
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
        if report.contact_mode == "phone" and panel.service.keyring is not None:
            # The one identifying detail officers may see: a number the tipster chose to leave.
            route = await db.scalar(
                select(ContactRoute).where(ContactRoute.report_id == report.id)
            )
            if route is not None and route.phone:
                phone = panel.service.keyring.decrypt(route.phone).get("phone")
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


async def _officer_names(db: AsyncSession, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = await db.execute(select(Officer.id, Officer.display_name).where(Officer.id.in_(ids)))
    return {int(i): str(n) for i, n in rows.all()}


async def report_action(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    action = request.match_info["action"]
    form = await request.post()

    def field(name: str) -> str:
        value = form.get(name, "")
        return value if isinstance(value, str) else ""

    report_id: int | None = None
    try:
        async with panel.service.session_factory() as db, db.begin():
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
                await work.ask(report, field("question"))
            elif action == "reward":
                await work.propose_reward(report, field("amount"), field("reason"))
            else:
                raise web.HTTPNotFound()
    except ActionError as refused:
        return await report_detail(request, error=refused.key, values=refused.values)
    log.info("web action %s on report %s by officer %s", action, report_id, officer.id)
    if report_id is not None:
        await after_change(panel, report_id)
    raise web.HTTPSeeOther(f"{PREFIX}/reports/{request.match_info['code']}?done=1")


async def media(request: web.Request) -> web.StreamResponse:
    """Evidence bytes (already cleaned of metadata), for those who may see the report."""
    panel = panel_of(request)
    officer = officer_of(request)
    try:
        media_id = int(request.match_info["media_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    async with panel.service.session_factory() as db:
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


# --------------------------------------------------------------------------- rewards


async def rewards_page(
    request: web.Request, *, error: str | None = None, values: dict[str, Any] | None = None
) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    scope = scope_of(request)
    async with panel.service.session_factory() as db:
        base = select(Reward, Report).join(Report, Report.id == Reward.report_id)
        if scope is not None:
            base = base.where(scope)
        pending = (
            await db.execute(base.where(Reward.status == "proposed").order_by(Reward.proposed_at))
        ).all()
        history = (
            await db.execute(
                base.where(Reward.status != "proposed").order_by(Reward.id.desc()).limit(200)
            )
        ).all()
        ids: set[int] = set()
        for reward, _ in [*pending, *history]:
            ids |= {
                i
                for i in (reward.proposed_by_id, reward.decided_by_id, reward.paid_by_id)
                if i is not None
            }
        names = await _officer_names(db, ids)
        work = WebTriage(db, officer, panel.triage)
        can_decide = {
            reward.id: work.allowed("reward_decide", report)
            and reward.proposed_by_id != officer.id
            for reward, report in pending
        }
    return render(
        request,
        "rewards.html",
        status=refusal_status(error),
        pending=pending,
        history=history,
        names=names,
        can_decide=can_decide,
        error=error,
        error_values=values or {},
        done=request.query.get("done") == "1",
    )


async def reward_decide(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    form = await request.post()
    try:
        reward_id = int(request.match_info["reward_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    decision = form.get("decision")
    reason = form.get("reason")
    report_id: int | None = None
    try:
        async with panel.service.session_factory() as db, db.begin():
            reward = await db.get(Reward, reward_id)
            report = await db.get(Report, reward.report_id) if reward else None
            if reward is None or report is None:
                raise web.HTTPNotFound()
            work = WebTriage(db, officer, panel.triage)
            if not sees_all(officer) and not may(officer, "view", work.queue_key(report)):
                raise web.HTTPNotFound()
            if decision not in ("approve", "reject"):
                raise ActionError("admin.error.bad_decision")
            commendation = form.get("commendation") if decision == "approve" else None
            await work.decide_reward(
                reward_id,
                approve=decision == "approve",
                reason=reason if isinstance(reason, str) else "",
                commendation=commendation
                if isinstance(commendation, str) and commendation
                else None,
            )
            report_id = report.id
    except ActionError as refused:
        return await rewards_page(request, error=refused.key, values=refused.values)
    log.info("web reward %s %s by officer %s", reward_id, decision, officer.id)
    if report_id is not None:
        await after_change(panel, report_id)
    raise web.HTTPSeeOther(f"{PREFIX}/rewards?done=1")


async def reward_pay(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    form = await request.post()
    claim, reference = form.get("claim"), form.get("reference")
    refused: ActionError | None = None
    report_id: int | None = None
    async with panel.service.session_factory() as db, db.begin():
        try:
            reward = await WebTriage(db, officer, panel.triage).pay_reward(
                claim if isinstance(claim, str) else "",
                reference if isinstance(reference, str) else "",
            )
            report_id = reward.report_id
        except ActionError as error:
            refused = error  # a wrong code is counted: commit anyway
    if refused is not None:
        return await rewards_page(request, error=refused.key, values=refused.values)
    if report_id is not None:
        await after_change(panel, report_id)
    raise web.HTTPSeeOther(f"{PREFIX}/rewards?done=1")


# --------------------------------------------------------------------------- officers, units


@requires("commander")
async def officers_page(request: web.Request) -> web.StreamResponse:
    return await _officers_view(request)


async def _officers_view(request: web.Request, error: str | None = None) -> web.StreamResponse:
    panel = panel_of(request)
    async with panel.service.session_factory() as db:
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
    user_text = str(form.get("telegram_user_id", "")).strip()
    role, queue_key = str(form.get("role", "")), str(form.get("queue", ""))
    name = str(form.get("name", "")).strip()
    if not user_text.lstrip("-").isdigit() or role not in ROLES or not name:
        return await _officers_view(request, error="admin.error.enrol")
    if queue_key != "*" and panel.triage.queues.by_key(queue_key) is None:
        return await _officers_view(request, error="admin.error.unknown_queue")
    if not may(officer, "enrol", queue_key):
        return await _officers_view(request, error="triage.not_permitted")
    async with panel.service.session_factory() as db, db.begin():
        enrolled = await Registry(db).enrol(
            telegram_user_id=int(user_text),
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
    try:
        target_id = int(request.match_info["officer_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    if target_id == officer.id:
        return await _officers_view(request, error="admin.error.revoke_self")
    async with panel.service.session_factory() as db, db.begin():
        registry = Registry(db)
        target = await registry.by_id(target_id)
        if target is None:
            raise web.HTTPNotFound()
        await registry.revoke(target, by=await registry.by_id(officer.id), via="web")
    log.info("officer %s revoked by officer %s (web)", target_id, officer.id)
    raise web.HTTPSeeOther(f"{PREFIX}/officers?done=1")


def bot_username(panel: Panel) -> str | None:
    if panel.settings.bot_username:
        return panel.settings.bot_username.lstrip("@")
    telegram = panel.service.telegram
    try:
        name = telegram.application.bot.username if telegram is not None else None
    except RuntimeError:  # the bot has not called getMe yet
        name = None
    return name or None


def deep_link(panel: Panel, code: str) -> str | None:
    name = bot_username(panel)
    return f"https://t.me/{name}?start=u_{code}" if name else None


@requires("commander")
async def units_page(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    queues = panel.triage.queues
    units = [(u, queues.resolve(u.code)) for u in panel.service.catalogue.units]
    return render(
        request,
        "units.html",
        units=units,
        queues=queues.all_queues,
        bot=bot_username(panel),
    )


def _unit_or_404(panel: Panel, code: str) -> Any:
    entry = panel.service.catalogue.by_code.get(code)
    if entry is None:
        raise web.HTTPNotFound()
    return entry


@requires("commander")
async def unit_poster(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    entry = _unit_or_404(panel, request.match_info["code"])
    return render(request, "poster.html", unit=entry, link=deep_link(panel, entry.code))


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


# --------------------------------------------------------------------------- audit log


@requires("commander")
async def audit(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    q = request.query
    actor = q.get("actor", "")
    code_text = q.get("code", "").strip()
    filters = AuditFilter(
        action=q.get("action") or None,
        actor_id=int(actor) if actor.isdigit() else None,
        actor_kind=q.get("kind") if q.get("kind") in ("citizen", "officer", "system") else None,
        code=(parse_code(code_text) or "-") if code_text else None,
        date_from=parse_date(q.get("from")),
        date_to=parse_date(q.get("to")),
    )
    before = q.get("before", "")
    async with panel.service.session_factory() as db:
        rows, next_id = await audit_page(
            db,
            filters,
            scope_of(request),
            before_id=int(before) if before.isdigit() else None,
            size=panel.settings.page_size,
        )
        registry_events = (
            await db.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(50))
        ).all()
        names = await _officer_names(
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


# --------------------------------------------------------------------------- wiring


def build_admin_app(service: Service, settings: AdminSettings | None = None) -> web.Application:
    """The panel as a sub-application, to mount at ``/admin``."""
    if service.keyring is None:
        raise RuntimeError("the admin panel needs the service keyring")
    settings = settings or AdminSettings()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    panel = Panel(
        service=service,
        settings=settings,
        box=SessionBox(
            service.keyring,
            idle=timedelta(minutes=settings.session_idle_minutes),
            max_age=timedelta(hours=settings.session_max_hours),
        ),
        throttle=LoginThrottle(
            service.keyring,
            per_account=settings.login_attempts_per_account,
            per_address=settings.login_attempts_per_address,
            window=timedelta(minutes=settings.login_window_minutes),
        ),
        env=env,
    )
    app = web.Application(middlewares=[security_headers, sessions])
    app[PANEL_KEY] = panel
    r = app.router
    r.add_get("/", dashboard)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/lang", switch_language)
    r.add_get("/reports", reports)
    r.add_get("/reports/{code}", report_detail)
    r.add_post("/reports/{code}/{action}", report_action)
    r.add_get("/media/{media_id}", media)
    r.add_get("/rewards", rewards_page)
    r.add_post("/rewards/pay", reward_pay)
    r.add_post("/rewards/{reward_id}/decide", reward_decide)
    from admin.stats.views import register as register_statistics

    register_statistics(r)
    r.add_get("/officers", officers_page)
    r.add_post("/officers/enrol", officer_enrol)
    r.add_post("/officers/{officer_id}/revoke", officer_revoke)
    r.add_get("/units", units_page)
    r.add_get("/units/{code}/poster", unit_poster)
    r.add_get("/units/{code}/qr.svg", unit_qr)
    r.add_get("/audit", audit)
    r.add_static("/static/", HERE / "static", append_version=True)
    return app
