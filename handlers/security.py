"""Keys, keyed hashes, encryption, PINs and tracking codes.

One 32-byte master key (``TINBAO_SECRET_KEY``) is expanded with HKDF into separate keys for the
keyed hashes (HMAC-SHA256) and for Fernet encryption, so that neither use weakens the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: No 0/O, 1/I/L: nothing a citizen can misread over the phone or on paper.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10  # 31**10 ≈ 2**49.5
PIN_LENGTH = 6


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


class Keyring:
    """Derived keys for keyed hashing and encryption."""

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._hmac_key = _derive(master, b"tinbao/hmac/v1")
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(master, b"tinbao/fernet/v1")))
        self._pin_key = _derive(master, b"tinbao/pin/v1")

    @property
    def pin_key(self) -> bytes:
        """The key of the PIN hashes (:class:`PinHasher`); it never leaves the process."""
        return self._pin_key

    def __repr__(self) -> str:
        return "Keyring(…)"

    def keyed_hash(self, scope: str, value: str) -> str:
        """A hex HMAC of ``value`` in ``scope``; the same input always gives the same key."""
        message = f"{scope}\x1f{value}".encode()
        return hmac.new(self._hmac_key, message, hashlib.sha256).hexdigest()

    def sender_key(self, channel: str, user_id: str) -> str:
        """The keyed hash that stands for a citizen: drafts, rate limits and routes use it."""
        return self.keyed_hash("sender", f"{channel}:{user_id}")

    def encrypt(self, value: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()

    def decrypt(self, token: str) -> dict[str, Any]:
        try:
            data = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise ValueError("the encrypted value cannot be read with this key") from exc
        if not isinstance(data, dict):
            raise ValueError("the encrypted value is not an object")
        return data


#: The prefix of a keyed PIN hash: ``pin-hmac$1$<salt hex>$<HMAC-SHA256 hex>``.
PIN_HMAC_PREFIX = "pin-hmac$1$"


class PinHasher:
    """Hashes of 6-digit PINs.

    With a key (the normal case, :attr:`Keyring.pin_key`): a salted HMAC-SHA256 keyed by a
    secret that is not in the database, so that a stolen database gives no way to test a single
    PIN offline. Without one: argon2id, slow on purpose (tests and older deployments).
    Either way, :meth:`verify` reads both forms, so the argon2 hashes of existing reports keep
    working. ``docs/performance.md`` gives the reasoning.
    """

    def __init__(
        self, key: bytes | None = None, *, time_cost: int = 2, memory_cost: int = 19_456
    ) -> None:
        if key is not None and len(key) < 32:
            raise ValueError("the PIN key must be at least 32 bytes")
        self._key = key
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=1)

    def __repr__(self) -> str:
        return f"PinHasher({'keyed' if self._key is not None else 'argon2'})"

    @property
    def slow(self) -> bool:
        """Whether :meth:`hash` is slow on purpose (argon2), so callers run it in a thread."""
        return self._key is None

    def _mac(self, salt: bytes, pin: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, salt + pin.encode(), hashlib.sha256).hexdigest()

    def hash(self, pin: str) -> str:
        if self._key is None:
            return self._hasher.hash(pin)
        salt = secrets.token_bytes(16)
        return f"{PIN_HMAC_PREFIX}{salt.hex()}${self._mac(salt, pin)}"

    def verify(self, pin_hash: str, pin: str) -> bool:
        if pin_hash.startswith(PIN_HMAC_PREFIX):
            if self._key is None:
                return False
            salt_hex, _, mac = pin_hash[len(PIN_HMAC_PREFIX) :].partition("$")
            try:
                salt = bytes.fromhex(salt_hex)
            except ValueError:
                return False
            return hmac.compare_digest(self._mac(salt, pin), mac)
        try:
            return self._hasher.verify(pin_hash, pin)
        except (VerificationError, InvalidHashError):
            return False

    def is_slow_hash(self, pin_hash: str) -> bool:
        """Whether verifying ``pin_hash`` is slow (an argon2 hash of an older report)."""
        return not pin_hash.startswith(PIN_HMAC_PREFIX)


def new_tracking_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def new_pin() -> str:
    return f"{secrets.randbelow(10**PIN_LENGTH):0{PIN_LENGTH}d}"


def format_code(code: str) -> str:
    """``ABCDEFGHJK`` → ``ABCDE-FGHJK``, easier to read aloud."""
    return f"{code[:5]}-{code[5:]}"


def parse_code(text: str) -> str | None:
    """Accept a code with any spacing, dashes or case; ``None`` if it cannot be one."""
    cleaned = "".join(ch for ch in text.upper() if ch not in " -_.\u00a0\t")
    if len(cleaned) != CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in cleaned):
        return None
    return cleaned


def parse_pin(text: str) -> str | None:
    cleaned = "".join(ch for ch in text if ch not in " -.\u00a0\t")
    if len(cleaned) != PIN_LENGTH or not cleaned.isascii() or not cleaned.isdigit():
        return None
    return cleaned
