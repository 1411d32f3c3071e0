"""The delivery worker: sends the officers' outbox to their Telegram chats, within the flood
limits (``docs/delivery.md``).

One pass reads the due rows, resolves each destination to a chat (:class:`~bot.delivery.rows.
Target`), plans each chat's next sends (:mod:`bot.delivery.folding`) and starts one *lane* per
chat. A lane claims a row (:mod:`bot.delivery.leases`), sends its parts through the
:class:`~bot.delivery.officers.OfficerSender`, each part paced by the
:class:`~bot.delivery.pacing.Pacer` and recorded in its own commit. Each call and its record run
shielded from cancellation: :meth:`DeliveryWorker.stop` mid-burst finishes the call in flight
and never duplicates a message.

Errors: 5xx, timeouts and network errors are retried with exponential backoff (1 s, 2 s, 4 s …
5 min) and never give up. A send that timed out may have landed: before it is sent again, the
chat is probed for it and the message that landed is adopted (:mod:`bot.delivery.landing`); so
is a row taken over from a worker that died mid-send. One worker sends to a chat at a time. A
429 pauses the chat for ``retry_after``. A chat that is gone (bot removed, chat not found, no
right to post) fails the row, alerts the duty queue once an hour per chat, and re-routes the
report there. A destination with no queue and no duty queue stays
pending. Timers are fired by their own :class:`~bot.delivery.timers.TimerWorker`.

Anonymity: log lines carry outbox and report ids, chat ids of officers' groups and error
types, never anything about a tipster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.selectable import FromClause
from telegram import Bot, InlineKeyboardMarkup, Message
from telegram.error import BadRequest, InvalidToken, RetryAfter, TelegramError

from bot.answers import maybe_delivered, retry_after_seconds
from bot.delivery.folding import Planner
from bot.delivery.landing import (
    UNSURE,
    claim_lock_key,
    claim_terms,
    landed,
    last_known,
    marking,
    message_ids,
)
from bot.delivery.leases import After, Claim, Leases, enqueue_once
from bot.delivery.officers import Call, OfficerSender, is_chat_gone
from bot.delivery.pacing import FloodLimits, Pacer
from bot.delivery.rows import (
    EMERGENCY_PRIORITY,
    Blocked,
    Job,
    LeaseLost,
    RenderFailed,
    Row,
    Scan,
    Target,
    due_rows,
    error_text,
    posting,
    resolve,
)
from bot.delivery.timers import TimerHandler, TimerWorker
from bot.outage import DatabaseWatch, paused
from config.queues import QueueMap
from handlers.outbox import (
    AlertPayload,
    CardPayload,
    Destination,
    DocumentRenderer,
    Kind,
    Priority,
    Status,
)
from storage.db import reading
from storage.models import CardPost
from storage.types import utcnow

if TYPE_CHECKING:
    from handlers.security import Keyring

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A digest goes before the tips still waiting, after emergencies.
DIGEST_PRIORITY: Final = int(Priority.DIGEST)
NO_DUTY_ERROR: Final = (
    "no queue serves this destination and there is no duty queue: set TINBAO_DUTY_CHAT_ID"
)
#: Seconds a chat is left alone when its next row cannot be claimed (another worker sends to
#: it, or a row of it is in doubt and not due yet).
BUSY_PAUSE: Final = 1.0


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
    #: Parts whose send timed out (or whose worker died) and that were found to have landed.
    adopted: int = 0
    #: Parts in doubt found not to have landed, sent again.
    resent: int = 0


class DeliveryWorker:
    """Sends the officers' outbox. ``start()``/``stop()`` run it in the background; ``kick()``
    wakes it (call it after a transaction that enqueued rows commits); ``run_once()`` fires the
    due timers, runs one pass and waits for its sends (tests)."""

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
        documents: DocumentRenderer | None = None,
        clock: Callable[[], datetime] = utcnow,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        settle_seconds: float = 3.0,
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
        self.clock = clock
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        #: The least wait before a part in doubt is probed for (its send may still be on its
        #: way through Telegram).
        self.settle_seconds = settle_seconds
        self.poll_interval = poll_interval
        #: The process's database watch: a pass that fails during an outage is only paused.
        self.watch: DatabaseWatch | None = None
        self.park_seconds = park_seconds
        self.max_lanes = max_lanes
        self.scan_limit = scan_limit
        self.stats = DeliveryStats()
        self.sender = OfficerSender(
            bot, session_factory, locale=locale, keyring=keyring, documents=documents
        )
        self.leases = Leases(session_factory, clock, lease_seconds)
        self.pacer = Pacer(self.limits, session_factory, clock)
        self.planner = Planner(self.pacer, self.leases, plan_size=plan_size)
        self.timers = TimerWorker(
            session_factory,
            timers,
            clock=clock,
            poll_interval=poll_interval,
            park_seconds=park_seconds,
            retry_base=retry_base,
            retry_cap=retry_cap,
            on_fired=self._timers_fired,
        )
        self._mono = time.monotonic
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lanes: dict[int, asyncio.Task[int]] = {}
        self._inflight: set[asyncio.Future[Any]] = set()
        self._warned: dict[str, float] = {}
        #: Moments the last round found to look again at (see :meth:`_round`).
        self._look_again: list[datetime] = []

    # -------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._stop_event.clear()
        await self.timers.start()
        self._task = asyncio.create_task(self._run(), name="delivery-worker")

    def kick(self) -> None:
        """Look at the outbox now, and the timers (new rows were committed)."""
        self._wake.set()
        self.timers.kick()

    def wake(self) -> None:
        """Look at the officers' outbox now (new officers' rows were committed)."""
        self._wake.set()

    def _timers_fired(self, count: int) -> None:
        self.stats.timers_fired += count
        self._wake.set()

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Stop after the sends in flight; rows not started stay in the queue."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        await self.timers.stop()
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
        """One pass: fire due timers, fold backlogs, start every chat's sends and wait for
        them. Returns the rows settled (sent, failed, folded or fired)."""
        fired = await self.timers.run_once()
        return fired + await self._round(wait=True)

    async def _run(self) -> None:
        log.info("delivery worker started")
        while not self._stopping:
            self._wake.clear()
            try:
                await self._round(wait=False)
                delay = await self._next_wake()
            except Exception as exc:
                if not await paused(self.watch, exc, "delivery"):
                    log.exception("delivery pass failed; trying again shortly")
                delay = min(self.poll_interval, 2.0)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        log.info("delivery worker stopped")

    # -------------------------------------------------------------------------- scheduling

    async def _due_rows(self, now: datetime) -> Scan:
        async with reading(self.session_factory) as session:
            return await due_rows(session, now, self.scan_limit)

    async def _round(self, *, wait: bool) -> int:
        now = self.clock()
        self._lanes = {c: task for c, task in self._lanes.items() if not task.done()}
        scan = await self._due_rows(now)
        rows = scan.rows
        # When to look again, as the same statement saw it: the next row due, the first lease
        # to lapse. What the round itself changes wakes the loop (a lane's end) or is added
        # (a parked row, a paused or blocked chat).
        self._look_again = [m for m in (scan.next_due, scan.next_lapse) if m is not None]
        settled = 0
        by_chat: dict[int, list[Row]] = {}
        for row in rows:
            if self._stopping:
                break
            try:
                target = resolve(self.queue_map, row.destination)
            except ValueError:
                error = f"unknown destination {row.destination!r}"
                await self.leases.settle(row.id, Status.FAILED, error)
                log.error("outbox row %d failed: %s", row.id, error)
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
            if self.pacer.pause_left(chat_id, self._mono()) > 0:
                continue
            plan = await self.planner.plan(chat_id, chat_rows, now)
            settled += plan.folded
            self.stats.rows_folded += plan.folded
            if not plan.rows:
                continue
            task = asyncio.create_task(self._lane(chat_id, plan.rows), name=f"delivery-{chat_id}")
            self._lanes[chat_id] = task
            started.append(task)
        if wait and started:
            settled += sum(await asyncio.gather(*started))
        return settled

    async def _next_wake(self) -> float:
        """Seconds until the loop looks again (nothing read: :meth:`_round` noted when)."""
        now = self.clock()
        delays = [self.poll_interval]
        delays += [(moment - now).total_seconds() + 0.01 for moment in self._look_again]
        delays += self.pacer.wake_delays()
        return max(0.02, min(delays))

    async def _park(self, row: Row, error: str) -> None:
        """Nowhere to send it yet: keep it pending and look again later."""
        await self.leases.park(row.id, self.park_seconds, error)
        self._look_again.append(self.clock() + timedelta(seconds=self.park_seconds))
        mono = self._mono()
        if self._warned.get(row.destination, -math.inf) < mono - 300:
            self._warned[row.destination] = mono
            log.warning("outbox rows for %s are waiting: %s", row.destination, error)

    def _backoff(self, failures: int) -> float:
        return float(min(self.retry_cap, self.retry_base * 2 ** max(0, failures - 1)))

    # -------------------------------------------------------------------------- lanes

    async def _lane(self, chat_id: int, plan: list[Row]) -> int:
        settled = 0
        try:
            for row in plan:
                if self._stopping or self.pacer.pause_left(chat_id, self._mono()) > 0:
                    break
                outcome = await self._deliver(row)
                if outcome == "settled":
                    settled += 1
                elif outcome == "stop":
                    break
                elif outcome == "skipped":
                    # Another worker sends to this chat, or a row of it is in doubt: one
                    # sender at a time per chat (bot.delivery.landing).
                    self.pacer.pause(chat_id, BUSY_PAUSE)
                    break
        except Exception:
            log.exception("delivery to chat %s failed unexpectedly", chat_id)
        finally:
            self._wake.set()
        return settled

    async def _deliver(self, row: Row) -> str:
        """Claim and send one row: ``settled``, ``skipped`` (not ours) or ``stop`` (the chat
        cannot take more now)."""
        assert row.target is not None
        target = row.target
        usage = self.pacer.usage_columns(target.chat_id, exclude=row.id) if target.is_group else {}
        claim = await self.leases.claim(
            row.id,
            where=claim_terms(target.chat_id, row.id),
            lock=claim_lock_key(target.chat_id),
            then=lambda session, claim: self._taken_over(session, claim, target.chat_id),
            returning=usage,
            chat_key=target.chat_key,
            message_count=row.cost,
            priority=row.priority,
        )
        if claim is None:
            return "skipped"
        job = Job(row=row, target=target, claim=claim)
        if usage:  # the group's budget as the claim saw it: the first part's admission
            job.usage = (int(claim.extra["total"] or 0), int(claim.extra["tips"] or 0))
        try:
            await self.sender.send(job, self)
        except Blocked as blocked:
            await self._release(job, blocked.delay, error=None, failed=False)
            return "stop"
        except LeaseLost:
            log.warning("outbox row %d was taken over by another worker", row.id)
            return "stop"
        except RetryAfter as exc:
            seconds = retry_after_seconds(exc)
            self.stats.rate_limited += 1
            self.pacer.on_flood(target.chat_id, seconds)
            await self._release(job, seconds, error=error_text(exc), failed=True)
            return "stop"
        except InvalidToken as exc:
            delay = self._backoff(job.attempts + 1)
            self.pacer.pause_all(delay)
            log.error("Telegram refused the bot token; all delivery paused for %.0fs", delay)
            await self._release(job, delay, error=error_text(exc), failed=True)
            return "stop"
        except TelegramError as exc:
            if is_chat_gone(exc):
                await self._fail(job, exc, chat_gone=True)
                return "settled"
            if isinstance(exc, BadRequest):
                await self._fail(job, exc, chat_gone=False)
                return "settled"
            return await self._transient(job, exc)
        except RenderFailed as exc:
            delay = self._backoff(job.attempts + 1)
            log.error(
                "outbox row %d: rendering %s failed; retrying in %.0fs",
                row.id,
                exc,
                delay,
                exc_info=exc.__cause__,
            )
            await self._release(job, delay, error=error_text(exc.__cause__ or exc), failed=True)
            return "skipped"
        except LookupError as exc:  # the report was deleted meanwhile
            await self._fail(job, exc, chat_gone=False)
            return "settled"
        except Exception as exc:
            log.exception("sending outbox row %d failed", row.id)
            return await self._transient(job, exc)
        return "settled"

    @staticmethod
    async def _taken_over(session: AsyncSession, claim: Claim, chat_id: int) -> None:
        """A row taken over from a worker that died while sending it: its next part may have
        landed, above what the chat's mark says now."""
        if claim.taken_over and UNSURE not in claim.payload:
            after = await last_known(session, chat_id)
            claim.payload[UNSURE] = {"part": None, "after": after}

    async def _transient(self, job: Job, exc: BaseException) -> str:
        delay = self._backoff(job.attempts + 1)
        if UNSURE in job.payload:  # give a send that may have landed time to show
            delay = max(delay, self.settle_seconds)
        self.stats.transient_errors += 1
        log.warning(
            "outbox row %d to chat %s: %s; retrying in %.1fs",
            job.row.id,
            job.target.chat_key,
            type(exc).__name__,
            delay,
        )
        self.pacer.pause(job.target.chat_id, delay)
        await self._release(job, delay, error=error_text(exc), failed=True)
        return "stop"

    # -------------------------------------------------------------------------- parts

    async def part(
        self,
        job: Job,
        name: str,
        weight: int,
        call: Call,
        *,
        optional: bool = False,
        finish: bool = False,
        markup: InlineKeyboardMarkup | None = None,
        probeable: bool = True,
    ) -> None:
        """Send one message (or album) of a row unless already sent, then record it.

        The call and the record run shielded, so a stop or cancellation never loses track of
        a message that went out. ``optional`` parts (evidence) are skipped on a request error
        that is not about the chat. ``markup`` is the inline keyboard the call sends (the
        probe for a part in doubt edits it to itself); a part Telegram never lets the bot edit
        (``force_reply``) is not ``probeable`` and is sent again when in doubt.
        """
        if name in job.done:
            return
        if await self._resolve(job, name, weight, markup if probeable else False, finish):
            return
        target, urgent = job.target, job.row.urgent
        usage, job.usage = job.usage, None
        admitted = await self.pacer.admit(
            target,
            row_id=job.row.id,
            urgent=urgent,
            sent_now=job.sent_now,
            weight=weight,
            stopping=lambda: self._stopping,
            nap=self._nap,
            usage=usage,
        )

        async def send_and_record() -> None:
            try:
                result = await call()
            except BadRequest as exc:
                self.pacer.landed(target, urgent=urgent, weight=weight, admitted=admitted)
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
            except BaseException as exc:
                self.pacer.landed(target, urgent=urgent, weight=weight, admitted=admitted)
                if maybe_delivered(exc):  # it may have landed: probed for before a retry
                    job.payload[UNSURE] = {"part": name, "after": await self._mark(target)}
                raise
            else:
                self.pacer.landed(target, urgent=urgent, weight=weight, admitted=admitted)
                job.payload["sent"] = job.sent + weight
                job.sent_now += weight
                self.stats.messages += weight
                job.fresh_ids += message_ids(result)
                if "msg" not in job.payload:
                    first = result[0] if isinstance(result, tuple | list) else result
                    if isinstance(first, Message):
                        job.payload["msg"] = first.message_id
            job.done.append(name)
            if finish:
                await self.finish(job)
            else:
                await self._save(job)

        await self._shielded(send_and_record())

    async def _resolve(
        self,
        job: Job,
        name: str,
        weight: int,
        markup: InlineKeyboardMarkup | bool | None,
        finish: bool,
    ) -> bool:
        """A part in doubt: probe the chat for it (:mod:`bot.delivery.landing`). ``True`` when
        it had landed and is now recorded as sent; ``False`` when it is to be sent (again). A
        failing probe raises, and the part stays in doubt."""
        unsure = job.payload.get(UNSURE)
        if not isinstance(unsure, dict) or unsure.get("part") not in (None, name):
            return False
        after = unsure.get("after")
        found: list[int] = []
        if markup is not False and isinstance(after, int):
            keyboard = markup if isinstance(markup, InlineKeyboardMarkup) else None
            found = await self._shielded(
                landed(self.bot, job.target.chat_id, after, markup=keyboard, expect=weight)
            )
        del job.payload[UNSURE]
        if not found:
            self.stats.resent += 1
            log.info("outbox row %d: part %s had not landed; sending it", job.row.id, name)
            return False
        self.stats.adopted += 1
        log.info(
            "outbox row %d: part %s had landed (message %d in chat %s); not sent again",
            job.row.id,
            name,
            found[0],
            job.target.chat_key,
        )
        job.fresh_ids += found
        job.payload["sent"] = job.sent + weight
        job.payload.setdefault("msg", found[0])
        job.done.append(name)
        await self._shielded(self.finish(job) if finish else self._save(job))
        return True

    async def _mark(self, target: Target) -> int | None:
        async with reading(self.session_factory) as session:
            return await last_known(session, target.chat_id)

    def _noting(self, job: Job, *, settled: bool = False) -> After:
        """Raise the chat's mark to the ids just sent, and hold the chat while the row is in
        doubt (free it otherwise, and always once the row is ``settled``); with the record of
        the row, and only if it took effect (:func:`~bot.delivery.landing.marking`). Once it
        did, :meth:`_noted` forgets those ids."""
        ids = list(job.fresh_ids)
        unsure = None if settled else job.payload.get(UNSURE)
        job.noting = len(ids)

        def build(settled_row: FromClause, postgres: bool) -> Insert:
            return marking(
                settled_row,
                postgres,
                chat_id=job.target.chat_id,
                row_id=job.row.id,
                ids=ids,
                unsure=unsure,
            )

        return build

    @staticmethod
    def _noted(job: Job) -> None:
        del job.fresh_ids[: job.noting]
        job.noting = 0

    async def _save(self, job: Job) -> None:
        saved = await self.leases.save(
            job.claim,
            after=[self._noting(job)],
            payload=job.payload,
            message_count=max(job.row.cost, job.sent_now),
        )
        if not saved:
            raise LeaseLost()
        self._noted(job)

    async def finish(self, job: Job) -> None:
        """Mark the row sent and record where its card or digest was posted."""
        if not job.finished:
            await self._shielded(self._finish(job))

    async def _finish(self, job: Job) -> None:
        now = self.clock()
        message_id = job.payload.get("msg")
        reports: list[int] = []
        kind = "card"
        if job.row.kind == Kind.REPORT_CARD:
            report_id = job.payload.get("report_id") or job.row.report_id
            reports = [report_id] if isinstance(report_id, int) else []
        elif job.row.kind == Kind.DIGEST:
            reports = [i for i in job.payload.get("report_ids", []) if isinstance(i, int)]
            kind = "digest"
        elif job.row.kind == Kind.CHAT_TEXT and job.payload.get("buttons") and job.row.report_id:
            # Presses on its buttons (a yes/no, a reward decision) are checked against it.
            reports = [job.row.report_id]
            kind = "note"
        after = [self._noting(job, settled=True)]
        if isinstance(message_id, int) and reports:
            post = CardPost(
                channel="telegram",
                chat_id=job.target.chat_id,
                thread_id=job.target.thread_id,
                message_id=message_id,
                kind=kind,
                created_at=now,
            )
            after.append(lambda settled, postgres: posting(settled, postgres, post, reports))
        finished = await self.leases.finish(
            job.claim, after=after, payload=job.payload, message_count=job.sent
        )
        if not finished:
            raise LeaseLost()
        self._noted(job)
        job.finished = True
        self.stats.rows_sent += 1
        if job.row.kind == Kind.DIGEST:
            self.stats.digests += 1

    async def _release(self, job: Job, delay: float, *, error: str | None, failed: bool) -> None:
        """Back to the queue, progress kept; due again after ``delay`` seconds."""
        if await self._shielded(
            self.leases.release(
                job.claim,
                delay,
                error=error,
                failed=failed,
                after=[self._noting(job)],
                payload=job.payload,
                message_count=job.sent,
            )
        ):
            self._noted(job)

    async def _fail(self, job: Job, exc: BaseException, *, chat_gone: bool) -> None:
        """A permanent error: the row fails; a gone chat alerts the duty queue (once an hour
        per chat) and its reports are re-routed there."""
        now = self.clock()
        target = job.target
        reroute: list[int] = []
        if chat_gone and not target.is_duty:
            if job.row.kind == Kind.REPORT_CARD:
                report_id = job.payload.get("report_id") or job.row.report_id
                reroute = [report_id] if isinstance(report_id, int) else []
            elif job.row.kind == Kind.DIGEST:
                reroute = [i for i in job.payload.get("report_ids", []) if isinstance(i, int)]

        async def alert_and_reroute(session: AsyncSession) -> None:
            duty = str(Destination.duty())
            hour = int(now.timestamp() // 3600)
            alert = AlertPayload(
                reason="chat_unreachable",
                queue=target.name,
                chat=target.chat_key,
                error=str(exc)[:300],
            )
            await enqueue_once(
                session,
                now,
                kind=Kind.ALERT.value,
                destination=duty,
                payload=alert.to_json(),
                dedupe_key=f"alert:chat:{target.chat_key}:{hour}",
            )
            for report_id in reroute:
                await enqueue_once(
                    session,
                    now,
                    kind=Kind.REPORT_CARD.value,
                    destination=duty,
                    payload=CardPayload(report_id=report_id, header="rerouted").to_json(),
                    report_id=report_id,
                    dedupe_key=f"card:{report_id}:duty",
                    priority=job.row.priority if job.row.kind == Kind.REPORT_CARD else 0,
                )

        failed = await self._shielded(
            self.leases.fail(
                job.claim,
                error_text(exc),
                after=[self._noting(job, settled=True)],
                then=alert_and_reroute if chat_gone and not target.is_duty else None,
                payload=job.payload,
                message_count=job.sent,
            )
        )
        if not failed:
            raise LeaseLost()
        self._noted(job)
        self.stats.rows_failed += 1
        self._log_failure(job, exc, chat_gone=chat_gone, rerouted=len(reroute))
        self._wake.set()

    @staticmethod
    def _log_failure(job: Job, exc: BaseException, *, chat_gone: bool, rerouted: int) -> None:
        target = job.target
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
                rerouted,
            )
        else:
            log.error(
                "outbox row %d (%s) failed permanently: %s",
                job.row.id,
                job.row.kind,
                type(exc).__name__,
            )

    # -------------------------------------------------------------------------- plumbing

    async def _nap(self, seconds: float) -> None:
        """Sleep, but wake up at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    async def _shielded(self, coroutine: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coroutine)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)


__all__ = [
    "DIGEST_PRIORITY",
    "EMERGENCY_PRIORITY",
    "NO_DUTY_ERROR",
    "DeliveryStats",
    "DeliveryWorker",
    "resolve",
]
