"""The Zalo OA's OAuth tokens: an access token of about 25 hours and a refresh token that is
single-use and rotates.

The pair lives in ``zalo_tokens``, encrypted. A refresh happens inside one transaction that
first locks the row (an ``UPDATE`` takes the row lock on PostgreSQL and the write lock on
SQLite), so only one process refreshes at a time; a process that waited sees the pair another
one saved and uses it instead of spending the old refresh token again. The new pair is saved in
that transaction before the new access token is used. If Zalo answered and the save failed,
the refresh token is spent and lost: that is logged as an error naming the setting to renew,
and the refresh fails like any other (``/healthz`` says why until a refresh works). The pair
keeps a keyed hash of the ``TINBAO_ZALO_OA_REFRESH_TOKEN`` it started from, so that a new value
(the operator authorised the app again) replaces the stored refresh token at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from handlers.security import Keyring
from storage.db import writer
from storage.models import ZaloToken
from storage.types import utcnow

log = logging.getLogger(__name__)

#: Refresh this long before the access token expires.
REFRESH_AHEAD = timedelta(hours=1)
_LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
_SEED_SCOPE = "zalo-oa-refresh-token"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"TokenPair(expires_at={self.expires_at.isoformat()})"


class TokenRefreshError(Exception):
    """Zalo refused the refresh (or could not be reached)."""

    def __init__(self, reason: str, *, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        #: Zalo answered with an error: the refresh token is no good any more.
        self.refused = refused


#: Calls Zalo: refresh token in, new pair out (raises :class:`TokenRefreshError`).
Refresher = Callable[[str], Awaitable[TokenPair]]


class TokenStore:
    """Hands out a valid access token, refreshing it durably and one process at a time."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        *,
        app_id: str,
        initial_refresh_token: str | None,
        refresher: Refresher,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.key = keyring.keyed_hash("zalo-oa-app", app_id)
        self.initial_refresh_token = initial_refresh_token
        self.refresher = refresher
        bind = session_factory.kw.get("bind")
        self._engine = bind if isinstance(bind, AsyncEngine) else None
        self._cached: TokenPair | None = None
        self._lock = asyncio.Lock()
        #: Why the last refresh failed, for ``/healthz``; ``None`` when it worked.
        self.failure: str | None = None
        #: A new pair was lost (not saved): that stays the reason until a refresh works.
        self._lost = False

    def _writer(self) -> contextlib.AbstractAsyncContextManager[object]:
        return writer(self._engine) if self._engine is not None else contextlib.nullcontext()

    def _fresh(self, pair: TokenPair | None) -> bool:
        return pair is not None and pair.expires_at - REFRESH_AHEAD > utcnow()

    async def access_token(self) -> str:
        """A valid access token, refreshed first when it is about to expire."""
        if self._cached is not None and self._fresh(self._cached):
            return self._cached.access_token
        return (await self.refresh(stale=None)).access_token

    async def refresh(self, *, stale: str | None) -> TokenPair:
        """Refresh unless the stored pair is fresh and is not ``stale`` (rejected by Zalo)."""
        async with self._lock:
            if (
                self._cached is not None
                and self._fresh(self._cached)
                and self._cached.access_token != stale
            ):
                return self._cached
            await self._ensure_row()
            issued: list[TokenPair] = []
            try:
                pair = await self._refresh_locked(stale, issued)
            except Exception as exc:
                if not issued:  # Zalo was not asked, or refused: nothing is lost
                    raise
                # Zalo answered and the save did not happen: a failed refresh like any other
                # for the caller (a send fails with SendError, the answer waits in the outbox).
                self._lost_pair()
                raise TokenRefreshError("new tokens could not be saved", refused=False) from exc
            self._cached = pair
            if issued:
                self.failure, self._lost = None, False
                log.info("Zalo OA access token refreshed; valid until %s", pair.expires_at)
            return pair

    async def _refresh_locked(self, stale: str | None, issued: list[TokenPair]) -> TokenPair:
        async with self._writer(), self.session_factory() as session, session.begin():
            # Lock the row first: other processes wait here until this one commits.
            await session.execute(
                update(ZaloToken)
                .where(ZaloToken.key == self.key)
                .values(refreshed_at=ZaloToken.refreshed_at)
            )
            row = await session.get(ZaloToken, self.key, populate_existing=True)
            assert row is not None
            stored = self._decode(row)
            seed = self.keyring.decrypt(row.tokens).get("seed")
            if self._reauthorised(seed):
                log.warning(
                    "Zalo OA: TINBAO_ZALO_OA_REFRESH_TOKEN was changed; it replaces the stored "
                    "refresh token"
                )
                stored = TokenPair("", self.initial_refresh_token or "", _LONG_AGO)
            if stored.access_token and self._fresh(stored) and stored.access_token != stale:
                return stored  # another process refreshed meanwhile
            try:
                pair = await self.refresher(stored.refresh_token)
            except TokenRefreshError as exc:
                if not self._lost:  # Zalo refusing the spent token says less than the loss
                    self.failure = f"token refresh failing: {exc.reason}"
                if exc.refused:
                    log.error(
                        "Zalo refused the OA refresh token (%s): authorise the app again "
                        "and set TINBAO_ZALO_OA_REFRESH_TOKEN to the new refresh token",
                        exc.reason,
                    )
                raise
            issued.append(pair)
            row.tokens = self.keyring.encrypt(
                {
                    "access_token": pair.access_token,
                    "refresh_token": pair.refresh_token,
                    "seed": self._seed() or seed,
                }
            )
            row.expires_at = pair.expires_at
            row.refreshed_at = utcnow()
        return pair  # committed on leaving the block, before anyone uses it

    def _lost_pair(self) -> None:
        log.critical(
            "Zalo issued a new OA token pair but it could not be saved: the old refresh token is "
            "spent. Authorise the app again and set TINBAO_ZALO_OA_REFRESH_TOKEN."
        )
        self.failure = "token refresh failing: new tokens could not be saved"
        self._lost = True

    def _seed(self) -> str | None:
        """A keyed hash of ``TINBAO_ZALO_OA_REFRESH_TOKEN``, kept with the pair it started."""
        configured = self.initial_refresh_token
        return self.keyring.keyed_hash(_SEED_SCOPE, configured) if configured else None

    def _reauthorised(self, seed: object) -> bool:
        """Whether the operator set a new ``TINBAO_ZALO_OA_REFRESH_TOKEN`` (authorised the app
        again) since the stored pair started: then it replaces the stored refresh token. A pair
        stored without the hash (before it was kept) adopts the configured token's at its next
        save."""
        configured = self.initial_refresh_token
        if not configured or not isinstance(seed, str):
            return False
        return seed not in self.keyring.keyed_hashes(_SEED_SCOPE, configured)

    def _decode(self, row: ZaloToken) -> TokenPair:
        data = self.keyring.decrypt(row.tokens)
        return TokenPair(
            str(data.get("access_token") or ""),
            str(data.get("refresh_token") or ""),
            row.expires_at,
        )

    async def _ensure_row(self) -> None:
        """Seed the table from ``TINBAO_ZALO_OA_REFRESH_TOKEN`` once; after that it rotates."""
        async with self.session_factory() as session:
            exists = await session.scalar(select(ZaloToken.key).where(ZaloToken.key == self.key))
        if exists is not None:
            return
        if not self.initial_refresh_token:
            self.failure = "no refresh token: set TINBAO_ZALO_OA_REFRESH_TOKEN"
            raise TokenRefreshError("no refresh token", refused=False)
        tokens = self.keyring.encrypt(
            {"access_token": "", "refresh_token": self.initial_refresh_token, "seed": self._seed()}
        )
        with contextlib.suppress(IntegrityError):  # another process seeded it first
            async with self._writer(), self.session_factory() as session, session.begin():
                session.add(
                    ZaloToken(
                        key=self.key,
                        tokens=tokens,
                        expires_at=_LONG_AGO,
                        refreshed_at=utcnow(),
                    )
                )
