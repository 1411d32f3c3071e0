"""The aiohttp application served by ``tinbao run``: ``/healthz``, the webhook, and the panel
at ``/admin`` (:mod:`admin.panel`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from storage.db import check_database

if TYPE_CHECKING:
    from bot.runtime import Service

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service")


async def healthz(request: web.Request) -> web.Response:
    """Database and channel state; 503 when the database cannot be reached."""
    service = request.app[SERVICE_KEY]
    database_ok = await check_database(service.engine)
    body = {
        "status": "ok" if database_ok else "degraded",
        "database": "ok" if database_ok else "unreachable",
        "channels": {"telegram": service.telegram_state, **service.channels.states()},
    }
    return web.json_response(body, status=200 if database_ok else 503)


async def admin_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/")


def build_web_app(service: Service) -> web.Application:
    from admin.panel import build_admin_app

    app = web.Application(client_max_size=1024**2)
    app[SERVICE_KEY] = service
    app.router.add_get("/healthz", healthz)
    if service.keyring is not None:
        app.router.add_get("/admin", admin_root)
        app.add_subapp("/admin", build_admin_app(service))
    if service.telegram is not None and service.settings.webhook_enabled:
        app.router.add_post(service.telegram.webhook_path, service.telegram.handle_webhook)
    add_zalo_routes(app, service)
    return app


def add_zalo_routes(app: web.Application, service: Service) -> None:
    """The webhooks of the citizen channels besides Telegram (``/zalo/bot/webhook``,
    ``/zalo/oa/webhook``), as each channel declares them."""
    for channel in service.channels:
        for path, handler in getattr(channel, "webhook_routes", list)():
            app.router.add_post(path, handler)
