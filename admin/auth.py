"""Passwords, sessions, CSRF tokens and login throttling for the web panel.

There is no sessions table: a session is a Fernet token in an HttpOnly, SameSite=Strict cookie.
Its key is derived from the service's master key through the keyring, so a database dump holds
no session, and a new master key ends every session. The token carries the officer's id, a
per-session CSRF token, the start time and a fingerprint of the password hash (changing the
password ends the other sessions). It is re-issued on every request, and Fernet's own time
stamp gives the idle expiry.
"""

from __future__ import annotations

import base64
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
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.security import Keyring
from storage.repositories import RateLimits

log = logging.getLogger(__name__)

SESSION_COOKIE = "tinbao_admin"
LANG_COOKIE = "tinbao_lang"
CSRF_FIELD = "csrf"
PASSWORD_MIN = 12

RATE_LOGIN_ACCOUNT = "admin_login_user"
RATE_LOGIN_ADDRESS = "admin_login_addr"

_hasher = PasswordHasher()
#: Verified against when the username is unknown, so both cases cost the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
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

    def as_dict(self) -> dict[str, Any]:
        return {"o": self.officer_id, "c": self.csrf, "s": self.started, "p": self.password_tag}


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

    def new(self, officer_id: int | None, password_hash: str | None = None) -> Session:
        return Session(
            officer_id=officer_id,
            csrf=secrets.token_urlsafe(32),
            started=time.time(),
            password_tag=self.password_tag(password_hash) if officer_id is not None else None,
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
            )
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if time.time() - session.started > self.max_age.total_seconds():
            return None
        return session


class LoginThrottle:
    """Failed logins counted per account and per address under keyed hashes (``rate_hits``)."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        per_account: int,
        per_address: int,
        window: timedelta,
    ) -> None:
        self.keyring = keyring
        self.per_account = per_account
        self.per_address = per_address
        self.window = window

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        return (
            self.keyring.keyed_hash("admin-login-user", username.strip().lower()),
            self.keyring.keyed_hash("admin-login-addr", address),
        )

    async def blocked(self, session: AsyncSession, username: str, address: str) -> bool:
        account, place = self._keys(username, address)
        limits = RateLimits(session)
        if await limits.count(RATE_LOGIN_ACCOUNT, account, self.window) >= self.per_account:
            return True
        return await limits.count(RATE_LOGIN_ADDRESS, place, self.window) >= self.per_address

    def failed(self, session: AsyncSession, username: str, address: str) -> None:
        account, place = self._keys(username, address)
        limits = RateLimits(session)
        limits.hit(RATE_LOGIN_ACCOUNT, account)
        limits.hit(RATE_LOGIN_ADDRESS, place)

    async def succeeded(self, session: AsyncSession, username: str) -> None:
        account, _ = self._keys(username, "")
        await RateLimits(session).clear(RATE_LOGIN_ACCOUNT, account)
