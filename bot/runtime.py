"""The composition root: settings in, a running service out.

``Service`` wires the database, the catalogue, the flows, the channels and the web server. It is
the one place that knows every concrete class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.dispatch import Dispatcher
from bot.logs import install_scrubber, quiet_library_loggers
from bot.telegram import TelegramChannel
from config.catalogue import Catalogue, load_catalogue
from config.settings import Settings, resolve_secret_key
from handlers.citizen import CitizenFlow, CitizenSettings
from handlers.maintenance import purge
from handlers.places import PlaceIndex
from handlers.security import Keyring, PinHasher
from storage.db import create_engine, create_session_factory
from storage.migrate import ensure_schema
from storage.repositories import Units
from storage.types import utcnow

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 15 * 60.0


def citizen_settings(settings: Settings) -> CitizenSettings:
    return CitizenSettings(
        default_locale=settings.default_locale,
        draft_ttl=timedelta(hours=settings.draft_ttl_hours),
        report_rate_limit=settings.report_rate_limit,
        report_rate_window=timedelta(minutes=settings.report_rate_window_minutes),
        pin_attempts_per_code=settings.pin_attempts_per_code,
        pin_attempts_per_sender=settings.pin_attempts_per_sender,
        pin_attempt_window=timedelta(minutes=settings.pin_attempt_window_minutes),
        max_media=settings.max_media_per_report,
    )


@dataclass
class Service:
    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    catalogue: Catalogue
    flow: CitizenFlow
    dispatcher: Dispatcher
    telegram: TelegramChannel | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def create(cls, settings: Settings) -> Service:
        """Build the service; refuses to start on an unusable configuration or schema."""
        settings.check()
        quiet_library_loggers()
        if settings.telegram_token is not None:
            install_scrubber(settings.telegram_token.get_secret_value())
        keyring = Keyring(resolve_secret_key(settings))
        engine = create_engine(settings.effective_database_url)
        try:
            await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
            catalogue = load_catalogue(settings.units_file)
            session_factory = create_session_factory(engine)
            async with session_factory() as session, session.begin():
                await Units(session).sync(
                    (
                        {
                            "code": u.code,
                            "name": u.name,
                            "division_type": u.division_type,
                            "codename": u.codename,
                        }
                        for u in catalogue.units
                    ),
                    catalogue.province_code,
                )
        except BaseException:
            await engine.dispose()
            raise
        flow = CitizenFlow(
            settings=citizen_settings(settings),
            keyring=keyring,
            pins=PinHasher(),
            catalogue=catalogue,
            places=PlaceIndex(catalogue.units),
        )
        dispatcher = Dispatcher(session_factory, flow)
        service = cls(settings, engine, session_factory, catalogue, flow, dispatcher)
        if settings.telegram_token is not None:
            service.telegram = TelegramChannel(settings, dispatcher)
        else:
            log.warning(
                "TINBAO_TELEGRAM_TOKEN is not set: Telegram is off. Set it to the token from "
                "@BotFather to receive reports; the web server keeps running meanwhile."
            )
        return service

    @property
    def telegram_state(self) -> str:
        if self.telegram is None:
            return "disabled: set TINBAO_TELEGRAM_TOKEN"
        return self.telegram.state

    async def start(self) -> None:
        if self.telegram is not None:
            self.telegram.start_background()
        self._tasks.append(asyncio.create_task(self._maintenance(), name="maintenance"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.telegram is not None:
            await self.telegram.stop()
        await self.engine.dispose()

    async def run_maintenance(self) -> None:
        async with self.session_factory() as session, session.begin():
            result = await purge(
                session, now=utcnow(), draft_ttl=timedelta(hours=self.settings.draft_ttl_hours)
            )
        log.info(
            "maintenance: %d expired drafts, %d rate hits, %d update ids, %d blobs purged",
            result.drafts,
            result.rate_hits,
            result.update_ids,
            result.blobs,
        )

    async def _maintenance(self) -> None:
        while True:
            try:
                await self.run_maintenance()
            except Exception:
                log.exception("maintenance failed; trying again later")
            await asyncio.sleep(MAINTENANCE_INTERVAL)


def attach(app: web.Application, service: Service) -> None:
    """Start and stop ``service`` with the aiohttp application."""

    async def lifecycle(app: web.Application) -> object:
        await service.start()
        yield
        await service.stop()

    app.cleanup_ctx.append(lifecycle)  # type: ignore[arg-type]
