"""Row leases: how a sender takes an outbox row, records progress and lets it go.

A row is taken with a conditional ``UPDATE ... WHERE id = :id AND <still claimable>``
(rowcount 1 = ours), which gives it a lease (``claimed_until``). Two worker processes never
send the same row; a crashed worker's lease lapses and the row returns. Every later write on
the row is conditional on the lease still being ours (:meth:`Leases.save`, :meth:`finish`,
:meth:`release`, :meth:`fail`); a ``False`` from them means another worker took it over.

Rows not claimed (nowhere to send them yet, or not sendable at all) are settled with
:meth:`park` and :meth:`settle`, conditional on still being claimable. Shared by the officers'
delivery worker, the timer worker and the citizen messenger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import BigInteger, and_, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from handlers.outbox import Status
from storage.db import begin_lone_write, lone_write_done, writer
from storage.models import OutboxMessage

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Runs inside the transaction that settles a row (enqueues an alert, re-routes a card).
Then = Callable[[AsyncSession], Awaitable[None]]
#: Builds a statement that goes with a settle and only if it took effect (raises the chat's
#: mark, records a card post): an ``INSERT ... SELECT ... FROM settled WHERE ...`` over
#: ``settled``, a FROM with one ``id`` column (the settled row, or no row). The flag says
#: whether the database is PostgreSQL. There the settle and these run as one statement, a
#: round trip in all (:meth:`Leases.finish`).
After = Callable[[FromClause, bool], Insert]


@dataclass
class Claim:
    """A row this process holds: its lease, and the payload and attempts it had when taken."""

    row_id: int
    lease: datetime
    payload: dict[str, Any]
    attempts: int
    #: Taken over from a worker whose lease lapsed while it was sending the row.
    taken_over: bool = False
    #: What the claim's ``returning`` columns gave, by name.
    extra: dict[str, Any] = field(default_factory=dict)


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def insert_ignoring(session: AsyncSession, model: type[Any]) -> Any:
    """``INSERT`` that can say ``ON CONFLICT DO NOTHING`` on either backend."""
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(model)
    return sqlite_insert(model)


def claimable(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """Due and pending, or sending under a lease that lapsed."""
    return or_(
        and_(OutboxMessage.status == Status.PENDING, OutboxMessage.next_attempt_at <= now),
        and_(OutboxMessage.status == Status.SENDING, OutboxMessage.claimed_until < now),
    )


class Leases:
    """Lease operations on outbox rows, each in its own short transaction."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Callable[[], datetime],
        lease_seconds: float,
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.lease_seconds = lease_seconds

    async def write(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, lone: bool = False
    ) -> T:
        """Run ``work`` in a transaction, again if the database was busy. ``lone``: ``work``
        runs one statement and nothing after it; on PostgreSQL that statement runs alone in
        autocommit (one round trip instead of ``BEGIN``, it and ``COMMIT``)."""
        bind = self.session_factory.kw.get("bind")
        for attempt in range(1, 5):
            try:
                # SQLite: in turn with the citizens' steps (storage.db.writer), rather than
                # against them in SQLite's sleeping busy handler (answers waited up to ~1 s).
                lock = writer(bind) if isinstance(bind, AsyncEngine) else contextlib.nullcontext()
                async with lock, self.session_factory() as session, session.begin():
                    alone = lone and await begin_lone_write(session)
                    result = await work(session)
                    if alone:
                        lone_write_done(session)
                    return result
            except OperationalError:
                if attempt == 4:
                    raise
                log.info("database busy; retrying a delivery write")
                await asyncio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def _lease(self) -> datetime:
        return self.clock() + timedelta(seconds=self.lease_seconds)

    @staticmethod
    def _mine(claim: Claim) -> ColumnElement[bool]:
        return and_(
            OutboxMessage.id == claim.row_id,
            OutboxMessage.status == Status.SENDING,
            OutboxMessage.claimed_until == claim.lease,
        )

    async def claim(
        self,
        row_id: int,
        *,
        where: ColumnElement[bool] | None = None,
        lock: int | None = None,
        then: Callable[[AsyncSession, Claim], Awaitable[None]] | None = None,
        returning: Mapping[str, ColumnElement[Any]] | None = None,
        **values: Any,
    ) -> Claim | None:
        """Take the row if it is still claimable (and ``where`` holds); ``values`` are written
        with the claim. ``lock``: on PostgreSQL, claims with the same key take turns (an
        advisory lock held to the commit), so that ``where`` sees the other claims' commits.
        ``then`` runs in the claim's transaction. With ``where``, the claim says whether it took
        the row over from a worker whose lease lapsed mid-send (``taken_over``). ``returning``:
        more columns the claim's statement reads (in :attr:`Claim.extra`); they must not
        depend on the claimed row itself.

        The claim is one ``UPDATE ... RETURNING`` (on PostgreSQL the status it replaced comes
        from a subquery of the same statement, which sees the row as it was): with the lock,
        ``BEGIN``, the lock, the claim and ``COMMIT``; without, the claim alone."""
        now = self.clock()
        lease = self._lease()
        extra = dict(returning or {})

        async def claim(session: AsyncSession) -> Claim | None:
            postgres = session.get_bind().dialect.name == "postgresql"
            if lock is not None and postgres:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock})
            terms = [OutboxMessage.id == row_id, claimable(now)]
            columns: list[Any] = [OutboxMessage.payload, OutboxMessage.attempts]
            columns += [column.label(f"x_{name}") for name, column in extra.items()]
            before = None
            if where is not None:
                terms.append(where)
                was = select(OutboxMessage.status).where(OutboxMessage.id == row_id)
                if postgres:
                    columns.append(was.scalar_subquery().label("before"))
                else:  # SQLite's RETURNING would see the row as updated
                    before = await session.scalar(was)
            found = (
                await session.execute(
                    update(OutboxMessage)
                    .where(*terms)
                    .values(status=Status.SENDING, claimed_until=lease, **values)
                    .returning(*columns)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if found is None:
                return None
            if where is not None and postgres:
                before = found.before
            taken = Claim(
                row_id,
                lease,
                dict(found.payload or {}),
                int(found.attempts),
                taken_over=before == Status.SENDING,
                extra={name: getattr(found, f"x_{name}") for name in extra},
            )
            if then is not None:
                await then(session, taken)
            return taken

        # Without a lock or ``then`` the claim is a single statement: on PostgreSQL it runs
        # alone, in autocommit.
        return await self.write(claim, lone=lock is None and then is None)

    async def save(
        self,
        claim: Claim,
        *,
        then: Then | None = None,
        after: Sequence[After] = (),
        **values: Any,
    ) -> bool:
        """Record progress and renew the lease; ``after`` and ``then`` go with it (see
        :meth:`finish`)."""
        lease = self._lease()
        if not await self._settle(claim, {"claimed_until": lease, **values}, then, after):
            return False
        claim.lease = lease
        return True

    async def finish(
        self,
        claim: Claim,
        *,
        then: Then | None = None,
        after: Sequence[After] = (),
        **values: Any,
    ) -> bool:
        """Mark the row sent. The statements ``after`` builds go with it, only if it took
        effect; without ``then`` they are one statement with it on PostgreSQL (a round trip in
        all, in autocommit). ``then`` runs in the same transaction, after them."""
        return await self._settle(
            claim,
            {
                "status": Status.SENT,
                "sent_at": self.clock(),
                "claimed_until": None,
                "last_error": None,
                **values,
            },
            then,
            after,
        )

    async def fail(
        self,
        claim: Claim,
        error: str,
        *,
        then: Then | None = None,
        after: Sequence[After] = (),
        **values: Any,
    ) -> bool:
        """A permanent failure; ``after`` and ``then`` go with it (see :meth:`finish`)."""
        return await self._settle(
            claim,
            {
                "status": Status.FAILED,
                "claimed_until": None,
                "last_error": error,
                "attempts": OutboxMessage.attempts + 1,
                **values,
            },
            then,
            after,
        )

    async def release(
        self,
        claim: Claim,
        delay: float,
        *,
        error: str | None,
        failed: bool,
        then: Then | None = None,
        after: Sequence[After] = (),
        **values: Any,
    ) -> bool:
        """Back to the queue, due again after ``delay`` seconds; ``after`` and ``then`` go
        with it (see :meth:`finish`). ``False``: another worker took the row over."""
        changes: dict[str, Any] = {
            "status": Status.PENDING,
            "claimed_until": None,
            "next_attempt_at": self.clock() + timedelta(seconds=delay),
            **values,
        }
        if failed:
            changes["attempts"] = OutboxMessage.attempts + 1
        if error is not None:
            changes["last_error"] = error
        return await self._settle(claim, changes, then, after)

    async def _settle(
        self,
        claim: Claim,
        values: dict[str, Any],
        then: Then | None,
        after: Sequence[After] = (),
    ) -> bool:
        change = (
            update(OutboxMessage)
            .where(self._mine(claim))
            .values(**values)
            .execution_options(synchronize_session=False)
        )

        async def settle(session: AsyncSession) -> int:
            if session.get_bind().dialect.name == "postgresql" and then is None:
                # One statement: the settle in a CTE, the rest inserting from it.
                settled = change.returning(OutboxMessage.id).cte("settled")
                ctes = [build(settled, True).cte(f"after_{i}") for i, build in enumerate(after)]
                count = select(func.count()).select_from(settled).add_cte(*ctes)
                return int(await session.scalar(count) or 0)
            if rowcount(await session.execute(change)) != 1:
                return 0
            postgres = session.get_bind().dialect.name == "postgresql"
            mine = select(literal(claim.row_id, BigInteger).label("id")).subquery("settled")
            for build in after:
                await session.execute(build(mine, postgres))
            if then is not None:
                await then(session)
            return 1

        return await self.write(settle, lone=then is None) == 1

    # -------------------------------------------------------------------------- unclaimed rows

    async def park(self, row_id: int, delay: float, error: str) -> None:
        """Nowhere to send it yet: keep it pending and look again after ``delay`` seconds."""
        now = self.clock()
        due = now + timedelta(seconds=delay)

        async def park(session: AsyncSession) -> None:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id, claimable(now))
                .values(
                    status=Status.PENDING,
                    claimed_until=None,
                    next_attempt_at=due,
                    last_error=error,
                )
                .execution_options(synchronize_session=False)
            )

        await self.write(park, lone=True)

    async def settle(self, row_id: int, status: Status, error: str | None) -> None:
        """Settle a row that was never claimed (it cannot be sent at all)."""
        now = self.clock()

        async def settle(session: AsyncSession) -> None:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id, claimable(now))
                .values(status=status, claimed_until=None, last_error=error)
                .execution_options(synchronize_session=False)
            )

        await self.write(settle, lone=True)


async def enqueue_once(
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
    """Add an outbox row unless one with the same ``dedupe_key`` exists (a worker's own rows:
    an alert, a re-routed card)."""
    await session.execute(
        insert_ignoring(session, OutboxMessage)
        .values(
            kind=kind,
            destination=destination,
            payload=payload,
            report_id=report_id,
            dedupe_key=dedupe_key,
            status=Status.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            priority=priority,
            message_count=0,
        )
        .on_conflict_do_nothing()
    )


__all__ = ["After", "Claim", "Leases", "claimable", "enqueue_once", "insert_ignoring", "rowcount"]
