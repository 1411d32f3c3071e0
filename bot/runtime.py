"""The composition root: settings in, a running service out.

``Service`` wires the database, the catalogue, the flows, the channels and the web server. It is
the one place that knows every concrete class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from admin.stats.maintenance import sync_zone
from admin.stats.report import MonthlyReports
from bot import heap, metrics
from bot.cardview import TelegramCardView
from bot.channel import ChannelRegistry
from bot.delivery import CitizenMessenger, DeliveryWorker, FloodLimits
from bot.delivery.shared_budget import SharedBudget
from bot.delivery.timers import TimerRouter
from bot.dispatch import Dispatcher
from bot.housekeeping import retention_policy, run_retention
from bot.logs import install_scrubber, quiet_library_loggers
from bot.ordering import ChatOrder, purge_arrivals
from bot.outage import DatabaseWatch
from bot.queued_answers import AnswerQueue
from bot.roles import PollingLock, Role, SendOnlyTelegram, startup_turn
from bot.spool import Spool, SpoolIntake
from bot.telegram import TelegramChannel
from bot.telegram_citizen import TelegramCitizenChannel
from bot.wakeup import OutboxListener
from bot.web.inbox import WebInbox
from config.catalogue import Catalogue, load_catalogue
from config.queues import QueueMap, load_queue_map
from config.rewards import load_instructions
from config.settings import ConfigError, Settings, resolve_previous_keys, resolve_secret_key
from handlers import localtime
from handlers.citizen import CitizenFlow, CitizenSettings
from handlers.escalation import Timers
from handlers.intake import IntakeSettings
from handlers.maintenance import purge
from handlers.officers import Registry
from handlers.outbox import Kind
from handlers.places import PlaceIndex
from handlers.rewards import RewardSettings
from handlers.routing import UnitLocator
from handlers.security import Keyring, PinHasher
from handlers.stats_schedule import MonthlyReportSchedule, destination_of
from handlers.triage import CardRefresh, Triage
from storage.db import (
    Enqueued,
    create_engine,
    create_session_factory,
    off_outbox_commit,
    on_outbox_commit,
    writer,
)
from storage.migrate import ensure_schema
from storage.repositories import Units
from storage.types import utcnow

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 15 * 60.0
RETENTION_INTERVAL = 24 * 3600.0


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
    delivery: DeliveryWorker | None = None
    messenger: CitizenMessenger | None = None
    queues: QueueMap = field(default_factory=QueueMap)
    keyring: Keyring | None = None
    #: The citizen channels running in this process; the outbox reaches tipsters through them.
    channels: ChannelRegistry = field(default_factory=ChannelRegistry)
    #: What this process does (``tinbao run --role``); see :mod:`bot.roles`.
    role: Role = Role.ALL
    #: Telegram in a worker process: initialised to send, never receiving.
    send_only: SendOnlyTelegram | None = None
    polling_lock: PollingLock | None = None
    #: Whether the database answers, since when it does not (bot.outage).
    watch: DatabaseWatch | None = None
    #: Webhook and Zalo updates on disk until handled (bot.spool).
    spool: SpoolIntake | None = None
    #: The monthly statistics report's timers (with the delivery worker).
    schedule: MonthlyReportSchedule | None = None
    #: PostgreSQL: wakes this process's delivery loops when another process enqueues.
    listener: OutboxListener | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def create(cls, settings: Settings, role: Role = Role.ALL) -> Service:
        """Build the service; refuses to start on an unusable configuration or schema."""
        settings.check()
        localtime.configure(settings.timezone)
        quiet_library_loggers()
        if settings.telegram_token is not None:
            install_scrubber(settings.telegram_token.get_secret_value())
        master = resolve_secret_key(settings)
        keyring = Keyring(master, resolve_previous_keys(settings, master))
        engine = create_engine(settings.effective_database_url)
        try:
            await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
            # The statistics count days and months in TINBAO_TIMEZONE (rebuilt on a change).
            await sync_zone(engine, settings.timezone)
            catalogue = load_catalogue(settings.units_file)
            session_factory = create_session_factory(engine)
            async with session_factory() as session, session.begin():
                await startup_turn(session)
                await Units(session).sync(catalogue)
            queues = load_queue_map(
                settings.queues_file,
                duty_chat_id=settings.duty_chat_id,
                duty_thread_id=settings.duty_thread_id,
                known_units=catalogue.by_code.keys(),
            )
            locator = (
                UnitLocator.from_geojson(
                    settings.geometry_file,
                    known_units=catalogue.by_code.keys(),
                    default_radius_km=settings.centre_radius_km,
                )
                if settings.geometry_file is not None
                else UnitLocator.empty()
            )
            instructions = load_instructions(
                settings.reward_instructions_file, known_units=catalogue.by_code.keys()
            )
            async with session_factory() as session, session.begin():
                await startup_turn(session)
                await Registry(session).ensure_admins(settings.admin_telegram_ids)
        except ValueError as exc:
            await engine.dispose()
            raise ConfigError(str(exc)) from exc
        except BaseException:
            await engine.dispose()
            raise
        if queues.duty is None:
            log.warning(
                "TINBAO_DUTY_CHAT_ID is not set: reports of units without a queue wait in the "
                "outbox until a duty queue is configured."
            )
        flow = CitizenFlow(
            settings=citizen_settings(settings),
            keyring=keyring,
            pins=PinHasher.for_keyring(keyring),
            catalogue=catalogue,
            places=PlaceIndex(catalogue.units),
            locator=locator,
            intake=IntakeSettings(
                emergency_ack_timeout=timedelta(minutes=settings.emergency_ack_minutes),
                tip_claim_reminder=timedelta(hours=settings.tip_claim_reminder_hours),
            ),
            instructions=instructions,
        )
        triage = Triage(
            locale=settings.officer_locale,
            queues=queues,
            keyring=keyring,
            rewards=RewardSettings(cap_vnd=settings.reward_cap_vnd),
            instructions=instructions,
            rewards_chat=(
                (settings.rewards_chat_id, settings.rewards_thread_id)
                if settings.rewards_chat_id is not None
                else None
            ),
        )
        dispatcher = Dispatcher(session_factory, flow, triage)
        metrics.install(engine.sync_engine)
        shared = engine.dialect.name == "postgresql"
        if shared and settings.webhook_enabled and role.receives:
            # Several web processes behind one URL: one chat's updates in order (bot.ordering).
            dispatcher.order = ChatOrder(
                session_factory, lambda channel, user: keyring.sender_keys(channel, user)[0]
            )
        service = cls(settings, engine, session_factory, catalogue, flow, dispatcher)
        service.queues = queues
        service.keyring = keyring
        service.role = role
        watch = service.watch = dispatcher.watch = DatabaseWatch(engine)
        service.spool = SpoolIntake(Spool(settings.data_dir / "spool", keyring), watch)
        metrics.set_spool_size_source(service.spool.size)
        metrics.set_database_state_source(lambda: not watch.down)
        if settings.telegram_token is not None:
            channel = TelegramChannel(settings, dispatcher)
            bot = channel.application.bot
            channel.cards = TelegramCardView(
                bot,
                session_factory,
                locale=settings.officer_locale,
                queues=queues,
                keyring=keyring,
            )
            service.telegram = channel
            if settings.webhook_enabled:
                channel.use_spool(service.spool)
            if role.receives:
                service.channels.add(TelegramCitizenChannel(channel))
            else:
                service.send_only = SendOnlyTelegram(channel)
            service.schedule = MonthlyReportSchedule(
                destination_of(settings.stats_report_chat), settings.officer_locale
            )
            service.delivery = DeliveryWorker(
                session_factory,
                bot,
                queues,
                locale=settings.officer_locale,
                limits=FloodLimits.from_settings(settings),
                timers=TimerRouter(Timers(queues), {Kind.TIMER_MONTHLY_REPORT: service.schedule}),
                keyring=keyring,
                documents=MonthlyReports(session_factory, catalogue, queues),
                poll_interval=settings.outbox_poll_seconds or 5.0,
            )
            if shared:
                limits = FloodLimits.from_settings(settings)
                service.delivery.pacer.shared = SharedBudget(
                    session_factory,
                    global_per_second=limits.global_per_second,
                    chat_per_second=limits.chat_per_second,
                    chat_burst=limits.chat_burst,
                )
            if dispatcher.order is not None:
                channel.arrivals = dispatcher.order.arrived
            service.delivery.watch = service.delivery.timers.watch = watch
        else:
            log.warning(
                "TINBAO_TELEGRAM_TOKEN is not set: Telegram is off. Set it to the token from "
                "@BotFather to receive reports; the web server keeps running meanwhile."
            )
        if role.receives:
            add_zalo_channels(service, keyring)
            if settings.web_enabled:  # the citizens' page: its inbox is where their messages go
                service.channels.add(WebInbox(session_factory, keyring))
        for citizen_channel in service.channels:  # the Zalo channels: spool first
            use_spool = getattr(citizen_channel, "use_spool", None)
            if use_spool is not None:
                use_spool(service.spool)
        # Messages to tipsters go through whichever channel their route names.
        service.messenger = CitizenMessenger(
            session_factory,
            service.channels,
            keyring,
            officer_locale=settings.officer_locale,
            poll_interval=settings.outbox_poll_seconds or 2.0,
        )
        service.messenger.watch = watch
        # An answer a channel would not take waits in the outbox, in order (bot.queued_answers).
        answers = AnswerQueue(session_factory, keyring, cache=flow.conversation_cache)
        answers.after_commit.append(service.messenger.kick)
        if service.telegram is not None:
            service.telegram.renderer.queue = answers
        for citizen_channel in service.channels:
            if hasattr(citizen_channel, "answers"):
                citizen_channel.answers = answers
        return service

    # --- what the web panel needs (admin.runtime.PanelRuntime) ---------------------------------

    @property
    def triage(self) -> Triage:
        return self.dispatcher.triage

    def webhook_routes(
        self,
    ) -> list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
        routes: list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = []
        if not self.role.receives:
            return routes
        if self.telegram is not None and self.settings.webhook_enabled:
            routes.append((self.telegram.webhook_path, self.telegram.handle_webhook))
        for channel in self.channels:
            routes.extend(getattr(channel, "webhook_routes", list)())
        return routes

    @property
    def serves_panel(self) -> bool:
        return self.role.receives

    def process_routes(
        self,
    ) -> list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
        from bot.metrics import metrics_handler

        routes = [("GET", "/metrics", metrics_handler(self))]
        for channel in self.channels:  # the Zalo bot's signed photo links
            routes.extend(getattr(channel, "process_routes", list)())
        return routes

    def health_details(self) -> dict[str, object]:
        details: dict[str, object] = {}
        if self.watch is not None:
            details["database_down_since"] = self.watch.down_since_iso()
            details["database_errors"] = self.watch.errors
        if self.spool is not None:
            details["spool_pending"] = self.spool.size()
        if self.telegram is not None:
            details["telegram_metrics"] = self.telegram.metrics.as_dict()
        if self.listener is not None:
            details["outbox_wakeups"] = {
                "listening": self.listener.listening.is_set(),
                "notified": self.listener.notified,
                "connections": self.listener.connections,
            }
        return details

    def bot_username(self) -> str | None:
        try:
            name = self.telegram.application.bot.username if self.telegram is not None else None
        except RuntimeError:  # the bot has not called getMe yet
            name = None
        return name or None

    async def report_changed(self, report_id: int) -> None:
        """After a committed web action: re-render the cards, deliver the outbox."""
        try:
            cards = self.telegram.cards if self.telegram is not None else None
            if cards is not None:
                await cards.refresh(CardRefresh(report_id))
            if self.delivery is not None:
                self.delivery.kick()
        except Exception:
            log.exception("cards of report %s not refreshed after a web action", report_id)

    @property
    def telegram_state(self) -> str:
        if self.telegram is None:
            return "disabled: set TINBAO_TELEGRAM_TOKEN"
        return self.telegram.state

    def channel_states(self) -> dict[str, str]:
        """Each citizen channel's state for ``/healthz`` (Telegram's even when it is off)."""
        return {"telegram": self.telegram_state, **self.channels.states()}

    async def start(self) -> None:
        heap.settle()  # no full collection of the start-up heap while serving
        if (
            self.role.receives
            and self.telegram is not None
            and not self.settings.webhook_enabled
            and self.settings.telegram_token is not None
        ):
            # Polling is one process per bot: a second one is refused here, not left to fight
            # over getUpdates.
            lock = PollingLock(
                self.engine,
                self.settings.data_dir,
                self.settings.telegram_token.get_secret_value(),
            )
            await lock.acquire()
            self.polling_lock = lock
        if self.watch is not None:
            self.watch.start()
        await self.channels.start()
        if self.spool is not None:
            self.spool.start()
        if self.send_only is not None:
            await self.send_only.start()
        if list(self.channels) or self.send_only is not None:
            self._tasks.append(asyncio.create_task(self._start_delivery(), name="delivery"))
        if self.role.delivers:
            self._tasks.append(asyncio.create_task(self._maintenance(), name="maintenance"))

    async def _start_delivery(self) -> None:
        """The outbox is delivered once Telegram's bot is up (when Telegram is on): the
        officers' outbox and the timers by a delivering role, the citizens' outbox by a
        receiving one (it owns the channels that reach tipsters)."""
        if self.telegram is not None and self.delivery is not None and self.role.delivers:
            await self.telegram.ready.wait()
            await self.delivery.start()
        if self.messenger is not None and self.role.receives:
            await self.messenger.start()
        # A commit in this process that enqueued rows wakes the loops that have something
        # to do, at once (storage.db.on_outbox_commit); one in another process, by
        # notification (PostgreSQL).
        on_outbox_commit(self.engine, self._kick_delivery)
        if self.engine.dialect.name == "postgresql":
            self.listener = OutboxListener(self.engine, self._kick_delivery)
            self.listener.start()

    def _kick_delivery(self, what: Enqueued | None = None) -> None:
        """Outbox rows were committed (``what``: which; ``None``: anything): the running loops
        with something to do look now."""
        what = what or Enqueued.everything()
        if self.delivery is not None and self.delivery.running:
            if what.officers:
                self.delivery.wake()
            if what.timers is not None:
                self.delivery.timers.expect(what.timers)
        if self.messenger is not None and what.citizens:
            self.messenger.kick()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        off_outbox_commit(self.engine, self._kick_delivery)
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        if self.spool is not None:
            await self.spool.stop()
        if self.messenger is not None:
            await self.messenger.stop()
        if self.delivery is not None:
            await self.delivery.stop()
        await self.channels.stop()
        if self.send_only is not None:
            await self.send_only.stop()
        if self.polling_lock is not None:
            await self.polling_lock.release()
            self.polling_lock = None
        if self.watch is not None:
            await self.watch.stop()
        await self.engine.dispose()

    async def run_maintenance(self) -> None:
        if self.schedule is not None and self.schedule.enabled:
            async with self.session_factory() as session, session.begin():
                await self.schedule.ensure(session, utcnow())
        cache = self.flow.conversation_cache

        def forget(keys: Sequence[str]) -> None:
            # An ended draft's cached state is stale: dropped now rather than on its next step.
            for key in keys:
                cache.discard(key)

        result = await purge(
            self.session_factory,
            now=utcnow(),
            draft_ttl=timedelta(hours=self.settings.draft_ttl_hours),
            lock=lambda: writer(self.engine),
            ended=forget,
        )
        if result.drafts >= heap.TRIM_AFTER_DRAFTS:
            heap.trim()  # the batches' freed memory back to the system (glibc)
        if self.engine.dialect.name == "postgresql":
            await purge_arrivals(self.session_factory)
        pacer = self.delivery.pacer if self.delivery is not None else None
        if pacer is not None and pacer.shared is not None:
            await pacer.shared.purge()
        log.info(
            "maintenance: %d expired drafts, %d rate hits, %d update ids, %d blobs purged",
            result.drafts,
            result.rate_hits,
            result.update_ids,
            result.blobs,
        )

    async def _maintenance(self) -> None:
        retention_due = 0.0
        while True:
            try:
                await self.run_maintenance()
                if asyncio.get_running_loop().time() >= retention_due:  # daily
                    await run_retention(self.session_factory, retention_policy(self.settings))
                    retention_due = asyncio.get_running_loop().time() + RETENTION_INTERVAL
            except Exception:
                log.exception("maintenance failed; trying again later")
            await asyncio.sleep(MAINTENANCE_INTERVAL)


def add_zalo_channels(service: Service, keyring: Keyring) -> None:
    """The Zalo Bot Platform and the Zalo OA, each when its settings are set."""
    from bot.zalo import ZaloBotChannel, ZaloOAChannel

    settings = service.settings
    if settings.zalo_bot_enabled:
        service.channels.add(
            ZaloBotChannel(settings, service.dispatcher, service.session_factory, keyring)
        )
    if settings.zalo_oa_enabled:
        service.channels.add(
            ZaloOAChannel(settings, service.dispatcher, service.session_factory, keyring)
        )


def attach(app: web.Application, service: Service) -> None:
    """Start and stop ``service`` with the aiohttp application."""

    async def lifecycle(app: web.Application) -> object:
        await service.start()
        yield
        await service.stop()

    app.cleanup_ctx.append(lifecycle)  # type: ignore[arg-type]
