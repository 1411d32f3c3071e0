"""Runs one citizen event through the flow inside its own transaction.

The dispatcher owns the sessions and the commits; the flow and its repositories never commit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from bot import metrics
from bot.ordering import ChatOrder
from bot.outage import DatabaseDown, DatabaseWatch
from handlers.citizen import CitizenFlow, DuplicateUpdate, MediaFetcher
from handlers.events import ButtonPress, Event, Outcome, Reply
from handlers.i18n import pick_locale, t
from handlers.triage import (
    DuplicateOfficerUpdate,
    OfficerMessage,
    OfficerOutcome,
    OfficerPress,
    Triage,
)
from storage.db import connection_lost, writer
from storage.repositories import OUTBOX_ENQUEUED, forget_conversations, publish_conversations

log = logging.getLogger(__name__)

RETRIES = 4


def retryable(exc: Exception) -> bool:
    """Conflicts, a busy SQLite and a lost connection; not other database errors."""
    if isinstance(exc, StaleDataError | IntegrityError | OperationalError):
        return True
    return connection_lost(exc)


class Dispatcher:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        flow: CitizenFlow,
        triage: Triage | None = None,
    ) -> None:
        self.session_factory = session_factory
        bind = session_factory.kw.get("bind")
        self.engine: AsyncEngine | None = bind if isinstance(bind, AsyncEngine) else None
        self.flow = flow
        self.triage = triage or Triage()
        #: Called after a commit that may have queued officer-facing messages.
        self.after_commit: list[Callable[[], None]] = []
        #: One chat's updates in update-id order across processes (PostgreSQL webhooks).
        self.order: ChatOrder | None = None
        #: Set by the composition root: a failure while the database is down raises
        #: :class:`~bot.outage.DatabaseDown` instead of answering "an error occurred".
        self.watch: DatabaseWatch | None = None

    async def _outage(self, exc: BaseException) -> bool:
        """``True`` when ``exc`` came from a database that cannot be reached."""
        return self.watch is not None and await self.watch.failed(exc)

    def _held(self) -> None:
        """While the database is known to be down, nothing is tried (order is kept)."""
        if self.watch is not None and self.watch.down:
            raise DatabaseDown("the database is down")

    def _writer(self) -> contextlib.AbstractAsyncContextManager[object]:
        return writer(self.engine) if self.engine is not None else contextlib.nullcontext()

    def _committed(self, session: AsyncSession) -> None:
        """After a commit: the written conversations become the cached ones, and the delivery
        workers are woken if the transaction gave them something to deliver (a wake-up only
        sets an event: nothing here waits before the answer is sent)."""
        publish_conversations(session)
        if session.info.pop(OUTBOX_ENQUEUED, False):
            for callback in self.after_commit:
                callback()

    async def process_officer(self, press: OfficerPress) -> OfficerOutcome | None:
        """Handle an officer's press; ``None`` for a duplicate delivery."""
        started = metrics.update_taken("telegram", "officer_press")
        try:
            return await self._officer(
                press.update_id, lambda s: self.triage.handle_press(s, press)
            )
        finally:
            metrics.answered(started)

    async def process_officer_message(
        self, message: OfficerMessage, fetcher: MediaFetcher | None = None
    ) -> OfficerOutcome | None:
        """Handle a command or typed answer in an officers' chat. A photo sent with it is
        fetched and cleaned first, outside the transaction (:meth:`Triage.prepare_photo`)."""
        started = metrics.update_taken("telegram", "officer_message")
        try:
            self._held()
            photo = await self.triage.prepare_photo(message, fetcher)
            return await self._officer(
                message.update_id, lambda s: self.triage.handle_message(s, message, photo)
            )
        finally:
            metrics.answered(started)

    async def _officer(
        self,
        update_id: int,
        handle: Callable[[AsyncSession], Awaitable[OfficerOutcome]],
    ) -> OfficerOutcome | None:
        self._held()
        try:
            for attempt in range(1, RETRIES + 1):
                try:
                    async with self._writer(), self.session_factory() as session, session.begin():
                        outcome = await handle(session)
                    self._committed(session)
                    return outcome
                except DuplicateOfficerUpdate:
                    return None
                except (StaleDataError, IntegrityError, OperationalError, DBAPIError) as exc:
                    if attempt == RETRIES or not retryable(exc):
                        raise
        except Exception as exc:
            if await self._outage(exc):
                raise DatabaseDown("the database is down") from exc
            log.exception("officer update %s failed", update_id)
            return OfficerOutcome(notice=t(self.triage.locale, "err.internal"), alert=True)
        raise AssertionError("unreachable")

    async def process(self, event: Event, fetcher: MediaFetcher) -> Outcome | None:
        """Handle ``event``; ``None`` when it is a duplicate delivery and nothing must be sent.

        Raises :class:`~bot.outage.DatabaseDown` when the database cannot be reached: the event
        is not handled, and must be handled again later (the draft is unchanged)."""
        self._held()
        kind = "press" if isinstance(event, ButtonPress) else "message"
        started = metrics.update_taken(str(event.sender.channel), kind)
        try:
            if self.order is None:
                return await self._process(event, fetcher)
            async with self.order.turn(event):
                return await self._process(event, fetcher)
        finally:
            metrics.answered(started)

    async def _process(self, event: Event, fetcher: MediaFetcher) -> Outcome | None:
        try:
            prepared: dict[str, object] = {}
            if self.flow.needs_preparing(event):
                async with self.session_factory() as session:
                    prepared = await self.flow.prepare(session, event, fetcher)
            for attempt in range(1, RETRIES + 1):
                session = self.session_factory()
                try:
                    async with self._writer(), session, session.begin():
                        if self.order is not None:
                            await self.order.lock(session, event)
                        outcome = await self.flow.handle(session, event, prepared)
                    self._committed(session)
                    return outcome
                except DuplicateUpdate:
                    forget_conversations(session)
                    log.info("duplicate update %s ignored", event.update_id)
                    return None
                except (StaleDataError, IntegrityError, OperationalError, DBAPIError) as exc:
                    # Another worker changed the same conversation, SQLite was busy, or the
                    # connection broke: the transaction rolled back whole (or, if its commit
                    # did land, the update is seen as a duplicate), so it is safe to run again.
                    forget_conversations(session)
                    if attempt == RETRIES or not retryable(exc):
                        raise
                    log.info("retrying update %s after %s", event.update_id, type(exc).__name__)
        except Exception as exc:
            if await self._outage(exc):
                raise DatabaseDown("the database is down") from exc
            log.exception("update %s failed; the draft is unchanged", event.update_id)
            locale = pick_locale(event.sender.language_code)
            return Outcome(replies=[Reply(text=t(locale, "err.internal"))])
        raise AssertionError("unreachable")
