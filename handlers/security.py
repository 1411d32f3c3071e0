"""Keys, keyed hashes, encryption, PINs and tracking codes.

One 32-byte master key (``TINBAO_SECRET_KEY``) is expanded with HKDF into separate keys for the
keyed hashes (HMAC-SHA256) and for Fernet encryption, so that neither use weakens the other.

During a key rotation the keyring also holds the previous master keys
(``TINBAO_PREVIOUS_SECRET_KEYS``): encryption and new hashes always use the current key; values
encrypted under a previous key are still read (``MultiFernet``), and lookups by keyed hash may
try the previous keys' hashes (:meth:`Keyring.keyed_hashes`) and move the row to the current one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: No 0/O, 1/I/L: nothing a citizen can misread over the phone or on paper.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10  # 31**10 ≈ 2**49.5
PIN_LENGTH = 6


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def _fernet(master: bytes) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive(master, b"tinbao/fernet/v1")))


class Keyring:
    """Derived keys for keyed hashing and encryption: the current key, and any previous ones."""

    def __init__(self, master: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(master) != 32 or any(len(key) != 32 for key in previous):
            raise ValueError("the master key must be 32 bytes")
        self._hmac_key = _derive(master, b"tinbao/hmac/v1")
        self._previous_hmac_keys = [_derive(key, b"tinbao/hmac/v1") for key in previous]
        self._current = _fernet(master)
        self._fernet = MultiFernet([self._current, *(_fernet(key) for key in previous)])
        self._pin_key = _derive(master, b"tinbao/pin/v1")
        self._previous_pin_keys = [_derive(key, b"tinbao/pin/v1") for key in previous]
        self._pin_wrap_keys = [_derive(key, b"tinbao/pin-wrap/v1") for key in (master, *previous)]

    @property
    def rotating(self) -> bool:
        """True while previous keys are configured."""
        return bool(self._previous_hmac_keys)

    @property
    def pin_key(self) -> bytes:
        """The key of new PIN hashes (:class:`PinHasher`); it never leaves the process."""
        return self._pin_key

    @property
    def previous_pin_keys(self) -> list[bytes]:
        """The PIN keys of the previous master keys: PINs hashed before a rotation verify."""
        return list(self._previous_pin_keys)

    @property
    def pin_wrap_keys(self) -> list[bytes]:
        """The keys PIN hashes are wrapped with by a rotation: the current one first, then
        those of the previous master keys (read only). See :meth:`PinHasher.rewrap`."""
        return list(self._pin_wrap_keys)

    def __repr__(self) -> str:
        return "Keyring(…)"

    def keyed_hash(self, scope: str, value: str) -> str:
        """A hex HMAC of ``value`` in ``scope``; the same input always gives the same key."""
        message = f"{scope}\x1f{value}".encode()
        return hmac.new(self._hmac_key, message, hashlib.sha256).hexdigest()

    def keyed_hashes(self, scope: str, value: str) -> list[str]:
        """The hash under the current key first, then under each previous key (for lookups)."""
        message = f"{scope}\x1f{value}".encode()
        return [
            hmac.new(key, message, hashlib.sha256).hexdigest()
            for key in (self._hmac_key, *self._previous_hmac_keys)
        ]

    def sender_key(self, channel: str, user_id: str) -> str:
        """The keyed hash that stands for a citizen: drafts, rate limits and routes use it."""
        return self.keyed_hash("sender", f"{channel}:{user_id}")

    def sender_keys(self, channel: str, user_id: str) -> list[str]:
        """:meth:`sender_key` under the current key, then under each previous key."""
        return self.keyed_hashes("sender", f"{channel}:{user_id}")

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

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is already encrypted under the current key."""
        try:
            self._current.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def reencrypt(self, token: str) -> str:
        """``token`` re-encrypted under the current key (``ValueError`` if no key reads it)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("the encrypted value cannot be read with any configured key") from exc


#: The prefix of a keyed PIN hash: ``pin-hmac$1$<salt hex>$<HMAC-SHA256 hex>``.
PIN_HMAC_PREFIX = "pin-hmac$1$"
#: The prefix of a keyed PIN hash wrapped by a key rotation:
#: ``pin-wrap$1$<base64url(nonce ‖ AES-GCM(wrap key, salt ‖ HMAC ‖ PIN keys))>``.
PIN_WRAP_PREFIX = "pin-wrap$1$"
#: At most this many PIN keys travel in a wrapped hash (it must fit ``reports.pin_hash``).
PIN_WRAP_MAX_KEYS = 2
_PIN_SALT, _PIN_MAC, _PIN_KEY, _NONCE = 16, 32, 32, 12


class PinHasher:
    """Hashes of 6-digit PINs.

    With a key (the normal case, :attr:`Keyring.pin_key`): a salted HMAC-SHA256 keyed by a
    secret that is not in the database, so that a stolen database gives no way to test a single
    PIN offline. Without one: argon2id, slow on purpose (tests and older deployments).
    Either way, :meth:`verify` reads both forms, so the argon2 hashes of existing reports keep
    working. ``docs/performance.md`` gives the reasoning.

    A key rotation cannot re-hash a PIN it does not know, so it wraps each keyed hash instead
    (:meth:`rewrap`): the salt, the HMAC and the PIN keys it may have been made with (the
    previous ones) are sealed with AES-GCM under a key derived from the current master key.
    Such a hash verifies with the current key alone, once the previous key is removed; and
    whoever holds only the old key (the one that may have leaked) can no longer test a PIN
    against the database.
    """

    def __init__(
        self,
        key: bytes | None = None,
        *,
        previous: Sequence[bytes] = (),
        wrap_keys: Sequence[bytes] = (),
        time_cost: int = 2,
        memory_cost: int = 19_456,
    ) -> None:
        if key is not None and len(key) < 32:
            raise ValueError("the PIN key must be at least 32 bytes")
        self._key = key
        #: Keys of the previous master keys, during a key rotation (verify only).
        self._previous = [k for k in previous if k != key]
        #: The wrapping keys: the first wraps, all unwrap (:meth:`rewrap`).
        self._wrap = [AESGCM(k) for k in wrap_keys]
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=1)

    @classmethod
    def for_keyring(cls, keyring: Keyring) -> PinHasher:
        """The service's hasher: keyed by ``keyring``, reading what a rotation left."""
        return cls(
            keyring.pin_key, previous=keyring.previous_pin_keys, wrap_keys=keyring.pin_wrap_keys
        )

    def __repr__(self) -> str:
        return f"PinHasher({'keyed' if self._key is not None else 'argon2'})"

    @property
    def slow(self) -> bool:
        """Whether :meth:`hash` is slow on purpose (argon2), so callers run it in a thread."""
        return self._key is None

    def _mac(self, salt: bytes, pin: str, key: bytes | None = None) -> str:
        key = key or self._key
        assert key is not None
        return hmac.new(key, salt + pin.encode(), hashlib.sha256).hexdigest()

    def hash(self, pin: str) -> str:
        if self._key is None:
            return self._hasher.hash(pin)
        salt = secrets.token_bytes(16)
        return f"{PIN_HMAC_PREFIX}{salt.hex()}${self._mac(salt, pin)}"

    def verify(self, pin_hash: str, pin: str) -> bool:
        if pin_hash.startswith(PIN_WRAP_PREFIX):
            opened = self._unwrap(pin_hash)
            if opened is None or self._key is None:
                return False
            salt, wrapped_mac, keys = opened
            return any(
                hmac.compare_digest(self._mac(salt, pin, key), wrapped_mac.hex())
                for key in (self._key, *self._previous, *keys)
            )
        if pin_hash.startswith(PIN_HMAC_PREFIX):
            if self._key is None:
                return False
            salt_hex, _, mac = pin_hash[len(PIN_HMAC_PREFIX) :].partition("$")
            try:
                salt = bytes.fromhex(salt_hex)
            except ValueError:
                return False
            return any(
                hmac.compare_digest(self._mac(salt, pin, key), mac)
                for key in (self._key, *self._previous)
            )
        try:
            return self._hasher.verify(pin_hash, pin)
        except (VerificationError, InvalidHashError):
            return False

    def is_slow_hash(self, pin_hash: str) -> bool:
        """Whether verifying ``pin_hash`` is slow (an argon2 hash of an older report)."""
        return not pin_hash.startswith((PIN_HMAC_PREFIX, PIN_WRAP_PREFIX))

    def rewrap(self, pin_hash: str) -> str | None:
        """``pin_hash`` in a form that verifies once the previous keys are gone, or ``None``
        when it needs nothing (an argon2 hash, or one already wrapped under the current key).

        A keyed hash is wrapped with the previous PIN keys (which of the keys made it cannot be
        told without the PIN); a hash wrapped under a previous wrapping key is sealed again, as
        it is, under the current one. ``ValueError`` when no wrapping key opens it, or more
        than :data:`PIN_WRAP_MAX_KEYS` previous keys are configured.
        """
        if not self._wrap:
            raise ValueError("no wrapping key")
        if pin_hash.startswith(PIN_WRAP_PREFIX):
            try:
                sealed = base64.urlsafe_b64decode(pin_hash[len(PIN_WRAP_PREFIX) :] + "==")
                self._wrap[0].decrypt(sealed[:_NONCE], sealed[_NONCE:], _WRAP_AAD)
                return None  # already under the current key
            except (InvalidTag, ValueError):
                pass
            opened = self._unwrap(pin_hash)
            if opened is None:
                raise ValueError("a wrapped PIN hash no configured key opens")
            salt, mac, keys = opened
            return self._seal(salt, mac, keys)
        if not pin_hash.startswith(PIN_HMAC_PREFIX) or not self._previous:
            return None
        if len(self._previous) > PIN_WRAP_MAX_KEYS:
            raise ValueError(f"at most {PIN_WRAP_MAX_KEYS} previous keys can be carried")
        salt_hex, _, mac_hex = pin_hash[len(PIN_HMAC_PREFIX) :].partition("$")
        salt, mac = bytes.fromhex(salt_hex), bytes.fromhex(mac_hex)
        if len(salt) != _PIN_SALT or len(mac) != _PIN_MAC:
            raise ValueError("a malformed PIN hash")
        return self._seal(salt, mac, self._previous)

    def _seal(self, salt: bytes, mac: bytes, keys: Sequence[bytes]) -> str:
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._wrap[0].encrypt(nonce, salt + mac + b"".join(keys), _WRAP_AAD)
        token = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return PIN_WRAP_PREFIX + token

    def _unwrap(self, pin_hash: str) -> tuple[bytes, bytes, list[bytes]] | None:
        """The salt, HMAC and carried PIN keys of a wrapped hash; ``None`` if unreadable."""
        try:
            sealed = base64.urlsafe_b64decode(pin_hash[len(PIN_WRAP_PREFIX) :] + "==")
        except ValueError:
            return None
        for wrap in self._wrap:
            try:
                plain = wrap.decrypt(sealed[:_NONCE], sealed[_NONCE:], _WRAP_AAD)
            except (InvalidTag, ValueError):
                continue
            head, rest = plain[: _PIN_SALT + _PIN_MAC], plain[_PIN_SALT + _PIN_MAC :]
            keys = [rest[i : i + _PIN_KEY] for i in range(0, len(rest), _PIN_KEY)]
            return head[:_PIN_SALT], head[_PIN_SALT:], keys
        return None


#: Binds a wrapped PIN hash to its purpose (AES-GCM associated data).
_WRAP_AAD = b"tinbao/pin-wrap/v1"


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
