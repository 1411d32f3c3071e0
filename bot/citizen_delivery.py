"""Delivers outbox messages to tipsters: questions from the police, status changes, rewards.

The route back is decrypted only here, at the moment of sending, and never written anywhere:
the outbox row names the report (``report:<id>``), not the chat. A claim code travels
encrypted in the row and is wiped once delivered. A tipster who blocked the bot is marked on
the route, and the officers are told in the report's chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bot.channel import ChannelRegistry, SendError
from handlers.channels import ChannelName
from handlers.citizen.relay import SENT_MESSAGE_ID
from handlers.events import Reply
from handlers.i18n import t
from handlers.intake import officers_destination
from handlers.security import Keyring, format_code
from storage.models import ContactRoute, OutboxMessage, RelayMessage, Report
from storage.repositories import Outbox
from storage.types import utcnow

log = logging.getLogger(__name__)

KIND = "citizen_message"
BATCH = 50


class CitizenMessenger:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        bot: Bot,
        keyring: Keyring,
        *,
        officer_locale: str = "vi",
        poll_interval: float = 2.0,
        lease: timedelta = timedelta(seconds=60),
        per_second: float = 20.0,
        clock: Callable[[], datetime] = utcnow,
        channels: ChannelRegistry | None = None,
    ) -> None:
        self.session_factory = session_factory
        #: The citizen channels besides Telegram, by the name on the route.
        self.channels = channels
        self.bot = bot
        self.keyring = keyring
        self.officer_locale = officer_locale
        self.poll_interval = poll_interval
        self.lease = lease
        self.interval = 1.0 / per_second
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.sent = 0

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="citizen-delivery")

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except Exception:
                log.exception("citizen delivery round failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim and send the due rows; returns how many were settled."""
        settled = 0
        for row_id in await self._claim():
            if self._stopping:
                break
            # Shielded: a stop never loses track of a message that went out.
            await asyncio.shield(self._deliver(row_id))
            settled += 1
            await asyncio.sleep(self.interval)
        return settled

    async def _claim(self) -> list[int]:
        now = self.clock()
        async with self.session_factory() as session, session.begin():
            candidates = (
                await session.scalars(
                    select(OutboxMessage.id)
                    .where(
                        OutboxMessage.kind == KIND,
                        OutboxMessage.next_attempt_at <= now,
                        or_(
                            OutboxMessage.status == "pending",
                            (OutboxMessage.status == "sending")
                            & (OutboxMessage.claimed_until < now),
                        ),
                    )
                    .order_by(OutboxMessage.priority.desc(), OutboxMessage.id)
                    .limit(BATCH)
                )
            ).all()
            claimed = []
            for row_id in candidates:
                result = await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.id == row_id,
                        or_(
                            OutboxMessage.status == "pending",
                            (OutboxMessage.status == "sending")
                            & (OutboxMessage.claimed_until < now),
                        ),
                    )
                    .values(status="sending", claimed_until=now + self.lease)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(row_id)
        return claimed

    async def _deliver(self, row_id: int) -> None:
        async with self.session_factory() as session, session.begin():
            row = await session.get(OutboxMessage, row_id)
            if row is None or row.status != "sending":
                return
            report = await session.get(Report, row.report_id) if row.report_id else None
            route = (
                await session.scalar(
                    select(ContactRoute).where(ContactRoute.report_id == report.id)
                )
                if report is not None
                else None
            )
            if report is None or route is None or report.contact_mode == "none":
                self._settle(row, "failed", "no route back to the tipster")
                return
            if route.blocked_at is not None:
                self._settle(row, "failed", "the tipster has blocked the bot")
                return
            text, markup = await self._render(session, row, report)
            target = self.keyring.decrypt(route.route)
        sender = self.channels.get(str(target.get("channel"))) if self.channels else None
        if sender is not None and sender.name != ChannelName.TELEGRAM:
            # Another citizen channel (the web inbox): its own sender, a neutral reply.
            try:
                await sender.send(str(target["chat_id"]), [Reply(text=text)])
            except SendError as exc:
                if exc.gone or exc.permanent:
                    await self._finish(row_id, "failed", exc.reason[:200])
                else:
                    await self._retry(row_id, exc.retry_after, exc.reason[:200])
                return
            self.sent += 1
            await self._finish(row_id, "sent", None)
            return
        chat_id = int(target["chat_id"])
        try:
            sent = await self.bot.send_message(chat_id=chat_id, text=text, reply_markup=markup)
        except Forbidden:
            await self._blocked(row_id)
            return
        except RetryAfter as exc:
            delay = exc.retry_after
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
            await self._retry(row_id, seconds, "429")
            return
        except BadRequest as exc:
            await self._finish(row_id, "failed", f"refused: {exc.message[:200]}")
            return
        except TelegramError as exc:
            await self._retry(row_id, None, type(exc).__name__)
            return
        self.sent += 1
        await self._finish(row_id, "sent", None, message_id=sent.message_id)

    async def _render(
        self, session: AsyncSession, row: OutboxMessage, report: Report
    ) -> tuple[str, InlineKeyboardMarkup | None]:
        locale = report.locale
        code = format_code(report.code)
        payload: dict[str, Any] = dict(row.payload or {})
        relay_id = payload.get("relay_id")
        if isinstance(relay_id, int):
            relay = await session.get(RelayMessage, relay_id)
            question = relay.text if relay is not None and relay.text else ""
            button = InlineKeyboardButton(
                t(locale, "relay.answer_button"), callback_data=f"0:rel:{report.id}"
            )
            text = t(locale, "relay.question", code=code, text=question)
            return text, InlineKeyboardMarkup([[button]])
        values = dict(payload.get("values") or {})
        values.setdefault("code", code)
        secret = payload.get("secret")
        if isinstance(secret, str):
            values.update(self.keyring.decrypt(secret))
        return t(locale, str(payload.get("key")), **values), None

    def _settle(self, row: OutboxMessage, status: str, error: str | None) -> None:
        row.status = status
        row.claimed_until = None
        row.last_error = error
        payload = dict(row.payload or {})
        payload.pop("secret", None)  # a claim code is never kept once delivered (or dropped)
        row.payload = payload
        if status == "sent":
            row.sent_at = self.clock()
            row.message_count = 1

    async def _finish(
        self, row_id: int, status: str, error: str | None, *, message_id: int | None = None
    ) -> None:
        async with self.session_factory() as session, session.begin():
            row = await session.get(OutboxMessage, row_id)
            if row is not None:
                self._settle(row, status, error)
                if message_id is not None and "relay_id" in (row.payload or {}):
                    # A reply to this question is its answer (handlers/citizen/relay.py).
                    row.payload = {**row.payload, SENT_MESSAGE_ID: message_id}

    async def _retry(self, row_id: int, after: float | None, error: str) -> None:
        async with self.session_factory() as session, session.begin():
            row = await session.get(OutboxMessage, row_id)
            if row is None:
                return
            row.attempts += 1
            delay = after if after is not None else min(300.0, 2.0 ** min(row.attempts, 8))
            row.status = "pending"
            row.claimed_until = None
            row.last_error = error
            row.next_attempt_at = self.clock() + timedelta(seconds=delay)

    async def _blocked(self, row_id: int) -> None:
        """The tipster blocked the bot: mark the route, tell the officers once."""
        async with self.session_factory() as session, session.begin():
            row = await session.get(OutboxMessage, row_id)
            if row is None:
                return
            self._settle(row, "failed", "the tipster has blocked the bot")
            report = await session.get(Report, row.report_id) if row.report_id else None
            if report is None:
                return
            route = await session.scalar(
                select(ContactRoute).where(ContactRoute.report_id == report.id)
            )
            if route is not None and route.blocked_at is None:
                route.blocked_at = self.clock()
                Outbox(session).enqueue(
                    kind="chat_text",
                    destination=await officers_destination(session, report),
                    payload={
                        "text": t(
                            self.officer_locale,
                            "relay.tipster_blocked",
                            code=format_code(report.code),
                        ),
                        "force_reply": False,
                        "reply_to_report": report.id,
                        "buttons": None,
                    },
                    report_id=report.id,
                    dedupe_key=f"blocked:{report.id}",
                )
        log.info("a tipster blocked the bot (outbox row %s)", row_id)
