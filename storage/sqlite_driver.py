"""SQLite under asyncio: one thread hop per database operation, few connections, one writer.

SQLite's Python module blocks, so a connection lives in a thread of its own and the event loop
hands it work. SQLAlchemy's ``aiosqlite`` driver makes every DBAPI call a trip to that thread
and back (a queue put, the thread waking, the loop waking): a statement costs three or four
(create the cursor, execute, fetch, close), a commit one, and a connection returned to the pool
one more for its rollback, even when nothing is open.

This driver keeps SQLAlchemy's ``sqlite+aiosqlite`` dialect (same URL, same SQL, same
``sqlite3`` module underneath) and replaces only the adapter between the two:

* a statement is **one** trip: the thread creates a cursor, executes, fetches every row and
  closes it, and hands back the rows with the row count and ``lastrowid``;
* ``commit`` and ``rollback`` make no trip when nothing is open;
* settings that only affect the statements that follow (the isolation level, SQL functions,
  ``PRAGMA read_uncommitted``, which SQLAlchemy sets when a connection is handed out or
  returned) are applied at the start of the next trip, and only when they change (SQLite
  expires every compiled statement of a connection on ``PRAGMA read_uncommitted``, even to the
  value it has); the engine's pragmas are set in the trip that opens a connection;
* few real connections: SQLAlchemy's pool holds cheap handles (:class:`Connection`), and a
  handle borrows one of the engine's few SQLite connections (:class:`Worker`, each a thread)
  for one trip, or from a transaction's first write to its end. A SQLite connection costs
  ~2.7 MB here (each parses the schema, with its large statistics triggers), and a burst of
  citizens would otherwise hold one each while waiting for the writer;
* one writer at a time (:mod:`storage.sqlite_writer`): a handle takes the engine's
  :class:`~storage.sqlite_writer.WriterLock` before its transaction's first write (then a
  SQLite connection) and gives both back when the transaction ends; a **lone write**
  (:func:`storage.db.begin_lone_write`: the step's only statement, its own transaction) goes
  to the engine's :class:`~storage.sqlite_writer.GroupCommit` and commits with the others
  waiting at the time.

Installed by :func:`storage.db.create_engine` with ``module=``; engines made elsewhere (the
migrations) keep ``aiosqlite``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from queue import SimpleQueue
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi
from sqlalchemy.engine import AdaptedConnection
from sqlalchemy.util.concurrency import await_

from storage.sqlite_writer import GroupCommit, Result, WriterLock, execute

#: What a connection's thread runs: a function of its ``sqlite3`` connection.
Work = Callable[[sqlite3.Connection], Any]

#: Setting it, even to the value it has, expires every statement the connection compiled (SQLite
#: does so for its flag pragmas): so it is only sent when the value changes.
_READ_UNCOMMITTED = re.compile(r"\s*PRAGMA\s+read_uncommitted\s*=\s*([01])\s*;?\s*", re.IGNORECASE)

#: Statements that only read; anything else takes the writer lock (``WITH``: if it holds a write).
_READS = frozenset({"SELECT", "VALUES", "EXPLAIN", "PRAGMA"})
#: Statements a lone write may be, to be committed with others.
_ROW_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_DML = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)

_STOP = object()
_numbers = count(1)


def _head(operation: str) -> str:
    words = operation.lstrip(" \t\r\n(").split(None, 1)
    return words[0].upper() if words else ""


def writes(operation: str) -> bool:
    """Whether ``operation`` may write (anything but a query or a ``PRAGMA``)."""
    head = _head(operation)
    if head == "WITH":
        return _DML.search(operation) is not None
    return head not in _READS


# ------------------------------------------------------------------------------ SQLite connections


def _deliver(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None, Any]) -> None:
    if not future.done():  # not cancelled while the thread worked
        future.set_result(outcome)


def _reply(reply: Any, outcome: tuple[Any, BaseException | None, Any]) -> None:
    """Hand ``outcome`` to the loop: to a future, or to a ``(loop, callback)``."""
    # RuntimeError: the loop is closed, nobody waits any more.
    with contextlib.suppress(RuntimeError):
        if isinstance(reply, asyncio.Future):
            reply.get_loop().call_soon_threadsafe(_deliver, reply, outcome)
        else:
            loop, then = reply
            loop.call_soon_threadsafe(then, outcome)


def _serve(queue: SimpleQueue[Any], connect: Callable[[], sqlite3.Connection]) -> None:
    """A connection's thread: runs each job on the connection, in order, and hands back
    ``(result, error, in_transaction)`` to the loop that asked (``in_transaction``: the
    connection's own flag after the job)."""
    connection: sqlite3.Connection | None = None
    opened = False
    while True:
        job = queue.get()
        if job is _STOP:
            break
        reply, settings, work = job
        result: Any = None
        error: BaseException | None = None
        try:
            if not opened:
                opened = True
                connection = connect()
            if connection is None:
                raise sqlite3.OperationalError("connection closed")
            for setting in settings:
                setting(connection)
            if work is _close:
                closing, connection = connection, None
                closing.close()
            elif work is not None:
                result = work(connection)
        except BaseException as exc:  # handed to the caller, whatever it is
            error = exc
        if reply is not None:
            state = connection.in_transaction if connection is not None else False
            _reply(reply, (result, error, state))
    if connection is not None:
        connection.close()


def _close(connection: sqlite3.Connection) -> None:
    connection.close()


def _commit(connection: sqlite3.Connection) -> None:
    connection.commit()


def _rollback(connection: sqlite3.Connection) -> None:
    connection.rollback()


def _stop(queue: SimpleQueue[Any]) -> None:
    queue.put((None, (), _close))
    queue.put(_STOP)


class Worker:
    """One SQLite connection in a thread of its own; jobs run in the order they are queued.

    ``values``: the connection's settings as they will be once the queued jobs ran.
    """

    def __init__(self, driver: Driver, connect: Callable[[], sqlite3.Connection]) -> None:
        self.driver = driver
        self.values: dict[str, object] = {"read_uncommitted": "0"}
        self._queue: SimpleQueue[Any] | None = SimpleQueue()
        thread = threading.Thread(
            target=_serve, args=(self._queue, connect), name=f"tinbao-sqlite-{next(_numbers)}"
        )
        thread.daemon = True
        thread.start()
        self._finalizer = weakref.finalize(self, _stop, self._queue)

    @property
    def closed(self) -> bool:
        return self._queue is None

    def submit(self, work: Work | None, settings: Sequence[Work] = ()) -> asyncio.Future[Any]:
        """Queue one trip (``settings``, then ``work``); its future gives ``(result, error,
        in_transaction)``."""
        if self._queue is None:
            raise sqlite3.OperationalError("connection closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put((future, tuple(settings), work))
        self.driver.trips += 1
        return future

    def submit_then(
        self, work: Work, then: Callable[[tuple[Any, BaseException | None, Any]], object]
    ) -> None:
        """Queue one trip; the loop calls ``then((result, error, in_transaction))`` when it
        ends (no future, no task: one round of the loop less than :meth:`submit`)."""
        if self._queue is None:
            raise sqlite3.OperationalError("connection closed")
        self._queue.put(((asyncio.get_running_loop(), then), (), work))
        self.driver.trips += 1

    async def open(self) -> Worker:
        """Open the ``sqlite3`` connection in its thread (the first trip)."""
        try:
            _value, error, _state = await self.submit(None)
        except BaseException:
            self.terminate()
            raise
        if error is not None:
            self.terminate()
            raise error
        return self

    def terminate(self) -> None:
        """Close the connection once the jobs queued before have run; do not wait."""
        if self._queue is not None:
            self._finalizer()
            self._queue = None


class Workers:
    """The engine's few SQLite connections, lent to handles: the one used last goes out first
    (its compiled statements are warm); at most ``limit``, opened when first needed."""

    def __init__(self, driver: Driver, limit: int) -> None:
        self.driver = driver
        self.limit = limit
        self._idle: list[Worker] = []
        self._opened = 0
        self._waiting: collections.deque[asyncio.Future[Worker]] = collections.deque()

    @property
    def opened(self) -> int:
        """SQLite connections open (idle or lent)."""
        return self._opened

    async def borrow(self) -> Worker:
        while self._idle:
            worker = self._idle.pop()
            if not worker.closed:
                return worker
            self._opened -= 1
        if self._opened < self.limit:
            self._opened += 1
            try:
                return await self.driver.open_worker()
            except BaseException:
                self._opened -= 1
                raise
        future: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give_back(future.result())  # handed over just as the wait was cut off
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(future)
            raise

    def give_back(self, worker: Worker) -> None:
        if not worker.closed and _running_loop() is None:
            worker.terminate()  # a handle collected outside the loop: its state is unknown
        if worker.closed:
            self._opened -= 1
            return
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(worker)
                return
        self._idle.append(worker)

    def close(self) -> None:
        """Close the idle connections (the engine is disposed; a next use opens others)."""
        idle, self._idle = self._idle, []
        for worker in idle:
            worker.terminate()
        self._opened -= len(idle)


# ------------------------------------------------------------------------------ DBAPI


def _statement(operation: str, parameters: Any) -> Work:
    return lambda connection: execute(connection, operation, parameters)


def _statements(operation: str, parameters: Sequence[Any]) -> Work:
    def run(connection: sqlite3.Connection) -> Result:
        cursor = connection.cursor()
        try:
            cursor.executemany(operation, parameters)
            rows = cursor.fetchall() if cursor.description else None
            return cursor.description, rows, cursor.rowcount, cursor.lastrowid
        finally:
            cursor.close()

    return run


class Cursor:
    """A DBAPI cursor whose statement runs, and whose rows are fetched, in one trip."""

    server_side = False

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._rows: collections.deque[Any] = collections.deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def _take(self, result: Result) -> None:
        self.description, rows, self.rowcount, self.lastrowid = result
        self._rows = collections.deque(rows or ())

    def execute(self, operation: str, parameters: Any = None) -> None:
        connection = self._connection
        pragma = _READ_UNCOMMITTED.fullmatch(operation) if parameters in (None, (), []) else None
        if pragma is not None:
            # Affects only what follows: applied at the start of the next trip, if it changes.
            connection._want("read_uncommitted", pragma.group(1), _statement(operation, None))
            self._take((None, None, -1, None))
            return
        if connection._lone_write(operation):
            self._take(await_(connection.dbapi.group.write(operation, parameters)))
            return
        connection._before(operation)
        self._take(connection._run(_statement(operation, parameters)))

    def executemany(self, operation: str, parameters: Sequence[Any]) -> None:
        self._connection._lone = False
        self._connection._before(operation)
        self._take(self._connection._run(_statements(operation, parameters)))

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        wanted = self.arraysize if size is None else size
        return [self._rows.popleft() for _ in range(min(wanted, len(self._rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def __iter__(self) -> Iterator[Any]:
        while self._rows:
            yield self._rows.popleft()

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        """Called by SQLAlchemy's async results: the rows are already here."""

    def setinputsizes(self, *sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass

    def nextset(self) -> None:
        return None


class ServerSideCursor(Cursor):
    """``stream()`` / ``yield_per``: the rows are fetched a batch per trip, not all at once
    (the handle keeps its SQLite connection until the cursor is closed)."""

    server_side = True

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self._cursor: sqlite3.Cursor | None = None

    def execute(self, operation: str, parameters: Any = None) -> None:
        def run(connection: sqlite3.Connection) -> tuple[sqlite3.Cursor, Any, int, int | None]:
            cursor = connection.cursor()
            if parameters is None:
                cursor.execute(operation)
            else:
                cursor.execute(operation, parameters)
            return cursor, cursor.description, cursor.rowcount, cursor.lastrowid

        connection = self._connection
        connection._lone = False
        connection._before(operation)
        connection._streams += 1
        try:
            self._cursor, self.description, self.rowcount, self.lastrowid = connection._run(run)
        except BaseException:
            connection._streams -= 1
            connection._done()
            raise

    def _fetch(self, size: int | None) -> list[Any]:
        cursor = self._cursor
        if cursor is None:
            return []
        if size is None:
            return list(self._connection._run(lambda _connection: cursor.fetchall()))
        return list(self._connection._run(lambda _connection: cursor.fetchmany(size)))

    def fetchone(self) -> Any:
        rows = self._fetch(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._fetch(self.arraysize if size is None else size)

    def fetchall(self) -> list[Any]:
        return self._fetch(None)

    def __iter__(self) -> Iterator[Any]:
        while rows := self._fetch(self.arraysize):
            yield from rows

    def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is None:
            return
        connection = self._connection
        connection._streams -= 1
        worker = connection._worker
        if worker is not None and not worker.closed and _running_loop() is not None:
            # Before anything else runs on that connection (jobs run in order); not waited for.
            worker.submit(lambda _connection: cursor.close())
        connection._done()


class Connection(AdaptedConnection):
    """The DBAPI connection SQLAlchemy sees: a handle that borrows one of the engine's SQLite
    connections (:class:`Worker`) for each trip, and keeps it while a transaction is open (or a
    streamed query): from its first write, with the writer lock (``writing``), to its end.

    ``in_transaction``: the SQLite connection's own flag as of the last trip (``None`` when
    unknown: a trip was cut off, so the next ``commit``/``rollback`` goes to the thread)."""

    def __init__(self, dbapi: Driver, isolation_level: str | None) -> None:
        self.dbapi = dbapi
        self.writing = False
        self.in_transaction: bool | None = False
        self._worker: Worker | None = None
        self._streams = 0
        self._lone = False
        self._closed = False
        #: The settings this handle wants, by name: ``(value, work that sets it)``.
        self._wanted: dict[str, tuple[object, Work]] = {}
        self._isolation_level = isolation_level
        self._want("isolation_level", isolation_level, _isolation(isolation_level))
        # SQLAlchemy's driver_connection: the handle itself (it has no other one to show).
        self._connection = self  # type: ignore[assignment]

    def _want(self, name: str, value: object, work: Work) -> None:
        self._wanted[name] = (value, work)

    def _settings(self, worker: Worker) -> list[Work]:
        """What ``worker`` must apply first to run this handle's statements: the settings it
        does not have yet, and the SQL functions not registered on it yet."""
        works = []
        for name, (value, work) in self._wanted.items():
            if worker.values.get(name, _MISSING) != value:
                worker.values[name] = value
                works.append(work)
        for name, work in self.dbapi.functions.items():
            if name not in worker.values:
                worker.values[name] = True
                works.append(work)
        return works

    def _run(self, work: Work) -> Any:
        """One trip, from SQLAlchemy's side (in its greenlet); returns what ``work`` returned."""
        if self._closed:
            raise self.dbapi.OperationalError("connection closed")
        worker = self._worker
        if worker is None:
            try:
                worker = self._worker = await_(self.dbapi.workers.borrow())
            except BaseException:
                self._done()
                raise
        try:
            future = worker.submit(work, self._settings(worker))
            value, error, self.in_transaction = await_(future)
        except BaseException:  # cut off: the job may run yet, its outcome is unknown
            self.in_transaction = None
            raise
        self._done()
        if error is not None:
            raise error
        return value

    def _done(self) -> None:
        """Give back what the handle holds once its transaction (and any stream) ended."""
        if self.in_transaction is not False or self._streams:
            return
        worker, self._worker = self._worker, None
        if worker is not None:
            self.dbapi.workers.give_back(worker)
        if self.writing:
            self.writing = False
            self.dbapi.writer.release()

    # -- the writer

    def lone_write(self) -> None:
        """The next statement is its transaction's only one (:func:`storage.db.begin_lone_write`):
        if it writes rows, it is committed with the other lone writes waiting at the time."""
        self._lone = True

    def _lone_write(self, operation: str) -> bool:
        lone, self._lone = self._lone, False
        if not lone or self.writing or self.in_transaction is not False:
            return False
        return _head(operation) in _ROW_WRITES

    def _before(self, operation: str) -> None:
        """Take the writer lock before the first write of a transaction."""
        if self.writing or not writes(operation):
            return
        await_(self.dbapi.writer.acquire())
        self.writing = True

    # -- DBAPI

    def cursor(self, server_side: bool = False) -> Cursor:
        return ServerSideCursor(self) if server_side else Cursor(self)

    def commit(self) -> None:
        self._lone = False
        if self._worker is not None and self.in_transaction is not False:
            self._run(_commit)
        else:
            self._done()

    def rollback(self) -> None:
        self._lone = False
        if self._worker is not None and self.in_transaction is not False:
            self._run(_rollback)
        else:
            self._done()

    @property
    def isolation_level(self) -> str | None:
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._isolation_level = value
        self._want("isolation_level", value, _isolation(value))

    def create_function(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Registered on every SQLite connection of the engine, once each."""
        key = f"function {name}"
        self.dbapi.functions[key] = lambda c: c.create_function(name, *args, **kwargs)

    def close(self) -> None:
        self._closed = True
        worker, self._worker = self._worker, None
        self._streams = 0
        if worker is not None:
            if self.in_transaction is not False and not worker.closed:
                if _running_loop() is None:
                    worker.terminate()  # closing the SQLite connection rolls back
                else:
                    # Rolled back before it serves anyone else (jobs run in order).
                    worker.submit(_rollback)
            self.in_transaction = False
            self.dbapi.workers.give_back(worker)
        if self.writing:
            self.writing = False
            self.dbapi.writer.release()

    def terminate(self) -> None:
        """SQLAlchemy, on an invalidated or collected connection: as :meth:`close`, and the
        SQLite connection it held (its state unknown) is closed rather than lent again."""
        worker = self._worker
        if worker is not None:
            worker.terminate()
        self.close()


def _isolation(value: str | None) -> Work:
    def apply(connection: sqlite3.Connection) -> None:
        connection.isolation_level = value  # type: ignore[assignment]

    return apply


_MISSING = object()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Driver(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI "module" handed to SQLAlchemy's aiosqlite dialect (``module=``), one per
    engine: its handles share ``connections`` SQLite connections, one writer lock and one group
    commit (which has a SQLite connection of its own).

    ``pragmas`` are set on every SQLite connection as it opens; ``writer_timeout``: seconds a
    write waits for the writer lock before failing (as SQLite's ``busy_timeout``)."""

    def __init__(
        self,
        pragmas: Sequence[tuple[str, str]] = (),
        *,
        connections: int = 4,
        writer_timeout: float = 5.0,
    ) -> None:
        super().__init__(aiosqlite, sqlite3)
        self.pragmas = tuple(pragmas)
        self.writer = WriterLock(writer_timeout)
        self.workers = Workers(self, connections)
        self.group = GroupCommit(self.writer, self._open_batch_worker)
        #: SQL functions registered on every SQLite connection (the dialect's ``regexp``...).
        self.functions: dict[str, Work] = {}
        self._connect_args: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})
        self._trace: Callable[[str], object] | None = None
        #: Trips to connection threads so far (``bench/db_cost.py`` and the tests read them).
        self.trips = 0

    def connect(self, *args: Any, **kwargs: Any) -> Connection:  # type: ignore[override]
        """A handle (no SQLite connection until it runs something)."""
        kwargs.pop("async_creator_fn", None)
        self._connect_args = (args, dict(kwargs))
        return Connection(self, kwargs.get("isolation_level", ""))

    def _opener(self, isolation_level: str | None) -> Callable[[], sqlite3.Connection]:
        args, kwargs = self._connect_args
        kwargs = {**kwargs, "isolation_level": isolation_level}
        trace = self._trace

        def opened() -> sqlite3.Connection:
            connection = sqlite3.connect(*args, **kwargs)
            for name, value in self.pragmas:
                connection.execute(f"PRAGMA {name}={value}").close()
            if trace is not None:
                connection.set_trace_callback(trace)
            return connection

        return opened

    async def open_worker(self) -> Worker:
        isolation_level = self._connect_args[1].get("isolation_level", "")
        worker = Worker(self, self._opener(isolation_level))
        worker.values["isolation_level"] = isolation_level
        return await worker.open()

    async def _open_batch_worker(self) -> Worker:
        """The group commit's own SQLite connection, in autocommit (its batches say
        ``BEGIN``)."""
        return await Worker(self, self._opener(None)).open()

    def trace(self, callback: Callable[[str], object] | None) -> None:
        """Hand every statement SQLite runs (triggers' included) to ``callback``, on the
        SQLite connections opened from now on (debugging; the tests)."""
        self._trace = callback

    def dispose(self) -> None:
        """The engine is disposed: close the SQLite connections not lent out."""
        self.workers.close()
        self.group.close()
