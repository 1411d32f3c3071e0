"""The citizens' reporting page: a citizen channel like the chats, served at ``/``.

Pages (``report_pages``, ``status_pages``), their safety (``guard``), form reading (``forms``),
evidence (``evidence``) and the channel's sender, the anonymous inbox (``inbox``).

Only the inbox is imported with the package: a process that serves no page (a worker, or
``TINBAO_WEB_ENABLED=false``) does not load the pages, Jinja2 or the panel's context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bot.web.inbox import WebInbox

if TYPE_CHECKING:
    from bot.runtime import Service

__all__ = ["WebInbox", "add_citizen_routes"]


async def no_icon(request: web.Request) -> web.StreamResponse:
    """Browsers ask for one; there is none (and no third-party one either)."""
    return web.Response(status=204)


def add_citizen_routes(app: web.Application, service: Service) -> None:
    """Serve the citizen pages on ``app`` (at ``/``, beside ``/admin`` and the webhooks)."""
    from admin.clients import Clients
    from admin.security import UPLOAD_PATHS
    from bot.web import report_pages as reports
    from bot.web import status_pages as status
    from bot.web.guard import Challenges, ClientKeys
    from bot.web.site import HERE, SITE_KEY, Site, build_env, page

    assert service.keyring is not None
    app[SITE_KEY] = Site(
        service=service,
        env=build_env(),
        clients=ClientKeys(Clients.of(service.settings.trusted_proxies)),
        challenges=Challenges(service.keyring),
    )
    app[UPLOAD_PATHS].update({"/tip", "/accident", status.VIEW})  # read as streams
    r = app.router
    r.add_get("/", page(reports.home))
    r.add_get("/tip", page(reports.tip_form))
    r.add_post("/tip", page(reports.tip_submit))
    r.add_get("/accident", page(reports.accident_form))
    r.add_post("/accident", page(reports.accident_submit))
    r.add_get("/places", page(reports.places))
    r.add_get("/status", page(status.status_form))
    r.add_post("/status", page(status.status_check))
    r.add_get(status.VIEW, page(status.status_view))
    r.add_post(status.VIEW, page(status.status_add))
    r.add_get(status.PHOTO, page(status.status_photo))
    r.add_get("/favicon.ico", page(no_icon))
    r.add_static("/assets/", HERE / "static", append_version=True)
