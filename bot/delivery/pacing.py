"""Pacing: Telegram's flood limits as budgets the delivery worker spends.

About 1 msg/s per chat and 30 msg/s overall are paced in process (a token bucket per chat, a
sliding window for the bot). 20 msg/min per group, every forum topic included, is computed from
the database (``message_count`` of rows sent to the group in the last minute, plus rows other
workers hold leased), so several processes share one budget. Part of it is kept for
emergencies, and tips are smoothed so that a storm never spends the whole minute in its first
seconds. A 429 pauses the chat (all chats, if two chats are refused at once).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from bot.delivery.rows import Blocked, Target
from bot.delivery.shared_budget import SharedBudget
from handlers.outbox import Priority, Status
from storage.db import reading
from storage.models import OutboxMessage

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

#: Our pacing runs a little slower than Telegram's limits, so that network jitter between our
#: clock and the server's never turns a well-paced message into a 429.
PACING_MARGIN: Final = 0.95
GLOBAL_WINDOW: Final = 1.05
GROUP_WINDOW_MARGIN: Final = 1.0


@dataclass(frozen=True)
class FloodLimits:
    """Telegram's flood limits as the worker applies them (docs/domain.md), and folding policy."""

    #: Messages per second over all chats.
    global_per_second: int = 30
    #: Messages per second in one chat, with a short burst allowed.
    chat_per_second: float = 1.0
    chat_burst: int = 3
    #: Messages per ``group_window`` seconds in one group, all its forum topics together.
    group_per_minute: int = 20
    group_window: float = 60.0
    #: Part of the group budget only emergencies may use.
    emergency_reserve: int = 4
    #: In a calm chat, up to this many waiting tips go as full cards; more wait to be folded
    #: into a digest (a backlog there is the start of a storm).
    fold_backlog: int = 1
    #: Messages tips may spend at once in a group (default: half the allowance); the rest of
    #: the allowance is spread evenly over the window.
    tip_burst: int | None = None
    #: While a group's budget is being spent, a backlog is folded once it fills a digest or
    #: its oldest tip has waited this long (seconds); fuller digests, fewer messages.
    digest_hold: float = 3.0

    @property
    def allowance(self) -> int:
        """What tips, digests, reminders and alerts may use of a group's budget."""
        return max(1, self.group_per_minute - self.emergency_reserve)

    @classmethod
    def from_settings(cls, settings: Settings) -> FloodLimits:
        return cls(
            global_per_second=settings.delivery_global_per_second,
            chat_per_second=settings.delivery_chat_per_second,
            group_per_minute=settings.delivery_group_per_minute,
            emergency_reserve=min(4, max(0, settings.delivery_group_per_minute // 5)),
        )


class TokenBucket:
    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def wait_time(self, now: float, need: float = 1.0) -> float:
        self._refill(now)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def take(self, now: float, amount: float) -> None:
        self._refill(now)
        self.tokens = max(self.tokens - amount, -self.capacity)

    def defer(self, now: float, flight: float) -> None:
        """The last take happened ``flight`` seconds later than recorded (it was counted when
        the request left; the server counted it when it arrived): take back that refill."""
        self._refill(now)
        self.tokens = max(self.tokens - flight * self.rate, -self.capacity)


class Window:
    """A sliding-window counter: at most ``limit`` in any ``period`` seconds."""

    def __init__(self, period: float, limit: int) -> None:
        self.period = period
        self.limit = limit
        self.stamps: deque[float] = deque()

    def count(self, now: float) -> int:
        while self.stamps and self.stamps[0] <= now - self.period:
            self.stamps.popleft()
        return len(self.stamps)

    def wait_time(self, now: float, weight: int) -> float:
        weight = min(weight, self.limit)
        if self.count(now) + weight <= self.limit:
            return 0.0
        return self.stamps[len(self.stamps) + weight - self.limit - 1] + self.period - now

    def add(self, now: float, weight: int) -> None:
        self.stamps.extend([now] * weight)

    def move(self, old: float, new: float, weight: int) -> None:
        """Re-date ``weight`` stamps from ``old`` (request sent) to ``new`` (answer back)."""
        for _ in range(weight):
            with contextlib.suppress(ValueError):
                self.stamps.remove(old)
            bisect.insort(self.stamps, new)


@dataclass(frozen=True)
class Usage:
    """A group's messages in the current window: all of them, and the non-urgent share."""

    total: int
    tips: int


class Pacer:
    """The budgets of one worker process: per chat, per group (shared through the database),
    over the bot, and the pauses a 429 imposes."""

    def __init__(
        self,
        limits: FloodLimits,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Callable[[], datetime],
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.session_factory = session_factory
        self.clock = clock
        self.mono = mono
        self.rate_limited = 0
        self._chat_pace: dict[int, TokenBucket] = {}
        self._group_tokens: dict[int, TokenBucket] = {}
        self._group_sent: dict[tuple[int, bool], Window] = {}
        self._global = Window(GLOBAL_WINDOW, limits.global_per_second)
        self._paused: dict[int, float] = {}
        self.paused_all = 0.0
        #: Chats whose plan came out empty, until when (the scheduler looks again then).
        self.blocked: dict[int, float] = {}
        self._recent_429: deque[tuple[float, int]] = deque(maxlen=32)
        #: The per-chat and global budgets shared with other processes (PostgreSQL).
        self.shared: SharedBudget | None = None

    # -------------------------------------------------------------------------- budgets

    def chat_bucket(self, chat_id: int) -> TokenBucket:
        bucket = self._chat_pace.get(chat_id)
        if bucket is None:
            rate = self.limits.chat_per_second * PACING_MARGIN
            bucket = TokenBucket(rate, float(self.limits.chat_burst), self.mono())
            self._chat_pace[chat_id] = bucket
        return bucket

    def tip_bucket(self, chat_id: int) -> TokenBucket:
        """Smooths what tips may spend of a group's minute: ``tip_burst`` at once, the rest
        spread evenly. Burst plus a window's refill never exceed the allowance, so a long storm
        never fills the window and stalls until it slides; it gets a digest every few
        seconds instead."""
        bucket = self._group_tokens.get(chat_id)
        if bucket is None:
            allowance = self.limits.allowance
            burst = min(allowance, max(1, self.limits.tip_burst or allowance // 2))
            window = self.limits.group_window + GROUP_WINDOW_MARGIN
            rate = max(allowance - burst, 1) / window
            bucket = TokenBucket(rate, float(burst), self.mono())
            self._group_tokens[chat_id] = bucket
        return bucket

    def group_window(self, chat_id: int, *, urgent: bool) -> Window:
        """What this process sent to the group lately: everything (``urgent``) or the share
        of non-urgent rows (tips, digests, reminders, alerts)."""
        key = (chat_id, urgent)
        window = self._group_sent.get(key)
        if window is None:
            window = Window(
                self.limits.group_window + GROUP_WINDOW_MARGIN, self.limits.group_per_minute
            )
            self._group_sent[key] = window
        return window

    def _usage(self, chat_id: int, exclude: int | None) -> Select[tuple[Any, Any]]:
        """Messages of the group in the window, and those of non-urgent rows (see
        :meth:`group_used`)."""
        now = self.clock()
        since = now - timedelta(seconds=self.limits.group_window + GROUP_WINDOW_MARGIN)
        key = str(chat_id)
        in_flight = and_(OutboxMessage.status == Status.SENDING, OutboxMessage.claimed_until > now)
        if exclude is not None:
            in_flight = and_(in_flight, OutboxMessage.id != exclude)
        routine = case(
            (OutboxMessage.priority < Priority.EMERGENCY, OutboxMessage.message_count), else_=0
        )
        return select(
            func.coalesce(func.sum(OutboxMessage.message_count), 0),
            func.coalesce(func.sum(routine), 0),
        ).where(
            or_(OutboxMessage.chat_key == key, OutboxMessage.chat_key.like(f"{key}/%")),
            or_(OutboxMessage.sent_at >= since, in_flight),
        )

    def usage_columns(self, chat_id: int, exclude: int) -> dict[str, ColumnElement[Any]]:
        """:meth:`group_used`'s reading as two columns (``total``, ``tips``) for the claim of
        row ``exclude`` to read in its own statement (:meth:`bot.delivery.leases.Leases.claim`),
        where it sees every claim made before it: the first part is admitted on them."""
        usage = self._usage(chat_id, exclude)
        total, tips = usage.selected_columns
        return {
            "total": usage.with_only_columns(total).scalar_subquery(),
            "tips": usage.with_only_columns(tips).scalar_subquery(),
        }

    async def group_used(
        self,
        chat_id: int,
        *,
        exclude: int | None = None,
        extra: int = 0,
        urgent: bool = False,
        read: tuple[int, int] | None = None,
    ) -> Usage:
        """Messages the group has had in the window: rows sent to any of its chats (topics
        included) by any process, plus rows other workers hold leased right now; in all, and
        those of non-urgent rows. ``extra`` (sent under the caller's own claim, which
        ``exclude`` leaves out) is added; this process's own records are a floor. ``read``:
        the two sums as the caller's claim already read them (nothing is read again)."""
        if read is None:
            async with reading(self.session_factory) as session:
                read = (await session.execute(self._usage(chat_id, exclude))).one()
        total, tips = read
        mono = self.mono()
        return Usage(
            total=max(
                int(total or 0) + extra, self.group_window(chat_id, urgent=True).count(mono)
            ),
            tips=max(
                int(tips or 0) + (0 if urgent else extra),
                self.group_window(chat_id, urgent=False).count(mono),
            ),
        )

    # -------------------------------------------------------------------------- pauses

    def pause_left(self, chat_id: int, mono: float) -> float:
        return max(self._paused.get(chat_id, 0.0), self.paused_all) - mono

    def pause(self, chat_id: int, seconds: float) -> None:
        until = self.mono() + seconds
        self._paused[chat_id] = max(self._paused.get(chat_id, 0.0), until)

    def pause_all(self, seconds: float) -> None:
        self.paused_all = max(self.paused_all, self.mono() + seconds)

    def on_flood(self, chat_id: int, seconds: float) -> None:
        mono = self.mono()
        self.rate_limited += 1
        self.pause(chat_id, seconds)
        others = {c for at, c in self._recent_429 if mono - at < 1.0 and c != chat_id}
        self._recent_429.append((mono, chat_id))
        if others:
            # several chats refused at once: this is the bot's global limit, not one chat's
            self.paused_all = max(self.paused_all, mono + seconds)
            log.warning("flood control on several chats: pausing all sends for %.0fs", seconds)
        else:
            log.warning("flood control in chat %s: pausing it for %.0fs", chat_id, seconds)

    def wake_delays(self) -> list[float]:
        """Seconds until each pause or block ends (the scheduler's next look)."""
        mono = self.mono()
        delays: list[float] = []
        for table in (self.blocked, self._paused):
            for chat_id, until in list(table.items()):
                if until <= mono:
                    del table[chat_id]
                else:
                    delays.append(until - mono)
        if self.paused_all > mono:
            delays.append(self.paused_all - mono)
        return delays

    # -------------------------------------------------------------------------- one message

    async def admit(
        self,
        target: Target,
        *,
        row_id: int,
        urgent: bool,
        sent_now: int,
        weight: int,
        stopping: Callable[[], bool],
        nap: Callable[[float], Awaitable[None]],
        usage: tuple[int, int] | None = None,
    ) -> float:
        """Wait for the chat's and the bot's pacing, then count the message; raise
        :class:`Blocked` when the row must go back to the queue (stop, pause, the group's
        budget). Returns the moment it was admitted (for :meth:`landed`). ``usage``: the
        group's sums as the row's claim read them, used for the first look."""
        chat_id = target.chat_id
        read = usage
        while True:
            if stopping():
                raise Blocked(0.0, "stopping")
            mono = self.mono()
            pause = self.pause_left(chat_id, mono)
            if pause > 0:
                raise Blocked(pause, "paused")
            if target.is_group:
                used = await self.group_used(
                    chat_id, exclude=row_id, extra=sent_now, urgent=urgent, read=read
                )
                read = None  # after a wait, read afresh
                mono = self.mono()
                limit = self.limits.group_per_minute
                if used.total + min(weight, limit) > limit:
                    raise Blocked(1.0, "group budget")
                if not urgent:
                    allowance = self.limits.allowance
                    if used.tips + min(weight, allowance) > allowance:
                        raise Blocked(1.0, "group budget")
                    refill = self.tip_bucket(chat_id).wait_time(mono)
                    if refill > 0:
                        raise Blocked(refill, "group pacing")
            wait = max(
                self.chat_bucket(chat_id).wait_time(mono),
                self._global.wait_time(mono, weight),
            )
            if wait <= 0 and self.shared is not None:
                # The in-process pacing agrees; now the budget all processes share.
                wait = await self.shared.reserve(chat_id, weight)
                if wait > 0:
                    await nap(wait)
                mono = self.mono()
                break
            if wait <= 0:
                break
            await nap(wait)
        self.chat_bucket(chat_id).take(mono, weight)
        self._global.add(mono, weight)
        if target.is_group:
            self.group_window(chat_id, urgent=True).add(mono, weight)
            if not urgent:
                self.group_window(chat_id, urgent=False).add(mono, weight)
                self.tip_bucket(chat_id).take(mono, weight)
        return mono

    def landed(self, target: Target, *, urgent: bool, weight: int, admitted: float) -> None:
        """Count a message from when its answer came back, not from when it left: the server
        counted it somewhere in between, and a slow first request (connection set-up) would
        otherwise make a well-paced next one look early to it."""
        now = self.mono()
        flight = now - admitted
        if flight <= 0:
            return
        chat_id = target.chat_id
        self.chat_bucket(chat_id).defer(now, flight)
        self._global.move(admitted, now, weight)
        if target.is_group:
            self.group_window(chat_id, urgent=True).move(admitted, now, weight)
            if not urgent:
                self.group_window(chat_id, urgent=False).move(admitted, now, weight)


__all__ = ["FloodLimits", "Pacer", "TokenBucket", "Usage", "Window"]
