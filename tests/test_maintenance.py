"""The maintenance purge of expired drafts: batch after batch, Core statements, each batch its
own transaction (issue 14, P5). Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import heap
from handlers.maintenance import end_drafts, expired_drafts, purge, purge_expired_drafts
from storage.models import Conversation, MediaBlob, RateHit
from storage.repositories import Media
from storage.types import utcnow

TTL = timedelta(hours=24)


async def add_drafts(
    session_factory: async_sessionmaker[AsyncSession],
    count: int,
    *,
    expired: bool = True,
    photos: int = 0,
    prefix: str = "k",
) -> dict[str, list[int]]:
    """``count`` citizens' half-finished drafts (``photos`` images each); key -> blob ids."""
    now = utcnow()
    made: dict[str, list[int]] = {}
    async with session_factory() as session, session.begin():
        for number in range(count):
            key = f"{prefix}{number:04d}"
            blobs = [
                (
                    await Media(session).add_blob(
                        content=b"jpeg", mime="image/jpeg", sha256="0" * 64
                    )
                ).id
                for _ in range(photos)
            ]
            made[key] = blobs
            session.add(
                Conversation(
                    key=key,
                    locale="vi",
                    state="evidence",
                    data={
                        "seen": [number],
                        "draft": {"category": "theft", "media": [{"blob_id": b} for b in blobs]},
                        "resume": "evidence",
                    },
                    step=3,
                    expires_at=now - timedelta(minutes=1) if expired else now + TTL,
                )
            )
    return made


async def conversations(
    session_factory: async_sessionmaker[AsyncSession],
) -> dict[str, Conversation]:
    async with session_factory() as session:
        return {c.key: c for c in await session.scalars(select(Conversation))}


async def blob_ids(session_factory: async_sessionmaker[AsyncSession]) -> set[int]:
    async with session_factory() as session:
        return set(await session.scalars(select(MediaBlob.id)))


async def test_a_backlog_larger_than_a_batch_is_cleared_in_one_run(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await add_drafts(session_factory, 7)
    await add_drafts(session_factory, 2, expired=False, prefix="live")
    batches: list[Sequence[str]] = []

    ended = await purge_expired_drafts(
        session_factory, now=utcnow(), batch=3, ended=lambda keys: batches.append(list(keys))
    )

    assert ended == 7
    assert [len(keys) for keys in batches] == [3, 3, 1]  # each batch committed on its own
    stored = await conversations(session_factory)
    for key, conversation in stored.items():
        if key.startswith("live"):
            assert conversation.state == "evidence" and "draft" in conversation.data
            assert conversation.expires_at is not None
            continue
        assert conversation.state == "idle" and conversation.expires_at is None
        assert conversation.data == {"seen": [int(key[1:])]}  # the rest of the data is kept
        assert conversation.version == 2  # bumped: a process's cached copy is stale
    assert await purge_expired_drafts(session_factory, now=utcnow(), batch=3) == 0


async def test_the_images_of_expired_drafts_are_deleted(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    expired = await add_drafts(session_factory, 4, photos=2)
    live = await add_drafts(session_factory, 1, photos=2, expired=False, prefix="live")

    result = await purge(session_factory, now=utcnow(), draft_ttl=TTL, batch=3)

    assert result.drafts == 4
    assert await blob_ids(session_factory) == {b for blobs in live.values() for b in blobs}
    assert not {b for blobs in expired.values() for b in blobs} & await blob_ids(session_factory)


async def test_a_draft_touched_during_the_purge_survives(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Read as expired, then its citizen takes a step (new version, new expiry) before the
    batch is ended: that draft and its images stay; the others of the batch end."""
    made = await add_drafts(session_factory, 3, photos=1)
    now = utcnow()
    async with session_factory() as session:
        rows = await expired_drafts(session, now=now)
    assert sorted(row.key for row in rows) == sorted(made)
    async with session_factory() as session, session.begin():  # the citizen's step
        await session.execute(
            update(Conversation)
            .where(Conversation.key == "k0001")
            .values(version=Conversation.version + 1, expires_at=now + TTL)
            .execution_options(synchronize_session=False)
        )

    async with session_factory() as session, session.begin():
        ended = await end_drafts(session, rows, now=now)

    assert sorted(ended) == ["k0000", "k0002"]
    stored = await conversations(session_factory)
    assert stored["k0001"].state == "evidence" and "draft" in stored["k0001"].data
    assert stored["k0000"].state == "idle" and "draft" not in stored["k0000"].data
    assert await blob_ids(session_factory) == set(made["k0001"])


async def test_a_draft_touched_between_batches_is_not_ended(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """A citizen's step that gets the write lock between two batches (as a waiting step does)
    moves its draft's expiry on: the purge's next batches leave it alone."""
    await add_drafts(session_factory, 5)
    turns = 0

    @contextlib.asynccontextmanager
    async def lock() -> AsyncIterator[None]:
        nonlocal turns
        turns += 1
        if turns == 2:  # after the first batch: the citizen of k0004 takes a step
            async with session_factory() as session, session.begin():
                await session.execute(
                    update(Conversation)
                    .where(Conversation.key == "k0004")
                    .values(version=Conversation.version + 1, expires_at=utcnow() + TTL)
                    .execution_options(synchronize_session=False)
                )
        yield

    ended = await purge_expired_drafts(session_factory, now=utcnow(), batch=2, lock=lock)

    assert ended == 4
    stored = await conversations(session_factory)
    assert stored["k0004"].state == "evidence" and "draft" in stored["k0004"].data
    assert sorted(k for k, c in stored.items() if c.state == "idle") == [
        "k0000",
        "k0001",
        "k0002",
        "k0003",
    ]


async def test_old_rate_hits_are_purged_with_the_drafts(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with session_factory() as session, session.begin():
        session.add(RateHit(scope="report", key="x", at=utcnow() - timedelta(days=3)))
        session.add(RateHit(scope="report", key="y", at=utcnow()))
    result = await purge(session_factory, now=utcnow(), draft_ttl=TTL)
    assert result.rate_hits == 1 and result.drafts == 0
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(RateHit)) == 1


def test_the_heap_trim_is_harmless_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc: ``malloc_trim`` runs; any other C library (faked here): nothing is called."""
    assert isinstance(heap.trim(), bool)
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("", ""))
    heap._malloc_trim.cache_clear()
    try:
        assert not heap.available()
        assert heap.trim() is False
    finally:
        heap._malloc_trim.cache_clear()
