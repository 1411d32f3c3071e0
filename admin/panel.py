"""The officers' and commanders' web panel, mounted at ``/admin`` (server-rendered, no JS needed).

This module only wires the panel together; each concern has its own module:

* :mod:`admin.security`: security headers, error pages, sessions and CSRF (middlewares);
* :mod:`admin.params`: strict, bounded parsing of every parameter (400 otherwise);
* :mod:`admin.context`: the panel object, labels, rendering, the role check;
* the views: :mod:`admin.login_views`, :mod:`admin.report_views`, :mod:`admin.reward_views`,
  :mod:`admin.dashboard_views`, :mod:`admin.stats.views`, :mod:`admin.officer_views`,
  :mod:`admin.audit_views`.

Pages by role: officers work on the reports of the queues they serve and the rewards there;
commanders and admins see every report, the statistics, exports, posters and the audit log;
only admins enrol and revoke officers. The panel depends on :class:`admin.runtime.PanelRuntime`,
never on the composition root.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from aiohttp import web

import admin.audit_views as audit_views
import admin.dashboard_views as dashboard_views
import admin.login_views as login_views
import admin.officer_views as officer_views
import admin.report_views as report_views
import admin.reward_views as reward_views
from admin.auth import LoginThrottle, PasswordWorker, SessionBox
from admin.clients import Clients
from admin.context import PANEL_KEY, PREFIX, Panel, template_env
from admin.runtime import PanelRuntime
from admin.security import panel_errors, sessions
from admin.settings import AdminSettings
from admin.stats.views import register as register_statistics

__all__ = ["PREFIX", "build_admin_app"]

HERE = Path(__file__).parent


def build_admin_app(
    runtime: PanelRuntime,
    settings: AdminSettings | None = None,
    *,
    clients: Clients | None = None,
) -> web.Application:
    """The panel as a sub-application, to mount at ``/admin``."""
    if runtime.keyring is None:
        raise RuntimeError("the admin panel needs the service keyring")
    settings = settings or AdminSettings()
    env = template_env()
    panel = Panel(
        runtime=runtime,
        settings=settings,
        box=SessionBox(
            runtime.keyring,
            idle=timedelta(minutes=settings.session_idle_minutes),
            max_age=timedelta(hours=settings.session_max_hours),
        ),
        throttle=LoginThrottle(
            runtime.keyring,
            per_pair=settings.login_attempts_per_account,
            per_address=settings.login_attempts_per_address,
            window=timedelta(minutes=settings.login_window_minutes),
        ),
        passwords=PasswordWorker(settings.password_concurrency),
        clients=clients or Clients(),
        env=env,
    )
    app = web.Application(middlewares=[panel_errors, sessions])
    app[PANEL_KEY] = panel
    r = app.router
    r.add_get("/", dashboard_views.dashboard)
    r.add_get("/login", login_views.login_form)
    r.add_post("/login", login_views.login)
    r.add_post("/logout", login_views.logout)
    r.add_post("/logout/everywhere", login_views.logout_everywhere)
    r.add_get("/lang", login_views.switch_language)
    r.add_get("/reports", report_views.reports)
    r.add_get("/reports/{code}", report_views.report_detail)
    r.add_post("/reports/{code}/{action}", report_views.report_action)
    r.add_get("/media/{media_id}", report_views.media)
    r.add_get("/rewards", reward_views.rewards_page)
    r.add_post("/rewards/pay", reward_views.reward_pay)
    r.add_post("/rewards/{reward_id}/decide", reward_views.reward_decide)
    register_statistics(r)
    r.add_get("/officers", officer_views.officers_page)
    r.add_post("/officers/enrol", officer_views.officer_enrol)
    r.add_post("/officers/{officer_id}/revoke", officer_views.officer_revoke)
    r.add_get("/units", officer_views.units_page)
    r.add_get("/units/{code}/poster", officer_views.unit_poster)
    r.add_get("/units/{code}/qr.svg", officer_views.unit_qr)
    r.add_get("/audit", audit_views.audit)
    r.add_static("/static/", HERE / "static", append_version=True)
    return app
