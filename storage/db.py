"""Engine and session factory for the two supported backends.

* the embedded SQLite file (``sqlite+aiosqlite:///var/tinbao.db``), the default;
* PostgreSQL through asyncpg (``postgresql+asyncpg://user@host/db``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import stat
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, pool, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import await_

from storage.sqlite_driver import Driver as SQLiteDriver

log = logging.getLogger(__name__)

#: Seconds :func:`check_database` waits before calling the database unhealthy.
HEALTH_CHECK_TIMEOUT = 5.0

#: Applied to every new SQLite connection. ``journal_mode=WAL`` lets readers work while one
#: writer commits; ``busy_timeout`` makes a writer wait for the lock instead of failing at once.
SQLITE_PRAGMAS: tuple[tuple[str, str], ...] = (
    ("foreign_keys", "ON"),
    ("journal_mode", "WAL"),
    ("synchronous", "NORMAL"),
    ("busy_timeout", "5000"),
)


#: PostgreSQL pool. Connections kept open: enough for the updates and workers of one busy
#: process, so that connections are reused and not opened and closed under load (a new
#: asyncpg connection costs its start-up, type introspection and every statement prepared again).
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 10
#: A pooled connection idle for longer than this many seconds is pinged before it is used (a
#: server restart or an idle timeout may have closed it). One in steady use is not: a ping on
#: every checkout (``pool_pre_ping``) is a round trip per update. A connection that broke while
#: in use fails its transaction with ``connection_invalidated`` (SQLAlchemy then refreshes the
#: whole pool), and :func:`connection_lost` tells the callers to run it again.
PING_AFTER_IDLE = 5.0


#: SQLite: the engine's real connections, each a thread and ~2.7 MB (every one parses the schema,
#: with its large statistics triggers). SQLAlchemy's pool holds cheap handles that borrow one of
#: them for a statement, or for a transaction from its first write (storage.sqlite_driver): a
#: burst of citizens waiting for the writer holds none.
SQLITE_CONNECTIONS = 3
SQLITE_POOL_SIZE = 16
SQLITE_MAX_OVERFLOW = 48


def _json_dumps(value: Any) -> str:
    # Keep Vietnamese text readable in the database (and shorter than \u escapes).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite URL, or ``None`` for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):  # URI filename (``?uri=true``)
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


#: The embedded database holds drafts, reports and encrypted contact routes: only the service's
#: own user may read it, its WAL and its shared-memory file.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created inside are for the owner only (umask 077).

    The umask is process-wide: this is for start-up, before other threads create files.
    """
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def prepare_sqlite_file(path: Path) -> None:
    """Create the database's directory (0700) and file (0600) before SQLite does, and tighten
    the mode of an existing database, WAL or shared-memory file that others could read.

    SQLite gives its WAL and shared-memory files the database file's own mode, so creating
    the file private keeps all three private.
    """
    with private_umask():
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        os.close(fd)
    for suffix in _SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(companion.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            log.warning(
                "%s was readable by other users (mode %o); tightened to %o",
                companion,
                mode,
                PRIVATE_FILE_MODE,
            )
            companion.chmod(PRIVATE_FILE_MODE)
    directory = path.parent.stat().st_mode
    if stat.S_IMODE(directory) & 0o077 and not directory & stat.S_ISVTX:
        log.warning(
            "the database's directory %s is open to other users (mode %o); run: chmod 700 %s",
            path.parent,
            stat.S_IMODE(directory),
            path.parent,
        )


def install_sqlite_pragmas(engine: AsyncEngine, pragmas: tuple[tuple[str, str], ...]) -> None:
    """Run ``PRAGMA name=value`` for each pair on every new DBAPI connection of ``engine``."""

    @event.listens_for(engine.sync_engine, "connect")
    def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for name, value in pragmas:
                cursor.execute(f"PRAGMA {name}={value}")
        finally:
            cursor.close()


def install_idle_ping(engine: AsyncEngine, idle_seconds: float = PING_AFTER_IDLE) -> None:
    """Ping a connection on checkout only if it sat in the pool longer than ``idle_seconds``;
    a failed ping makes the pool replace it (SQLAlchemy's pessimistic disconnect handling)."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine.pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync_engine.pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            alive = _ping(sync_engine, dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("the idle connection is gone") from exc
        if alive is False:
            raise DisconnectionError("the idle connection is gone")


def _ping(sync_engine: Any, dbapi_connection: Any) -> bool:
    """One round trip on asyncpg (an empty query outside any transaction); SQLAlchemy's own
    ping wraps it in ``BEGIN`` and ``ROLLBACK`` (for PgBouncer in transaction mode, not used
    here), three round trips on every checkout of a connection that sat idle."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if sync_engine.dialect.driver == "asyncpg" and driver is not None:
        await_(driver.fetchrow(";"))
        return True
    return bool(sync_engine.dialect.do_ping(dbapi_connection))


def probe_engine(engine: AsyncEngine) -> AsyncEngine:
    """An engine on ``engine``'s database without a pool (a fresh connection each time), for a
    health probe: with every pooled connection in use (a burst of citizens), a probe waiting
    its turn in the pool would take a busy database for one that cannot be reached."""
    connect_args: dict[str, Any] = {}
    if engine.dialect.name == "postgresql":
        connect_args = {"server_settings": {"application_name": "tinbao-probe"}}
    return create_async_engine(engine.url, poolclass=pool.NullPool, connect_args=connect_args)


def connection_lost(exc: BaseException) -> bool:
    """The database connection broke under a transaction: it was rolled back (or its commit
    never confirmed) and may run again on a fresh connection."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Create the async engine for ``url`` (``sqlite+aiosqlite`` or ``postgresql+asyncpg``)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_file(parsed)
        if path is not None:
            prepare_sqlite_file(path)
        # One thread hop per operation instead of aiosqlite's three or four, one writer at a
        # time, lone writes committed together (storage.sqlite_driver).
        # An in-memory database lives in one SQLite connection (SQLAlchemy's StaticPool).
        memory = path is None
        driver = SQLiteDriver(SQLITE_PRAGMAS, connections=1 if memory else SQLITE_CONNECTIONS)
        pool: dict[str, int] = (
            {} if memory else {"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_MAX_OVERFLOW}
        )
        engine = create_async_engine(
            parsed, echo=echo, json_serializer=_json_dumps, module=driver, **pool
        )
        event.listen(engine.sync_engine, "engine_disposed", lambda _engine: driver.dispose())
        return engine
    if backend == "postgresql":
        engine = create_async_engine(
            parsed,
            echo=echo,
            json_serializer=_json_dumps,
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_MAX_OVERFLOW,
            # The connection used last goes out first: at a quiet moment the few connections
            # in use stay warm (their statements prepared, not idle long enough to need a
            # ping) and the others sit; a spread of checkouts over all ten would have each
            # prepare every statement and, after a quiet spell, be pinged.
            pool_use_lifo=True,
            pool_timeout=30,
            # Drop connections before a server or proxy idle timeout closes them under us.
            pool_recycle=1800,
            connect_args={"server_settings": {"application_name": "tinbao"}},
        )
        install_idle_ping(engine)
        return engine
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
        "use 'sqlite+aiosqlite:///path.db' or 'postgresql+asyncpg://user@host/db'"
    )


#: ``session.info`` keys of :class:`TrackedSession`.
CONNECTION_BEGUN = "connection_begun"
LONE_WRITE_DONE = "lone_write_done"
#: In ``session.info`` when a transaction enqueued outbox rows: an :class:`Enqueued` (or
#: ``True``, wake every loop), for the wake-ups after its commit.
OUTBOX_ENQUEUED = "outbox_enqueued"
#: In ``session.info``: the outbox notification the transaction already sent (its payload).
OUTBOX_NOTIFIED = "outbox_notified"
#: In ``session.info``: new ORM objects the transaction wrote without the ORM's flush
#: (``Reports.store``), for listeners that count what flushes write (``bot.metrics``, at
#: ``after_commit``); forgotten when the transaction ends.
WRITTEN_UNFLUSHED = "written_unflushed"
#: The PostgreSQL notification channel of outbox wake-ups (:func:`_notify_outbox`).
OUTBOX_CHANNEL = "tinbao_outbox"
#: The ``kind`` values of the rows the citizen messenger sends (``handlers.outbox.Kind``);
#: timers' kinds start with :data:`TIMER_KIND_PREFIX`; every other kind goes to officers.
CITIZEN_KINDS = frozenset({"citizen_message", "citizen_answer"})
TIMER_KIND_PREFIX = "timer."


@dataclass
class Enqueued:
    """What a transaction enqueued, so that only the loops with something to do are woken:
    the officers' worker, the citizen messenger, the timers (by the earliest timer's due
    moment: one due in a day wakes nobody now)."""

    officers: bool = False
    citizens: bool = False
    timers: datetime | None = None

    @classmethod
    def everything(cls) -> Enqueued:
        return cls(officers=True, citizens=True, timers=datetime.min.replace(tzinfo=UTC))

    def add(self, kind: str, due: datetime | None = None) -> None:
        if kind.startswith(TIMER_KIND_PREFIX):
            moment = due or datetime.min.replace(tzinfo=UTC)
            self.timers = moment if self.timers is None else min(self.timers, moment)
        elif kind in CITIZEN_KINDS:
            self.citizens = True
        else:
            self.officers = True

    def payload(self, token: str) -> str:
        """The notification's payload: ``<token> <o?c?> <timer's epoch or ->``."""
        flags = ("o" if self.officers else "") + ("c" if self.citizens else "")
        due = f"{self.timers.timestamp():.3f}" if self.timers is not None else "-"
        return f"{token} {flags or '-'} {due}"

    @classmethod
    def parse(cls, payload: str) -> tuple[str, Enqueued]:
        """The sender's token and what it enqueued; anything unreadable wakes everything."""
        try:
            token, flags, due = payload.split(" ")
            timers = None if due == "-" else datetime.fromtimestamp(float(due), tz=UTC)
        except ValueError:
            return "", cls.everything()
        return token, cls(officers="o" in flags, citizens="c" in flags, timers=timers)


def enqueued(session: AsyncSession | Session) -> Enqueued:
    """The transaction's record of what it enqueued (created on first use)."""
    found = session.info.get(OUTBOX_ENQUEUED)
    if not isinstance(found, Enqueued):
        found = Enqueued.everything() if found else Enqueued()
        session.info[OUTBOX_ENQUEUED] = found
    return found


_TOKENS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_WAKERS: weakref.WeakKeyDictionary[Any, list[Callable[[Enqueued], None]]] = (
    weakref.WeakKeyDictionary()
)


def outbox_token(engine: Any) -> str:
    """A random name of ``engine`` (an engine or its sync engine), sent with its outbox
    notifications: its own listener leaves them to the in-process wake-up."""
    sync = getattr(engine, "sync_engine", engine)
    token = _TOKENS.get(sync)
    if token is None:
        token = _TOKENS[sync] = secrets.token_hex(8)
    return token


def on_outbox_commit(engine: AsyncEngine, waker: Callable[[Enqueued], None]) -> None:
    """Call ``waker`` after each commit on ``engine`` that enqueued outbox rows, in this
    process, with what it enqueued: the delivering loops wake at once, whichever code path
    committed (on PostgreSQL the other processes hear of it by notification)."""
    _WAKERS.setdefault(engine.sync_engine, []).append(waker)


def off_outbox_commit(engine: AsyncEngine, waker: Callable[[Enqueued], None]) -> None:
    wakers = _WAKERS.get(engine.sync_engine, [])
    if waker in wakers:
        wakers.remove(waker)


class TrackedSession(Session):
    """A session that knows whether its transaction has used a connection yet, so that a
    transaction made of one write can run it alone (see :func:`begin_lone_write`)."""


@event.listens_for(TrackedSession, "after_begin")
def _connection_begun(session: Session, _transaction: Any, _connection: Any) -> None:
    session.info[CONNECTION_BEGUN] = True


@event.listens_for(TrackedSession, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(CONNECTION_BEGUN, None)
        session.info.pop(LONE_WRITE_DONE, None)
        session.info.pop(OUTBOX_NOTIFIED, None)
        session.info.pop(WRITTEN_UNFLUSHED, None)


@event.listens_for(TrackedSession, "do_orm_execute")
def _after_lone_write(state: Any) -> None:
    if state.session.info.get(LONE_WRITE_DONE):
        raise RuntimeError("a statement after the transaction's lone write would not be atomic")


@event.listens_for(TrackedSession, "before_flush")
def _flush_after_lone_write(session: Session, _context: Any, _instances: Any) -> None:
    if session.info.get(LONE_WRITE_DONE):
        raise RuntimeError("a flush after the transaction's lone write would not be atomic")


@event.listens_for(TrackedSession, "before_commit")
def _notify_outbox(session: Session) -> None:
    """On PostgreSQL, a transaction that enqueued outbox rows notifies ``tinbao_outbox`` in
    itself: the notification is delivered when (and only if) it commits, to every process
    listening (``bot/wakeup.py``), so a worker in another process wakes at once instead of at
    its next poll. It says what was enqueued, and which engine sent it (:func:`outbox_token`).
    Nothing is sent if the transaction already sent it (:meth:`storage.repositories.Reports.
    store` does, in its statement). In this process the wake-up is :func:`_wake_outbox`."""
    if not session.info.get(OUTBOX_ENQUEUED) or session.info.get(LONE_WRITE_DONE):
        return
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    payload = outbox_payload(session)
    if session.info.get(OUTBOX_NOTIFIED) != payload:
        session.execute(select(func.pg_notify(OUTBOX_CHANNEL, payload)))


def outbox_payload(session: AsyncSession | Session) -> str:
    """The outbox notification of what ``session``'s transaction enqueued."""
    return enqueued(session).payload(outbox_token(session.get_bind()))


@event.listens_for(TrackedSession, "after_commit")
def _wake_outbox(session: Session) -> None:
    """After a commit that enqueued outbox rows: the wakers of this process (on any backend),
    at once."""
    if not session.info.get(OUTBOX_ENQUEUED):
        return
    wakers = _WAKERS.get(session.get_bind())
    if wakers:
        what = enqueued(session)
        for waker in list(wakers):
            waker(what)


def lone_writes(dialect: Any) -> bool:
    """Whether a transaction of one statement runs it alone in autocommit on this dialect:
    PostgreSQL, and SQLite through :mod:`storage.sqlite_driver` (there, one thread hop instead
    of two; under ``aiosqlite`` autocommit would cost more hops, not fewer)."""
    if dialect.name == "postgresql":
        return True
    return dialect.name == "sqlite" and isinstance(dialect.dbapi, SQLiteDriver)


async def begin_lone_write(session: AsyncSession) -> bool:
    """Prepare ``session`` to run the statement that follows as its transaction's only one,
    in autocommit, when that is what the transaction is: a session begun (``session.begin()``)
    that has run nothing yet and holds no pending ORM change, on a dialect where it pays
    (:func:`lone_writes`).

    A single statement is its own transaction in PostgreSQL and in SQLite, just as atomic and
    durable once it returns, and it costs one round trip (PostgreSQL) or thread hop (SQLite)
    instead of three (``BEGIN``, the statement, ``COMMIT``) or two. The caller's ``commit()``
    then sends nothing. Anything run in the session after that statement raises (it would not
    be atomic with it). ``False``: nothing changed, run the statement in the transaction as
    usual."""
    sync_session = session.sync_session
    if (
        not isinstance(sync_session, TrackedSession)
        or session.bind is None
        or not lone_writes(session.bind.dialect)
        or not session.in_transaction()
        or session.info.get(CONNECTION_BEGUN)
        or session.new
        or session.dirty
        or session.deleted
    ):
        return False
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    if session.bind.dialect.name == "sqlite":
        # Committed with the other lone writes waiting for the writer (sqlite_driver).
        raw = await connection.get_raw_connection()
        raw.driver_connection.lone_write()  # type: ignore[union-attr]
    return True


def lone_write_done(session: AsyncSession) -> None:
    """The lone write ran: nothing else may run in this transaction."""
    session.info[LONE_WRITE_DONE] = True


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay usable after commit (no lazy reload on attribute access)."""
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=TrackedSession)


@contextlib.asynccontextmanager
async def reading(
    session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session that only reads. On PostgreSQL its statements run in autocommit: a read costs
    its own round trip, without the ``BEGIN`` before it and the ``ROLLBACK`` when the session
    closes (three round trips for a one-statement read). Nothing is lost: under ``READ
    COMMITTED`` (the default) each statement of a transaction takes its own snapshot anyway.
    A write in it would be committed at once: use a transaction for writes."""
    async with session_factory() as session:
        bind = session.bind
        if bind is not None and bind.dialect.name == "postgresql":
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


async def check_database(engine: AsyncEngine) -> bool:
    """``True`` when the database answers ``SELECT 1`` within :data:`HEALTH_CHECK_TIMEOUT`."""
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not healthy", never a crash of /healthz
        log.warning("database check failed: %s: %s", type(exc).__name__, exc)
        return False
    return True


_WRITE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def writer(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[object]:
    """Serialise this process's write transactions on SQLite; a no-op on PostgreSQL.

    SQLite has one writer at a time. Waiting on an in-process lock is cheaper and fairer than
    SQLite's sleeping busy handler; other processes are still covered by ``busy_timeout``.
    An engine of :func:`create_engine` does it itself, for every transaction and only from its
    first write to its end (:class:`storage.sqlite_driver.WriterLock`): then this is a no-op.
    """
    if engine.dialect.name != "sqlite" or isinstance(engine.dialect.dbapi, SQLiteDriver):
        return contextlib.nullcontext()
    lock = _WRITE_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine.sync_engine] = asyncio.Lock()
    return lock
