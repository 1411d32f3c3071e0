"""PIN hashes: keyed (HMAC with a key outside the database) for new reports, while the argon2
hashes of reports filed before keep verifying."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from handlers.security import PIN_HMAC_PREFIX, PIN_WRAP_PREFIX, Keyring, PinHasher
from tests.driver import TEST_KEY, citizen, label, make_flow, sync_units
from tests.test_citizen_flow import file_tip

KEYED = PinHasher(Keyring(TEST_KEY).pin_key)
ARGON2 = PinHasher(time_cost=1, memory_cost=8192)


def test_a_keyed_hash_verifies_the_right_pin_only() -> None:
    stored = KEYED.hash("123456")
    assert stored.startswith(PIN_HMAC_PREFIX)
    assert "123456" not in stored
    assert KEYED.verify(stored, "123456")
    assert not KEYED.verify(stored, "123457")
    assert not KEYED.slow and not KEYED.is_slow_hash(stored)


def test_the_same_pin_hashes_differently_each_time() -> None:
    # Salted: two reports with the same PIN cannot be told apart in the database.
    assert KEYED.hash("000000") != KEYED.hash("000000")


def test_without_the_key_a_keyed_hash_cannot_be_checked() -> None:
    stored = KEYED.hash("123456")
    other_key = PinHasher(Keyring(bytes(32)).pin_key)
    assert not other_key.verify(stored, "123456")
    assert not ARGON2.verify(stored, "123456")


def test_a_pin_hashed_before_a_key_rotation_still_verifies() -> None:
    new_key = b"\x5a" * 32
    assert new_key != TEST_KEY
    before = KEYED.hash("246810")
    rotating = Keyring(new_key, [TEST_KEY])
    after = PinHasher(rotating.pin_key, previous=rotating.previous_pin_keys)
    assert after.verify(before, "246810")
    assert not after.verify(before, "246811")
    # New PINs are hashed under the new key only: the old key alone cannot check them.
    assert not KEYED.verify(after.hash("135790"), "135790")


def test_a_rotation_wraps_pin_hashes_so_they_verify_without_the_old_key() -> None:
    second, third = b"\x5a" * 32, b"\x6b" * 32
    old_pin = KEYED.hash("246810")
    during = PinHasher.for_keyring(Keyring(second, [TEST_KEY]))
    new_pin = during.hash("135790")  # made after the switch, under the new key
    wrapped = [during.rewrap(old_pin), during.rewrap(new_pin)]
    assert all(w is not None and w.startswith(PIN_WRAP_PREFIX) for w in wrapped)
    assert all(len(w or "") <= 200 for w in wrapped)  # reports.pin_hash
    assert [during.rewrap(w or "") for w in wrapped] == [None, None]  # done once
    after = PinHasher.for_keyring(Keyring(second))  # the old key removed
    assert after.verify(wrapped[0] or "", "246810") and after.verify(wrapped[1] or "", "135790")
    assert not after.verify(old_pin, "246810")  # what the wrap is for
    assert not after.verify(wrapped[0] or "", "246811")
    # Whoever holds only the old key can no longer test a PIN against the stored hash.
    assert not PinHasher.for_keyring(Keyring(TEST_KEY)).verify(wrapped[0] or "", "246810")
    # A second rotation seals the wrapped hash again under the third key.
    again = PinHasher.for_keyring(Keyring(third, [second])).rewrap(wrapped[0] or "")
    assert again is not None and again != wrapped[0]
    assert PinHasher.for_keyring(Keyring(third)).verify(again, "246810")
    # Argon2 hashes need no key and are left alone.
    assert during.rewrap(ARGON2.hash("111111")) is None


@pytest.mark.parametrize(
    "stored",
    [
        f"{PIN_WRAP_PREFIX}not-base64!",
        f"{PIN_WRAP_PREFIX}",
        f"{PIN_HMAC_PREFIX}zz$00",
        f"{PIN_HMAC_PREFIX}",
        "garbage",
        "$argon2id$v=19$m=8192,t=1,p=1$broken",
    ],
)
def test_a_malformed_hash_never_verifies(stored: str) -> None:
    assert not KEYED.verify(stored, "123456")
    assert not PinHasher.for_keyring(Keyring(TEST_KEY)).verify(stored, "123456")


def test_existing_argon2_hashes_still_verify() -> None:
    # A hash as the earlier releases stored it (argon2-cffi defaults of PinHasher then).
    old = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1).hash("654321")
    assert KEYED.is_slow_hash(old)
    assert KEYED.verify(old, "654321")
    assert not KEYED.verify(old, "654320")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PinHasher(b"short")


async def test_a_report_filed_with_an_argon2_pin_checks_with_the_keyed_hasher(session_factory):
    await sync_units(session_factory)
    before = citizen(session_factory, 9101, flow=make_flow(pins=ARGON2))
    code, pin = await file_tip(before, "vi")
    # The service is upgraded: new PINs are keyed, the stored argon2 hash still works.
    after = citizen(session_factory, 9101, flow=make_flow())
    await after.command("status", f"{code} {pin}")
    text = "\n".join(after.texts())
    assert label("vi", "status.wrong") not in text
    assert code in text
    wrong = "000000" if pin != "000000" else "111111"
    await after.command("status", f"{code} {wrong}")
    assert after.texts()[0] == label("vi", "status.wrong")


async def test_a_new_report_gets_a_keyed_pin(session_factory):
    from sqlalchemy import select

    from storage.models import Report

    await sync_units(session_factory)
    c = citizen(session_factory, 9102)
    code, pin = await file_tip(c, "vi")
    async with session_factory() as session:
        stored = await session.scalar(select(Report.pin_hash))
    assert stored is not None and stored.startswith(PIN_HMAC_PREFIX)
    await c.command("status", f"{code} {pin}")
    assert code in "\n".join(c.texts())
