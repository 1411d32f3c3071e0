"""Long-running housekeeping that commits batch by batch: retention, key rotation.

The use cases (``handlers/retention.py``, ``handlers/key_rotation.py``) work inside one
transaction; here each batch gets its own, so a large run never holds locks for long and an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from config.settings import Settings
from handlers.key_rotation import (
    ENCRYPTED_FIELDS,
    check_readable,
    reencrypt_batch,
    rehash_routes_batch,
    rewrap_pins_batch,
)
from handlers.retention import (
    BATCH_SIZE,
    OUTBOX_BATCH_SIZE,
    RetentionPolicy,
    RetentionResult,
    apply_retention,
)
from handlers.security import Keyring
from storage.models import AuditEvent
from storage.types import utcnow

log = logging.getLogger(__name__)


def retention_policy(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy.from_days(
        route_days=settings.retention_route_days,
        evidence_days=settings.retention_evidence_days,
        text_years=settings.retention_text_years,
        audit_days=settings.retention_audit_days,
        outbox_days=settings.retention_outbox_days,
        outbox_failed_days=settings.retention_outbox_failed_days,
    )


async def run_retention(
    session_factory: async_sessionmaker[AsyncSession],
    policy: RetentionPolicy,
    *,
    via: str = "system",
    batch: int = BATCH_SIZE,
    outbox_batch: int = OUTBOX_BATCH_SIZE,
) -> RetentionResult:
    """Apply the policy batch by batch, one transaction each, until nothing is left."""
    total = RetentionResult()
    now = utcnow()
    while True:
        async with session_factory() as session, session.begin():
            result = await apply_retention(
                session, policy, now=now, via=via, batch=batch, outbox_batch=outbox_batch
            )
        total += result
        if result.total == 0:
            break
    if total.total:
        log.info("retention: %s", ", ".join(f"{k} {v}" for k, v in total.as_dict().items()))
    return total


@dataclass
class RotationReport:
    """What a rotation found and did, by field."""

    pending: dict[str, int] = field(default_factory=dict)
    reencrypted: dict[str, int] = field(default_factory=dict)
    routes_rehashed: int = 0
    pins_rewrapped: int = 0


async def rotate_keys(
    session_factory: async_sessionmaker[AsyncSession], keyring: Keyring, *, batch: int = 500
) -> RotationReport:
    """Re-encrypt every listed field under the current key; resumable, batch by batch.

    Raises :class:`handlers.key_rotation.UnreadableValue` before changing anything when a value
    cannot be read with any configured key.
    """
    report = RotationReport()
    async with session_factory() as session, session.begin():
        report.pending = await check_readable(session, keyring, batch)
    for spec in ENCRYPTED_FIELDS:
        after: Any = None
        done = 0
        more = True
        while more:
            async with session_factory() as session, session.begin():
                after, changed, more = await reencrypt_batch(session, keyring, spec, after, batch)
            done += changed
        report.reencrypted[spec.name] = done
    route_after: int | None = None
    more = True
    while more:
        async with session_factory() as session, session.begin():
            route_after, changed, more = await rehash_routes_batch(
                session, keyring, route_after, batch
            )
        report.routes_rehashed += changed
    pin_after: int | None = None
    more = True
    while more:
        async with session_factory() as session, session.begin():
            pin_after, changed, more = await rewrap_pins_batch(session, keyring, pin_after, batch)
        report.pins_rewrapped += changed
    async with session_factory() as session, session.begin():
        session.add(
            AuditEvent(
                via="cli",
                action="keys_rotated",
                data={
                    **report.reencrypted,
                    "routes_rehashed": report.routes_rehashed,
                    "pins_rewrapped": report.pins_rewrapped,
                },
            )
        )
    log.info(
        "keys rotated: %s; %d routes re-hashed; %d PIN hashes wrapped",
        ", ".join(f"{k} {v}" for k, v in report.reencrypted.items()),
        report.routes_rehashed,
        report.pins_rewrapped,
    )
    return report
