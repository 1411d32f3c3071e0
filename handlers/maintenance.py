"""Housekeeping: expired drafts, old rate-limit hits, old update ids, orphaned media.

Expired drafts are ended batch after batch (:data:`DRAFT_BATCH` conversations each), every batch
its own short transaction of Core statements, until none is left: a backlog (10,000 drafts that
expired together) is cleared in one run, and a citizen's step waits at most one batch for the
write lock. A draft its citizen touched while the purge ran is left alone: each row is ended only
at the version that was read, and only while it is still expired; its images are kept too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, String, Table, func, literal, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import Conversation
from storage.repositories import Media, RateLimits, UpdateLog

UPDATE_ID_RETENTION = timedelta(days=7)
RATE_HIT_RETENTION = timedelta(days=2)
#: Expired drafts ended per transaction.
DRAFT_BATCH = 500

_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]

#: Makes each of the purge's write transactions wait its turn (SQLite's in-process writer lock).
WriteLock = Callable[[], AbstractAsyncContextManager[object]]


@dataclass(frozen=True)
class PurgeResult:
    drafts: int
    rate_hits: int
    update_ids: int
    blobs: int


def _without_draft(dialect: str) -> ColumnElement[Any]:
    """The conversation's data less its draft and where to resume it, computed in the
    database (so that the row written is the row as it is, not as it was read)."""
    data = _CONVERSATIONS.c.data
    if dialect == "postgresql":  # jsonb - text
        return data.op("-")(literal("draft", String())).op("-")(literal("resume", String()))
    return func.json_remove(data, "$.draft", "$.resume")


def _blob_ids(data: Any) -> list[int]:
    draft = data.get("draft") if isinstance(data, dict) else None
    media = draft.get("media") if isinstance(draft, dict) else None
    if not isinstance(media, list):
        return []
    return [
        m["blob_id"] for m in media if isinstance(m, dict) and isinstance(m.get("blob_id"), int)
    ]


async def expired_drafts(
    session: AsyncSession, *, now: datetime, limit: int = DRAFT_BATCH
) -> Sequence[Row[str, int, Any]]:
    """Up to ``limit`` drafts expired at ``now``, oldest first: ``key``, ``version``, ``data``."""
    conversations = _CONVERSATIONS.c
    result = await session.execute(
        select(conversations.key, conversations.version, conversations.data)
        .where(conversations.expires_at.is_not(None), conversations.expires_at < now)
        .order_by(conversations.expires_at)
        .limit(limit)
    )
    return result.all()


async def end_drafts(
    session: AsyncSession, rows: Sequence[Row[str, int, Any]], *, now: datetime
) -> list[str]:
    """End the drafts of ``rows`` (from :func:`expired_drafts`) in one statement: each
    conversation idle, its draft dropped, its version bumped, but only where it still has the
    version that was read and is still expired; then their images, in one more. Returns the
    keys of the conversations ended (a draft its citizen touched since is not among them)."""
    if not rows:
        return []
    conversations = _CONVERSATIONS.c
    dialect = session.bind.dialect.name if session.bind is not None else ""
    ended = await session.execute(
        update(_CONVERSATIONS)
        .where(
            tuple_(conversations.key, conversations.version).in_(
                [(row.key, row.version) for row in rows]
            ),
            conversations.expires_at < now,
        )
        .values(
            state="idle",
            data=_without_draft(dialect),
            expires_at=None,
            version=conversations.version + 1,
            updated_at=now,
        )
        .returning(conversations.key)
    )
    keys = list(ended.scalars())
    done = set(keys)
    blob_ids = [blob for row in rows if row.key in done for blob in _blob_ids(row.data)]
    await Media(session).delete_blobs(blob_ids)
    return keys


async def end_expired_drafts(
    session: AsyncSession, *, now: datetime, limit: int = DRAFT_BATCH
) -> tuple[list[str], int]:
    """One batch, in the caller's transaction: up to ``limit`` expired drafts ended and their
    images deleted. Returns the keys of the conversations ended and how many expired ones were
    read (``limit``: there may be more)."""
    rows = await expired_drafts(session, now=now, limit=limit)
    return await end_drafts(session, rows, now=now), len(rows)


async def purge_expired_drafts(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    now: datetime,
    batch: int = DRAFT_BATCH,
    lock: WriteLock | None = None,
    ended: Callable[[Sequence[str]], None] | None = None,
) -> int:
    """End every draft expired at ``now``, ``batch`` at a time, each batch committed on its
    own; ``ended`` hears the keys of each committed batch. Returns how many were ended."""
    total = 0
    while True:
        async with (
            lock() if lock is not None else contextlib.nullcontext(),
            session_factory() as session,
            session.begin(),
        ):
            keys, read = await end_expired_drafts(session, now=now, limit=batch)
        total += len(keys)
        if keys and ended is not None:
            ended(keys)
        if read < batch or not keys:
            # Fewer than a batch: none left. None ended of a full batch: every one was touched
            # meanwhile and is no longer expired; the next run looks again.
            return total
        await asyncio.sleep(0)  # the citizens' steps waiting for the lock go first


async def purge(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    now: datetime,
    draft_ttl: timedelta,
    batch: int = DRAFT_BATCH,
    lock: WriteLock | None = None,
    ended: Callable[[Sequence[str]], None] | None = None,
) -> PurgeResult:
    """Delete what has outlived its purpose: the expired drafts (:func:`purge_expired_drafts`),
    then old rate-limit hits, update ids and orphaned images in one more transaction."""
    drafts = await purge_expired_drafts(
        session_factory, now=now, batch=batch, lock=lock, ended=ended
    )
    async with (
        lock() if lock is not None else contextlib.nullcontext(),
        session_factory() as session,
        session.begin(),
    ):
        rate_hits = await RateLimits(session).purge_before(now - RATE_HIT_RETENTION)
        update_ids = await UpdateLog(session).purge_before(now - UPDATE_ID_RETENTION)
        blobs = await Media(session).delete_orphan_blobs(now - draft_ttl - timedelta(days=1))
    return PurgeResult(drafts, rate_hits, update_ids, blobs)
