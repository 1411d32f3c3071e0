"""One SQLite writer at a time in this process, and lone writes committed together.

SQLite lets one connection write at a time; a second one waits in SQLite's busy handler, which
polls and *sleeps* (up to 100 ms a try), and answers waited behind it. So the connections of an
engine (:mod:`storage.sqlite_driver`) take one :class:`WriterLock` before their transaction's
first write and give it back when the transaction ends. Reads never take it (WAL: they go on
beside the writer).

Under asyncio a write holds that lock for at least one round of the event loop: its result
comes back from the connection's thread and waits its turn among everything else the loop has
to do (2–5 ms flat out), however short the statement. One write per round was the ceiling of
the citizens' steps. :class:`GroupCommit` lifts it for lone writes (a statement that is a whole
transaction: a step that changes nothing but its conversation): the ones that arrive while the
lock is busy wait together, and the next holder commits them all in one transaction, in one
trip to a connection of its own. Each caller still gets its own statement's result only once
that transaction has committed, so a step is committed before its answer, as before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: A statement's result as the driver's cursors take it: description, rows, rowcount, lastrowid.
Result = tuple[Any, list[Any] | None, int, int | None]
#: One statement's outcome in a batch: its result, or the error it raised.
Outcome = tuple[Result | None, BaseException | None]

#: At most this many lone writes in one transaction.
BATCH_LIMIT = 64


class WriterLock:
    """One writer at a time in this process, in arrival order (the lock passes straight to
    the first one waiting).

    Waiting longer than ``timeout`` fails as SQLite's own busy timeout would (``database is
    locked``). Only other processes (the command line) still meet SQLite's busy handler.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._held = False
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._since = 0.0
        #: Times taken and seconds held so far (``bench/db_cost.py`` reads them).
        self.taken = 0
        self.held = 0.0

    def locked(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        """Take the lock if it is free (and nobody waits for it)."""
        if self._held:
            return False
        self._held = True
        self._took()
        return True

    async def acquire(self) -> None:
        """Wait for the lock; past ``timeout``, SQLite's own "database is locked" error."""
        if self.try_acquire():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            async with asyncio.timeout(self.timeout):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                self.release()  # handed over just as the wait was cut off: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(future)
            if isinstance(exc, TimeoutError):
                raise sqlite3.OperationalError("database is locked") from None
            raise
        self._took()

    def _took(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.taken += 1
        self._since = time.perf_counter()

    def release(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed() and _running_loop() is not loop:
            # A connection collected in another thread: the lock is the loop's to release.
            loop.call_soon_threadsafe(self.release)
            return
        self.held += time.perf_counter() - self._since
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)  # theirs now: still held
                return
        self._held = False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_batch(statements: Sequence[tuple[str, Any]]) -> Callable[[sqlite3.Connection], Any]:
    """The work, for a connection's thread (in autocommit), of committing ``statements`` in one
    transaction: each statement's :data:`Outcome`, in order.

    A statement that fails gets its error and is left out: the transaction is rolled back and
    the others run again without it, so what commits is exactly the statements that report a
    result. A failure of the transaction itself (``BEGIN``, ``COMMIT``: the database is locked
    by another process, the disk) is every remaining statement's error: none of them committed.
    """

    def run(connection: sqlite3.Connection) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(statements)
        remaining = list(range(len(statements)))
        while remaining:
            results: dict[int, Result] = {}
            failed: tuple[int, BaseException] | None = None
            try:
                connection.execute("BEGIN IMMEDIATE")
                for index in remaining:
                    operation, parameters = statements[index]
                    try:
                        results[index] = execute(connection, operation, parameters)
                    except sqlite3.Error as exc:
                        failed = (index, exc)
                        break
                if failed is None:
                    connection.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(connection)
                for index in remaining:
                    outcomes[index] = (None, exc)
                break
            if failed is None:
                for index in remaining:
                    outcomes[index] = (results[index], None)
                break
            _rollback(connection)
            index, error = failed
            outcomes[index] = (None, error)
            remaining.remove(index)
        return [outcome or (None, sqlite3.OperationalError("not run")) for outcome in outcomes]

    return run


def _rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def execute(connection: sqlite3.Connection, operation: str, parameters: Any) -> Result:
    """Run one statement and fetch all it returns (in the connection's thread)."""
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


class Worker(Protocol):
    """A connection's thread, as :class:`GroupCommit` uses it."""

    def submit_then(
        self,
        work: Callable[[sqlite3.Connection], Any],
        then: Callable[[tuple[Any, BaseException | None, Any]], object],
    ) -> None:
        """Run ``work`` in the thread, then ``then((result, error, in_transaction))`` in the
        loop."""
        ...

    def terminate(self) -> None: ...


@dataclass(eq=False)
class _Waiting:
    operation: str
    parameters: Any
    future: asyncio.Future[Outcome] = field(repr=False)


class GroupCommit:
    """Lone writes from every connection of an engine, committed together.

    :meth:`write` queues the statement and waits for its outcome. When no batch is in flight,
    the :class:`WriterLock` is taken (at once if it is free, else by a task that waits for it),
    then everything queued until then (up to :data:`BATCH_LIMIT`) is committed in one trip on
    a SQLite connection of its own (``open_worker``, opened the first time; in autocommit: each
    batch is its own ``BEGIN IMMEDIATE`` … ``COMMIT``). When the trip ends (in the loop, with
    no task in between) the lock is given back, the callers get their outcomes, and the writes
    that arrived meanwhile form the next batch. A write whose caller gives up (cancelled)
    before its batch was taken is not written; once taken, it may be (as any write cut off
    mid-way).
    """

    def __init__(self, lock: WriterLock, open_worker: Callable[[], Awaitable[Worker]]) -> None:
        self.lock = lock
        self._open_worker = open_worker
        self._worker: Worker | None = None
        self._queue: list[_Waiting] = []
        self._in_flight = False
        self._task: asyncio.Task[None] | None = None
        #: Batches committed and statements in them so far (``bench/db_cost.py`` reads them).
        self.batches = 0
        self.statements = 0

    @property
    def waiting(self) -> int:
        """Lone writes queued for the next batch."""
        return len(self._queue)

    async def write(self, operation: str, parameters: Any) -> Result:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(operation, parameters, loop.create_future())
        self._queue.append(waiting)
        self._next(loop)
        try:
            result, error = await waiting.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # not taken yet: never written
                self._queue.remove(waiting)
            raise
        if error is not None:
            raise error
        assert result is not None
        return result

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the next batch, unless one is in flight or being prepared."""
        task = self._task
        if self._in_flight or not self._queue or (task is not None and not task.done()):
            return
        if self._worker is not None and self.lock.try_acquire():
            self._start(self._worker)
        else:
            self._task = loop.create_task(self._prepare(), name="sqlite-group-commit")

    async def _prepare(self) -> None:
        """Wait for the lock (and open the connection the first time), then start."""
        try:
            await self.lock.acquire()
        except sqlite3.OperationalError as exc:  # waited past the busy timeout
            self._fail_queued(exc)
            return
        except asyncio.CancelledError:  # the loop is closing: nothing more is written
            self._fail_queued(sqlite3.OperationalError("interrupted"))
            raise
        try:
            if self._worker is None:
                self._worker = await self._open_worker()
        except Exception as exc:  # the database cannot be opened: these writes fail
            self.lock.release()
            self._fail_queued(exc)
            return
        except BaseException:
            self.lock.release()
            self._fail_queued(None)
            raise
        finally:
            if self._task is asyncio.current_task():
                self._task = None
        if self._queue:
            self._start(self._worker)
        else:  # every caller gave up meanwhile
            self.lock.release()

    def _start(self, worker: Worker) -> None:
        """Commit a batch (the lock is held): one trip, :meth:`_done` when it returns."""
        batch, self._queue = self._queue[:BATCH_LIMIT], self._queue[BATCH_LIMIT:]
        self._in_flight = True
        work = run_batch([(w.operation, w.parameters) for w in batch])
        try:
            worker.submit_then(work, lambda outcome: self._done(batch, outcome))
        except Exception as exc:  # the connection is closed
            self._done(batch, (None, exc, False))

    def _done(self, batch: list[_Waiting], outcome: tuple[Any, BaseException | None, Any]) -> None:
        self._in_flight = False
        self.lock.release()
        outcomes, error, _state = outcome
        if error is not None:
            outcomes = [(None, error)] * len(batch)
            self.close()  # a next batch opens a fresh connection
        else:
            self.batches += 1
            self.statements += len(batch)
        _settle(batch, outcomes)
        with contextlib.suppress(RuntimeError):  # no running loop: the loop is closing
            self._next(asyncio.get_running_loop())

    def _fail_queued(self, error: BaseException | None) -> None:
        queued, self._queue = self._queue, []
        failure = error or sqlite3.OperationalError("interrupted")
        _settle(queued, [(None, failure)] * len(queued))

    def close(self) -> None:
        """Close the batches' connection (the engine is disposed); a next write reopens it."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.terminate()


def _settle(batch: Sequence[_Waiting], outcomes: Sequence[Outcome]) -> None:
    for waiting, outcome in zip(batch, outcomes, strict=True):
        if not waiting.future.done():
            waiting.future.set_result(outcome)
