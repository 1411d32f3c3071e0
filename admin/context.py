"""What every page of the panel shares: the panel object, the request's state, labels and
rendering, and the deny-by-default role check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from admin.auth import CSRF_FIELD, LANG_COOKIE, LoginThrottle, PasswordWorker, Session, SessionBox
from admin.clients import Clients
from admin.labels import Labels
from admin.runtime import PanelRuntime
from admin.scope import visible
from admin.settings import AdminSettings
from handlers.domain import LOCALES
from handlers.i18n import DEFAULT_LOCALE
from handlers.localtime import format_datetime
from handlers.officers import rank
from handlers.rewards import format_vnd
from handlers.security import format_code
from handlers.triage import Triage
from storage.models import Officer

PREFIX = "/admin"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Panel:
    runtime: PanelRuntime
    settings: AdminSettings
    box: SessionBox
    throttle: LoginThrottle
    passwords: PasswordWorker
    clients: Clients
    env: jinja2.Environment

    @property
    def triage(self) -> Triage:
        return self.runtime.triage

    def bot_username(self) -> str | None:
        if self.settings.bot_username:
            return self.settings.bot_username.lstrip("@") or None
        return self.runtime.bot_username()


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
    if (
        value
        and len(value) <= 2048
        and value.startswith(PREFIX)
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
    ):
        return value
    return f"{PREFIX}/"


def labels_of(request: web.Request) -> Labels:
    panel = panel_of(request)
    return Labels(locale_of(request), panel.runtime.catalogue, panel.triage.queues)


def template_env() -> jinja2.Environment:
    """The panel's templates (also what the worker renders the monthly report from)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page_globals(
    labels: Labels, *, officer: Officer | None = None, csrf: str = "", path: str = ""
) -> dict[str, Any]:
    """What every template may use besides its own context."""
    return {
        "_": labels,
        "locale": labels.locale,
        "officer": officer,
        "csrf": csrf,
        "csrf_field": CSRF_FIELD,
        "path": path,
        "prefix": PREFIX,
        "fmt_time": format_datetime,
        "fmt_code": format_code,
        "fmt_vnd": format_vnd,
        "rank": rank,
    }


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    panel = panel_of(request)
    state = state_of(request)
    page = panel.env.get_template(template).render(
        **page_globals(
            labels_of(request),
            officer=state.officer if state is not None else None,
            csrf=state.session.csrf if state is not None else "",
            path=request.path_qs,
        ),
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


async def officer_names(db: AsyncSession, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = await db.execute(select(Officer.id, Officer.display_name).where(Officer.id.in_(ids)))
    return {int(i): str(n) for i, n in rows.all()}
