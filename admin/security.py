"""The web server's guards, as aiohttp middlewares.

* :func:`edge` (the whole server): every response, error pages included, carries a strict
  Content-Security-Policy, ``X-Frame-Options: DENY``, ``nosniff``, ``no-referrer`` and
  ``no-store``, and HSTS when the browser came over https; a request body must arrive within
  ``TINBAO_HTTP_BODY_TIMEOUT`` (408) and fit ``TINBAO_HTTP_MAX_BODY_BYTES`` (413); an unhandled
  error is a plain 500 that still carries the headers.
* :func:`panel_errors` (the panel): a malformed parameter is a 400 page, and 403/404/405/413
  and unexpected errors are the panel's own error page.
* :func:`sessions` (the panel): a session is a sealed cookie (:mod:`admin.auth`); every page
  but the login form, the language switch and the static files needs one, and the account must
  still be active, with the same password and the same session generation; every POST carries
  the session's CSRF token (compared in constant time) or gets 403.
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Middleware

from admin.auth import CSRF_FIELD, LANG_COOKIE, SESSION_COOKIE, Session, constant_equal
from admin.clients import Clients
from admin.context import (
    PREFIX,
    STATE_KEY,
    Handler,
    Panel,
    RequestState,
    panel_of,
    render,
)
from admin.params import BadParameter
from handlers.officers import Registry
from storage.models import Officer

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: For SVG images served on their own: pygal's inline styles, and nothing else.
CSP_SVG = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
HSTS = "max-age=31536000"

#: Error statuses the panel answers with its own page (a message key each).
ERROR_MESSAGES = {
    400: "admin.error.bad_request",
    403: "admin.error.forbidden",
    404: "admin.error.not_found",
    405: "admin.error.bad_request",
    408: "admin.error.bad_request",
    413: "admin.error.too_large",
    500: "admin.error.internal",
}


def harden(response: web.StreamResponse, *, https: bool) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    if https:
        response.headers["Strict-Transport-Security"] = HSTS


#: Paths whose handlers read a large body (the citizens' evidence uploads) as a stream, under
#: the server's larger ``client_max_size``; every other body is capped at ``max_body`` and read
#: here, within the body timeout.
UPLOAD_PATHS: web.AppKey[set[str]] = web.AppKey("upload_paths", set)
#: Paths (patterns) whose body may be larger than ``max_body`` (a photo on the panel's question
#: form), up to the size given. Such a body (a multipart form, which aiohttp parses from the
#: stream) is not read here: the panel reads it only for a signed-in officer, within the body
#: timeout, to check its CSRF token (:func:`sessions`).
LARGE_BODIES: web.AppKey[list[tuple[re.Pattern[str], int]]] = web.AppKey("large_bodies", list)


def edge(clients: Clients, *, body_timeout: float, max_body: int) -> Middleware:
    """The whole server's outermost middleware (see the module doc)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        https = clients.https(request)
        upload = request.path in request.app.get(UPLOAD_PATHS, set())
        large = next(
            (size for path, size in request.app.get(LARGE_BODIES, []) if path.match(request.path)),
            None,
        )
        limit = large or max_body
        try:
            if not upload and (request.content_length or 0) > limit:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=limit, actual_size=request.content_length or 0
                )
            upload = upload or large is not None
            if (
                request.body_exists
                and not upload
                and request.content_type.startswith("multipart/")
            ):
                # Every form here is urlencoded; a multipart body, read (and so consumed) below,
                # could not be parsed any more: refused before it is read.
                raise web.HTTPUnsupportedMediaType(text="415: a multipart body is not taken here")
            if request.body_exists and not upload:
                try:
                    async with asyncio.timeout(body_timeout):
                        await request.read()  # cached: request.post() and .json() reuse it
                except TimeoutError:
                    raise web.HTTPRequestTimeout(text="408: request body too slow") from None
            response = await handler(request)
        except web.HTTPException as exc:
            harden(exc, https=https)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = web.Response(status=500, text="500: Internal Server Error")
        harden(response, https=https)
        return response

    return guard


@web.middleware
async def panel_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadParameter as bad:
        log.info("panel: bad parameter %r on %s", bad.name[:40], request.path[:200])
        return _error_page(request, 400)
    except web.HTTPException as exc:
        if exc.status in ERROR_MESSAGES:
            page = _error_page(request, exc.status)
            if "Allow" in exc.headers:
                page.headers["Allow"] = exc.headers["Allow"]
            return page
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("panel: unhandled error on %s %s", request.method, request.path[:200])
        return _error_page(request, 500)


def _error_page(request: web.Request, status: int) -> web.Response:
    try:
        return render(request, "error.html", status=status, message=ERROR_MESSAGES[status])
    except Exception:  # the error page itself failed: a plain one
        log.exception("panel: the error page failed")
        return web.Response(status=status, text=f"{status}")


PUBLIC = (f"{PREFIX}/login", f"{PREFIX}/lang", f"{PREFIX}/static/")


def session_valid(panel: Panel, officer: Officer | None, session: Session) -> bool:
    return (
        officer is not None
        and officer.active
        and bool(officer.password_hash)
        and constant_equal(panel.box.password_tag(officer.password_hash), session.password_tag)
        and officer.session_generation == session.generation
    )


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(f"{PREFIX}/static/"):
        return await handler(request)
    panel = panel_of(request)
    session = panel.box.open(request.cookies.get(SESSION_COOKIE))
    officer: Officer | None = None
    if session is not None and session.officer_id is not None:
        async with panel.runtime.session_factory() as db:
            officer = await Registry(db).by_id(session.officer_id)
        if not session_valid(panel, officer, session):
            officer, session = None, None
    if session is None:
        session = panel.box.new(None)
    state = RequestState(session, officer)
    request[STATE_KEY] = state
    public = any(request.path.startswith(p) for p in PUBLIC)
    if officer is None and not public:
        response: web.StreamResponse = web.HTTPSeeOther(
            f"{PREFIX}/login?" + urlencode({"next": request.path_qs[:2048]})
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
    # Already read by the edge, except a large form (LARGE_BODIES): read now, within the same
    # time limit, and only because a signed-in officer sent it.
    try:
        async with asyncio.timeout(panel_of(request).runtime.settings.http_body_timeout):
            form = await request.post()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="408: request body too slow") from None
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
        secure=panel.clients.https(request),
        samesite="Strict",
        max_age=int(panel.box.idle.total_seconds()),
    )


def set_language_cookie(request: web.Request, response: web.StreamResponse, locale: str) -> None:
    response.set_cookie(
        LANG_COOKIE,
        locale,
        path=PREFIX,
        httponly=True,
        secure=panel_of(request).clients.https(request),
        samesite="Strict",
        max_age=365 * 24 * 3600,
    )
