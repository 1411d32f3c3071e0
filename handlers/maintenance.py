"""Housekeeping: expired drafts, old rate-limit hits, old update ids, orphaned media."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from storage.repositories import Conversations, Media, RateLimits, UpdateLog

UPDATE_ID_RETENTION = timedelta(days=7)
RATE_HIT_RETENTION = timedelta(days=2)


@dataclass(frozen=True)
class PurgeResult:
    drafts: int
    rate_hits: int
    update_ids: int
    blobs: int


async def purge(session: AsyncSession, *, now: datetime, draft_ttl: timedelta) -> PurgeResult:
    """Delete what has outlived its purpose, inside the caller's transaction."""
    drafts = 0
    media = Media(session)
    blob_ids: list[int | None] = []
    for conversation in await Conversations(session).expired_drafts(now):
        data = dict(conversation.data or {})
        draft = data.pop("draft", None)
        data.pop("resume", None)
        if isinstance(draft, dict):
            blob_ids += [m.get("blob_id") for m in draft.get("media", [])]
        conversation.data = data
        flag_modified(conversation, "data")
        conversation.state = "idle"
        conversation.expires_at = None
        drafts += 1
    await session.flush()
    await media.delete_blobs(blob_ids)  # one statement for every expired draft's images
    rate_hits = await RateLimits(session).purge_before(now - RATE_HIT_RETENTION)
    update_ids = await UpdateLog(session).purge_before(now - UPDATE_ID_RETENTION)
    blobs = await media.delete_orphan_blobs(now - draft_ttl - timedelta(days=1))
    return PurgeResult(drafts, rate_hits, update_ids, blobs)
