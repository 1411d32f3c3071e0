"""SQLite under asyncio at one thread hop per database operation.

SQLite's Python module blocks, so each connection lives in a thread of its own and the event
loop hands it work. SQLAlchemy's ``aiosqlite`` driver makes every DBAPI call a trip to that
thread and back (a queue put, the thread waking, the loop waking): a statement costs three or
four (create the cursor, execute, fetch, close), a commit one, and a connection returned to
the pool one more for its rollback, even when nothing is open. Under the in-process writer lock
(:func:`storage.db.writer`) every trip also waits for the loop to come round, so a short write
held the lock for ~10 ms and all citizens' steps queued behind it.

This driver keeps SQLAlchemy's ``sqlite+aiosqlite`` dialect (same URL, same SQL, same
``sqlite3`` module underneath) and replaces only the adapter between the two:

* a statement is **one** trip: the thread creates a cursor, executes, fetches every row and
  closes it, and hands back the rows with the row count and ``lastrowid``;
* ``commit`` and ``rollback`` make no trip when the connection holds no transaction (the state
  is read in the thread after every trip: only this adapter touches the connection);
* connection settings that only affect the statements that follow (the isolation level, SQL
  functions, ``PRAGMA read_uncommitted``, which SQLAlchemy sets when a connection is handed out
  or returned) are kept and applied at the start of the next trip instead of one trip each.

So a step whose only write is its conversation runs its ``UPDATE`` alone in autocommit (a
single statement is its own transaction in SQLite, committed when it returns) in **one** trip,
as on PostgreSQL (:func:`storage.db.begin_lone_write`). Installed by
:func:`storage.db.create_engine` with ``module=``; engines made elsewhere keep ``aiosqlite``.
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
from sqlalchemy.util.concurrency import await_, in_greenlet

#: What the thread runs: a function of its ``sqlite3`` connection.
Work = Callable[[sqlite3.Connection], Any]

#: ``PRAGMA read_uncommitted = N``, which SQLAlchemy's SQLite dialect runs to set (and, when a
#: connection that ran in autocommit goes back to the pool, to reset) the isolation level.
_READ_UNCOMMITTED = re.compile(r"\s*PRAGMA\s+read_uncommitted\s*=\s*[01]\s*;?\s*", re.IGNORECASE)

_STOP = object()
_numbers = count(1)


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while the thread worked
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _serve(queue: SimpleQueue[Any], connect: Callable[[], sqlite3.Connection]) -> None:
    """The connection's thread: runs each job on the connection, in order, and hands back
    ``(result, in_transaction)`` or the error to the loop that asked."""
    connection: sqlite3.Connection | None = None
    opened = False
    while True:
        job = queue.get()
        if job is _STOP:
            break
        future, settings, work = job
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
                result = (None, False)
            elif work is not None:
                result = (work(connection), connection.in_transaction)
        except BaseException as exc:  # handed to the caller, whatever it is
            error = exc
        if future is not None:
            # RuntimeError: the loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_deliver, future, result, error)
    if connection is not None:
        connection.close()


def _close(connection: sqlite3.Connection) -> None:
    connection.close()


def _commit(connection: sqlite3.Connection) -> None:
    connection.commit()


def _rollback(connection: sqlite3.Connection) -> None:
    connection.rollback()


Result = tuple[Any, list[Any] | None, int, int | None]


def _execute(operation: str, parameters: Any) -> Work:
    def run(connection: sqlite3.Connection) -> Result:
        cursor = connection.cursor()
        try:
            if parameters is None:
                cursor.execute(operation)
            else:
                cursor.execute(operation, parameters)
            rows = cursor.fetchall() if cursor.description else None
            return cursor.description, rows, cursor.rowcount, cursor.lastrowid
        finally:
            cursor.close()

    return run


def _executemany(operation: str, parameters: Sequence[Any]) -> Work:
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
        if parameters in (None, (), []) and _READ_UNCOMMITTED.fullmatch(operation):
            # Affects only what follows: applied at the start of the next trip.
            self._connection._settings.append(_execute(operation, None))
            self._take((None, None, -1, None))
            return
        self._take(self._connection._run(_execute(operation, parameters)))

    def executemany(self, operation: str, parameters: Sequence[Any]) -> None:
        self._take(self._connection._run(_executemany(operation, parameters)))

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
    """``stream()`` / ``yield_per``: the rows are fetched a batch per trip, not all at once."""

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

        self._cursor, self.description, self.rowcount, self.lastrowid = self._connection._run(run)

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
        if cursor is not None and self._connection._queue is not None:
            self._connection._run(lambda _connection: cursor.close())


def _stop(queue: SimpleQueue[Any]) -> None:
    queue.put((None, (), _close))
    queue.put(_STOP)


class Connection(AdaptedConnection):
    """The DBAPI connection SQLAlchemy sees: its calls become jobs for the connection's thread.

    ``in_transaction`` is the ``sqlite3`` connection's own flag as of the last trip (``None``
    after an error: unknown, so the next ``commit``/``rollback`` goes to the thread)."""

    def __init__(
        self, dbapi: Any, connect: Callable[[], sqlite3.Connection], isolation_level: str | None
    ) -> None:
        self.dbapi = dbapi
        self._queue: SimpleQueue[Any] | None = SimpleQueue()
        self._settings: list[Work] = []
        self._isolation_level = isolation_level
        self.in_transaction: bool | None = False
        #: Trips to the thread so far (``bench/db_cost.py`` reads them).
        self.trips = 0
        thread = threading.Thread(
            target=_serve, args=(self._queue, connect), name=f"tinbao-sqlite-{next(_numbers)}"
        )
        thread.daemon = True
        thread.start()
        # SQLAlchemy's driver_connection: the adapter itself (it has no other one to show).
        self._connection = self  # type: ignore[assignment]
        self._finalizer = weakref.finalize(self, _stop, self._queue)

    def _run(self, work: Work | None) -> Any:
        """One trip: pending settings, then ``work``; returns what ``work`` returned."""
        if self._queue is None:
            raise self.dbapi.OperationalError("connection closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        settings, self._settings = self._settings, []
        self._queue.put((future, settings, work))
        self.trips += 1
        try:
            result = await_(future)
        except BaseException:
            self.in_transaction = None
            raise
        if work is None:
            return None
        value, self.in_transaction = result
        return value

    async def connect(self) -> Connection:
        """Open the ``sqlite3`` connection in its thread (the first trip)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        self._queue.put((future, (), None))
        try:
            await future
        except BaseException:
            self._shut()
            raise
        return self

    # -- DBAPI

    def cursor(self, server_side: bool = False) -> Cursor:
        return ServerSideCursor(self) if server_side else Cursor(self)

    def commit(self) -> None:
        if self.in_transaction is not False:
            self._run(_commit)

    def rollback(self) -> None:
        if self.in_transaction is not False and self._queue is not None:
            self._run(_rollback)

    @property
    def isolation_level(self) -> str | None:
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._isolation_level = value

        def apply(connection: sqlite3.Connection) -> None:
            connection.isolation_level = value  # type: ignore[assignment]

        self._settings.append(apply)

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._settings.append(lambda connection: connection.create_function(*args, **kwargs))

    def close(self) -> None:
        if self._queue is None:
            return
        try:
            self._run(_close)
        finally:
            self._shut()

    def terminate(self) -> None:
        """Close without waiting (SQLAlchemy, on an invalidated or collected connection)."""
        if in_greenlet():
            with contextlib.suppress(Exception):  # closing is best effort here
                self.close()
        self._shut()

    def _shut(self) -> None:
        if self._queue is not None:
            self._finalizer()
            self._queue = None


class Driver(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI "module" handed to SQLAlchemy's aiosqlite dialect (``module=``)."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *args: Any, **kwargs: Any) -> Connection:  # type: ignore[override]
        kwargs.pop("async_creator_fn", None)

        def opened() -> sqlite3.Connection:
            return sqlite3.connect(*args, **kwargs)

        isolation_level = kwargs.get("isolation_level", "")
        return await_(Connection(self, opened, isolation_level).connect())
