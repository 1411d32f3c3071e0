"""Passwords, sessions, CSRF tokens and login throttling for the web panel.

There is no sessions table: a session is a Fernet token in an HttpOnly, SameSite=Strict cookie.
Its key is derived from the service's master key through the keyring, so a database dump holds
no session, and a new master key ends every session. The token carries the officer's id, a
per-session CSRF token, the start time, a fingerprint of the password hash and the account's
session generation. Every request checks both against the account: a new password, signing out,
"sign out everywhere" and revocation bump the generation (``officers.session_generation``), which
ends every copy of every earlier cookie. It is re-issued on every request, and Fernet's own time
stamp gives the idle expiry.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.security import Keyring
from storage.models import RateHit
from storage.repositories import RateLimits

log = logging.getLogger(__name__)

SESSION_COOKIE = "tinbao_admin"
LANG_COOKIE = "tinbao_lang"
CSRF_FIELD = "csrf"
PASSWORD_MIN = 12

RATE_LOGIN_PAIR = "admin_login_pair"
RATE_LOGIN_ADDRESS = "admin_login_addr"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so both cases cost the same time.

    Made on the first login, not at import: an argon2 hash takes tens of milliseconds and
    64 MiB, which a process that never serves a login need not pay."""
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused (a catalogue key), or None."""
    if len(password) < PASSWORD_MIN:
        return "admin.password.too_short"
    return None


def constant_equal(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class Session:
    """What the cookie holds; ``officer_id`` is None before login (a login form's CSRF)."""

    officer_id: int | None
    csrf: str
    started: float
    password_tag: str | None = None
    #: The account's session generation at sign-in; a bump ends this session.
    generation: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "o": self.officer_id,
            "c": self.csrf,
            "s": self.started,
            "p": self.password_tag,
            "g": self.generation,
        }


class SessionBox:
    """Seals and opens session cookies."""

    def __init__(self, keyring: Keyring, *, idle: timedelta, max_age: timedelta) -> None:
        raw = bytes.fromhex(keyring.keyed_hash("admin-session", "fernet/v1"))
        self._fernet = Fernet(base64.urlsafe_b64encode(raw))
        self._keyring = keyring
        self.idle = idle
        self.max_age = max_age

    def password_tag(self, password_hash: str | None) -> str:
        return self._keyring.keyed_hash("admin-password", password_hash or "")[:16]

    def new(
        self, officer_id: int | None, password_hash: str | None = None, generation: int = 0
    ) -> Session:
        return Session(
            officer_id=officer_id,
            csrf=secrets.token_urlsafe(32),
            started=time.time(),
            password_tag=self.password_tag(password_hash) if officer_id is not None else None,
            generation=generation,
        )

    def seal(self, session: Session) -> str:
        return self._fernet.encrypt(json.dumps(session.as_dict()).encode()).decode()

    def open(self, token: str | None) -> Session | None:
        if not token:
            return None
        try:
            data = json.loads(
                self._fernet.decrypt(token.encode(), ttl=int(self.idle.total_seconds()))
            )
            session = Session(
                officer_id=data["o"] if isinstance(data["o"], int) else None,
                csrf=str(data["c"]),
                started=float(data["s"]),
                password_tag=data.get("p"),
                generation=data.get("g", 0) if isinstance(data.get("g", 0), int) else -1,
            )
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if time.time() - session.started > self.max_age.total_seconds():
            return None
        return session


@dataclass(frozen=True, slots=True)
class Attempt:
    """A sign-in attempt, recorded (and committed) before the password is checked."""

    pair: str
    place: str
    hit_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


class LoginThrottle:
    """Sign-in attempts counted per account-and-address and per address (``rate_hits``).

    The attempt is recorded and committed *before* the password is checked, and the check
    then counts every committed attempt, its own included: the k-th attempt to commit sees at
    least k, so however many race, at most ``per_pair`` passwords are checked in a window for one
    account from one address. A refused attempt removes its record again, so the pair regains
    one guess as each old one leaves the window: a slow-down, not a lock. The right password
    from another address is unaffected; ``per_address`` (high) only bounds one address trying
    many accounts. Keys are keyed hashes: no username or address is stored.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        per_pair: int,
        per_address: int,
        window: timedelta,
    ) -> None:
        self.keyring = keyring
        self.per_pair = per_pair
        self.per_address = per_address
        self.window = window

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        account = username.strip().lower()
        return (
            self.keyring.keyed_hash("admin-login-pair", f"{account}\x00{address}"),
            self.keyring.keyed_hash("admin-login-addr", address),
        )

    async def record(self, session: AsyncSession, username: str, address: str) -> Attempt:
        """Add the attempt; the caller commits before calling :meth:`verdict`."""
        pair, place = self._keys(username, address)
        hits = [
            RateHit(scope=RATE_LOGIN_PAIR, key=pair),
            RateHit(scope=RATE_LOGIN_ADDRESS, key=place),
        ]
        session.add_all(hits)
        await session.flush()
        return Attempt(pair, place, tuple(hit.id for hit in hits))

    async def verdict(self, session: AsyncSession, attempt: Attempt) -> Verdict:
        limits = RateLimits(session)
        pair = await limits.count(RATE_LOGIN_PAIR, attempt.pair, self.window)
        place = await limits.count(RATE_LOGIN_ADDRESS, attempt.place, self.window)
        if pair <= self.per_pair and place <= self.per_address:
            return Verdict(True)
        return Verdict(False, retry_after=int(self.window.total_seconds()))

    async def forget(self, session: AsyncSession, attempt: Attempt) -> None:
        """A refused attempt (no password checked) does not count against the pair."""
        await session.execute(delete(RateHit).where(RateHit.id.in_(attempt.hit_ids)))

    async def succeeded(self, session: AsyncSession, attempt: Attempt) -> None:
        """The right password: the pair starts afresh, and this attempt does not count."""
        await RateLimits(session).clear(RATE_LOGIN_PAIR, attempt.pair)
        await self.forget(session, attempt)


class PasswordWorker:
    """argon2 off the event loop: in threads, at most ``concurrency`` at once.

    argon2 is built to be slow (tens of milliseconds and 64 MiB each); run on the loop, a burst
    of logins would stall every other request. Waiting for a slot is bounded by ``wait``.
    """

    def __init__(self, concurrency: int = 2, wait: float = 30.0) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._wait = wait

    async def verify(self, password_hash: str | None, password: str) -> bool:
        async with asyncio.timeout(self._wait):
            await self._slots.acquire()
        try:
            return await asyncio.to_thread(verify_password, password_hash, password)
        finally:
            self._slots.release()

    async def hash(self, password: str) -> str:
        async with asyncio.timeout(self._wait):
            await self._slots.acquire()
        try:
            return await asyncio.to_thread(hash_password, password)
        finally:
            self._slots.release()
