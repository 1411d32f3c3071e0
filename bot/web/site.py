"""What every citizen page shares: the service, the templates, the keys, rendering, the guard."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot.outage import DatabaseDown
from bot.web.guard import (
    CSRF_FIELD,
    Challenges,
    ClientKeys,
    csrf_token,
    finish,
    locale_of,
)
from handlers.i18n import t
from handlers.security import Keyring

if TYPE_CHECKING:
    from bot.runtime import Service

log = logging.getLogger(__name__)
HERE = Path(__file__).parent

#: The database is down or unreachable while a form is being stored: the page is shown again
#: with what was typed, and a form-level error (``web.err.database``), status 503. (asyncpg's
#: refused connection is a plain ``OSError``; the pool's wait is SQLAlchemy's ``TimeoutError``.)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseDown,
    OperationalError,
    InterfaceError,
    DBAPIError,
    PoolTimeout,
    OSError,
)


def database_failed(request: web.Request, exc: BaseException) -> None:
    """Log a form that could not be stored (the error's kind only: no client detail)."""
    log.warning(
        "citizen page %s %s: database unavailable (%s)",
        request.method,
        request.path,
        type(exc).__name__,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Site:
    service: Service
    env: jinja2.Environment
    clients: ClientKeys
    challenges: Challenges

    @property
    def keyring(self) -> Keyring:
        keyring = self.service.keyring
        assert keyring is not None, "the citizen page needs the service keyring"
        return keyring

    @property
    def flow(self) -> Any:
        return self.service.flow

    def kick(self) -> None:
        """Wake the outbox after a commit (the officers' card, a relayed answer)."""
        for callback in self.service.dispatcher.after_commit:
            callback()

    def unit_name(self, code: str | None) -> str | None:
        entry = self.service.catalogue.by_code.get(code or "")
        return entry.name if entry is not None else None


SITE_KEY: web.AppKey[Site] = web.AppKey("citizen_site")


def site_of(request: web.Request) -> Site:
    return request.app[SITE_KEY]


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    site = site_of(request)
    locale = locale_of(request, site.service.settings.default_locale)
    other = "en" if locale == "vi" else "vi"

    def link(path: str, **query: str) -> str:
        return f"{path}?{urlencode({**query, 'lang': locale})}"

    html = site.env.get_template(template).render(
        _=lambda key, **values: t(locale, key, **values),
        locale=locale,
        other_locale=other,
        other_link=f"{request.path}?{urlencode({**request.query, 'lang': other})}",
        link=link,
        csrf=csrf_token(request),
        csrf_field=CSRF_FIELD,
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def page(handler: Handler) -> Handler:
    """Every citizen page: the safety headers, the CSRF cookie, no caching."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            finish(request, exc)
            raise
        except Exception:
            # Answered here, not by aiohttp, whose own error log names the client's address.
            log.exception("citizen page %s %s failed", request.method, request.path)
            response = render(request, "message.html", status=500, message="web.err.failed")
        return finish(request, response)

    return wrapped


def build_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
