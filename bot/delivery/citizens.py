"""Delivers outbox messages to tipsters: questions from the police, status changes, rewards.

A ``citizen_message`` row names the report (``report:<id>``), never the chat. At send time the
route back is decrypted (only here, and never written anywhere): it names the channel the tipster
wrote from (a route without one is Telegram's) and their chat there. The message is rendered as
a neutral :class:`~handlers.events.Reply` for that channel's capabilities (a question's photo as
its ``photo``) and sent through the :class:`~bot.channel.CitizenSender` registered for it in the
:class:`~bot.channel.ChannelRegistry`.
Nothing here assumes Telegram.

The sender's :class:`~bot.channel.SendError` decides what comes next: ``retry_after`` waits that
long; ``gone`` holds the message, marks the route blocked and tells the officers once, in the
report's chat; ``permanent`` fails the row; anything else is retried with backoff. A held message
(and any other that comes for a blocked route) waits until the tipster writes again, which
clears the route and makes it due (:mod:`handlers.citizen.reachable`), or is dropped once it
has waited ``hold_seconds``. Each channel is paced at its own rate (:data:`CHANNEL_RATES`).
A row whose channel is not running in this process waits (parked). A claim code travels
encrypted in the row and is wiped once delivered or dropped. Rows are taken and settled with the
same leases as the officers' worker (:mod:`bot.delivery.leases`).

It also sends the answers that could not go at once (``citizen_answer`` rows under
``answer:<sender key>``, :mod:`bot.queued_answers`): their route travels encrypted in the row,
a chat's answers go one at a time in id order (a row is taken only when no earlier one of its
chat waits), and one that cannot be delivered (blocked, refused) or is older than
:data:`ANSWER_MAX_AGE` is dropped; anything else is tried again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from bot.channel import ChannelRegistry, SendError
from bot.delivery.leases import Claim, Leases, claimable
from bot.outage import DatabaseWatch, paused
from handlers.channels import Capabilities, ChannelName, capabilities
from handlers.citizen.reachable import HELD_MARK
from handlers.citizen.relay import SENT_MESSAGE_ID, question_reply
from handlers.events import Reply
from handlers.i18n import t
from handlers.intake import officers_destination
from handlers.outbox import (
    AnswerPayload,
    ChatTextPayload,
    CitizenPayload,
    Kind,
    Priority,
    Status,
    enqueue,
)
from handlers.outbox import Destination as Dest
from handlers.render import render
from handlers.security import Keyring, format_code
from storage.db import reading
from storage.models import ContactRoute, Conversation, OutboxMessage, RelayMessage, Report
from storage.repositories import Media
from storage.types import utcnow

log = logging.getLogger(__name__)

#: An approved reward's message, and its wording where the status page shows the claim code.
REWARD_APPROVED = "reward.citizen.approved"
REWARD_ON_PAGE = "reward.citizen.approved_on_page"

KIND = Kind.CITIZEN_MESSAGE.value
ANSWER_KIND = Kind.CITIZEN_ANSWER.value
BATCH = 50
#: An answer that could not be delivered for this long is stale: dropped, not sent.
ANSWER_MAX_AGE = 24 * 3600.0
STALE_ANSWER = "an answer that waited too long"
NO_ROUTE = "no route back to the tipster"
BLOCKED = "the tipster has blocked the bot"
HELD = "held until the tipster writes again"
#: Messages per second to each channel's citizens, below its own limits (docs/zalo.md): the
#: Zalo OA answers ``-32`` when called too fast and counts every message against a quota.
CHANNEL_RATES: dict[str, float] = {ChannelName.ZALO_OA: 4.0, ChannelName.ZALO_BOT: 8.0}
#: How long a message for a tipster who cannot be reached waits for them to write again.
HOLD_SECONDS = 30 * 24 * 3600.0
#: The officers' notice for a route that went unreachable, by channel.
UNREACHABLE_NOTICE: dict[str, str] = {ChannelName.ZALO_OA: "zalo.tipster_unreachable"}


@dataclass(frozen=True)
class Outgoing:
    """One message ready to go: where (decrypted, kept in memory only) and what."""

    channel: str
    chat_id: str
    replies: list[Reply]
    #: A queued direct answer (no report, no route to mark).
    answer: bool = False


def in_turn() -> ColumnElement[bool]:
    """A queued answer goes only when no earlier one to the same chat waits (order per chat,
    across processes); other rows are not held back."""
    earlier = aliased(OutboxMessage)
    return or_(
        OutboxMessage.kind != ANSWER_KIND,
        ~exists().where(
            earlier.kind == ANSWER_KIND,
            earlier.destination == OutboxMessage.destination,
            earlier.id < OutboxMessage.id,
            earlier.status.in_((Status.PENDING, Status.SENDING)),
        ),
    )


class CitizenMessenger:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        channels: ChannelRegistry,
        keyring: Keyring,
        *,
        officer_locale: str = "vi",
        poll_interval: float = 2.0,
        lease_seconds: float = 60.0,
        per_second: float = 20.0,
        retry_cap: float = 300.0,
        park_seconds: float = 60.0,
        channel_rates: dict[str, float] | None = None,
        hold_seconds: float = HOLD_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.session_factory = session_factory
        self.channels = channels
        self.keyring = keyring
        self.officer_locale = officer_locale
        self.poll_interval = poll_interval
        #: The process's database watch: a round that fails during an outage is only paused.
        self.watch: DatabaseWatch | None = None
        self.interval = 1.0 / per_second
        self.retry_cap = retry_cap
        self.park_seconds = park_seconds
        self.channel_rates = dict(CHANNEL_RATES if channel_rates is None else channel_rates)
        self.hold_seconds = hold_seconds
        self._next_slot: dict[str, float] = {}
        self.clock = clock
        self.leases = Leases(session_factory, clock, lease_seconds)
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
            except Exception as exc:
                if not await paused(self.watch, exc, "citizen delivery"):
                    log.exception("citizen delivery round failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim and send the due rows; returns how many were settled."""
        settled = 0
        for row_id in await self._due():
            if self._stopping:
                break
            claim = await self.leases.claim(row_id, where=in_turn())
            if claim is None:
                continue
            # Shielded: a stop never loses track of a message that went out.
            if await asyncio.shield(self._deliver(claim)):
                settled += 1
            await asyncio.sleep(self.interval)
        return settled

    async def _due(self) -> list[int]:
        now = self.clock()
        async with reading(self.session_factory) as session:
            found = await session.scalars(
                select(OutboxMessage.id)
                .where(OutboxMessage.kind.in_((KIND, ANSWER_KIND)), claimable(now), in_turn())
                .order_by(OutboxMessage.priority.desc(), OutboxMessage.id)
                .limit(BATCH)
            )
            return list(found.all())

    # -------------------------------------------------------------------------- one row

    async def _deliver(self, claim: Claim) -> bool:
        """Send one claimed row; ``True`` when it was settled (sent or failed)."""
        async with reading(self.session_factory) as session:
            outgoing = await self._prepare(session, claim)
        if outgoing == HELD:
            await self._hold(claim)
            return False
        if isinstance(outgoing, str):
            await self._drop(claim, outgoing)
            return True
        sender = self.channels.get(outgoing.channel)
        if sender is None:
            log.warning(
                "outbox row %d waits: channel %s is not running in this process",
                claim.row_id,
                outgoing.channel,
            )
            await self.leases.release(
                claim, self.park_seconds, error=f"channel {outgoing.channel} is off", failed=False
            )
            return False
        replies = render(outgoing.replies, sender.capabilities)
        await self._pace(outgoing.channel)
        try:
            message_ids = await sender.send(outgoing.chat_id, replies)
        except SendError as exc:
            if outgoing.answer:
                return await self._answer_failed(claim, exc)
            return await self._failed(claim, exc, outgoing.channel)
        self.sent += 1
        payload = self._wiped(claim)
        if message_ids and "relay_id" in payload:
            # A reply to this question is its answer (handlers/citizen/relay.py).
            payload[SENT_MESSAGE_ID] = message_ids[-1]
        await self.leases.finish(claim, payload=payload, message_count=1)
        return True

    async def _prepare(self, session: AsyncSession, claim: Claim) -> Outgoing | str:
        """The message and where it goes, or why it cannot go (a string)."""
        row = await session.get(OutboxMessage, claim.row_id)
        if row is not None and row.kind == ANSWER_KIND:
            return self._answer(row, claim)
        report = await session.get(Report, row.report_id) if row and row.report_id else None
        if row is None or report is None or report.contact_mode == "none":
            return NO_ROUTE
        route = await session.scalar(
            select(ContactRoute).where(ContactRoute.report_id == report.id)
        )
        if route is None:
            return NO_ROUTE
        if route.blocked_at is not None:
            # Unreachable for now: held until the tipster writes again, or too old to keep.
            held_for = (self.clock() - row.created_at).total_seconds()
            return BLOCKED if held_for >= self.hold_seconds else HELD
        where = self.keyring.decrypt(route.route)
        channel = str(where.get("channel") or ChannelName.TELEGRAM)
        payload = CitizenPayload.from_json(claim.payload)
        reply = await self._message(session, payload, report, capabilities(channel))
        return Outgoing(channel=channel, chat_id=str(where["chat_id"]), replies=[reply])

    def _answer(self, row: OutboxMessage, claim: Claim) -> Outgoing | str:
        """A queued answer: its route is in the row, encrypted; too old, it is dropped."""
        if (self.clock() - row.created_at).total_seconds() >= ANSWER_MAX_AGE:
            return STALE_ANSWER
        payload = AnswerPayload.from_json(claim.payload)
        where = self.keyring.decrypt(payload.route)
        channel = str(where.get("channel") or ChannelName.TELEGRAM)
        return Outgoing(channel, str(where["chat_id"]), payload.messages(), answer=True)

    async def _message(
        self, session: AsyncSession, payload: CitizenPayload, report: Report, caps: Capabilities
    ) -> Reply:
        locale = report.locale
        code = format_code(report.code)
        if payload.relay_id is not None:
            relay = await session.get(RelayMessage, payload.relay_id)
            question = relay.text if relay is not None and relay.text else ""
            # With a «Reply» button, or "type your answer now" where there is no reply-to.
            reply = question_reply(locale, report.id, report.code, question, caps)
            if relay is not None and relay.blob_id is not None:
                # The officer's photo, cleaned when it was stored; gone after retention.
                reply.photo = await Media(session).blob_content(relay.blob_id)
            return reply
        values: dict[str, Any] = dict(payload.values)
        values.setdefault("code", code)
        if payload.key == REWARD_APPROVED and caps.status_page:
            # The status page shows the live claim code above the messages: none in here.
            return Reply(text=t(locale, REWARD_ON_PAGE, **values))
        if payload.secret is not None:
            values.update(self.keyring.decrypt(payload.secret))
        return Reply(text=t(locale, str(payload.key), **values))

    async def _pace(self, channel: str) -> None:
        """Wait for ``channel``'s next slot (its own rate, on top of the overall one)."""
        rate = self.channel_rates.get(channel)
        if not rate:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_slot.get(channel, now))
        self._next_slot[channel] = slot + 1.0 / rate
        if slot > now:
            await asyncio.sleep(slot - now)

    # -------------------------------------------------------------------------- outcomes

    @staticmethod
    def _wiped(claim: Claim) -> dict[str, Any]:
        """The payload without its secret: a claim code is never kept once delivered."""
        payload = dict(claim.payload)
        payload.pop("secret", None)
        return payload

    async def _drop(self, claim: Claim, error: str) -> None:
        await self.leases.fail(claim, error, payload=self._wiped(claim))
        log.info("outbox row %d to a tipster dropped: %s", claim.row_id, error)

    async def _failed(self, claim: Claim, exc: SendError, channel: str) -> bool:
        if exc.gone:
            await self._blocked(claim, channel)
            return False
        if exc.permanent:
            await self.leases.fail(
                claim, f"refused: {exc.reason[:200]}", payload=self._wiped(claim)
            )
            return True
        if exc.retry_after is not None:
            delay = max(1.0, exc.retry_after)
        else:
            delay = float(min(self.retry_cap, 2.0 ** min(claim.attempts + 1, 8)))
        await self.leases.release(claim, delay, error=exc.reason[:200], failed=True)
        return False

    async def _answer_failed(self, claim: Claim, exc: SendError) -> bool:
        """A queued answer the channel refused: dropped when it cannot be delivered there
        (blocked, refused as it is), else tried again with backoff."""
        if exc.gone or exc.permanent:
            await self._drop(claim, f"refused: {exc.reason[:200]}")
            return True
        if exc.retry_after is not None:
            delay = max(1.0, exc.retry_after)
        else:
            delay = float(min(self.retry_cap, 2.0 ** min(claim.attempts + 1, 8)))
        await self.leases.release(claim, delay, error=exc.reason[:200], failed=True)
        return False

    async def _hold(self, claim: Claim) -> None:
        """Keep the message until the tipster writes again (which makes it due at once)."""
        async with reading(self.session_factory) as session:
            created = await session.scalar(
                select(OutboxMessage.created_at).where(OutboxMessage.id == claim.row_id)
            )
        waited = (self.clock() - created).total_seconds() if created is not None else 0.0
        left = self.hold_seconds - waited
        await self.leases.release(claim, max(1.0, left), error=HELD, failed=False)

    async def _blocked(self, claim: Claim, channel: str) -> None:
        """The tipster cannot be reached there now: mark the route, tell the officers once, and
        hold the message until they write again."""
        now = self.clock()
        key = UNREACHABLE_NOTICE.get(channel, "relay.tipster_blocked")

        async def mark(session: AsyncSession) -> None:
            row = await session.get(OutboxMessage, claim.row_id)
            report = await session.get(Report, row.report_id) if row and row.report_id else None
            if report is None:
                return
            route = await session.scalar(
                select(ContactRoute).where(ContactRoute.report_id == report.id)
            )
            if route is None or route.blocked_at is not None:
                return
            route.blocked_at = now
            # The tipster's conversation carries the mark too, so that their next message
            # looks for held messages only when there are some (no query on every step).
            conversation = await session.get(Conversation, route.sender_key)
            if conversation is not None:
                conversation.data = {**(conversation.data or {}), HELD_MARK: True}
            notice = ChatTextPayload(
                text=t(self.officer_locale, key, code=format_code(report.code)),
                reply_to_report=report.id,
            )
            enqueue(
                session,
                notice,
                Dest.parse(await officers_destination(session, report)),
                report_id=report.id,
                # Once for each time the route goes unreachable.
                dedupe_key=f"blocked:{report.id}:{now.timestamp():.0f}",
                priority=Priority.TIP,
            )

        await self.leases.write(mark)
        await self._hold(claim)
        log.info("a tipster cannot be reached now; message held (outbox row %s)", claim.row_id)


__all__ = ["CitizenMessenger", "Outgoing"]
