"""The aiohttp application served by ``tinbao run``: ``/healthz``, the webhook, and the panel
at ``/admin`` (:mod:`admin.panel`). It depends on :class:`admin.runtime.PanelRuntime` only."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from admin.clients import Clients
from admin.runtime import PanelRuntime
from admin.security import LARGE_BODIES, UPLOAD_PATHS, edge
from admin.server import ServerLimits
from config.settings import Settings
from storage.db import check_database

SERVICE_KEY: web.AppKey[PanelRuntime] = web.AppKey("service")


def _database(database_ok: bool, details: Mapping[str, object]) -> str:
    """``ok``, or ``down since <ISO UTC>`` (when the process's watch saw the outage begin)."""
    if database_ok:
        return "ok"
    since = details.get("database_down_since")
    return f"down since {since}" if since else "unreachable"


async def healthz(request: web.Request) -> web.Response:
    """Database and channel state; 503 when the database cannot be reached."""
    service = request.app[SERVICE_KEY]
    database_ok = await check_database(service.engine)
    details = service.health_details()
    body: dict[str, object] = {
        "status": "ok" if database_ok else "degraded",
        "database": _database(database_ok, details),
        "channels": dict(service.channel_states()),
        **details,
    }
    return web.json_response(body, status=200 if database_ok else 503)


async def readyz(request: web.Request) -> web.Response:
    """Ready to serve: 200 while the database answers, else 503 with "down since …" (the
    webhooks still take updates into the spool meanwhile)."""
    service = request.app[SERVICE_KEY]
    database_ok = await check_database(service.engine)
    details = service.health_details()
    body: dict[str, object] = {
        "ready": database_ok,
        "database": _database(database_ok, details),
        "spool_pending": details.get("spool_pending", 0),
    }
    return web.json_response(body, status=200 if database_ok else 503)


async def admin_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/")


def build_web_app(service: PanelRuntime) -> web.Application:
    from admin.panel import build_admin_app

    settings = service.settings
    clients = Clients.of(settings.trusted_proxies, force_https=settings.force_https)
    # The citizens' page uploads evidence (streamed, on its own paths); everything else is
    # capped at http_max_body_bytes by the edge.
    largest = settings.http_max_body_bytes
    if settings.web_enabled:
        largest = max(largest, (settings.web_upload_max_mb + 1) * 1024 * 1024)
    panel = service.keyring is not None and service.serves_panel
    if panel:  # the question form carries a photo
        from admin.report_views import ASK_MAX_BODY

        largest = max(largest, ASK_MAX_BODY)
    app = web.Application(
        client_max_size=largest,
        middlewares=[
            edge(
                clients,
                body_timeout=settings.http_body_timeout,
                max_body=settings.http_max_body_bytes,
            )
        ],
    )
    app[SERVICE_KEY] = service
    app[UPLOAD_PATHS] = set()
    app[LARGE_BODIES] = []
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for method, path, process_handler in service.process_routes():  # /metrics
        app.router.add_route(method, path, process_handler)
    if panel:
        from admin.report_views import ASK_MAX_BODY, ASK_PATH

        app[LARGE_BODIES].append((ASK_PATH, ASK_MAX_BODY))
        app.router.add_get("/admin", admin_root)
        app.add_subapp("/admin", build_admin_app(service, clients=clients))
    for path, handler in service.webhook_routes():  # Telegram's and the Zalo channels'
        app.router.add_post(path, handler)
    return app


def server_limits(settings: Settings) -> ServerLimits:
    return ServerLimits(
        header_timeout=settings.http_header_timeout,
        max_connections=settings.http_max_connections,
    )
