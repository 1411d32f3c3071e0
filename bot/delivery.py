"""The delivery worker: sends the outbox to officers' chats, within Telegram's flood limits.

Every officer-facing message is an ``outbox`` row written in the transaction that caused it.
This worker turns the rows into Bot API calls:

* **Claiming.** A row is taken with a conditional ``UPDATE ... WHERE id = :id AND <still
  claimable>`` (rowcount 1 = ours), which gives it a lease (``claimed_until``). Two worker
  processes never send the same row; a crashed worker's lease lapses and the row returns.
  Every later write on the row is conditional on the lease still being ours.
* **Progress.** A report card is several messages (card, map pin, evidence). After each one
  the row's ``payload`` records what went out (``done``, ``msg``, ``sent``) in its own commit,
  so a retry after a partial failure, or another worker after a crash, sends only the rest.
  Each call and its progress commit run shielded from cancellation: :meth:`stop` mid-burst
  finishes the call in flight and never duplicates a message.
* **Flood limits** (PRODUCT.md): about 1 msg/s per chat and 30 msg/s overall are paced in
  process; 20 msg/min per group, every forum topic included, is computed from the database
  (``message_count`` of rows sent to the group in the last minute, plus rows other workers
  hold leased), so several processes share one budget. Part of it is kept for emergencies,
  and tips are smoothed so that a storm never spends the whole minute in its first seconds.
  A 429 is never ignored: the row waits ``retry_after`` and the chat (all chats, if two chats
  are refused at once) is paused until then.
* **Folding.** When more tips wait for a chat than its budget can carry soon, they are folded
  into digest messages (≤ 30 reports each, one line and one "open" button per report). The
  folded rows become ``folded`` with the digest's id in their payload; the digest is sent first.
  Only plain tip cards are folded (priority 0, routed by unit or to duty). Emergencies, their
  reminders and cards an officer opened from a digest (``chat:`` destinations) never are:
  emergencies keep their Acknowledge button and go first.
* **Errors.** 5xx, timeouts and network errors are retried with exponential backoff (1 s,
  2 s, 4 s … 5 min) and never give up. A chat that is gone (bot removed, chat not found, no
  right to post) fails the row, alerts the duty queue once an hour per chat, and re-routes
  the report there. A destination with no queue and no duty queue stays pending.
* **Timers** (``timer.*`` rows) are not sent: they are handed to a :class:`TimerHandler`
  inside the transaction that marks them ``done``, so they fire once across processes.
* **Kinds.** Only :data:`SENT_KINDS` and ``timer.*`` rows are claimed; rows of any other kind
  are left untouched for their own sender. Whatever sends to an officers' group must record
  ``chat_key``, ``message_count``, ``sent_at`` and ``priority`` on its row, or the group budget
  stops being shared.

Anonymity: log lines carry outbox and report ids, chat ids of officers' groups and error
types, never anything about a tipster.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from telegram import (
    Bot,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
)
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)
from telegram.warnings import PTBDeprecationWarning

from config.queues import QueueMap
from handlers.cards import (
    DIGEST_MAX,
    Card,
    CardMedia,
    alert_card,
    digest_card,
    reminder_card,
    report_card,
)
from handlers.domain import REPORT_KIND_EMERGENCY
from handlers.events import Button
from handlers.i18n import t
from handlers.intake import PRIORITY_EMERGENCY
from handlers.security import format_code
from storage.models import (
    CardPost,
    MediaBlob,
    OutboxMessage,
    RelayMessage,
    Report,
    ReportMedia,
)
from storage.types import utcnow

if TYPE_CHECKING:
    from config.settings import Settings
    from handlers.security import Keyring

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Outbox kinds this worker sends; ``timer.*`` rows go to the :class:`TimerHandler`.
KIND_CARD: Final = "report_card"
KIND_DIGEST: Final = "digest"
KIND_REMINDER: Final = "reminder"
KIND_ALERT: Final = "alert"
TIMER_PREFIX: Final = "timer."
#: Every kind this worker claims; rows of other kinds are left untouched for their own sender.
KIND_CHAT_TEXT: Final = "chat_text"
KIND_RELAY: Final = "relay_to_officers"
SENT_KINDS: Final = (
    KIND_CARD,
    KIND_DIGEST,
    KIND_REMINDER,
    KIND_ALERT,
    KIND_CHAT_TEXT,
    KIND_RELAY,
)

PENDING: Final = "pending"
SENDING: Final = "sending"
SENT: Final = "sent"
FAILED: Final = "failed"
FOLDED: Final = "folded"
#: A fired timer.
DONE: Final = "done"

#: ``priority`` at or above which a row is urgent (an emergency's card, its reminder); an
#: emergency's row enqueued lower is raised to it when claimed.
EMERGENCY_PRIORITY: Final = PRIORITY_EMERGENCY
#: A digest goes before the tips still waiting, after emergencies.
DIGEST_PRIORITY: Final = 5

NO_DUTY_ERROR: Final = (
    "no queue serves this destination and there is no duty queue: set TINBAO_DUTY_CHAT_ID"
)
#: Telegram's descriptions of a chat the bot can no longer post to (lower case).
_CHAT_GONE_MARKERS: Final = (
    "chat not found",
    "bot was kicked",
    "bot was blocked",
    "bot is not a member",
    "not enough rights",
    "have no rights",
    "need administrator rights",
    "chat_write_forbidden",
    "chat_restricted",
    "group chat was deactivated",
    "chat was deleted",
    "peer_id_invalid",
    "message thread not found",
    "topic_deleted",
    "topic_closed",
    "user is deactivated",
)
_NO_PREVIEW: Final = LinkPreviewOptions(is_disabled=True)


class TimerHandler(Protocol):
    """Fires a ``timer.*`` outbox row; may enqueue new rows in ``session``.

    Called inside the transaction that marks the row ``done``: if it raises, nothing of it is
    kept and the timer is tried again later.
    """

    async def fire(self, session: AsyncSession, row: OutboxMessage) -> None: ...


@dataclass(frozen=True)
class FloodLimits:
    """Telegram's flood limits as the worker applies them (PRODUCT.md), and folding policy."""

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
    #: Fold the waiting tips of a chat into a digest when more than this many wait.
    fold_backlog: int = 5
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


@dataclass
class DeliveryStats:
    """Counters since the worker was created (benchmarks, health pages)."""

    messages: int = 0
    rows_sent: int = 0
    rows_failed: int = 0
    rows_folded: int = 0
    digests: int = 0
    timers_fired: int = 0
    rate_limited: int = 0
    transient_errors: int = 0


# ------------------------------------------------------------------------------ pacing


class _TokenBucket:
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


class _Window:
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


#: Our pacing runs a little slower than Telegram's limits, so that network jitter between our
#: clock and the server's never turns a well-paced message into a 429.
_PACING_MARGIN: Final = 0.95
_GLOBAL_WINDOW: Final = 1.05
_GROUP_WINDOW_MARGIN: Final = 1.0


# ------------------------------------------------------------------------------ rows


@dataclass(frozen=True)
class _Target:
    chat_id: int
    thread_id: int | None
    name: str
    is_duty: bool

    @property
    def chat_key(self) -> str:
        return str(self.chat_id) if self.thread_id is None else f"{self.chat_id}/{self.thread_id}"

    @property
    def is_group(self) -> bool:
        return self.chat_id < 0


@dataclass
class _Row:
    """A due outbox row as the scheduler sees it."""

    id: int
    kind: str
    destination: str
    status: str
    payload: dict[str, Any]
    report_id: int | None
    attempts: int
    priority: int
    urgent: bool
    cost: int
    created_at: datetime
    target: _Target | None = None

    @property
    def partial(self) -> bool:
        return bool(self.payload.get("done"))


@dataclass
class _Job:
    """A claimed row being sent."""

    row: _Row
    target: _Target
    lease: datetime
    payload: dict[str, Any]
    attempts: int
    #: Messages sent under this claim.
    sent_now: int = 0

    @property
    def done(self) -> list[str]:
        done = self.payload.setdefault("done", [])
        assert isinstance(done, list)
        return done


@dataclass(frozen=True)
class _Usage:
    """A group's messages in the current window: all of them, and the non-urgent share."""

    total: int
    tips: int


class _Blocked(Exception):
    """The row cannot go on now (budget, pause, stop); it goes back to the queue."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = max(0.0, delay)
        self.reason = reason


class _LeaseLost(Exception):
    """Another worker took the row over (our lease lapsed)."""


def _markup(buttons: list[list[Button]]) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.label, callback_data=b.data) for b in row] for row in buttons]
    )


def _retry_after_seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    if isinstance(value, timedelta):
        return max(1.0, value.total_seconds())
    return max(1.0, float(value))


def is_chat_gone(exc: TelegramError) -> bool:
    """True when ``exc`` says the bot can no longer post to the chat (a permanent error)."""
    if isinstance(exc, Forbidden | ChatMigrated):
        return True
    if isinstance(exc, BadRequest):
        text = exc.message.lower()
        return any(marker in text for marker in _CHAT_GONE_MARKERS)
    return False


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _media_parts(media: Sequence[CardMedia]) -> list[list[CardMedia]]:
    """Consecutive photos with bytes become albums of ≤ 10; everything else goes alone."""
    parts: list[list[CardMedia]] = []
    album: list[CardMedia] = []
    for item in media:
        if item.content is not None and item.kind == "photo":
            album.append(item)
            if len(album) == 10:
                parts.append(album)
                album = []
            continue
        if album:
            parts.append(album)
            album = []
        parts.append([item])
    if album:
        parts.append(album)
    return parts


# ------------------------------------------------------------------------------ the worker


class DeliveryWorker:
    """Sends the outbox. ``start()``/``stop()`` run it in the background; ``kick()`` wakes it
    (call it after a transaction that enqueued rows commits); ``run_once()`` runs one pass and
    waits for its sends (tests)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        bot: Bot,
        queue_map: QueueMap,
        *,
        locale: str = "vi",
        limits: FloodLimits | None = None,
        timers: TimerHandler | None = None,
        keyring: Keyring | None = None,
        clock: Callable[[], datetime] = utcnow,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        lease_seconds: float = 120.0,
        poll_interval: float = 5.0,
        park_seconds: float = 60.0,
        max_lanes: int = 16,
        plan_size: int = 5,
        scan_limit: int = 500,
    ) -> None:
        self.session_factory = session_factory
        self.bot = bot
        self.queue_map = queue_map
        self.locale = locale
        self.limits = limits or FloodLimits()
        self.timers = timers
        #: Not used yet: for the kinds that go back to tipsters (see ``SENT_KINDS``).
        self.keyring = keyring
        self.clock = clock
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.park_seconds = park_seconds
        self.max_lanes = max_lanes
        self.plan_size = plan_size
        self.scan_limit = scan_limit
        self.stats = DeliveryStats()

        self._mono = time.monotonic
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lanes: dict[int, asyncio.Task[int]] = {}
        self._inflight: set[asyncio.Future[Any]] = set()
        self._chat_pace: dict[int, _TokenBucket] = {}
        self._group_tokens: dict[int, _TokenBucket] = {}
        self._group_sent: dict[tuple[int, bool], _Window] = {}
        self._global = _Window(_GLOBAL_WINDOW, self.limits.global_per_second)
        self._paused: dict[int, float] = {}
        self._paused_all = 0.0
        self._blocked: dict[int, float] = {}
        self._recent_429: deque[tuple[float, int]] = deque(maxlen=32)
        self._warned: dict[str, float] = {}

    # -------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._stop_event.clear()
        self._task = asyncio.create_task(self._run(), name="delivery-worker")

    def kick(self) -> None:
        """Look at the outbox now (new rows were committed)."""
        self._wake.set()

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Stop after the sends in flight; rows not started stay in the queue."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        deadline = self._mono() + timeout
        # the loop first (it starts no lane once stopping), then the lanes it started
        for group in ([self._task] if self._task is not None else [], self._lanes.values()):
            tasks = [task for task in group if not task.done()]
            if not tasks:
                continue
            _done, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - self._mono()))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._inflight:
            # cancelled lanes leave their shielded call and its bookkeeping to finish
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        self._task = None
        self._lanes.clear()

    async def run_once(self) -> int:
        """One pass: fold backlogs, start every chat's sends and wait for them.

        Returns the rows settled (sent, failed, folded or fired).
        """
        return await self._round(wait=True)

    async def _run(self) -> None:
        log.info("delivery worker started")
        while not self._stopping:
            self._wake.clear()
            try:
                await self._round(wait=False)
                delay = await self._next_wake()
            except Exception:
                log.exception("delivery pass failed; trying again shortly")
                delay = min(self.poll_interval, 2.0)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        log.info("delivery worker stopped")

    # -------------------------------------------------------------------------- scheduling

    def _claimable(self, now: datetime) -> ColumnElement[bool]:
        return or_(
            and_(OutboxMessage.status == PENDING, OutboxMessage.next_attempt_at <= now),
            and_(OutboxMessage.status == SENDING, OutboxMessage.claimed_until < now),
        )

    @staticmethod
    def _mine_kinds() -> ColumnElement[bool]:
        return or_(
            OutboxMessage.kind.in_(SENT_KINDS),
            OutboxMessage.kind.startswith(TIMER_PREFIX, autoescape=True),
        )

    async def _due_rows(self, now: datetime) -> list[_Row]:
        emergency = and_(
            Report.kind == REPORT_KIND_EMERGENCY, OutboxMessage.priority < EMERGENCY_PRIORITY
        )
        priority = case((emergency, EMERGENCY_PRIORITY), else_=OutboxMessage.priority)
        media = (
            select(func.count(ReportMedia.id))
            .where(ReportMedia.report_id == OutboxMessage.report_id)
            .correlate(OutboxMessage)
            .scalar_subquery()
        )
        stmt = (
            select(
                OutboxMessage.id,
                OutboxMessage.kind,
                OutboxMessage.destination,
                OutboxMessage.status,
                OutboxMessage.payload,
                OutboxMessage.report_id,
                OutboxMessage.attempts,
                OutboxMessage.created_at,
                priority.label("effective_priority"),
                Report.kind.label("report_kind"),
                Report.latitude,
                Report.longitude,
                media.label("media"),
            )
            .outerjoin(Report, Report.id == OutboxMessage.report_id)
            .where(self._claimable(now), self._mine_kinds())
            .order_by(priority.desc(), OutboxMessage.id)
            .limit(self.scan_limit)
        )
        async with self.session_factory() as session:
            result = await session.execute(stmt)
            rows: list[_Row] = []
            for r in result:
                payload = dict(r.payload or {})
                urgent = (
                    r.report_kind == REPORT_KIND_EMERGENCY
                    or r.effective_priority >= EMERGENCY_PRIORITY
                )
                cost = 1
                if r.kind == KIND_CARD:
                    has_pin = r.latitude is not None and r.longitude is not None
                    total = 1 + int(has_pin) + int(r.media or 0)
                    cost = max(1, total - int(payload.get("sent", 0)))
                rows.append(
                    _Row(
                        id=r.id,
                        kind=r.kind,
                        destination=r.destination,
                        status=r.status,
                        payload=payload,
                        report_id=r.report_id,
                        attempts=r.attempts,
                        priority=int(r.effective_priority),
                        urgent=urgent,
                        cost=cost,
                        created_at=r.created_at,
                    )
                )
            return rows

    def _target(self, destination: str) -> _Target | None:
        """Where ``destination`` goes; ``None`` when no queue serves it (no duty queue).

        Raises ``ValueError`` for a destination that cannot be parsed.
        """
        kind, _, rest = destination.partition(":")
        queue = None
        if destination == "duty":
            queue = self.queue_map.duty
        elif kind == "unit" and rest:
            queue = self.queue_map.resolve(rest)
        elif kind == "queue" and rest:
            queue = self.queue_map.by_key(rest)
        elif kind == "chat" and rest:
            chat, _, thread = rest.partition("/")
            chat_id = int(chat)
            thread_id = int(thread) if thread else None
            known = self.queue_map.by_chat(chat_id, thread_id)
            duty = self.queue_map.duty
            is_duty = duty is not None and (duty.chat_id, duty.thread_id) == (chat_id, thread_id)
            name = known.name if known is not None else rest
            return _Target(chat_id, thread_id, name, is_duty)
        else:
            raise ValueError(f"unknown destination {destination!r}")
        if queue is None:
            return None
        return _Target(queue.chat_id, queue.thread_id, queue.name, queue.is_duty)

    async def _round(self, *, wait: bool) -> int:
        now = self.clock()
        self._lanes = {c: task for c, task in self._lanes.items() if not task.done()}
        rows = await self._due_rows(now)
        settled = 0
        by_chat: dict[int, list[_Row]] = {}
        for row in rows:
            if self._stopping:
                break
            if row.kind.startswith(TIMER_PREFIX):
                settled += await self._fire_timer(row)
                continue
            try:
                target = self._target(row.destination)
            except ValueError:
                await self._settle_unsendable(row, f"unknown destination {row.destination!r}")
                settled += 1
                continue
            if target is None:
                await self._park(row, NO_DUTY_ERROR)
                continue
            row.target = target
            by_chat.setdefault(target.chat_id, []).append(row)
        started: list[asyncio.Task[int]] = []
        for chat_id, chat_rows in by_chat.items():
            if self._stopping:
                break
            busy = self._lanes.get(chat_id)
            if busy is not None and not busy.done():
                continue
            if sum(not t.done() for t in self._lanes.values()) >= self.max_lanes:
                break
            if self._pause_left(chat_id, self._mono()) > 0:
                continue
            plan, folded = await self._plan(chat_id, chat_rows, now)
            settled += folded
            if not plan:
                continue
            task = asyncio.create_task(self._lane(chat_id, plan), name=f"delivery-{chat_id}")
            self._lanes[chat_id] = task
            started.append(task)
        if wait and started:
            settled += sum(await asyncio.gather(*started))
        return settled

    async def _next_wake(self) -> float:
        now = self.clock()
        mono = self._mono()
        delays = [self.poll_interval]
        async with self.session_factory() as session:
            due = await session.scalar(
                select(func.min(OutboxMessage.next_attempt_at)).where(
                    OutboxMessage.status == PENDING,
                    OutboxMessage.next_attempt_at > now,
                    self._mine_kinds(),
                )
            )
            lease = await session.scalar(
                select(func.min(OutboxMessage.claimed_until)).where(
                    OutboxMessage.status == SENDING, self._mine_kinds()
                )
            )
        for moment in (due, lease):
            if moment is not None:
                delays.append((moment - now).total_seconds() + 0.01)
        for table in (self._blocked, self._paused):
            for chat_id, until in list(table.items()):
                if until <= mono:
                    del table[chat_id]
                else:
                    delays.append(until - mono)
        if self._paused_all > mono:
            delays.append(self._paused_all - mono)
        return max(0.02, min(delays))

    # -------------------------------------------------------------------------- budgets

    def _chat_bucket(self, chat_id: int) -> _TokenBucket:
        bucket = self._chat_pace.get(chat_id)
        if bucket is None:
            rate = self.limits.chat_per_second * _PACING_MARGIN
            bucket = _TokenBucket(rate, float(self.limits.chat_burst), self._mono())
            self._chat_pace[chat_id] = bucket
        return bucket

    def _tip_bucket(self, chat_id: int) -> _TokenBucket:
        """Smooths what tips may spend of a group's minute: ``tip_burst`` at once, the rest
        spread evenly. Burst plus a window's refill never exceed the allowance, so a long storm
        never fills the window and stalls until it slides; it gets a digest every few
        seconds instead."""
        bucket = self._group_tokens.get(chat_id)
        if bucket is None:
            allowance = self.limits.allowance
            burst = min(allowance, max(1, self.limits.tip_burst or allowance // 2))
            window = self.limits.group_window + _GROUP_WINDOW_MARGIN
            rate = max(allowance - burst, 1) / window
            bucket = _TokenBucket(rate, float(burst), self._mono())
            self._group_tokens[chat_id] = bucket
        return bucket

    def _group_window(self, chat_id: int, *, urgent: bool) -> _Window:
        """What this process sent to the group lately: everything (``urgent``) or the share
        of non-urgent rows (tips, digests, reminders, alerts)."""
        key = (chat_id, urgent)
        window = self._group_sent.get(key)
        if window is None:
            window = _Window(
                self.limits.group_window + _GROUP_WINDOW_MARGIN, self.limits.group_per_minute
            )
            self._group_sent[key] = window
        return window

    async def _group_used(
        self, chat_id: int, *, exclude: int | None = None, extra: int = 0, urgent: bool = False
    ) -> _Usage:
        """Messages the group has had in the window: rows sent to any of its chats (topics
        included) by any process, plus rows other workers hold leased right now; in all, and
        those of non-urgent rows. ``extra`` (sent under the caller's own claim, which
        ``exclude`` leaves out) is added; this process's own records are a floor."""
        now = self.clock()
        since = now - timedelta(seconds=self.limits.group_window + _GROUP_WINDOW_MARGIN)
        key = str(chat_id)
        in_flight = and_(OutboxMessage.status == SENDING, OutboxMessage.claimed_until > now)
        if exclude is not None:
            in_flight = and_(in_flight, OutboxMessage.id != exclude)
        routine = case(
            (OutboxMessage.priority < EMERGENCY_PRIORITY, OutboxMessage.message_count), else_=0
        )
        stmt = select(
            func.coalesce(func.sum(OutboxMessage.message_count), 0),
            func.coalesce(func.sum(routine), 0),
        ).where(
            or_(OutboxMessage.chat_key == key, OutboxMessage.chat_key.like(f"{key}/%")),
            or_(OutboxMessage.sent_at >= since, in_flight),
        )
        async with self.session_factory() as session:
            total, tips = (await session.execute(stmt)).one()
        mono = self._mono()
        return _Usage(
            total=max(
                int(total or 0) + extra, self._group_window(chat_id, urgent=True).count(mono)
            ),
            tips=max(
                int(tips or 0) + (0 if urgent else extra),
                self._group_window(chat_id, urgent=False).count(mono),
            ),
        )

    def _pause_left(self, chat_id: int, mono: float) -> float:
        return max(self._paused.get(chat_id, 0.0), self._paused_all) - mono

    def _pause(self, chat_id: int, seconds: float) -> None:
        until = self._mono() + seconds
        self._paused[chat_id] = max(self._paused.get(chat_id, 0.0), until)

    def _on_flood(self, chat_id: int, seconds: float) -> None:
        mono = self._mono()
        self.stats.rate_limited += 1
        self._pause(chat_id, seconds)
        others = {c for at, c in self._recent_429 if mono - at < 1.0 and c != chat_id}
        self._recent_429.append((mono, chat_id))
        if others:
            # several chats refused at once: this is the bot's global limit, not one chat's
            self._paused_all = max(self._paused_all, mono + seconds)
            log.warning("flood control on several chats: pausing all sends for %.0fs", seconds)
        else:
            log.warning("flood control in chat %s: pausing it for %.0fs", chat_id, seconds)

    def _backoff(self, failures: int) -> float:
        return float(min(self.retry_cap, self.retry_base * 2 ** max(0, failures - 1)))

    async def _plan(self, chat_id: int, rows: list[_Row], now: datetime) -> tuple[list[_Row], int]:
        """The rows one chat's lane sends next, after folding its tip backlog if needed;
        and how many rows were folded."""
        mono = self._mono()
        big = 10**6
        urgent_room, tip_room = big, big
        tips = self._tip_bucket(chat_id) if chat_id < 0 else None
        if tips is not None:
            used = await self._group_used(chat_id)
            urgent_room = self.limits.group_per_minute - used.total
            tip_room = min(
                urgent_room,
                self.limits.allowance - used.tips,
                math.floor(tips.available(mono)),
            )
        fresh: dict[str, list[_Row]] = {}
        for row in rows:
            if (
                row.kind == KIND_CARD
                and not row.urgent
                and row.status == PENDING
                and not row.partial
                and row.priority <= 0
                and not row.destination.startswith("chat:")
                and row.target is not None
            ):
                fresh.setdefault(row.target.chat_key, []).append(row)
        folded: set[int] = set()
        held: set[int] = set()
        digests: list[_Row] = []
        retry = [1.0]
        relaxed = tips is None or tips.available(mono) >= tips.capacity - 0.5
        for waiting in fresh.values():
            if tip_room < 1:
                break  # nothing can go now; they are folded once the budget is back
            cost = sum(r.cost for r in waiting)
            if relaxed:
                # a calm chat: a few tips go as full cards, keeping half of what tips can
                # afford for what follows; more are folded at once
                if len(waiting) < 2 or (
                    len(waiting) <= self.limits.fold_backlog and cost * 2 <= tip_room
                ):
                    continue
            else:
                # the budget is being spent: full digests go now; a younger rest waits for a
                # moment to fill one (oldest first: rows come in id order)
                full = len(waiting) // DIGEST_MAX * DIGEST_MAX
                rest = waiting[full:]
                age = (now - min((r.created_at for r in rest), default=now)).total_seconds()
                if rest and age < self.limits.digest_hold:
                    held |= {r.id for r in rest}
                    retry.append(self.limits.digest_hold - age)
                    waiting = waiting[:full]
                if not waiting:
                    continue
                if len(waiting) < 2:
                    continue  # one tip waited alone: its full card
            made, ids = await self._fold(waiting, now)
            digests += made
            folded |= ids
        ordered = [r for r in rows if r.id not in folded and r.id not in held] + digests
        ordered.sort(key=lambda r: (not r.urgent, -r.priority, r.partial, r.id))
        plan: list[_Row] = []
        for row in ordered:
            if len(plan) >= self.plan_size:
                break
            room = urgent_room if row.urgent else tip_room
            if room < 1:
                continue
            plan.append(row)
            urgent_room -= row.cost
            tip_room -= row.cost
        if not plan and (ordered or held):
            if tips is not None and (wait := tips.wait_time(mono)) > 0:
                retry.append(wait)
            self._blocked[chat_id] = mono + max(0.1, min(retry))
        return plan, len(folded)

    async def _fold(self, waiting: list[_Row], now: datetime) -> tuple[list[_Row], set[int]]:
        """Fold waiting tip cards of one chat into digests (≤ DIGEST_MAX reports each)."""
        target = waiting[0].target
        assert target is not None
        made: list[_Row] = []
        folded: set[int] = set()
        count = -(-len(waiting) // DIGEST_MAX)
        bounds = [len(waiting) * i // count for i in range(count + 1)]
        for start, end in itertools.pairwise(bounds):  # even sizes: 31 is 16 + 15, not 30 + 1
            chunk = waiting[start:end]

            async def fold(
                session: AsyncSession, chunk: list[_Row] = chunk
            ) -> tuple[int, list[int], list[int]] | None:
                digest = OutboxMessage(
                    kind=KIND_DIGEST,
                    destination=f"chat:{target.chat_key}",
                    payload={},
                    status=PENDING,
                    priority=DIGEST_PRIORITY,
                    attempts=0,
                    message_count=0,
                    next_attempt_at=now,
                    created_at=now,
                )
                session.add(digest)
                await session.flush()
                rows: list[int] = []
                reports: list[int] = []
                for row in chunk:
                    report_id = row.report_id or row.payload.get("report_id")
                    if not isinstance(report_id, int):
                        continue  # not foldable; it fails alone as a card without a report
                    result = await session.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id == row.id, OutboxMessage.status == PENDING)
                        .values(status=FOLDED, payload={**row.payload, "digest": digest.id})
                        .execution_options(synchronize_session=False)
                    )
                    if _rowcount(result) == 1:
                        rows.append(row.id)
                        reports.append(report_id)
                if not rows:
                    await session.delete(digest)
                    return None
                digest.payload = {"report_ids": reports, "rows": rows}
                return digest.id, rows, reports

            outcome = await self._write(fold)
            if outcome is None:
                continue
            digest_id, rows, reports = outcome
            folded |= set(rows)
            self.stats.rows_folded += len(rows)
            log.info(
                "folded %d waiting cards for chat %s into digest %d",
                len(rows),
                target.chat_key,
                digest_id,
            )
            made.append(
                _Row(
                    id=digest_id,
                    kind=KIND_DIGEST,
                    destination=f"chat:{target.chat_key}",
                    status=PENDING,
                    payload={"report_ids": reports, "rows": rows},
                    report_id=None,
                    attempts=0,
                    priority=DIGEST_PRIORITY,
                    urgent=False,
                    cost=1,
                    created_at=now,
                    target=target,
                )
            )
        return made, folded

    # -------------------------------------------------------------------------- lanes

    async def _lane(self, chat_id: int, plan: list[_Row]) -> int:
        settled = 0
        try:
            for row in plan:
                if self._stopping or self._pause_left(chat_id, self._mono()) > 0:
                    break
                outcome = await self._deliver(row)
                if outcome == "settled":
                    settled += 1
                elif outcome == "stop":
                    break
        except Exception:
            log.exception("delivery to chat %s failed unexpectedly", chat_id)
        finally:
            self._wake.set()
        return settled

    async def _deliver(self, row: _Row) -> str:
        """Claim and send one row: ``settled``, ``skipped`` (not ours) or ``stop`` (the chat
        cannot take more now)."""
        assert row.target is not None
        job = await self._claim(row)
        if job is None:
            return "skipped"
        chat_id = row.target.chat_id
        try:
            await self._send(job)
        except _Blocked as blocked:
            await self._release(job, blocked.delay, error=None, failed=False)
            return "stop"
        except _LeaseLost:
            log.warning("outbox row %d was taken over by another worker", row.id)
            return "stop"
        except RetryAfter as exc:
            seconds = _retry_after_seconds(exc)
            self._on_flood(chat_id, seconds)
            await self._release(job, seconds, error=_error_text(exc), failed=True)
            return "stop"
        except InvalidToken as exc:
            delay = self._backoff(job.attempts + 1)
            self._paused_all = max(self._paused_all, self._mono() + delay)
            log.error("Telegram refused the bot token; all delivery paused for %.0fs", delay)
            await self._release(job, delay, error=_error_text(exc), failed=True)
            return "stop"
        except TelegramError as exc:
            if is_chat_gone(exc):
                await self._fail(job, exc, chat_gone=True)
                return "settled"
            if isinstance(exc, BadRequest):
                await self._fail(job, exc, chat_gone=False)
                return "settled"
            return await self._transient(job, exc)
        except LookupError as exc:  # the report was deleted meanwhile
            await self._fail(job, exc, chat_gone=False)
            return "settled"
        except Exception as exc:
            log.exception("sending outbox row %d failed", row.id)
            return await self._transient(job, exc)
        return "settled"

    async def _transient(self, job: _Job, exc: BaseException) -> str:
        delay = self._backoff(job.attempts + 1)
        self.stats.transient_errors += 1
        log.warning(
            "outbox row %d to chat %s: %s; retrying in %.1fs",
            job.row.id,
            job.target.chat_key,
            type(exc).__name__,
            delay,
        )
        self._pause(job.target.chat_id, delay)
        await self._release(job, delay, error=_error_text(exc), failed=True)
        return "stop"

    # -------------------------------------------------------------------------- sending

    async def _send(self, job: _Job) -> None:
        kind = job.row.kind
        if kind == KIND_CARD:
            await self._send_card(job)
        elif kind == KIND_DIGEST:
            await self._send_digest(job)
        elif kind in (KIND_REMINDER, KIND_ALERT):
            await self._send_notice(job)
        elif kind == KIND_CHAT_TEXT:
            await self._send_chat_text(job)
        elif kind == KIND_RELAY:
            await self._send_relay(job)
        else:
            raise LookupError(f"unknown outbox kind {kind!r}")

    async def _card_message(self, job: _Job, report_id: object) -> int | None:
        """The message id of the report's active card in this chat, to reply to."""
        if not isinstance(report_id, int):
            return None
        async with self.session_factory() as session:
            found = await session.scalar(
                select(CardPost.message_id)
                .where(
                    CardPost.report_id == report_id,
                    CardPost.chat_id == job.target.chat_id,
                    CardPost.kind == "card",
                    CardPost.active.is_(True),
                )
                .order_by(CardPost.id.desc())
            )
        return int(found) if found is not None else None

    async def _send_chat_text(self, job: _Job) -> None:
        """A plain message to officers: a prompt (force reply), a list, a confirmation."""
        payload = job.payload
        text = str(payload.get("text") or "")[:4096]
        markup: InlineKeyboardMarkup | ForceReply | None = None
        rows = payload.get("buttons") or []
        if rows:
            markup = InlineKeyboardMarkup(
                [
                    [
                        InlineKeyboardButton(str(b["label"]), callback_data=str(b["data"]))
                        for b in row
                    ]
                    for row in rows
                ]
            )
        elif payload.get("force_reply"):
            markup = ForceReply(selective=False)
        reply_to = await self._card_message(job, payload.get("reply_to_report"))
        reply = (
            ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
            if reply_to is not None
            else None
        )
        common = self._common(job)
        await self._part(
            job,
            "text",
            1,
            lambda: self.bot.send_message(
                text=text, reply_markup=markup, reply_parameters=reply, **common
            ),
            finish=True,
        )

    async def _send_relay(self, job: _Job) -> None:
        """A tipster's answer or addition, as a reply to the report's card. Photos are the
        cleaned bytes; nothing in it identifies the tipster."""
        relay_id = job.payload.get("relay_id")
        async with self.session_factory() as session:
            relay = (
                await session.get(RelayMessage, relay_id) if isinstance(relay_id, int) else None
            )
            if relay is None:
                raise LookupError("relay row without its message")
            report = await session.get(Report, relay.report_id)
            if report is None:
                raise LookupError("relay row without its report")
            content = (
                await session.scalar(
                    select(MediaBlob.content).where(MediaBlob.id == relay.blob_id)
                )
                if relay.blob_id is not None
                else None
            )
        key = (
            "relay.addition_from_tipster" if job.payload.get("addition") else "relay.from_tipster"
        )
        head = t(self.locale, key, code=format_code(report.code))
        reply_to = await self._card_message(job, report.id)
        reply = (
            ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
            if reply_to is not None
            else None
        )
        common = self._common(job)
        if relay.latitude is not None and relay.longitude is not None:
            lat, lon = relay.latitude, relay.longitude
            await self._part(
                job,
                "text",
                1,
                lambda: self.bot.send_message(text=head, reply_parameters=reply, **common),
            )
            await self._part(
                job,
                "loc",
                1,
                lambda: self.bot.send_location(
                    latitude=lat, longitude=lon, reply_parameters=reply, **common
                ),
                finish=True,
            )
            return
        body = f"{head}\n{relay.text}" if relay.text else head
        if content is not None:
            photo = content
            await self._part(
                job,
                "photo",
                1,
                lambda: self.bot.send_photo(
                    photo=photo, caption=body[:1024], reply_parameters=reply, **common
                ),
                finish=True,
            )
            return
        await self._part(
            job,
            "text",
            1,
            lambda: self.bot.send_message(text=body[:4096], reply_parameters=reply, **common),
            finish=True,
        )

    async def _render(self, build: Callable[[AsyncSession], Awaitable[Card]]) -> Card:
        async with self.session_factory() as session:
            return await build(session)

    def _common(self, job: _Job) -> dict[str, Any]:
        return {
            "chat_id": job.target.chat_id,
            "message_thread_id": job.target.thread_id,
            "protect_content": True,
        }

    async def _send_card(self, job: _Job) -> None:
        report_id = job.payload.get("report_id") or job.row.report_id
        if not isinstance(report_id, int):
            raise LookupError("report_card row without a report id")
        header = job.payload.get("header")
        card = await self._render(
            lambda s: report_card(
                s,
                report_id,
                locale=self.locale,
                header_key=header if isinstance(header, str) else None,
                keyring=self.keyring,
            )
        )
        common = self._common(job)
        await self._part(
            job,
            "card",
            1,
            lambda: self.bot.send_message(
                text=card.text,
                parse_mode=ParseMode.HTML,
                reply_markup=_markup(card.buttons),
                link_preview_options=_NO_PREVIEW,
                **common,
            ),
        )
        reply = ReplyParameters(
            message_id=int(job.payload["msg"]), allow_sending_without_reply=True
        )
        if card.location is not None:
            pin = card.location
            await self._part(
                job,
                "loc",
                1,
                lambda: self.bot.send_location(
                    latitude=pin.latitude,
                    longitude=pin.longitude,
                    reply_parameters=reply,
                    **common,
                ),
            )
        for index, part in enumerate(_media_parts(card.media)):
            await self._part(
                job,
                f"m{index}",
                len(part),
                self._media_call(part, reply, common),
                optional=True,
            )
        await self._shielded(self._finish(job))

    def _media_call(
        self, part: list[CardMedia], reply: ReplyParameters, common: dict[str, Any]
    ) -> Callable[[], Awaitable[Any]]:
        """The Bot API call re-sending one piece (or album) of evidence: uploaded bytes of the
        cleaned image, or the channel's file id. Never a forward or a copy of the citizen's
        message."""
        bot = self.bot
        if len(part) > 1:
            album = [
                InputMediaPhoto(media=m.content or b"", caption=m.caption, filename=m.file_name)
                for m in part
            ]
            return lambda: bot.send_media_group(media=album, reply_parameters=reply, **common)
        item = part[0]
        if item.content is not None:  # cleaned bytes, uploaded under their neutral name
            upload = InputFile(item.content, filename=item.file_name)
            if item.kind == "photo":
                return lambda: bot.send_photo(
                    photo=upload, caption=item.caption, reply_parameters=reply, **common
                )
            if item.kind == "video":
                return lambda: bot.send_video(
                    video=upload, caption=item.caption, reply_parameters=reply, **common
                )
            if item.kind == "voice" and item.mime == "audio/ogg":
                return lambda: bot.send_voice(
                    voice=upload, caption=item.caption, reply_parameters=reply, **common
                )
            return lambda: bot.send_document(
                document=upload, caption=item.caption, reply_parameters=reply, **common
            )
        ref = item.file_ref or ""
        if item.kind == "photo":
            return lambda: bot.send_photo(
                photo=ref, caption=item.caption, reply_parameters=reply, **common
            )
        if item.kind == "video":
            return lambda: bot.send_video(
                video=ref, caption=item.caption, reply_parameters=reply, **common
            )
        if item.kind == "voice":
            return lambda: bot.send_voice(
                voice=ref, caption=item.caption, reply_parameters=reply, **common
            )
        if item.kind == "audio":
            return lambda: bot.send_audio(
                audio=ref, caption=item.caption, reply_parameters=reply, **common
            )
        if item.kind == "animation":
            return lambda: bot.send_animation(
                animation=ref, caption=item.caption, reply_parameters=reply, **common
            )
        if item.kind == "video_note":
            return lambda: bot.send_video_note(video_note=ref, reply_parameters=reply, **common)
        return lambda: bot.send_document(
            document=ref, caption=item.caption, reply_parameters=reply, **common
        )

    async def _send_digest(self, job: _Job) -> None:
        ids = [i for i in job.payload.get("report_ids", []) if isinstance(i, int)]
        card = await self._render(lambda s: digest_card(s, ids, locale=self.locale))
        common = self._common(job)
        await self._part(
            job,
            "digest",
            1,
            lambda: self.bot.send_message(
                text=card.text,
                parse_mode=ParseMode.HTML,
                reply_markup=_markup(card.buttons),
                link_preview_options=_NO_PREVIEW,
                **common,
            ),
            finish=True,
        )

    async def _send_notice(self, job: _Job) -> None:
        payload = job.payload
        if job.row.kind == KIND_REMINDER:
            report_id = payload.get("report_id") or job.row.report_id
            if not isinstance(report_id, int):
                raise LookupError("reminder row without a report id")
            reason = str(payload.get("reason", "pending"))
            card = await self._render(
                lambda s: reminder_card(s, report_id, locale=self.locale, reason=reason)
            )
        else:
            values = {k: payload[k] for k in ("queue", "chat", "error") if k in payload}
            card = alert_card(
                locale=self.locale, reason=str(payload.get("reason", "generic")), **values
            )
        common = self._common(job)
        await self._part(
            job,
            "text",
            1,
            lambda: self.bot.send_message(
                text=card.text,
                parse_mode=ParseMode.HTML,
                reply_markup=_markup(card.buttons),
                link_preview_options=_NO_PREVIEW,
                **common,
            ),
            finish=True,
        )

    async def _part(
        self,
        job: _Job,
        name: str,
        weight: int,
        call: Callable[[], Awaitable[Any]],
        *,
        optional: bool = False,
        finish: bool = False,
    ) -> None:
        """Send one message (or album) of a row unless already sent, then record it.

        The call and the record run shielded, so a stop or cancellation never loses track of
        a message that went out. ``optional`` parts (evidence) are skipped on a request error
        that is not about the chat.
        """
        if name in job.done:
            return
        admitted = await self._admit(job, weight)

        async def send_and_record() -> None:
            try:
                result = await call()
            except BadRequest as exc:
                self._landed(job, weight, admitted)
                if not optional or is_chat_gone(exc):
                    raise
                log.warning(
                    "outbox row %d: part %s refused (%s); skipped",
                    job.row.id,
                    name,
                    exc.message[:200],
                )
                job.payload.setdefault("skipped", []).append(name)
                result = None
            except BaseException:
                self._landed(job, weight, admitted)
                raise
            else:
                self._landed(job, weight, admitted)
                job.payload["sent"] = int(job.payload.get("sent", 0)) + weight
                job.sent_now += weight
                self.stats.messages += weight
                if "msg" not in job.payload:
                    first = result[0] if isinstance(result, tuple | list) else result
                    if isinstance(first, Message):
                        job.payload["msg"] = first.message_id
            job.done.append(name)
            if finish:
                await self._finish(job)
            else:
                await self._save(job)

        await self._shielded(send_and_record())

    async def _admit(self, job: _Job, weight: int) -> float:
        """Wait for the chat's and the bot's pacing; raise ``_Blocked`` when the row must go
        back to the queue (stop, pause, the group's budget)."""
        chat_id = job.target.chat_id
        urgent = job.row.urgent
        while True:
            if self._stopping:
                raise _Blocked(0.0, "stopping")
            mono = self._mono()
            pause = self._pause_left(chat_id, mono)
            if pause > 0:
                raise _Blocked(pause, "paused")
            if job.target.is_group:
                used = await self._group_used(
                    chat_id, exclude=job.row.id, extra=job.sent_now, urgent=urgent
                )
                mono = self._mono()
                limit = self.limits.group_per_minute
                if used.total + min(weight, limit) > limit:
                    raise _Blocked(1.0, "group budget")
                if not urgent:
                    allowance = self.limits.allowance
                    if used.tips + min(weight, allowance) > allowance:
                        raise _Blocked(1.0, "group budget")
                    refill = self._tip_bucket(chat_id).wait_time(mono)
                    if refill > 0:
                        raise _Blocked(refill, "group pacing")
            wait = max(
                self._chat_bucket(chat_id).wait_time(mono),
                self._global.wait_time(mono, weight),
            )
            if wait <= 0:
                break
            await self._nap(wait)
        self._chat_bucket(chat_id).take(mono, weight)
        self._global.add(mono, weight)
        if job.target.is_group:
            self._group_window(chat_id, urgent=True).add(mono, weight)
            if not urgent:
                self._group_window(chat_id, urgent=False).add(mono, weight)
                self._tip_bucket(chat_id).take(mono, weight)
        return mono

    def _landed(self, job: _Job, weight: int, admitted: float) -> None:
        """Count a message from when its answer came back, not from when it left: the server
        counted it somewhere in between, and a slow first request (connection set-up) would
        otherwise make a well-paced next one look early to it."""
        now = self._mono()
        flight = now - admitted
        if flight <= 0:
            return
        chat_id = job.target.chat_id
        self._chat_bucket(chat_id).defer(now, flight)
        self._global.move(admitted, now, weight)
        if job.target.is_group:
            self._group_window(chat_id, urgent=True).move(admitted, now, weight)
            if not job.row.urgent:
                self._group_window(chat_id, urgent=False).move(admitted, now, weight)

    async def _nap(self, seconds: float) -> None:
        """Sleep, but wake up at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    async def _shielded(self, coroutine: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coroutine)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    # -------------------------------------------------------------------------- row writes

    async def _write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction, again if the database was busy."""
        for attempt in range(1, 5):
            try:
                async with self.session_factory() as session, session.begin():
                    return await work(session)
            except OperationalError:
                if attempt == 4:
                    raise
                log.info("database busy; retrying a delivery write")
                await asyncio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    async def _claim(self, row: _Row) -> _Job | None:
        assert row.target is not None
        target = row.target
        now = self.clock()
        lease = now + timedelta(seconds=self.lease_seconds)

        async def claim(session: AsyncSession) -> tuple[dict[str, Any], int] | None:
            result = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, self._claimable(now))
                .values(
                    status=SENDING,
                    claimed_until=lease,
                    chat_key=target.chat_key,
                    message_count=row.cost,
                    priority=row.priority,
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                return None
            found = (
                await session.execute(
                    select(OutboxMessage.payload, OutboxMessage.attempts).where(
                        OutboxMessage.id == row.id
                    )
                )
            ).one()
            return dict(found.payload or {}), int(found.attempts)

        claimed = await self._write(claim)
        if claimed is None:
            return None
        payload, attempts = claimed
        return _Job(row=row, target=target, lease=lease, payload=payload, attempts=attempts)

    def _mine(self, job: _Job) -> ColumnElement[bool]:
        return and_(
            OutboxMessage.id == job.row.id,
            OutboxMessage.status == SENDING,
            OutboxMessage.claimed_until == job.lease,
        )

    async def _save(self, job: _Job) -> None:
        """Record progress and renew the lease."""
        lease = self.clock() + timedelta(seconds=self.lease_seconds)

        async def save(session: AsyncSession) -> int:
            result = await session.execute(
                update(OutboxMessage)
                .where(self._mine(job))
                .values(
                    payload=job.payload,
                    claimed_until=lease,
                    message_count=max(job.row.cost, job.sent_now),
                )
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result)

        if await self._write(save) != 1:
            raise _LeaseLost()
        job.lease = lease

    async def _finish(self, job: _Job) -> None:
        """Mark the row sent and record where its card or digest was posted."""
        now = self.clock()
        message_id = job.payload.get("msg")
        reports: list[int] = []
        kind = "card"
        if job.row.kind == KIND_CARD:
            report_id = job.payload.get("report_id") or job.row.report_id
            reports = [report_id] if isinstance(report_id, int) else []
        elif job.row.kind == KIND_DIGEST:
            reports = [i for i in job.payload.get("report_ids", []) if isinstance(i, int)]
            kind = "digest"
        elif job.row.kind == KIND_CHAT_TEXT and job.payload.get("buttons") and job.row.report_id:
            # Presses on its buttons (a yes/no, a reward decision) are checked against it.
            reports = [job.row.report_id]
            kind = "note"

        async def finish(session: AsyncSession) -> int:
            result = await session.execute(
                update(OutboxMessage)
                .where(self._mine(job))
                .values(
                    status=SENT,
                    sent_at=now,
                    claimed_until=None,
                    last_error=None,
                    payload=job.payload,
                    message_count=int(job.payload.get("sent", 0)),
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                return 0
            if isinstance(message_id, int):
                for report_id in reports:
                    await session.execute(
                        _insert(session, CardPost)
                        .values(
                            report_id=report_id,
                            channel="telegram",
                            chat_id=job.target.chat_id,
                            thread_id=job.target.thread_id,
                            message_id=message_id,
                            kind=kind,
                            active=True,
                            created_at=now,
                        )
                        .on_conflict_do_nothing()
                    )
            return 1

        if await self._write(finish) != 1:
            raise _LeaseLost()
        self.stats.rows_sent += 1
        if job.row.kind == KIND_DIGEST:
            self.stats.digests += 1

    async def _release(self, job: _Job, delay: float, *, error: str | None, failed: bool) -> None:
        """Back to the queue, progress kept; due again after ``delay`` seconds."""
        due = self.clock() + timedelta(seconds=delay)
        values: dict[str, Any] = {
            "status": PENDING,
            "claimed_until": None,
            "next_attempt_at": due,
            "payload": job.payload,
            "message_count": int(job.payload.get("sent", 0)),
        }
        if failed:
            values["attempts"] = OutboxMessage.attempts + 1
        if error is not None:
            values["last_error"] = error

        async def release(session: AsyncSession) -> None:
            await session.execute(
                update(OutboxMessage)
                .where(self._mine(job))
                .values(**values)
                .execution_options(synchronize_session=False)
            )

        await self._shielded(self._write(release))

    async def _fail(self, job: _Job, exc: BaseException, *, chat_gone: bool) -> None:
        """A permanent error: the row fails; a gone chat alerts the duty queue (once an hour
        per chat) and its reports are re-routed there."""
        now = self.clock()
        target = job.target
        error = _error_text(exc)
        reroute: list[int] = []
        if chat_gone and not target.is_duty:
            if job.row.kind == KIND_CARD:
                report_id = job.payload.get("report_id") or job.row.report_id
                reroute = [report_id] if isinstance(report_id, int) else []
            elif job.row.kind == KIND_DIGEST:
                reroute = [i for i in job.payload.get("report_ids", []) if isinstance(i, int)]

        async def fail(session: AsyncSession) -> int:
            result = await session.execute(
                update(OutboxMessage)
                .where(self._mine(job))
                .values(
                    status=FAILED,
                    claimed_until=None,
                    last_error=error,
                    attempts=OutboxMessage.attempts + 1,
                    payload=job.payload,
                    message_count=int(job.payload.get("sent", 0)),
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                return 0
            if chat_gone and not target.is_duty:
                hour = int(now.timestamp() // 3600)
                await _enqueue(
                    session,
                    now,
                    kind=KIND_ALERT,
                    destination="duty",
                    payload={
                        "reason": "chat_unreachable",
                        "queue": target.name,
                        "chat": target.chat_key,
                        "error": str(exc)[:300],
                    },
                    dedupe_key=f"alert:chat:{target.chat_key}:{hour}",
                )
                for report_id in reroute:
                    await _enqueue(
                        session,
                        now,
                        kind=KIND_CARD,
                        destination="duty",
                        payload={"report_id": report_id, "header": "rerouted"},
                        report_id=report_id,
                        dedupe_key=f"card:{report_id}:duty",
                        priority=job.row.priority if job.row.kind == KIND_CARD else 0,
                    )
            return 1

        if await self._shielded(self._write(fail)) != 1:
            raise _LeaseLost()
        self.stats.rows_failed += 1
        if chat_gone and target.is_duty:
            log.error(
                "the duty chat %s cannot be reached (%s): outbox row %d (%s) failed; "
                "check TINBAO_DUTY_CHAT_ID and that the bot is in that group",
                target.chat_key,
                type(exc).__name__,
                job.row.id,
                job.row.kind,
            )
        elif chat_gone:
            log.error(
                "chat %s (%s) cannot be reached (%s): outbox row %d failed, %d report(s) "
                "re-routed to the duty queue",
                target.chat_key,
                target.name,
                type(exc).__name__,
                job.row.id,
                len(reroute),
            )
        else:
            log.error(
                "outbox row %d (%s) failed permanently: %s",
                job.row.id,
                job.row.kind,
                type(exc).__name__,
            )
        self._wake.set()

    async def _settle_unsendable(self, row: _Row, error: str) -> None:
        now = self.clock()

        async def fail(session: AsyncSession) -> None:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, self._claimable(now))
                .values(status=FAILED, claimed_until=None, last_error=error)
                .execution_options(synchronize_session=False)
            )

        await self._write(fail)
        log.error("outbox row %d failed: %s", row.id, error)

    async def _park(self, row: _Row, error: str) -> None:
        """Nowhere to send it yet: keep it pending and look again later."""
        now = self.clock()
        due = now + timedelta(seconds=self.park_seconds)

        async def park(session: AsyncSession) -> None:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, self._claimable(now))
                .values(status=PENDING, claimed_until=None, next_attempt_at=due, last_error=error)
                .execution_options(synchronize_session=False)
            )

        await self._write(park)
        mono = self._mono()
        if self._warned.get(row.destination, -math.inf) < mono - 300:
            self._warned[row.destination] = mono
            log.warning("outbox rows for %s are waiting: %s", row.destination, error)

    async def _fire_timer(self, row: _Row) -> int:
        timers = self.timers
        if timers is None:
            await self._park(row, "no timer handler is configured in this process")
            return 0
        now = self.clock()

        async def fire(session: AsyncSession) -> int:
            result = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, self._claimable(now))
                .values(status=DONE, sent_at=now, claimed_until=None, last_error=None)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                return 0
            message = await session.get(OutboxMessage, row.id)
            assert message is not None
            await timers.fire(session, message)
            return 1

        try:
            fired = await self._write(fire)
        except Exception as exc:
            log.exception("timer row %d (%s) failed; trying again later", row.id, row.kind)
            error = _error_text(exc)
            due = now + timedelta(seconds=self._backoff(row.attempts + 1))

            async def bump(session: AsyncSession) -> None:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == row.id, self._claimable(now))
                    .values(
                        status=PENDING,
                        claimed_until=None,
                        next_attempt_at=due,
                        attempts=OutboxMessage.attempts + 1,
                        last_error=error,
                    )
                    .execution_options(synchronize_session=False)
                )

            await self._write(bump)
            return 0
        if fired:
            self.stats.timers_fired += 1
            self._wake.set()
        return fired


# ------------------------------------------------------------------------------ helpers


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _insert(session: AsyncSession, model: type[Any]) -> Any:
    """``INSERT`` that can say ``ON CONFLICT DO NOTHING`` on either backend."""
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(model)
    return sqlite_insert(model)


async def _enqueue(
    session: AsyncSession,
    now: datetime,
    *,
    kind: str,
    destination: str,
    payload: dict[str, Any],
    dedupe_key: str,
    report_id: int | None = None,
    priority: int = 0,
) -> None:
    """Add an outbox row unless one with the same ``dedupe_key`` exists."""
    await session.execute(
        _insert(session, OutboxMessage)
        .values(
            kind=kind,
            destination=destination,
            payload=payload,
            report_id=report_id,
            dedupe_key=dedupe_key,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            priority=priority,
            message_count=0,
        )
        .on_conflict_do_nothing()
    )


__all__ = [
    "DIGEST_PRIORITY",
    "EMERGENCY_PRIORITY",
    "KIND_ALERT",
    "KIND_CARD",
    "KIND_DIGEST",
    "KIND_REMINDER",
    "NO_DUTY_ERROR",
    "TIMER_PREFIX",
    "DeliveryStats",
    "DeliveryWorker",
    "FloodLimits",
    "TimerHandler",
    "is_chat_gone",
]
