"""SQLite under asyncio at one thread hop per database operation, one writer at a time.

SQLite's Python module blocks, so each connection lives in a thread of its own and the event
loop hands it work. SQLAlchemy's ``aiosqlite`` driver makes every DBAPI call a trip to that
thread and back (a queue put, the thread waking, the loop waking): a statement costs three or
four (create the cursor, execute, fetch, close), a commit one, and a connection returned to
the pool one more for its rollback, even when nothing is open.

This driver keeps SQLAlchemy's ``sqlite+aiosqlite`` dialect (same URL, same SQL, same
``sqlite3`` module underneath) and replaces only the adapter between the two:

* a statement is **one** trip: the thread creates a cursor, executes, fetches every row and
  closes it, and hands back the rows with the row count and ``lastrowid``;
* ``commit`` and ``rollback`` make no trip when the connection holds no transaction (the state
  is read in the thread after every trip: only this adapter touches the connection);
* connection settings that only affect the statements that follow (the isolation level, SQL
  functions, ``PRAGMA read_uncommitted``, which SQLAlchemy sets when a connection is handed out
  or returned) are kept and applied at the start of the next trip instead of one trip each;
  the engine's pragmas are set in the trip that opens a connection;
* one writer at a time (:mod:`storage.sqlite_writer`): a connection takes the engine's
  :class:`~storage.sqlite_writer.WriterLock` before its transaction's first write and gives it
  back when the transaction ends; a **lone write** (:func:`storage.db.begin_lone_write`: the
  step's only statement, its own transaction) goes to the engine's
  :class:`~storage.sqlite_writer.GroupCommit` and commits with the others waiting at the time.

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
from sqlalchemy.util.concurrency import await_, in_greenlet

from storage.sqlite_writer import GroupCommit, Result, WriterLock, execute

#: What the thread runs: a function of its ``sqlite3`` connection.
Work = Callable[[sqlite3.Connection], Any]

#: ``PRAGMA read_uncommitted = N``, which SQLAlchemy's SQLite dialect runs to set (and, when a
#: connection that ran in autocommit goes back to the pool, to reset) the isolation level.
#: Setting it, even to the value it has, expires every statement the connection compiled (SQLite
#: does so for its flag pragmas): so it is only sent when the value changes.
_READ_UNCOMMITTED = re.compile(r"\s*PRAGMA\s+read_uncommitted\s*=\s*([01])\s*;?\s*", re.IGNORECASE)

#: Statements that only read; anything else takes the writer lock (``WITH``: if it holds a write).
_READS = frozenset({"SELECT", "VALUES", "EXPLAIN", "PRAGMA"})
#: Statements a lone write may be, to be committed with others.
_ROW_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_DML = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)

_STOP = object()
_UNSET = object()
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


def _deliver(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None, Any]) -> None:
    if not future.done():  # not cancelled while the thread worked
        future.set_result(outcome)


def _serve(queue: SimpleQueue[Any], connect: Callable[[], sqlite3.Connection]) -> None:
    """The connection's thread: runs each job on the connection, in order, and hands back
    ``(result, error, in_transaction)`` to the loop that asked (``in_transaction``: the
    connection's own flag after the job)."""
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
            elif work is not None:
                result = work(connection)
        except BaseException as exc:  # handed to the caller, whatever it is
            error = exc
        if future is not None:
            state = connection.in_transaction if connection is not None else False
            # RuntimeError: the loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_deliver, future, (result, error, state))
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
            connection._set("read_uncommitted", pragma.group(1), _statement(operation, None))
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

        self._connection._lone = False
        self._connection._before(operation)
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


class Connection(AdaptedConnection):
    """The DBAPI connection SQLAlchemy sees: its calls become jobs for the connection's thread.

    ``in_transaction`` is the ``sqlite3`` connection's own flag as of the last trip (``None``
    when unknown: a trip was cut off, so the next ``commit``/``rollback`` goes to the thread).
    ``writing``: the connection holds its driver's writer lock (from its transaction's first
    write to its end)."""

    def __init__(
        self, dbapi: Driver, connect: Callable[[], sqlite3.Connection], isolation_level: str | None
    ) -> None:
        self.dbapi = dbapi
        self.writing = False
        self.in_transaction: bool | None = False
        self._lone = False
        self._queue: SimpleQueue[Any] | None = SimpleQueue()
        #: Settings for the next trip, by name: a newer one replaces an older one (a connection
        #: handed out for lone writes again and again makes no trip of its own meanwhile).
        self._settings: dict[str, tuple[object, Work]] = {}
        #: The settings' values as the connection has them once the trips queued so far ran.
        self._values: dict[str, object] = {
            "read_uncommitted": "0",
            "isolation_level": isolation_level,
        }
        self._isolation_level = isolation_level
        thread = threading.Thread(
            target=_serve, args=(self._queue, connect), name=f"tinbao-sqlite-{next(_numbers)}"
        )
        thread.daemon = True
        thread.start()
        # SQLAlchemy's driver_connection: the adapter itself (it has no other one to show).
        self._connection = self  # type: ignore[assignment]
        self._finalizer = weakref.finalize(self, _stop, self._queue)

    def submit(self, work: Work | None) -> asyncio.Future[Any]:
        """Queue one trip (pending settings, then ``work``); its future gives
        ``(result, error, in_transaction)``."""
        if self._queue is None:
            raise self.dbapi.OperationalError("connection closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        settings = tuple(work for _value, work in self._settings.values())
        self._values.update((name, value) for name, (value, _work) in self._settings.items())
        self._settings = {}
        self._queue.put((future, settings, work))
        self.dbapi.trips += 1
        return future

    def _run(self, work: Work) -> Any:
        """One trip, from SQLAlchemy's side (in its greenlet); returns what ``work`` returned."""
        try:
            value, error, self.in_transaction = await_(self.submit(work))
        except BaseException:  # cancelled: the job may run yet, its outcome is unknown
            self.in_transaction = None
            raise
        if self.writing and self.in_transaction is False:
            self._done_writing()
        if error is not None:
            raise error
        return value

    async def connect(self) -> Connection:
        """Open the ``sqlite3`` connection in its thread (the first trip)."""
        try:
            _value, error, _state = await self.submit(None)
        except BaseException:
            self._shut()
            raise
        if error is not None:
            self._shut()
            raise error
        return self

    # -- the writer

    def lone_write(self) -> None:
        """The next statement is its transaction's only one (:func:`storage.db.begin_lone_write`):
        if it writes rows, it is committed with the other lone writes waiting at the time."""
        self._lone = True

    def _lone_write(self, operation: str) -> bool:
        lone, self._lone = self._lone, False
        if not lone or self.writing or self.in_transaction is not False:
            return False
        return _is_row_write(operation)

    def _before(self, operation: str) -> None:
        """Take the writer lock before the first write of a transaction."""
        if self.writing or not writes(operation):
            return
        await_(self.dbapi.writer.acquire())
        self.writing = True

    def _done_writing(self) -> None:
        self.writing = False
        self.dbapi.writer.release()

    # -- DBAPI

    def cursor(self, server_side: bool = False) -> Cursor:
        return ServerSideCursor(self) if server_side else Cursor(self)

    def commit(self) -> None:
        self._lone = False
        if self.in_transaction is not False:
            self._run(_commit)

    def rollback(self) -> None:
        self._lone = False
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

        self._set("isolation_level", value, apply)

    def _set(self, name: str, value: object, work: Work) -> None:
        """Apply ``work`` at the start of the next trip, unless the setting already has
        ``value`` (a newer setting of the same name replaces an older one)."""
        if self._values.get(name, _UNSET) == value:
            self._settings.pop(name, None)
        else:
            self._settings[name] = (value, work)

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        name = f"function {args[:2]} {kwargs.get('name', '')}{kwargs.get('narg', '')}"
        self._set(name, object(), lambda connection: connection.create_function(*args, **kwargs))

    def close(self) -> None:
        if self._queue is None:
            return
        try:
            _value, error, _state = await_(self.submit(_close))
        finally:
            self._shut()
        if error is not None:
            raise error

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
        if self.writing:  # closed in the middle of a transaction: SQLite rolls it back
            self._done_writing()


def _is_row_write(operation: str) -> bool:
    return _head(operation) in _ROW_WRITES


class Driver(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI "module" handed to SQLAlchemy's aiosqlite dialect (``module=``), one per
    engine: its connections share one writer lock and one group commit.

    ``pragmas`` are set on every connection as it opens; ``writer_timeout``: seconds a write
    waits for the writer lock before failing (as SQLite's ``busy_timeout``)."""

    def __init__(
        self, pragmas: Sequence[tuple[str, str]] = (), writer_timeout: float = 5.0
    ) -> None:
        super().__init__(aiosqlite, sqlite3)
        self.pragmas = tuple(pragmas)
        self.writer = WriterLock(writer_timeout)
        self.group = GroupCommit(self.writer, self._open_batch_connection)
        self._connect_args: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        #: Trips to connection threads so far (``bench/db_cost.py`` and the tests read them).
        self.trips = 0

    def _opener(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Callable[[], Any]:
        def opened() -> sqlite3.Connection:
            connection = sqlite3.connect(*args, **kwargs)
            for name, value in self.pragmas:
                connection.execute(f"PRAGMA {name}={value}").close()
            return connection

        return opened

    def connect(self, *args: Any, **kwargs: Any) -> Connection:  # type: ignore[override]
        kwargs.pop("async_creator_fn", None)
        self._connect_args = (args, dict(kwargs))
        isolation_level = kwargs.get("isolation_level", "")
        return await_(Connection(self, self._opener(args, kwargs), isolation_level).connect())

    async def _open_batch_connection(self) -> Connection:
        """The group commit's own connection, in autocommit (its batches say ``BEGIN``)."""
        if self._connect_args is None:
            raise sqlite3.OperationalError("no connection was opened yet")
        args, kwargs = self._connect_args
        kwargs = {**kwargs, "isolation_level": None}
        return await Connection(self, self._opener(args, kwargs), None).connect()

    def dispose(self) -> None:
        """The engine is disposed: close the group commit's connection too."""
        self.group.close()
