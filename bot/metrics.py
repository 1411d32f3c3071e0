"""Prometheus metrics of one process, served at ``GET /metrics`` (prometheus-client).

Counted where they happen, per process:

- ``tinbao_updates_total{channel,kind}``: citizen and officer updates taken by the dispatcher;
- ``tinbao_answer_latency_seconds``: from an update reaching the dispatcher to its answer being
  ready (stored and committed; the send itself is in ``tinbao_sends_total``);
- ``tinbao_reports_total{kind}``, ``tinbao_escalations_total``: counted from committed
  transactions (a rolled-back one counts nothing);
- ``tinbao_sends_total{channel,result}``: every call that sends to a channel (Telegram's Bot
  API, the Zalo bot's ``sendMessage``/``sendPhoto``, the Zalo OA's messages and image uploads),
  ``result`` one of ``ok``, ``429`` (Zalo OA: ``-32``), ``5xx``, ``4xx`` (any other refusal),
  ``error`` (network or timeout);
- ``tinbao_token_refreshes_total{channel,result}``: each call that spends a refresh token (the
  Zalo OA's), ``result`` ``ok`` or ``failed``; ``tinbao_database_errors_total``,
  ``tinbao_malformed_updates_total{channel}``.

Read from the database at each scrape (the same figure from every process: take ``max``):
``tinbao_outbox_backlog{queue}``, ``tinbao_outbox_oldest_age_seconds{queue}`` (``queue`` is the
row's destination; every message to a citizen counts under ``citizens``),
``tinbao_timer_lag_seconds``; ``tinbao_database_up`` is 0 when that read fails or when the
process knows the database is down. ``tinbao_spool_size`` is the webhook spool's size.

The spool and the database's state belong to the outage handling: it registers them with
:func:`set_spool_size_source` and :func:`set_database_state_source`; until it does, the spool
reads 0 and the database's state is the scrape's own read.

No label ever carries a chat, a user or a report: only channel names, kinds and queue keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from config.settings import Settings
from handlers.outbox import TIMER_KINDS as OUTBOX_TIMER_KINDS
from handlers.outbox import Status
from storage.db import WRITTEN_UNFLUSHED
from storage.models import AuditEvent, OutboxMessage, Report, ReportEvent
from storage.types import utcnow


class Scraped(Protocol):
    """What a scrape reads of the running service (``bot.runtime.Service``)."""

    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    telegram: Any


log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

UPDATES = Counter(
    "tinbao_updates", "Updates taken by the dispatcher.", ["channel", "kind"], registry=REGISTRY
)
ANSWER_LATENCY = Histogram(
    "tinbao_answer_latency_seconds",
    "Seconds from an update reaching the dispatcher to its answer being ready.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
REPORTS = Counter("tinbao_reports", "Reports filed, by kind.", ["kind"], registry=REGISTRY)
SENDS = Counter(
    "tinbao_sends",
    "Calls that send to a channel, by result.",
    ["channel", "result"],
    registry=REGISTRY,
)
ESCALATIONS = Counter(
    "tinbao_escalations",
    "Emergencies escalated for want of an acknowledgement.",
    registry=REGISTRY,
)
TOKEN_REFRESHES = Counter(
    "tinbao_token_refreshes",
    "OAuth token refreshes, by result.",
    ["channel", "result"],
    registry=REGISTRY,
)
DATABASE_ERRORS = Counter(
    "tinbao_database_errors", "Database statements that failed.", registry=REGISTRY
)
MALFORMED = Counter(
    "tinbao_malformed_updates",
    "Updates that could not be parsed and were skipped.",
    ["channel"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "tinbao_outbox_backlog",
    "Outbox rows waiting to be sent, by queue.",
    ["queue"],
    registry=REGISTRY,
)
OUTBOX_OLDEST = Gauge(
    "tinbao_outbox_oldest_age_seconds",
    "Age of the oldest waiting outbox row, by queue.",
    ["queue"],
    registry=REGISTRY,
)
TIMER_LAG = Gauge(
    "tinbao_timer_lag_seconds",
    "How late the most overdue timer is (0: none overdue).",
    registry=REGISTRY,
)
SPOOL_SIZE = Gauge(
    "tinbao_spool_size", "Webhook updates in the local spool, not yet stored.", registry=REGISTRY
)
DATABASE_UP = Gauge(
    "tinbao_database_up", "1 when the database answers, 0 when it is down.", registry=REGISTRY
)

#: Outbox kinds that are timers rather than messages (read for the timer lag).
TIMER_KINDS = tuple(str(kind) for kind in OUTBOX_TIMER_KINDS)
#: Seconds a scrape waits for the database before calling it down.
SCRAPE_TIMEOUT = 3.0

_spool_size: Callable[[], int] = lambda: 0  # noqa: E731
_database_state: Callable[[], bool | None] = lambda: None  # noqa: E731


def set_spool_size_source(source: Callable[[], int]) -> None:
    """The webhook spool registers how many updates it holds (read at each scrape)."""
    global _spool_size
    _spool_size = source


def set_database_state_source(source: Callable[[], bool | None]) -> None:
    """The outage handling registers whether the database is up (``None``: unknown). A
    ``False`` from it makes ``tinbao_database_up`` 0 whatever the scrape's own read."""
    global _database_state
    _database_state = source


# ------------------------------------------------------------------------------ counting


def update_taken(channel: str, kind: str) -> float:
    """Count an update; returns the moment to pass to :func:`answered`."""
    UPDATES.labels(channel=channel, kind=kind).inc()
    return time.perf_counter()


def answered(started: float) -> None:
    ANSWER_LATENCY.observe(max(0.0, time.perf_counter() - started))


def send_result(status: int | None) -> str:
    if status is None:
        return "error"
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    return "4xx"


#: Bot API methods that deliver something to a chat (not getUpdates, getMe, getFile...).
_SEND_PREFIXES = ("send", "copy", "edit", "forward", "delete", "answer")


def bot_api_call(url: str, status: int | None, channel: str = "telegram") -> None:
    """Count one Bot API call that sends (``url`` ends with the method's name)."""
    method = url.rstrip("/").rsplit("/", 1)[-1]
    if method.startswith(_SEND_PREFIXES):
        SENDS.labels(channel=channel, result=send_result(status)).inc()


def channel_send(channel: str, result: str) -> None:
    """Count one send to a channel other than Telegram's Bot API (its ``result`` as above)."""
    SENDS.labels(channel=channel, result=result).inc()


def token_refresh(channel: str, ok: bool) -> None:
    TOKEN_REFRESHES.labels(channel=channel, result="ok" if ok else "failed").inc()


def _count_flushed(session: Session, _context: Any) -> None:
    _count_new(session, session.new)


def _count_new(session: Session, new: Iterable[object]) -> None:
    reports: dict[str, int] = session.info.setdefault("_metrics_reports", {})
    for obj in new:
        if isinstance(obj, Report):
            reports[obj.kind] = reports.get(obj.kind, 0) + 1
        elif isinstance(obj, ReportEvent | AuditEvent) and obj.action == "escalated":
            session.info["_metrics_escalations"] = session.info.get("_metrics_escalations", 0) + 1


def _count_committed(session: Session) -> None:
    # What the transaction wrote without a flush (storage.repositories.Reports.store).
    _count_new(session, session.info.pop(WRITTEN_UNFLUSHED, ()))
    for kind, count in session.info.pop("_metrics_reports", {}).items():
        REPORTS.labels(kind=kind).inc(count)
    escalations = session.info.pop("_metrics_escalations", 0)
    if escalations:
        ESCALATIONS.inc(escalations)


def _forget(session: Session, *_args: Any) -> None:
    session.info.pop(WRITTEN_UNFLUSHED, None)
    session.info.pop("_metrics_reports", None)
    session.info.pop("_metrics_escalations", None)


def _database_error(_context: Any) -> None:
    DATABASE_ERRORS.inc()


_installed = False


def install(engine: Engine) -> None:
    """Count reports and escalations from committed transactions (all sessions of the
    process), and the errors of ``engine``."""
    global _installed
    if not _installed:
        event.listen(Session, "after_flush", _count_flushed)
        event.listen(Session, "after_commit", _count_committed)
        event.listen(Session, "after_rollback", _forget)
        _installed = True
    if not event.contains(engine, "handle_error", _database_error):
        event.listen(engine, "handle_error", _database_error)


# ------------------------------------------------------------------------------ the scrape


async def _read_database(service: Scraped) -> None:
    now = utcnow()
    waiting = OutboxMessage.status.in_((Status.PENDING, Status.SENDING))
    async with service.session_factory() as session:
        rows = (
            await session.execute(
                select(
                    OutboxMessage.destination,
                    func.count(),
                    func.min(OutboxMessage.created_at),
                )
                .where(waiting, OutboxMessage.kind.not_in(TIMER_KINDS))
                .group_by(OutboxMessage.destination)
            )
        ).all()
        overdue = await session.scalar(
            select(func.min(OutboxMessage.next_attempt_at)).where(
                waiting, OutboxMessage.kind.in_(TIMER_KINDS), OutboxMessage.next_attempt_at <= now
            )
        )
    backlog: dict[str, int] = {}
    oldest_by: dict[str, float] = {}
    for destination, count, oldest in rows:
        queue = _queue_label(str(destination))
        backlog[queue] = backlog.get(queue, 0) + int(count)
        oldest_by[queue] = max(oldest_by.get(queue, 0.0), _age(now, oldest))
    OUTBOX_BACKLOG.clear()
    OUTBOX_OLDEST.clear()
    for queue, count in backlog.items():
        OUTBOX_BACKLOG.labels(queue=queue).set(count)
        OUTBOX_OLDEST.labels(queue=queue).set(oldest_by[queue])
    TIMER_LAG.set(_age(now, overdue) if overdue is not None else 0.0)


#: Destinations that name a citizen (by report or keyed sender hash): one label for them all.
_CITIZEN_DESTINATIONS = ("report:", "answer:")


def _queue_label(destination: str) -> str:
    """The ``queue`` label of a destination: never a report or a citizen."""
    return "citizens" if destination.startswith(_CITIZEN_DESTINATIONS) else destination


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None and now.tzinfo is not None:
        then = then.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - then).total_seconds())


async def collect(service: Scraped) -> bytes:
    """Refresh the gauges and render every metric in Prometheus's text format."""
    up = True
    try:
        await asyncio.wait_for(_read_database(service), SCRAPE_TIMEOUT)
    except Exception as exc:  # the database is down or slow: say so, never fail the scrape
        log.warning("metrics: the database could not be read (%s)", type(exc).__name__)
        up = False
    if _database_state() is False:
        up = False
    DATABASE_UP.set(1 if up else 0)
    try:
        SPOOL_SIZE.set(int(_spool_size()))
    except Exception:
        log.exception("metrics: the spool size could not be read")
    telegram = service.telegram
    if telegram is not None:
        counted = MALFORMED.labels(channel="telegram")
        seen = float(telegram.metrics.malformed_updates)
        if seen > counted._value.get():
            counted.inc(seen - counted._value.get())
    return generate_latest(REGISTRY)


def allowed(remote: str | None, networks: Iterable[IPv4Network | IPv6Network]) -> bool:
    """Whether the peer may read ``/metrics`` (an empty list allows everyone)."""
    networks = list(networks)
    if not networks:
        return True
    if not remote:
        return False
    try:
        address = ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in networks)


def metrics_handler(service: Scraped) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        # The peer's own address: a forwarded header is not trusted for this.
        if not allowed(request.remote, service.settings.metrics_allow):
            return web.Response(status=403, text="forbidden")
        body = await collect(service)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


__all__ = [
    "REGISTRY",
    "allowed",
    "answered",
    "bot_api_call",
    "channel_send",
    "collect",
    "install",
    "metrics_handler",
    "set_database_state_source",
    "set_spool_size_source",
    "token_refresh",
    "update_taken",
]
