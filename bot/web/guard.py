"""The citizen page's safety: headers, CSRF, the connection's expiring keyed hash, the question.

- Headers: a strict CSP (nothing but this site, no inline script or style), no referrer, no
  framing, and ``no-store`` everywhere (a code or PIN must never sit in a cache).
- CSRF: a random token in a browser-session cookie, echoed in every form (double submit).
- The client address is never stored or logged. Rate limits count under an HMAC of it with a key
  that lives in memory only and is replaced every day, so yesterday's counts cannot be linked to
  an address, even by someone holding the database and the service key.
- Spam: one small arithmetic question in words, its answer sealed in the form; works without
  JavaScript, from Tor, with a screen reader, and needs no third party (see the README).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from admin.clients import Clients
from handlers.i18n import pick_locale, t
from handlers.security import Keyring

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
CSRF_COOKIE = "tb_csrf"
CSRF_FIELD = "csrf"
DAY = 24 * 3600
#: How long a challenge question stays answerable.
CHALLENGE_TTL = 3 * 3600
#: Why a challenge is refused (message keys): a wrong answer, a question whose time ran out,
#: a question already used by a form sent before (a second press, the back button, a script).
CHALLENGE_WRONG = "web.err.challenge"
CHALLENGE_EXPIRED = "web.err.challenge_expired"
CHALLENGE_USED = "web.err.challenge_used"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A CSRF token made for this request (set as a cookie with the response).
NEW_CSRF: web.RequestKey[str] = web.RequestKey("new_csrf", str)
#: The ``lang`` field of a posted form.
FORM_LANG: web.RequestKey[str] = web.RequestKey("form_lang", str)


def harden(response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(self)"
    response.headers["Cache-Control"] = "no-store"


def csrf_token(request: web.Request) -> str:
    """This browser's CSRF token (a new one is set with the response if it had none)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) < 32 or len(token) > 64:
        token = request.get(NEW_CSRF) or secrets.token_urlsafe(32)
        request[NEW_CSRF] = token
    return token


def csrf_ok(request: web.Request, sent: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and sent) and hmac.compare_digest(str(cookie), str(sent))


def finish(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    harden(response)
    new = request.get(NEW_CSRF)
    if new:
        # A browser-session cookie: no Max-Age, gone when the browser closes.
        response.set_cookie(
            CSRF_COOKIE, new, path="/", httponly=True, samesite="Strict", secure=request.secure
        )
    return response


def locale_of(request: web.Request, default: str = "vi") -> str:
    """``?lang=`` (or the form's ``lang``) first, then ``Accept-Language``, then Vietnamese."""
    chosen = request.query.get("lang") or request.get(FORM_LANG)
    if chosen in ("vi", "en"):
        return str(chosen)
    header = request.headers.get("Accept-Language", "")
    for part in header.split(","):
        tag = part.split(";")[0].strip()
        if tag:
            locale = pick_locale(tag, "")
            if locale:
                return locale
    return default


class ClientKeys:
    """Expiring keyed hashes of connections: the key is random, in memory, renewed daily."""

    def __init__(self, clients: Clients) -> None:
        #: Who the client is: ``X-Forwarded-For`` only from ``TINBAO_TRUSTED_PROXIES``.
        self.clients = clients
        self._day = -1
        self._key = b""

    def key(self, request: web.Request) -> str:
        address = self.clients.address(request)
        day = int(time.time() // DAY)
        if day != self._day:
            self._day, self._key = day, secrets.token_bytes(32)
        return hmac.new(self._key, address.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Challenge:
    """A question shown in the form, and its sealed answer."""

    question: str
    token: str


class Challenges:
    """One-question arithmetic challenges: "three plus four?", answered with a number."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def new(self, locale: str) -> Challenge:
        a, b = secrets.randbelow(8) + 1, secrets.randbelow(8) + 1
        token = self.keyring.encrypt(
            {"s": a + b, "x": int(time.time()) + CHALLENGE_TTL, "n": secrets.token_hex(8)}
        )
        question = t(
            locale,
            "web.challenge.question",
            a=t(locale, f"web.num.{a}"),
            b=t(locale, f"web.num.{b}"),
        )
        return Challenge(question, token)

    def nonce(self, token: str, answer: str) -> tuple[str | None, str | None]:
        """The challenge's single-use nonce if ``answer`` is right and in time, else ``None``
        and the refusal's message key: a question whose time ran out is told apart from a
        wrong answer (a forged or garbled token counts as wrong). Whether the nonce was used
        already is the caller's check, in the database."""
        try:
            data = self.keyring.decrypt(token)
        except ValueError:
            return None, CHALLENGE_WRONG
        if not isinstance(data.get("x"), int) or data["x"] < time.time():
            return None, CHALLENGE_EXPIRED
        # Any script's decimal digits (int() reads them all); not "²", which int() refuses.
        digits = "".join(ch for ch in answer if ch.isdecimal())[:3]
        if not digits or int(digits) != data.get("s"):
            return None, CHALLENGE_WRONG
        return str(data.get("n")), None
