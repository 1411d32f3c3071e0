"""What the web side needs from the running service, as a protocol of its own.

The panel and ``/healthz`` depend on this small surface, never on ``bot.runtime``: the
composition root's ``Service`` satisfies it structurally (mypy checks that where
``build_web_app`` is called), and a test or another runtime may pass anything else that does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from config.catalogue import Catalogue
from config.settings import Settings
from handlers.security import Keyring
from handlers.triage import Triage

WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PanelRuntime(Protocol):
    """The service as the web server sees it."""

    @property
    def settings(self) -> Settings:
        """The service's settings (the web server's limits and trusted proxies among them)."""

    @property
    def engine(self) -> AsyncEngine:
        """For the health check only."""

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]:
        """Every page opens its own session from here and owns its commit."""

    @property
    def catalogue(self) -> Catalogue:
        """The unit catalogue (names and codes)."""

    @property
    def keyring(self) -> Keyring | None:
        """Keyed hashes and encryption; the panel is not mounted without it."""

    @property
    def triage(self) -> Triage:
        """The officers' side: queues and the report actions' rules, shared with the chat."""

    def channel_states(self) -> Mapping[str, str]:
        """Each citizen channel's state, by name, for ``/healthz``."""
        ...

    def webhook_routes(self) -> list[tuple[str, WebHandler]]:
        """The citizen channels' webhooks (Telegram's when on, the Zalo channels'), as paths
        and handlers."""
        ...

    def process_routes(self) -> list[tuple[str, str, WebHandler]]:
        """Routes of the process itself (``GET /metrics``), as method, path and handler."""
        ...

    @property
    def serves_panel(self) -> bool:
        """Whether this process serves the panel (a ``worker`` process serves only health)."""
        ...

    def health_details(self) -> Mapping[str, object]:
        """Counters for ``/healthz`` beyond the channel states (malformed updates skipped...)."""
        ...

    def bot_username(self) -> str | None:
        """The Telegram bot's @username (without @), for deep links; None when unknown."""
        ...

    async def report_changed(self, report_id: int) -> None:
        """After a committed web action: re-render the report's cards and deliver the outbox.

        Never raises: a failure is logged, the action stays committed.
        """
        ...
